"""Find faces, classify all faces of an image in one batch, and keep the served model current.

Classification calls ``model.predict_on_batch``: Keras 3 compiles it once per model (``tf.function`` on the TF
backend, ``jit`` on JAX) and reuses it, ~1.3 ms for one face of a small CNN on this CPU, where ``model.predict``
costs ~75 ms of per-call set-up and eager ``model(x)`` ~14 ms (bench/serve_latency.py prints all three).
It is plain Keras, so no backend-specific code is needed.

``ModelHolder`` serves ``models:/<name>@<alias>``: it resolves the alias to a version, loads exactly that version
(so every answer names the version that produced it) and swaps in a newer one when the alias moves. Each request
takes one reference to the current ``LoadedModel`` and uses it to the end, so requests in flight finish on the
old version while new ones get the new version.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fer_experiments import EXPRESSIONS, IMAGE_SIZE, NUM_CLASSES
from fer_experiments.config import DEFAULT_MODEL_URI
from fer_experiments.errors import ConfigError, FatalError
from fer_experiments.serving.detector import DEFAULT_MARGIN, Box, FaceDetector
from fer_experiments.serving.images import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    decode_image,
    to_face_input,
)

if TYPE_CHECKING:
    import keras

    from fer_experiments.models.export import ExportedModel
    from fer_experiments.serving.batching import MicroBatcher

log = logging.getLogger("fer_experiments.serving")


@dataclass(frozen=True)
class Face:
    """One classified face: its box in the upright image, the top label and the 7 class probabilities."""

    box: Box
    label: str
    probabilities: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"box": self.box.to_dict(), "label": self.label,
                "probabilities": {name: round(float(p), 6) for name, p in zip(EXPRESSIONS, self.probabilities)}}


class Classifier:
    """A model that takes (N, 48, 48, 1) pixels 0-255: the exported graph in ONNX Runtime, or the Keras model called
    through its compiled predict step."""

    def __init__(self, model: "keras.Model | ExportedModel", source: str = "", int8: bool = False) -> None:
        from fer_experiments.models.export import (
            RUNTIME_EXPORTED,
            RUNTIME_INT8,
            RUNTIME_KERAS,
            ExportedModel,
            describe,
        )

        exported = isinstance(model, ExportedModel)
        self._onnx = exported
        self.runtime = (RUNTIME_INT8 if int8 else RUNTIME_EXPORTED) if exported else RUNTIME_KERAS
        self.engine = describe(model)  # e.g. "onnxruntime 1.32.0"
        self.source = source  # where the exported graph came from (the run, the cache), for /health
        if self.runtime == RUNTIME_KERAS:
            shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else None
            if shape is not None and tuple(shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE, 1):
                raise ConfigError(f"model input shape {shape} is not (None, {IMAGE_SIZE}, {IMAGE_SIZE}, 1): not a "
                                  "fer-exp model")
        self.model = model
        # Warm up with two batch sizes: the first traces, the second makes TF relax the batch dimension to None,
        # so later batch sizes reuse one compiled function (and no request pays for tracing).
        for n in (1, 2):
            out = self.predict_proba(np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8))
        if out.shape != (2, NUM_CLASSES):
            raise ConfigError(f"model output shape {out.shape[1:]} is not ({NUM_CLASSES},): not a fer-exp model")

    def info(self) -> dict[str, str]:
        return {"runtime": self.runtime, "engine": self.engine, "source": self.source}

    def predict_proba(self, faces: np.ndarray) -> np.ndarray:
        """(N, 48, 48) uint8 faces -> (N, 7) probabilities (one compiled call for the whole batch)."""
        x = np.ascontiguousarray(faces, dtype=np.float32).reshape(len(faces), IMAGE_SIZE, IMAGE_SIZE, 1)
        if self._onnx:  # an ONNX Runtime session, float or INT8
            return np.asarray(self.model(x), dtype=np.float64)
        return np.asarray(self.model.predict_on_batch(x), dtype=np.float64)


class Predictor:
    """Detector + classifier: the faces of one image."""

    def __init__(self, classifier: Classifier, detector: FaceDetector | None, margin: float = DEFAULT_MARGIN,
                 batcher: "MicroBatcher | None" = None) -> None:
        if not 0.0 <= margin <= 1.0:
            raise ConfigError(f"--margin must be in [0, 1], got {margin}")
        self.classifier = classifier
        self.detector = detector
        self.margin = margin
        self.batcher = batcher  # set by serve: faces of concurrent requests share one classifier call

    def crops(self, gray: np.ndarray, detect: bool = True) -> tuple[list[Box], np.ndarray]:
        """Face boxes and their (N, 48, 48) model inputs; without ``detect`` the whole image is one face."""
        height, width = gray.shape[:2]
        if not detect:
            return [Box(0, 0, width, height)], to_face_input(gray)[None]
        if self.detector is None:
            raise ConfigError("this predictor has no face detector; classify whole images with detect=False")
        boxes = self.detector.detect(gray)
        faces = np.empty((len(boxes), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
        for i, box in enumerate(boxes):
            c = box.expand(self.margin, width, height)
            faces[i] = to_face_input(np.ascontiguousarray(gray[c.y:c.y + c.h, c.x:c.x + c.w]))
        return boxes, faces

    def faces(self, gray: np.ndarray, detect: bool = True) -> list[Face]:
        """Every face of ``gray`` (H, W) uint8, classified in one batch; [] when there is none."""
        batcher = self.batcher
        # With a batcher, a batch being formed may wait for these faces until they are queued.
        with batcher.expecting() if batcher is not None else contextlib.nullcontext():
            boxes, batch = self.crops(gray, detect)
            if not boxes:
                return []
            probs = (batcher.classify if batcher is not None else self.classifier.predict_proba)(batch)
        return [Face(box, EXPRESSIONS[int(np.argmax(p))], tuple(float(v) for v in p)) for box, p in zip(boxes, probs)]


@dataclass(frozen=True)
class Limits:
    """What an upload may be."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(eq=False)
class LoadedModel:
    """One loaded model version and its predictor; what a request holds on to while it runs."""

    name: str
    version: str | None
    uri: str
    predictor: Predictor
    loaded_at: float = field(default_factory=time.time)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "uri": self.uri}

    @property
    def runtime(self) -> dict[str, str]:
        """What classifies: ``{"runtime": "exported" | "int8" | "keras", "engine": ..., "source": ...}``."""
        return self.predictor.classifier.info()

    def answer(self, image: DecodedImage, detect: bool = True, started: float | None = None) -> dict[str, Any]:
        """The ``/predict`` JSON for a decoded image."""
        t0 = time.perf_counter() if started is None else started
        faces = self.predictor.faces(image.gray, detect)
        return {"faces": [f.to_dict() for f in faces], "model": self.info(),
                "image": {"width": image.width, "height": image.height},
                "time_ms": round((time.perf_counter() - t0) * 1000, 2),
                "runtime": self.predictor.classifier.runtime}

    def answer_bytes(self, data: bytes, limits: Limits = Limits(), detect: bool = True) -> dict[str, Any]:
        """Decode (with every safety check) and answer; ImageRejected for bad bytes."""
        t0 = time.perf_counter()
        image = decode_image(data, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels)
        return self.answer(image, detect, started=t0)


# ------------------------------------------------------------------------------------------- model references
@dataclass(frozen=True)
class ModelRef:
    """What ``--model`` names: a registry alias or version, a run, a local ``.keras`` file or MLflow model folder."""

    uri: str
    kind: str  # alias | version | file | folder | other
    name: str
    alias: str | None = None
    version: str | None = None

    @property
    def moves(self) -> bool:
        """Whether the model behind this reference can change while serving (and so is polled)."""
        return self.kind in ("alias", "file")


_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)/?$")
_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)/?$")


def parse_model_uri(uri: str) -> ModelRef:
    """Classify ``--model``; ConfigError for a local path that does not exist."""
    if m := _ALIAS.match(uri):
        return ModelRef(uri, "alias", m["name"], alias=m["alias"])
    if m := _VERSION.match(uri):
        return ModelRef(uri, "version", m["name"], version=m["version"])
    if "://" in uri or uri.startswith(("runs:", "models:")):
        return ModelRef(uri, "other", uri)
    path = Path(uri).expanduser()
    if path.is_file():
        return ModelRef(str(path), "file", path.name)
    if path.is_dir():
        return ModelRef(str(path), "folder", path.name, version="local")
    raise ConfigError(f"--model {uri}: no such file or folder (expected models:/<name>@<alias>, "
                      "models:/<name>/<version>, runs:/<run_id>/model or a local .keras file / MLflow model folder)")


@dataclass(frozen=True)
class Target:
    """A resolved reference: what to load and the name/version to report."""

    name: str
    version: str | None
    load_uri: str


class NoModelYet(Exception):
    """The alias does not point at any version (nothing promoted yet)."""


def resolve(ref: ModelRef, tracking_uri: str | None) -> Target:
    """The exact version behind ``ref`` now; NoModelYet when an alias has no version."""
    if ref.kind == "alias":
        from fer_experiments.tracking import default_tracking_uri
        from fer_experiments.tracking.model_registry import alias_version

        mv = alias_version(tracking_uri or default_tracking_uri(), ref.name, ref.alias or "")
        if mv is None:
            raise NoModelYet(f"no version of {ref.name} has the alias {ref.alias!r} yet "
                             f"(promote one with: fer-exp promote --study <study> --data <data>)")
        return Target(ref.name, mv.version, f"models:/{ref.name}/{mv.version}")
    if ref.kind == "file":
        return Target(ref.name, _file_version(Path(ref.uri)), ref.uri)
    return Target(ref.name, ref.version, ref.uri)


def _file_version(path: Path) -> str:
    """A local model file's version: the first 12 hex digits of its sha256 (changes when the file is replaced)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    except OSError as exc:
        raise ConfigError(f"--model {path}: unreadable ({exc.strerror or exc})") from exc
    return h.hexdigest()[:12]


#: How many Training faces calibrate an INT8 graph, and how many others check it against the float graph.
INT8_CALIBRATION_FACES = 256
INT8_CHECK_FACES = 512


def int8_faces(model_uri: str, tracking_uri: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """Training faces to calibrate and check an INT8 graph: from the data set logged with the model's run when that
    file is here, else from ``FER2013_CSV``; ConfigError saying what to do when there is neither."""
    import os

    from fer_experiments.data import load_dataset
    from fer_experiments.tracking import get_run, tags
    from fer_experiments.tracking.exported import run_id_of
    from fer_experiments.tracking.store import default_tracking_uri

    candidates = []
    tracking_uri = tracking_uri or default_tracking_uri()
    run_id = run_id_of(model_uri, tracking_uri)
    if run_id is not None:
        candidates.append(get_run(tracking_uri, run_id).tags.get(tags.DATA_SOURCE))
    candidates.append(os.environ.get("FER2013_CSV"))
    source = next((c for c in candidates if c and Path(c).exists()), None)
    if source is None:
        raise ConfigError(f"--runtime int8 calibrates on Training faces: the data set logged with {model_uri}'s run "
                          f"({candidates[0] or 'none'}) is not on this machine and FER2013_CSV is not set; set it to "
                          "a FER2013 copy, or use --runtime exported")
    train = load_dataset(source).split("Training")
    order = np.random.default_rng(0).permutation(len(train))  # a fixed sample: the same graph on every machine
    n_cal = min(INT8_CALIBRATION_FACES, len(train))
    return (train.x[order[:n_cal]], train.x[order[n_cal:n_cal + INT8_CHECK_FACES]],
            f"Training faces of {Path(source).name}")


def load_classifier(load_uri: str, tracking_uri: str | None, runtime: str = "exported") -> Classifier:
    """The classifier of the model at ``load_uri``: its exported graph (exported now if it has none yet) for
    ``runtime="exported"``, falling back to Keras with a warning when it cannot be exported; that graph's INT8
    quantization for ``int8`` (quantized now on Training faces if it has none yet, the float graph when that
    fails); Keras for ``keras``."""
    from fer_experiments.models.export import RUNTIME_INT8, RUNTIME_KERAS, RUNTIMES, ExportedModel, ExportError
    from fer_experiments.tracking.model_io import load_keras_model

    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    keras_model: list[Any] = []

    def load_keras() -> Any:
        if not keras_model:
            keras_model.append(load_keras_model(load_uri, tracking_uri))
        return keras_model[0]

    if runtime == RUNTIME_KERAS:
        return Classifier(load_keras())
    from fer_experiments.tracking.exported import ensure_exported, ensure_int8

    path, source = ensure_exported(load_uri, tracking_uri, load_keras)
    if path is not None and runtime == RUNTIME_INT8:
        try:
            int8_path, int8_source = ensure_int8(load_uri, tracking_uri, path,
                                                 lambda: int8_faces(load_uri, tracking_uri))
            return Classifier(ExportedModel(int8_path), source=int8_source, int8=True)
        except ExportError as exc:
            log.warning("%s: no INT8 graph (%s); serving the float graph", load_uri, exc)
            source = f"float graph: {exc}"[:300]
    if path is not None:
        try:
            return Classifier(ExportedModel(path), source=source)
        except ExportError as exc:
            source = str(exc)
    log.warning("%s: serving with Keras (%s)", load_uri, source)
    return Classifier(load_keras(), source=f"keras fallback: {source}"[:300])


def load_target(target: Target, tracking_uri: str | None, detector: FaceDetector | None,
                margin: float = DEFAULT_MARGIN, runtime: str = "exported", asked: str | None = None) -> LoadedModel:
    """Load and warm up the model of ``target`` (``asked``: the URI as given, e.g. with its alias, for messages)."""
    if target.load_uri.startswith("models:/"):
        from fer_experiments.tracking import default_tracking_uri
        from fer_experiments.tracking.model_registry import model_artifact_problem

        problem = model_artifact_problem(tracking_uri or default_tracking_uri(), target.name, target.version)
        if problem:
            raise FatalError(f"{asked or target.load_uri}: {target.name} version {target.version} cannot be loaded: "
                             f"{problem}")
    classifier = load_classifier(target.load_uri, tracking_uri, runtime)
    return LoadedModel(target.name, target.version, target.load_uri, Predictor(classifier, detector, margin))


def load_model(model_uri: str, tracking_uri: str | None = None, detector: FaceDetector | None = None,
               margin: float = DEFAULT_MARGIN, runtime: str = "exported") -> LoadedModel:
    """Resolve and load ``model_uri`` once (the CLI's ``predict``); ConfigError when an alias has no version."""
    ref = parse_model_uri(model_uri)
    try:
        target = resolve(ref, tracking_uri)
    except NoModelYet as exc:
        raise ConfigError(f"--model {model_uri}: {exc}") from None
    return load_target(target, tracking_uri, detector, margin, runtime, asked=model_uri)


class ModelHolder:
    """The model a server answers with; ``refresh`` (or the poll thread) swaps in a new version when it moves."""

    def __init__(self, model_uri: str, tracking_uri: str | None, detector: FaceDetector,
                 margin: float = DEFAULT_MARGIN, poll_seconds: float = 30.0, runtime: str = "exported",
                 batch_window_ms: float = 0.0, max_batch: int = 64) -> None:
        if poll_seconds <= 0:
            raise ConfigError(f"--poll-seconds must be > 0, got {poll_seconds}")
        if not 0 <= batch_window_ms <= 1000:
            raise ConfigError(f"--batch-window-ms must be in [0, 1000], got {batch_window_ms}")
        if max_batch < 1:
            raise ConfigError(f"--max-batch must be >= 1, got {max_batch}")
        self.runtime = runtime
        self.batch_window_ms = batch_window_ms
        self.max_batch = max_batch
        self.ref = parse_model_uri(model_uri)
        self.tracking_uri = tracking_uri
        self.detector = detector
        self.margin = margin
        self.poll_seconds = poll_seconds
        self.current: LoadedModel | None = None  # replaced by one assignment: readers see old or new, never half
        self.not_ready_reason: str | None = "loading"
        self.last_error: str | None = None
        self.last_check: float | None = None
        self.reloads = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """Resolve the reference now and load a new version if it changed; True when the model was swapped.

        NoModelYet leaves the server not ready (or on its last version); other errors propagate to the caller.
        """
        with self._lock:  # one load at a time: a poll and POST /reload never load the same version twice
            self.last_check = time.time()
            try:
                target = resolve(self.ref, self.tracking_uri)
            except NoModelYet as exc:
                if self.current is None:
                    self.not_ready_reason = str(exc)
                else:  # keep answering with the last version rather than failing every request
                    self.last_error = f"{exc}; still serving version {self.current.version}"
                return False
            cur = self.current
            if cur is not None and (cur.name, cur.version, cur.uri) == (target.name, target.version, target.load_uri):
                self.last_error = None
                return False
            loaded = load_target(target, self.tracking_uri, self.detector, self.margin, self.runtime,
                                 asked=self.ref.uri)
            if self.batch_window_ms > 0:
                from fer_experiments.serving.batching import MicroBatcher

                loaded.predictor.batcher = MicroBatcher(loaded.predictor.classifier.predict_proba,
                                                        self.batch_window_ms / 1000, self.max_batch)
            self.current = loaded
            self.not_ready_reason = None
            self.last_error = None
            if cur is not None:
                self.reloads += 1
                log.warning("now serving %s version %s (was %s)", loaded.name, loaded.version, cur.version)
            return True

    def try_refresh(self) -> None:
        """``refresh`` that records a failure instead of raising (the poll thread and start-up)."""
        try:
            self.refresh()
        except Exception as exc:  # noqa: BLE001 - a broken store or model must not kill the poller
            self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
            if self.current is None:
                self.not_ready_reason = self.last_error
            log.warning("model refresh failed: %s", self.last_error)

    def start(self) -> None:
        """Poll every ``poll_seconds`` in a daemon thread (only references that can move are polled)."""
        if not self.ref.moves or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._poll, name="fer-model-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.try_refresh()
