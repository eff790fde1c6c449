"""MLflow's own model server for fer-exp models: a pyfunc wrapper (image bytes -> the ``/predict`` JSON).

The registered ``fer-cnn`` versions stay plain Keras models (``mlflow.keras.load_model("models:/fer-cnn@champion")``
and their probability-returning pyfunc flavour keep working). Next to them, ``sync_service_alias`` keeps a second
registered model, ``fer-cnn-service``, whose versions wrap a ``fer-cnn`` version together with the face detector,
and points its ``champion`` alias at the wrapper of ``fer-cnn@champion``. Then

    MLFLOW_TRACKING_URI=sqlite:///mlruns/mlflow.db \\
        mlflow models serve -m models:/fer-cnn-service@champion --env-manager local -p 5001
    curl -H 'Content-Type: application/json' -d '{"dataframe_split": {"columns": ["image"], "data": [["<base64>"]]}}' \\
        http://127.0.0.1:5001/invocations

answers ``{"predictions": [<the /predict JSON>]}``. The wrapper imports ``fer_experiments`` (its code is logged with
it under ``code/``); ``--env-manager local`` from the fer-exp environment is the tested way to run it.
Wiring: ``fer_experiments.registry.promote`` calls ``sync_service_alias`` after it moves (or finds) the alias and
after a rollback; a failure there is reported as a note and does not undo the promotion.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from fer_experiments.tracking.registry import ModelVersion, alias_version, get_version, list_versions, set_alias
from fer_experiments.tracking.runs import _client, _retry, model_requirements, start_run
from fer_experiments.tracking.store import prepare_store

#: Experiment that holds the (tiny) runs that log the wrappers, away from the studies' experiments.
SERVING_EXPERIMENT = "fer-exp-serving"
#: Tag on a wrapper version: the version of the Keras model it wraps.
SOURCE_VERSION_TAG = "source_version"
SOURCE_MODEL_TAG = "source_model"


def service_model_name(model_name: str) -> str:
    """``fer-cnn`` -> ``fer-cnn-service``."""
    return f"{model_name}-service"


class FerServicePyfunc(mlflow.pyfunc.PythonModel):
    """The pyfunc: ``predict`` takes image bytes (base64 strings in JSON) and returns one ``/predict`` JSON each."""

    def load_context(self, context: Any) -> None:
        import mlflow.keras

        from fer_experiments.serving.pyfunc import ServiceModel

        keras_model = mlflow.keras.load_model(context.artifacts["keras_model"])
        self._service = ServiceModel.from_keras(keras_model, **dict(context.model_config or {}))

    # The DataFrame hint is one MLflow knows it cannot validate against: no schema validation, no warning, and the
    # DataFrame its server builds (or a list, dict or bytes from Python callers) reaches us unchanged.
    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        detect = True if not params else bool(params.get("detect", True))
        return self._service.predict(model_input, detect=detect)


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = model_requirements()
    for dist in ("opencv-python-headless", "pillow", "pandas"):
        with contextlib.suppress(PackageNotFoundError):
            reqs.append(f"{dist}=={version(dist)}")
    return reqs


def find_service_version(uri: str, model_name: str, version: str) -> ModelVersion | None:
    """The wrapper version built from ``model_name`` version ``version``, if one was registered."""
    with contextlib.suppress(Exception):  # no such registered model yet
        for mv in list_versions(uri, service_model_name(model_name)):
            if mv.tags.get(SOURCE_VERSION_TAG) == str(version) and mv.tags.get(SOURCE_MODEL_TAG) == model_name:
                return mv
    return None


def log_service_model(uri: str, model_name: str, version: str, *, detector: str = "haar",
                      detect_size: int = 320, margin: float | None = None) -> tuple[ModelVersion, bool]:
    """Log and register the pyfunc wrapper of ``models:/<model_name>/<version>`` (idempotent: one per version).

    Returns (wrapper version, created). Takes ~2 s (the Keras model is copied into the wrapper).
    """
    from mlflow.exceptions import MlflowException
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    import fer_experiments
    from fer_experiments.serving.detector import DEFAULT_MARGIN

    prepare_store(uri)
    existing = find_service_version(uri, model_name, version)
    if existing is not None:
        return existing, False
    source = get_version(uri, model_name, version)
    service = service_model_name(model_name)
    config = {"model_name": model_name, "model_version": str(version), "model_uri": f"models:/{model_name}/{version}",
              "detector": detector, "detect_size": detect_size,
              "margin": DEFAULT_MARGIN if margin is None else margin}
    tags = {"fer.kind": "service", SOURCE_MODEL_TAG: model_name, SOURCE_VERSION_TAG: str(version),
            "source_run_id": source.run_id}
    with start_run(uri, SERVING_EXPERIMENT, run_name=f"{service}-v{version}", tags=tags) as run, \
            warnings.catch_warnings():
        # An input example would make MLflow load the Keras model once more just to validate it (seconds).
        warnings.filterwarnings("ignore", message=".*input example.*", category=UserWarning)
        info = mlflow.pyfunc.log_model(
            name="service", python_model=FerServicePyfunc(),
            artifacts={"keras_model": f"models:/{model_name}/{version}"}, model_config=config,
            signature=ModelSignature(inputs=Schema([ColSpec("binary", "image")])),
            code_paths=[str(Path(fer_experiments.__file__).parent)], pip_requirements=_requirements())
        run_id = run.run_id
    client = _client(uri)
    try:
        client.create_registered_model(service, description=f"{model_name} with its face detector: image bytes in, "
                                                             "the fer-exp /predict JSON out")
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    mv = _retry(lambda: client.create_model_version(service, f"models:/{info.model_id}", run_id=run_id,
                                                    model_id=info.model_id, tags=tags, await_creation_for=60))
    return get_version(uri, service, str(mv.version)), True


def sync_service_alias(uri: str, model_name: str = "fer-cnn", alias: str = "champion") -> ModelVersion | None:
    """Point ``<model_name>-service@<alias>`` at the wrapper of ``<model_name>@<alias>`` (logging it if needed).

    Returns the wrapper version, or None when ``<model_name>@<alias>`` does not exist. Safe to call repeatedly.
    Call it from ``registry.promote.promote`` after ``move_alias`` (and in its "already" branch) and from
    ``registry.promote.rollback`` after the alias moved back.
    """
    target = alias_version(uri, model_name, alias)
    if target is None:
        return None
    wrapper, _ = log_service_model(uri, model_name, target.version)
    service = service_model_name(model_name)
    current = alias_version(uri, service, alias)
    if current is None or current.version != wrapper.version:
        set_alias(uri, service, alias, wrapper.version)
    logging.getLogger("fer_experiments.tracking").info("%s@%s -> version %s (wraps %s version %s)", service, alias,
                                                       wrapper.version, model_name, target.version)
    return get_version(uri, service, wrapper.version)
