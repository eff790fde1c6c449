"""What the MLflow pyfunc wrapper runs: image bytes in, the same JSON as ``POST /predict`` out (one per image).

MLflow itself is imported only in ``fer_experiments.tracking`` (``tracking.pyfunc.KerasDelegatePyfunc`` calls
``ServiceModel.from_keras``; ``serving.mlflow_service`` logs it), so this module stays free of it. Inputs accepted: a DataFrame with an ``image`` column (or a single
column) of bytes or base64 strings, as ``mlflow models serve`` passes them
(``{"dataframe_split": {"columns": ["image"], "data": [["<base64>"]]}}``), a list, a dict of lists, or one value.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fer_experiments.serving.detector import (
    DEFAULT_DETECTOR,
    DEFAULT_MARGIN,
    DetectorConfig,
    FaceDetector,
)
from fer_experiments.serving.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageRejected
from fer_experiments.serving.predictor import Classifier, Limits, LoadedModel, Predictor


#: Detection settings of wrappers logged before their ``model_config`` stored them (the defaults of that time), so
#: that such a wrapper keeps detecting as it did.
LEGACY_SCALE_FACTOR = 1.10
LEGACY_MIN_NEIGHBORS = 4


class ServiceModel:
    """A loaded model with its detector, answering lists of images."""

    def __init__(self, loaded: LoadedModel, limits: Limits = Limits()) -> None:
        self.loaded = loaded
        self.limits = limits

    @classmethod
    def from_keras(cls, keras_model: Any, *, model_name: str, model_version: str | None,
                   detector: str = DEFAULT_DETECTOR, detect_size: int | None = None,
                   scale_factor: float = LEGACY_SCALE_FACTOR, min_neighbors: int = LEGACY_MIN_NEIGHBORS,
                   min_face: int = 32, margin: float = DEFAULT_MARGIN,
                   max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
                   model_uri: str | None = None, runtime: str = "exported", exported_path: str | None = None,
                   keras_path: str | None = None, **_: Any) -> "ServiceModel":
        """Build from a Keras model and the ``model_config`` stored with the pyfunc (unknown keys are ignored so
        that a newer config still loads).

        ``runtime="exported"`` (the default; ``FER_EXP_RUNTIME=keras`` in the environment overrides it) runs the
        exported graph logged in the wrapper (``exported_path``), or one exported now from the Keras model and
        cached, for a wrapper logged before exports existed."""
        import os

        runtime = os.environ.get("FER_EXP_RUNTIME", runtime)
        classifier = _classifier(keras_model, runtime, exported_path, keras_path)
        # YuNet falls back to Haar (one warning line) where it cannot run, as in fer-exp serve.
        size = None if detect_size is None else int(detect_size)
        det = FaceDetector(DetectorConfig(spec=detector, detect_size=size, min_face=int(min_face),
                                          scale_factor=float(scale_factor), min_neighbors=int(min_neighbors)))
        version = None if model_version is None else str(model_version)
        uri = model_uri or (f"models:/{model_name}/{version}" if version else model_name)
        loaded = LoadedModel(model_name, version, uri, Predictor(classifier, det, float(margin)))
        return cls(loaded, Limits(int(max_bytes), int(max_pixels)))

    def predict(self, model_input: Any, detect: Any = True, **_: Any) -> list[dict[str, Any]]:
        """One ``/predict`` JSON per input image; a bad image gives ``{"error", "detail", "status"}`` in its place.

        ``detect`` (a pyfunc param) False: each image is one face crop."""
        detect = str(detect).lower() not in ("false", "0", "no") if isinstance(detect, str) else bool(detect)
        out = []
        for value in input_values(model_input):
            try:
                out.append(self.loaded.answer_bytes(to_bytes(value), self.limits, detect))
            except ImageRejected as exc:
                out.append({"error": exc.code, "detail": str(exc), "status": exc.status})
        return out


def _classifier(keras_model: Any, runtime: str, exported_path: str | None, keras_path: str | None) -> Classifier:
    import logging
    from pathlib import Path

    from fer_experiments.models.export import ONNX_FILE, RUNTIME_EXPORTED, RUNTIME_KERAS, ExportedModel, ExportError

    # No int8 here: its calibration faces come from the run's data set, which a serving container does not have.
    if runtime not in (RUNTIME_EXPORTED, RUNTIME_KERAS):
        raise ValueError(f"runtime must be {RUNTIME_EXPORTED} or {RUNTIME_KERAS}, got {runtime!r}")
    if runtime == "keras":
        return Classifier(keras_model)
    try:
        if exported_path is not None:
            path = Path(exported_path)
            return Classifier(ExportedModel(path / ONNX_FILE if path.is_dir() else path), source="wrapper")
        if keras_path is not None:
            from fer_experiments.tracking.exported import ensure_exported

            found, where = ensure_exported(keras_path, None, lambda: keras_model)
            if found is not None:
                return Classifier(ExportedModel(found), source=where)
    except ExportError as exc:
        logging.getLogger("fer_experiments.serving").warning("exported graph unusable (%s); using Keras", exc)
    return Classifier(keras_model, source="keras fallback: no exported graph")


def input_values(model_input: Any) -> list[Any]:
    """The image values of a pyfunc input (DataFrame, Series, dict, list, array or one value)."""
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - mlflow always brings pandas
        pd = None
    if pd is not None and isinstance(model_input, pd.DataFrame):
        column = "image" if "image" in model_input.columns else model_input.columns[0]
        return list(model_input[column])
    if pd is not None and isinstance(model_input, pd.Series):
        return list(model_input)
    if isinstance(model_input, dict):
        value = model_input.get("image", next(iter(model_input.values()), None))
        return list(value) if isinstance(value, (list, tuple)) else [value]
    if isinstance(model_input, (bytes, bytearray, memoryview, str)):
        return [model_input]
    try:
        return list(model_input)
    except TypeError:
        return [model_input]


def to_bytes(value: Any) -> bytes:
    """Bytes as they are; a string as base64 (MLflow's JSON encoding of binary columns)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError):
            raise ImageRejected(422, "bad_base64", "image string is not valid base64") from None
    if value is None:
        return b""
    raise ImageRejected(422, "bad_input", f"expected image bytes or a base64 string, got {type(value).__name__}")
