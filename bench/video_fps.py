"""Benchmark: frames per second of ``fer-exp predict`` on a 640x480 video, for a small CNN and seed-deep-bn.

Builds a 640x480 mp4 (mp4v) with two real PrivateTest faces of 140 px moving across a gradient, then runs the
library path of ``fer-exp predict video.mp4 --out annotated.mp4`` (``serving.video.analyse_video``: decode, detect,
classify every face of a frame in one batch, track, smooth, draw, encode, CSV) in this process, once per model, and
prints frames/s sustained end to end (the figure the command prints). Weights are untrained: speed does not depend
on them. Models: a small cpu-quick-like CNN (16-32-64 filters, 3 blocks, BatchNorm, global average pooling,
dense 64; the same as bench/serve_latency.py) and the seed-deep-bn preset.

    python bench/video_fps.py [--frames 150] [--every 1] [--detectors yunet,haar] [--runtime exported]
"""

from __future__ import annotations

import _common  # noqa: F401  (environment first)

import argparse
import os
import time

import numpy as np

from _common import TMP, default_cache_dir, default_data_path, machine_line, quiet_libraries

os.environ["FER_EXP_CACHE"] = str(TMP / "cache")  # the exported graphs stay in this run's scratch folder


def make_video(path: str, frames: int) -> None:
    import cv2

    from fer_experiments.data import load_dataset

    x = load_dataset(default_data_path(), cache_dir=default_cache_dir()).split("PrivateTest").x
    faces = [cv2.resize(x[i], (140, 140), interpolation=cv2.INTER_CUBIC) for i in (0, 2)]
    background = np.tile(np.linspace(90, 170, 640).astype(np.uint8), (480, 1))
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (640, 480))
    for f in range(frames):
        img = background.copy()
        for k, (x0, y0) in enumerate(((40, 100), (380, 200))):
            dx = (2 * f) % 100
            img[y0:y0 + 140, x0 + dx:x0 + dx + 140] = faces[k]
        writer.write(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))
    writer.release()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--detectors", default="yunet,haar", help="comma-separated --detector values to compare")
    ap.add_argument("--runtime", default="exported", choices=("exported", "keras"),
                    help="what classifies (as fer-exp predict --runtime)")
    args = ap.parse_args()
    quiet_libraries()
    print(machine_line())
    from fer_experiments.models.builder import build_model
    from fer_experiments.models.presets import get_preset
    from fer_experiments.params import ModelParams
    from fer_experiments.serving.detector import DetectorConfig, FaceDetector
    from fer_experiments.serving.predictor import Predictor, load_classifier
    from fer_experiments.serving.video import VideoConfig, analyse_video

    video = str(TMP / "bench.mp4")
    make_video(video, args.frames)
    models = {
        "small (3 blocks 16-32-64, BN, GAP, dense 64)": build_model(ModelParams(
            conv_blocks=3, convs_per_block=1, filters=16, batchnorm="after_activation", dense_layers=1,
            dense_units=64, head="global_avg")),
        "seed-deep-bn": build_model(get_preset("seed-deep-bn").model),
    }
    for name, model in models.items():
        path = TMP / "model.keras"
        model.save(path)
        classifier = load_classifier(str(path), None, args.runtime)
        for spec in args.detectors.split(","):
            detector = FaceDetector(DetectorConfig(spec=spec))
            predictor = Predictor(classifier, detector)
            t0 = time.perf_counter()
            s = analyse_video(video, predictor, str(TMP / "out.mp4"), str(TMP / "out.csv"),
                              VideoConfig(every=args.every))
            wall = time.perf_counter() - t0
            print(f"{name:<46} {model.count_params():>10,} params  {classifier.runtime:<8} {detector.name:<6} "
                  f"{s.frames} frames 640x480, {s.analysed} analysed, {s.face_rows} faces: "
                  f"{s.frames_per_second:6.1f} frames/s ({wall:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
