"""Faces in videos and webcams (``fer-exp predict video.mp4`` / ``--camera N``): the real-time path.

Each analysed frame goes through the same ``Predictor`` as a photo (detect, crop as in training, every face of the
frame classified in one batch). Faces are followed from frame to frame by box overlap (greedy IoU matching), and
each face's label is the arg-max of its probabilities averaged over its last ``window`` analysed frames, so a label
does not flicker on single-frame noise. With ``every`` > 1 only every k-th frame is analysed and the frames in
between carry the last boxes and labels. The annotated video and the CSV are written atomically (temp file, then
rename), also when the run is stopped early (Ctrl-C keeps what was done).
"""

from __future__ import annotations

import csv
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from fer_experiments import EXPRESSIONS
from fer_experiments.errors import ConfigError, DataError, Terminated
from fer_experiments.serving.detector import Box

#: File suffixes read as videos without probing (everything else is an image unless Pillow cannot read it).
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
                              ".3gp", ".ogv", ".ts", ".mts", ".mjpeg", ".mjpg"})
#: FourCC per output suffix: mp4v and MJPG are the encoders every opencv-python wheel has.
FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
CSV_COLUMNS = ("frame", "time_s", "face", "x", "y", "w", "h", "label", "raw_label", *EXPRESSIONS)
#: A webcam that reports no frame rate is written at this rate.
DEFAULT_FPS = 30.0


def is_video(path: str | Path) -> bool:
    """True for a known video suffix; for an unknown suffix, when Pillow cannot read it but OpenCV can decode a
    frame of it as a video."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return True
    if suffix in (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm") or not p.is_file():
        return False
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p):
            return False
    except (UnidentifiedImageError, OSError, ValueError):
        pass
    import cv2

    _quiet_opencv()
    cap = cv2.VideoCapture(str(p))
    try:
        return bool(cap.isOpened() and cap.read()[0])
    finally:
        cap.release()


@dataclass(frozen=True)
class VideoConfig:
    """How a video is analysed and smoothed."""

    every: int = 1  # analyse every k-th frame
    window: int = 5  # analysed frames a face's probabilities are averaged over (1: no smoothing)
    min_iou: float = 0.3  # a box overlapping a face's last box at least this much is the same face
    max_missed: int = 5  # analysed frames a face may go unseen before it is forgotten
    max_frames: int | None = None  # stop after this many frames (webcams run until Ctrl-C otherwise)

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ConfigError(f"--every must be >= 1, got {self.every}")
        if self.window < 1:
            raise ConfigError(f"--window must be >= 1, got {self.window}")
        if not 0.0 < self.min_iou <= 1.0:
            raise ConfigError(f"IoU threshold must be in (0, 1], got {self.min_iou}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"--max-frames must be >= 1, got {self.max_frames}")


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    ix = max(0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class TrackedFace:
    """A face of one analysed frame: its track id, box, this frame's probabilities and the smoothed ones."""

    track: int
    box: Box
    raw: np.ndarray
    smoothed: np.ndarray

    @property
    def label(self) -> str:
        return EXPRESSIONS[int(np.argmax(self.smoothed))]

    @property
    def raw_label(self) -> str:
        return EXPRESSIONS[int(np.argmax(self.raw))]

    @property
    def confidence(self) -> float:
        return float(np.max(self.smoothed))


@dataclass
class _Track:
    id: int
    box: Box
    history: deque
    missed: int = 0


class FaceTracker:
    """Follows faces across analysed frames by box overlap and averages each face's probabilities over a window."""

    def __init__(self, window: int = 5, min_iou: float = 0.3, max_missed: int = 5) -> None:
        self.window = window
        self.min_iou = min_iou
        self.max_missed = max_missed
        self.tracks: list[_Track] = []
        self._next = 1

    def update(self, boxes: list[Box], probs: np.ndarray) -> list[TrackedFace]:
        """Match this frame's faces to the known ones (greedily, best overlap first) and return them in the order
        given, with their track ids and smoothed probabilities."""
        pairs = sorted(((iou(t.box, b), ti, bi) for ti, t in enumerate(self.tracks) for bi, b in enumerate(boxes)),
                       key=lambda p: -p[0])
        owner: dict[int, _Track] = {}
        used: set[int] = set()
        for overlap, ti, bi in pairs:
            if overlap < self.min_iou:
                break
            if ti in used or bi in owner:
                continue
            used.add(ti)
            owner[bi] = self.tracks[ti]
        for ti, track in enumerate(self.tracks):
            if ti not in used:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        out = []
        for bi, box in enumerate(boxes):
            track = owner.get(bi)
            if track is None:
                track = _Track(self._next, box, deque(maxlen=self.window))
                self._next += 1
                self.tracks.append(track)
            track.box = box
            track.missed = 0
            p = np.asarray(probs[bi], dtype=np.float64)
            track.history.append(p)
            out.append(TrackedFace(track.id, box, p, np.mean(np.stack(track.history), axis=0)))
        return out


@dataclass
class VideoSummary:
    """What a run over a video did."""

    source: str
    width: int
    height: int
    fps: float
    frames: int = 0
    analysed: int = 0
    frames_with_faces: int = 0
    face_rows: int = 0
    seconds: float = 0.0
    stopped: str | None = None  # why it stopped before the end: interrupted, max-frames, decode-error
    expected_frames: int | None = None
    labels: dict[int, dict[str, int]] = field(default_factory=dict)  # track -> label -> analysed frames

    @property
    def frames_per_second(self) -> float:
        """Frames read, analysed (or carried), drawn and written per second of wall time."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        return {"source": self.source, "width": self.width, "height": self.height, "fps": round(self.fps, 3),
                "frames": self.frames, "analysed_frames": self.analysed, "frames_with_faces": self.frames_with_faces,
                "face_rows": self.face_rows, "seconds": round(self.seconds, 3),
                "frames_per_second": round(self.frames_per_second, 2), "stopped": self.stopped,
                "tracks": {str(k): v for k, v in self.labels.items()}}


def _quiet_opencv() -> None:
    """OpenCV's WARN lines (a missing camera) and FFmpeg's (a damaged container: "moov atom not found") would
    surround our one-line error; FFmpeg's level is read when OpenCV first loads its FFmpeg backend (-8: quiet)."""
    import os

    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


def open_capture(source: str | int) -> "object":
    """An opened ``cv2.VideoCapture`` for a file or a camera index; DataError (exit 3) when it cannot be opened."""
    import cv2

    _quiet_opencv()
    if isinstance(source, int):
        cap = cv2.VideoCapture(source)
        if not cap.isOpened():
            raise DataError(f"camera {source}: cannot be opened (no such device, or it is busy)")
        return cap
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{source}: no such file")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise DataError(f"{source}: not a video OpenCV can read (damaged, or an unsupported format)")
    return cap


def _frames(cap: "object") -> Iterator[np.ndarray]:
    while True:
        ok, frame = cap.read()  # type: ignore[attr-defined]
        if not ok or frame is None:
            return
        yield frame


def analyse_video(source: str | int, predictor: "object", out_path: str | Path | None, csv_path: str | Path | None,
                  config: VideoConfig = VideoConfig(),
                  on_frame: Callable[[int, list[TrackedFace]], None] | None = None) -> VideoSummary:
    """Read ``source`` (a file or a camera index), classify its faces, write the annotated video and the CSV.

    ``predictor`` is a ``serving.predictor.Predictor`` with a detector. DataError when not a single frame can be
    decoded (nothing is written then). A video whose decoding stops early, Ctrl-C and SIGTERM keep what was read,
    finish both files and say so in ``summary.stopped``; the caller picks the exit code.
    """
    import contextlib

    import cv2

    from fer_experiments.io import atomic_open, atomic_path
    from fer_experiments.serving.annotate import draw_faces
    from fer_experiments.serving.images import to_gray

    name = f"camera {source}" if isinstance(source, int) else str(source)
    cap = open_capture(source)
    try:
        frames = _frames(cap)
        first = next(frames, None)
        if first is None:
            raise DataError(f"{name}: no frame could be decoded (damaged or empty video)")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)  # type: ignore[attr-defined]
        fps = fps if np.isfinite(fps) and 0 < fps <= 1000 else DEFAULT_FPS
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if not isinstance(source, int) else 0  # type: ignore[attr-defined]
        height, width = first.shape[:2]
        summary = VideoSummary(name, width, height, fps, expected_frames=count if count > 0 else None)
        tracker = FaceTracker(config.window, config.min_iou, config.max_missed)
        with contextlib.ExitStack() as stack:
            writer = None
            if out_path is not None:
                suffix = Path(out_path).suffix.lower()
                if suffix not in FOURCC:
                    raise ConfigError(f"--out {out_path}: write videos as {', '.join(sorted(FOURCC))}")
                tmp = stack.enter_context(atomic_path(out_path))
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*FOURCC[suffix]), fps, (width, height))
                if not writer.isOpened():
                    raise ConfigError(f"--out {out_path}: OpenCV cannot write {suffix} video here")
                stack.callback(writer.release)
            rows = None
            if csv_path is not None:
                rows = csv.writer(stack.enter_context(atomic_open(csv_path, "w", newline="", encoding="utf-8")))
                rows.writerow(CSV_COLUMNS)
            _loop(first, frames, predictor, tracker, writer, rows, summary, config, isinstance(source, int),
                  draw_faces, to_gray, on_frame)
        if summary.stopped is None and summary.expected_frames and summary.frames < summary.expected_frames - 2 and \
                config.max_frames is None:
            summary.stopped = "decode-error"
        return summary
    finally:
        cap.release()  # type: ignore[attr-defined]


def _loop(first: np.ndarray, frames: Iterator[np.ndarray], predictor: "object", tracker: FaceTracker,
          writer: "object", rows: "object", summary: VideoSummary, config: VideoConfig, camera: bool,
          draw_faces: Callable, to_gray: Callable, on_frame: Callable | None) -> None:
    import itertools

    shown: list[TrackedFace] = []
    start = time.perf_counter()
    try:
        for index, frame in enumerate(itertools.chain([first], frames)):
            if config.max_frames is not None and index >= config.max_frames:
                summary.stopped = "max-frames"
                break
            if frame.shape[:2] != (summary.height, summary.width):  # a stream that changes size mid-way
                import cv2

                frame = cv2.resize(frame, (summary.width, summary.height), interpolation=cv2.INTER_AREA)
            t = (time.perf_counter() - start) if camera else index / summary.fps
            if index % config.every == 0:
                faces = predictor.faces(to_gray(frame))  # type: ignore[attr-defined]  # one batch per frame
                shown = tracker.update([f.box for f in faces],
                                       np.array([f.probabilities for f in faces]).reshape(len(faces), len(EXPRESSIONS)))
                summary.analysed += 1
                summary.frames_with_faces += bool(shown)
                for face in shown:
                    summary.face_rows += 1
                    per = summary.labels.setdefault(face.track, {})
                    per[face.label] = per.get(face.label, 0) + 1
                    if rows is not None:
                        b = face.box
                        rows.writerow([index, f"{t:.3f}", face.track, b.x, b.y, b.w, b.h, face.label,  # type: ignore[attr-defined]
                                       face.raw_label, *(f"{p:.6f}" for p in face.smoothed)])
                if on_frame is not None:
                    on_frame(index, shown)
            if writer is not None:
                draw_faces(frame, [(f.box, f"{f.track}: {f.label} {f.confidence:.2f}") for f in shown])
                writer.write(frame)  # type: ignore[attr-defined]
            summary.frames = index + 1
    except Terminated:  # SIGTERM (a KeyboardInterrupt subclass, so first)
        summary.stopped = "terminated"
    except KeyboardInterrupt:  # what was read so far is still written; the caller picks the exit code
        summary.stopped = "interrupted"
    summary.seconds = time.perf_counter() - start
