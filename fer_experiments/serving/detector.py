"""Face detection with OpenCV Haar cascades that ship inside opencv-python-headless (nothing is downloaded).

``haar`` (haarcascade_frontalface_default, the default), ``haar-alt`` (haarcascade_frontalface_alt2) or a path to
any cascade XML. Detection runs on a copy of the image downscaled so its longer side is at most ``detect_size``
pixels. The defaults (280 px, scale step 1.10, 3 neighbours) were chosen with bench/serve_latency.py on PrivateTest
faces pasted into 40 JPEG photos (120 faces of 64, 100 and 140 px) and into 288 mp4v video frames (two moving 140 px
faces each), and on 80 face-free images of face patches; a face is found by a box with IoU >= 0.5, any other box is
false. Against the earlier default (360 px, 1.10 / 4) they take 62% of its CPU time (15.8 against 25.4 ms of one
thread on an AVX512 EPYC; 27 against 47 ms on an AVX2 one), find 82 against 85 photo faces and 389 against 381
video faces, and make 35 against 55 false detections. Fewer neighbours (2) find more but make 63 false detections;
a 1.15 scale step is 15-25% cheaper but places more boxes off the faces; alt2 at 240 px is cheaper still (11.6 ms)
but loses 6% of the video faces. The cascade's window is 24 px, so the smallest face found is 1/12 of the image's
longer side (55 px in a 640 px photo); ``--detect-size`` raises the size for smaller faces. ``?detect=false`` (and
``--no-detect``) skips detection for callers that send face crops.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_experiments.errors import ConfigError

#: Named cascades from ``cv2.data.haarcascades``.
CASCADES = {
    "haar": "haarcascade_frontalface_default.xml",
    "haar-alt": "haarcascade_frontalface_alt2.xml",
}
#: The cascade ``--detector`` names by default.
DEFAULT_DETECTOR = "haar"
#: Longer side of the copy detection runs on, in pixels (0: the image as it is).
DEFAULT_DETECT_SIZE = 280

#: A Haar face box is ~95% of a FER2013 crop and sits ~2.5% inside it (measured on pasted PrivateTest faces), so
#: widening it by this fraction on each side frames a detected face the way the training images are framed.
DEFAULT_MARGIN = 0.03


@dataclass(frozen=True)
class Box:
    """A face box in pixels of the upright image."""

    x: int
    y: int
    w: int
    h: int

    def to_dict(self) -> dict[str, int]:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h}

    def expand(self, margin: float, width: int, height: int) -> "Box":
        """This box widened by ``margin`` x its size on every side, clipped to a ``width`` x ``height`` image."""
        dx, dy = round(self.w * margin), round(self.h * margin)
        x0, y0 = max(0, self.x - dx), max(0, self.y - dy)
        x1, y1 = min(width, self.x + self.w + dx), min(height, self.y + self.h + dy)
        return Box(x0, y0, max(1, x1 - x0), max(1, y1 - y0))


@dataclass(frozen=True)
class DetectorConfig:
    """Which cascade and how hard to look."""

    spec: str = DEFAULT_DETECTOR
    #: The image is downscaled so that its longer side is at most this for detection (0: never downscale).
    detect_size: int = DEFAULT_DETECT_SIZE
    scale_factor: float = 1.10
    min_neighbors: int = 3
    #: Smallest face looked for, in pixels of the original image (never below the cascade's window).
    min_face: int = 32

    def __post_init__(self) -> None:
        if self.detect_size < 0 or 0 < self.detect_size < 64:
            raise ConfigError(f"--detect-size must be 0 (full size) or at least 64, got {self.detect_size}")
        if not 1.01 <= self.scale_factor <= 2.0:
            raise ConfigError(f"detector scale factor must be in [1.01, 2], got {self.scale_factor}")
        if self.min_neighbors < 0:
            raise ConfigError(f"detector min_neighbors must be >= 0, got {self.min_neighbors}")


def cascade_path(spec: str) -> Path:
    """The XML file for ``haar``, ``haar-alt`` or a path; ConfigError naming the choices otherwise."""
    import cv2

    if spec in CASCADES:
        path = Path(cv2.data.haarcascades) / CASCADES[spec]
        if not path.is_file():
            raise ConfigError(f"--detector {spec}: {path} is missing from this OpenCV install (opencv-python-headless "
                              "4.x ships it; 5.x has no Haar cascades)")
        return path
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"--detector {spec!r}: expected {', '.join(CASCADES)} or the path of a cascade XML file")
    return path


class FaceDetector:
    """Finds faces in a grayscale image; safe to share between threads (one cascade object per thread)."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self.path = cascade_path(self.config.spec)
        self._local = threading.local()
        first = self._cascade()  # load once now so that a bad XML fails at start-up, not on the first request
        size = first.getOriginalWindowSize()
        self.window = max(int(size[0]), int(size[1])) or 24

    @property
    def name(self) -> str:
        return self.config.spec

    def _cascade(self) -> "object":
        # CascadeClassifier keeps per-call scratch state: concurrent detectMultiScale calls on one object race.
        cascade = getattr(self._local, "cascade", None)
        if cascade is None:
            import cv2

            try:
                cascade = cv2.CascadeClassifier(str(self.path))
            except (cv2.error, SystemError) as exc:  # OpenCV raises on XML it cannot parse
                raise ConfigError(f"--detector {self.config.spec!r}: {self.path} is not a loadable cascade XML "
                                  f"({str(exc).strip().splitlines()[-1][:200]})") from None
            if cascade.empty():
                raise ConfigError(f"--detector {self.config.spec!r}: {self.path} is not a loadable cascade XML")
            self._local.cascade = cascade
        return cascade

    def detect(self, gray: np.ndarray) -> list[Box]:
        """Face boxes in ``gray`` (H, W) uint8, left to right."""
        import cv2

        cfg = self.config
        height, width = gray.shape[:2]
        longest = max(height, width)
        scale = min(1.0, cfg.detect_size / longest) if cfg.detect_size else 1.0
        small = gray
        if scale < 1.0:
            small = cv2.resize(gray, (max(1, round(width * scale)), max(1, round(height * scale))),
                               interpolation=cv2.INTER_AREA)
        min_side = max(self.window, round(cfg.min_face * scale))
        if min(small.shape[:2]) < min_side:
            return []
        found = self._cascade().detectMultiScale(small, scaleFactor=cfg.scale_factor, minNeighbors=cfg.min_neighbors,
                                                 minSize=(min_side, min_side))
        boxes = []
        for x, y, w, h in (found if len(found) else []):
            x0, y0 = int(round(x / scale)), int(round(y / scale))
            x1, y1 = min(width, int(round((x + w) / scale))), min(height, int(round((y + h) / scale)))
            boxes.append(Box(x0, y0, x1 - x0, y1 - y0))
        return sorted(boxes, key=lambda b: (b.x, b.y))
