"""`fer-exp predict` on photos built from real FER2013 faces pasted at known positions.

How the photos are built (and why): FER2013 faces are tight 48x48 crops, so they are scaled up (120-160 px) and
pasted onto a 640x480 background; OpenCV's Haar detector finds roughly 70% of them that way. The faces used are
chosen deterministically: for each slot of a photo, the first PrivateTest face (in file order) that the default
detector finds at that slot in the photo's final encoded bytes. So detection itself is not what these tests
measure; what they check is the pipeline around it: boxes near the pasted ones, every face of an image classified
in one batch with the probabilities the model gives for the detected crop, training's 48x48 conversion, EXIF
rotation, colour, no-face photos, annotated output and bad files.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import invoke_cli

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

#: Photo A: three faces of 140 px in a row on mid-grey, a grayscale JPEG.
SLOTS_A = [(40, 170, 140), (250, 170, 140), (460, 170, 140)]
#: Photo B: faces of 120 and 160 px on a colour gradient, stored rotated with EXIF orientation 6.
SLOTS_B = [(60, 60, 120), (380, 240, 160)]
SHAPE = (480, 640)


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / float(aw * ah + bw * bh - inter)


def gradient_background() -> np.ndarray:
    """A smooth left-to-right gradient (grayscale), the no-face photo's and photo B's background."""
    return np.tile(np.linspace(90, 170, SHAPE[1]).astype(np.uint8), (SHAPE[0], 1))


def paste(background: np.ndarray, faces: list[np.ndarray], slots: list[tuple[int, int, int]]) -> np.ndarray:
    img = background.copy()
    for face, (x, y, size) in zip(faces, slots):
        img[y:y + size, x:x + size] = cv2.resize(face, (size, size), interpolation=cv2.INTER_CUBIC)
    return img


def encode_a(gray: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return buf.tobytes()


def encode_b(gray: np.ndarray) -> bytes:
    """Tinted colour, stored turned 90 degrees anticlockwise with EXIF orientation 6 (upright when applied)."""
    from PIL import Image

    bgr = np.clip(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR).astype(np.float32) * (0.85, 1.0, 1.15), 0, 255)
    stored = np.rot90(bgr.astype(np.uint8)[..., ::-1], k=1)  # RGB for Pillow
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(stored)).save(buf, "JPEG", quality=92, exif=exif)
    return buf.getvalue()


def choose_faces(x: np.ndarray, background: np.ndarray, slots: list[tuple[int, int, int]], encode,
                 start: int = 0) -> list[int]:
    """For each slot, the first face index (from ``start``) the default detector finds there in the encoded photo,
    with every face chosen before it still found and nothing else detected."""
    from fer_experiments.serving.detector import FaceDetector
    from fer_experiments.serving.images import decode_image

    det = FaceDetector()
    chosen: list[int] = []
    i = start
    for j in range(len(slots)):
        while True:
            assert i < start + 400, "no detectable face found among 400 PrivateTest faces"
            faces = [x[k] for k in chosen + [i]]
            boxes = det.detect(decode_image(encode(paste(background, faces, slots[: j + 1]))).gray)
            known = [(sx, sy, s, s) for sx, sy, s in slots[: j + 1]]
            if len(boxes) == j + 1 and all(any(iou((b.x, b.y, b.w, b.h), k) >= 0.5 for b in boxes) for k in known):
                chosen.append(i)
                i += 1
                break
            i += 1
    return chosen


def train_tiny_model(real_dataset, seed: int, filters: int):
    """A small CNN trained for one epoch on 600 real Training rows (seconds on a CPU)."""
    from fer_experiments.data import stratified_subset
    from fer_experiments.params import ModelParams, TrainParams
    from fer_experiments.training.trainer import train_model

    train = stratified_subset(real_dataset.split("Training"), 600, seed=seed)
    val = stratified_subset(real_dataset.split("PublicTest"), 200, seed=seed)
    params = ModelParams(conv_blocks=2, convs_per_block=1, filters=filters, head="global_avg", dense_layers=0,
                         conv_dropout=0.0)
    return train_model(params, TrainParams(epochs=1, batch_size=64, seed=seed, lr_schedule="none"), train, val).model


def build_photos(real_dataset, folder: Path) -> dict:
    """Photo A (grey JPEG, 3 faces), photo B (colour, EXIF-rotated JPEG, 2 faces), a no-face PNG, a 48x48 face."""
    x = real_dataset.split("PrivateTest").x
    grey = np.full(SHAPE, 128, np.uint8)
    idx_a = choose_faces(x, grey, SLOTS_A, encode_a)
    idx_b = choose_faces(x, gradient_background(), SLOTS_B, encode_b, start=max(idx_a) + 1)
    paths = {"a": folder / "photo_a.jpg", "b": folder / "photo_b.jpg", "none": folder / "no_face.png",
             "crop": folder / "face48.png"}
    paths["a"].write_bytes(encode_a(paste(grey, [x[i] for i in idx_a], SLOTS_A)))
    paths["b"].write_bytes(encode_b(paste(gradient_background(), [x[i] for i in idx_b], SLOTS_B)))
    cv2.imwrite(str(paths["none"]), gradient_background())
    cv2.imwrite(str(paths["crop"]), x[idx_a[0]])
    return {"paths": paths, "idx_a": idx_a, "idx_b": idx_b, "x": x}


def classify_reported_crops(model, path: Path, faces: list[dict]) -> np.ndarray:
    """What the model says for the crops of the reported boxes, computed here independently of the predictor."""
    from fer_experiments.serving.detector import DEFAULT_MARGIN, Box
    from fer_experiments.serving.images import decode_image, to_face_input

    gray = decode_image(path.read_bytes()).gray
    crops = []
    for f in faces:
        c = Box(**f["box"]).expand(DEFAULT_MARGIN, gray.shape[1], gray.shape[0])
        crops.append(to_face_input(gray[c.y:c.y + c.h, c.x:c.x + c.w]))
    return np.asarray(model.predict_on_batch(np.stack(crops)[..., None].astype(np.float32)))


@pytest.fixture(scope="module")
def env(real_dataset, tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("predict")
    model = train_tiny_model(real_dataset, seed=11, filters=8)
    model.save(folder / "small.keras")
    return {"folder": folder, "model": model, "model_path": str(folder / "small.keras")} | build_photos(real_dataset,
                                                                                                       folder)


def _assert_face_shape(face: dict) -> None:
    from fer_experiments import EXPRESSIONS

    probs = face["probabilities"]
    assert list(probs) == list(EXPRESSIONS)
    assert abs(sum(probs.values()) - 1.0) < 1e-4
    assert face["label"] == max(probs, key=probs.get)


def test_predict_json_finds_pasted_faces_and_labels_match_the_crops(env: dict) -> None:
    p = env["paths"]
    out = env["folder"] / "annotated"
    proc = invoke_cli("predict", str(p["a"]), str(p["b"]), str(p["none"]), "--model", env["model_path"], "--json",
                      "--out", str(out), cwd=env["folder"])
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert [r["file"] for r in results] == [str(p["a"]), str(p["b"]), str(p["none"])]
    for key, slots, r in (("a", SLOTS_A, results[0]), ("b", SLOTS_B, results[1])):
        faces = r["faces"]
        assert len(faces) == len(slots), faces
        assert r["image"] == {"width": 640, "height": 480}  # photo B is stored 480x640: EXIF orientation applied
        for x0, y0, size in slots:
            best = max(faces, key=lambda f: iou(tuple(f["box"].values()), (x0, y0, size, size)))
            b = best["box"]
            assert iou((b["x"], b["y"], b["w"], b["h"]), (x0, y0, size, size)) >= 0.3, (key, b, (x0, y0, size))
        for f in faces:
            _assert_face_shape(f)
        # The labels and probabilities are the model's for the detected crop.
        expected = classify_reported_crops(env["model"], p[key], faces)
        got = np.array([list(f["probabilities"].values()) for f in faces])
        np.testing.assert_allclose(got, expected, atol=2e-5)
        assert r["model"]["name"] == "small.keras" and r["model"]["version"]
        assert Path(r["annotated"]).is_file()
    assert results[2]["faces"] == []
    # Annotated images: same size as the upright input, colour, boxes drawn (pixels changed).
    for key in ("a", "b"):
        drawn = cv2.imread(str(out / p[key].name), cv2.IMREAD_UNCHANGED)
        assert drawn.shape == (480, 640, 3)
        from fer_experiments.serving.images import decode_image

        original = decode_image(p[key].read_bytes(), keep_colour=True).bgr
        assert (np.abs(drawn.astype(int) - original.astype(int)).max(axis=2) > 60).sum() > 500
    assert (out / "no_face.png").is_file()


def test_no_detect_classifies_a_48px_crop_exactly_as_training_data(env: dict) -> None:
    """A 48x48 PNG of a PrivateTest face gives the probabilities the model gives the dataset's array."""
    proc = invoke_cli("predict", str(env["paths"]["crop"]), "--no-detect", "--model", env["model_path"], "--json",
                      cwd=env["folder"])
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(proc.stdout)
    (face,) = result["faces"]
    assert face["box"] == {"x": 0, "y": 0, "w": 48, "h": 48}
    x = env["x"][env["idx_a"][0]][None, ..., None].astype(np.float32)
    expected = np.asarray(env["model"].predict_on_batch(x))[0]
    np.testing.assert_allclose(list(face["probabilities"].values()), expected, atol=2e-6)


def test_text_output_bad_files_and_other_detector(env: dict, tmp_path: Path) -> None:
    p = env["paths"]
    (tmp_path / "notes.txt").write_text("not an image")
    from tests.unit.test_serving_images import _png_header_only

    (tmp_path / "bomb.png").write_bytes(_png_header_only(50_000, 50_000))
    files = [str(p["a"]), str(tmp_path / "notes.txt"), str(p["none"]), str(tmp_path / "missing.jpg"),
             str(tmp_path / "bomb.png")]
    proc = invoke_cli("predict", *files, "--model", env["model_path"], "--detector", "haar-alt", cwd=env["folder"])
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 4, proc.stderr  # one per bad file, then the summary
    assert "notes.txt" in errors[0] and "not a supported image" in errors[0]
    assert "missing.jpg" in errors[1] and "cannot read" in errors[1]
    assert "bomb.png" in errors[2] and "2,500,000,000 pixels; the limit is 40,000,000" in errors[2]
    assert errors[3].startswith("error: 3 of 5 files could not be classified")
    # The good files were still processed, in order.
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"{p['a']}: ") and "face" in lines[0]
    assert any(line == f"{p['none']}: no face found (small.keras version {line.split()[-1]}" for line in lines)
    face_lines = [line for line in lines if line.strip().startswith("face ")]
    assert face_lines and all("box x=" in line and "Neutral" in line for line in face_lines)


def test_model_errors_are_one_line(env: dict, tmp_path: Path) -> None:
    proc = invoke_cli("predict", str(env["paths"]["a"]), "--model", "models:/fer-cnn@champion", "--tracking-uri",
                      f"sqlite:///{tmp_path}/mlflow.db", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "no version of fer-cnn has the alias 'champion'" in proc.stderr and "Traceback" not in proc.stderr
    proc = invoke_cli("predict", str(env["paths"]["a"]), "--model", env["model_path"], "--detector", "nosuch",
                      cwd=tmp_path)
    assert proc.returncode == 2 and "--detector 'nosuch'" in proc.stderr
    proc = invoke_cli("predict", str(env["paths"]["a"]), "--model", str(tmp_path / "nope.keras"), cwd=tmp_path)
    assert proc.returncode == 2 and "no such file" in proc.stderr
