"""Video helpers without a model: following faces by box overlap, smoothing labels, telling videos from images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fer_experiments import EXPRESSIONS, NUM_CLASSES
from fer_experiments.serving.detector import Box
from fer_experiments.serving.video import FaceTracker, VideoConfig, iou, is_video


def _p(cls: int, conf: float = 0.6) -> np.ndarray:
    p = np.full(NUM_CLASSES, (1 - conf) / (NUM_CLASSES - 1))
    p[cls] = conf
    return p


def test_iou() -> None:
    assert iou(Box(0, 0, 10, 10), Box(0, 0, 10, 10)) == 1.0
    assert iou(Box(0, 0, 10, 10), Box(5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou(Box(0, 0, 10, 10), Box(20, 20, 5, 5)) == 0.0


def test_faces_keep_their_ids_while_moving_and_new_or_returning_faces_get_new_ones() -> None:
    tracker = FaceTracker(window=3, min_iou=0.3, max_missed=2)
    ids = []
    for step in range(10):  # two faces drifting right 4 px per frame, listed in either order
        a, b = Box(10 + 4 * step, 50, 100, 100), Box(300 + 4 * step, 60, 90, 90)
        boxes = [a, b] if step % 2 else [b, a]
        out = tracker.update(boxes, np.stack([_p(3), _p(4)]))
        ids.append({f.box.x < 200: f.track for f in out})
    assert all(d == {True: 2, False: 1} for d in ids)  # the right face was listed first in the first frame
    # Face 1 leaves for 3 analysed frames (more than max_missed): when it comes back it is a new face.
    for _ in range(3):
        out = tracker.update([Box(50, 50, 100, 100)], np.stack([_p(3)]))
        assert [f.track for f in out] == [2]
    out = tracker.update([Box(50, 50, 100, 100), Box(336, 60, 90, 90)], np.stack([_p(3), _p(4)]))
    assert [f.track for f in out] == [2, 3]
    # A face that jumps elsewhere (no overlap) is a different face.
    out = tracker.update([Box(400, 300, 100, 100)], np.stack([_p(3)]))
    assert [f.track for f in out] == [4]


def test_smoothing_holds_the_label_through_single_frame_flips() -> None:
    tracker = FaceTracker(window=5)
    raw, smooth = [], []
    for step in range(20):
        cls = 0 if step % 4 == 3 else 3  # Happy, with an Angry frame every fourth frame
        (face,) = tracker.update([Box(0, 0, 100, 100)], np.stack([_p(cls, 0.55)]))
        raw.append(face.raw_label)
        smooth.append(face.label)
        assert face.smoothed.sum() == pytest.approx(1.0)
    assert raw.count("Angry") == 5
    assert set(smooth) == {"Happy"}
    # window 1: no smoothing, the label is this frame's.
    (face,) = FaceTracker(window=1).update([Box(0, 0, 9, 9)], np.stack([_p(5)]))
    assert face.label == face.raw_label == EXPRESSIONS[5]
    np.testing.assert_allclose(face.smoothed, face.raw)


def test_video_config_rejects_nonsense() -> None:
    from fer_experiments.errors import ConfigError

    for bad in ({"every": 0}, {"window": 0}, {"min_iou": 0.0}, {"max_frames": 0}):
        with pytest.raises(ConfigError):
            VideoConfig(**bad)


def test_is_video_by_suffix_and_by_probing(tmp_path: Path) -> None:
    import cv2

    avi = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for k in range(3):
        writer.write(np.full((48, 64, 3), 40 * k, dtype=np.uint8))
    writer.release()
    assert is_video(avi)
    assert is_video(tmp_path / "missing.mp4")  # by suffix alone: reading it then fails with a clear error
    odd = tmp_path / "clip.bin"
    odd.write_bytes(avi.read_bytes())
    assert is_video(odd)
    png = tmp_path / "face.data"
    ok, buf = cv2.imencode(".png", np.zeros((48, 48), dtype=np.uint8))
    png.write_bytes(buf.tobytes())
    assert not is_video(png)
    assert not is_video(tmp_path / "photo.jpg")


def test_a_video_cut_short_keeps_what_was_read_and_says_so(tmp_path: Path) -> None:
    """An MJPG .avi cut in half: the frames before the cut are analysed and written, ``stopped`` says why."""
    import cv2

    from fer_experiments.models.builder import build_model
    from fer_experiments.params import ModelParams
    from fer_experiments.serving.detector import FaceDetector
    from fer_experiments.serving.predictor import Classifier, Predictor
    from fer_experiments.serving.video import VideoConfig, analyse_video

    full = tmp_path / "full.avi"
    writer = cv2.VideoWriter(str(full), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    rng = np.random.default_rng(0)
    for _ in range(40):
        writer.write(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    writer.release()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    model = build_model(ModelParams(conv_blocks=1, convs_per_block=1, filters=2, dense_layers=0, head="global_avg"))
    predictor = Predictor(Classifier(model), FaceDetector())
    summary = analyse_video(str(cut), predictor, tmp_path / "out.avi", tmp_path / "out.csv", VideoConfig())
    assert summary.stopped == "decode-error" and summary.expected_frames == 40
    assert 10 <= summary.frames < 38 and summary.analysed == summary.frames
    cap = cv2.VideoCapture(str(tmp_path / "out.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == summary.frames
    cap.release()
    assert (tmp_path / "out.csv").read_text().startswith("frame,time_s,face,")
    # Not a video at all: DataError before anything is written.
    from fer_experiments.errors import DataError

    (tmp_path / "junk.mp4").write_bytes(b"not a video" * 100)
    with pytest.raises(DataError, match="junk.mp4"):
        analyse_video(str(tmp_path / "junk.mp4"), predictor, tmp_path / "j.mp4", tmp_path / "j.csv")
    assert not (tmp_path / "j.mp4").exists() and not (tmp_path / "j.csv").exists()
