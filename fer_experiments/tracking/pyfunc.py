"""A generic MLflow pyfunc wrapper around a registered Keras model: MLflow's own model server can then answer with
whatever a fer-exp class computes from that model, without this package importing the class.

The class is named by a dotted path (``package.module:Class.factory``) in the wrapper's ``model_config``; at load
time it is imported and called with the Keras model and the rest of the config. ``serving.mlflow_service`` uses this
to log the face-detector + classifier service.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from pathlib import Path
from typing import Any, Mapping

import mlflow.pyfunc
import pandas as pd

from fer_experiments.tracking.runs import model_requirements, skip_requirement_scan, start_run
from fer_experiments.tracking.store import prepare_store

#: The ``model_config`` key naming the factory.
FACTORY_KEY = "factory"


class KerasDelegatePyfunc(mlflow.pyfunc.PythonModel):
    """Loads the wrapped Keras model and hands it to the configured factory; ``predict`` is the factory's."""

    def load_context(self, context: Any) -> None:
        import mlflow.keras

        config = dict(context.model_config or {})
        module, _, attr = str(config.pop(FACTORY_KEY)).partition(":")
        factory: Any = importlib.import_module(module)
        for part in attr.split("."):
            factory = getattr(factory, part)
        # Optional artifacts (e.g. the exported graph) reach the factory as ``<name>_path`` keyword arguments.
        extra = {f"{k}_path": v for k, v in context.artifacts.items() if k != "keras_model"}
        self._impl = factory(mlflow.keras.load_model(context.artifacts["keras_model"]),
                             keras_path=context.artifacts["keras_model"], **extra, **config)

    # The DataFrame hint is one MLflow knows it cannot validate against: no schema validation, no warning, and the
    # DataFrame its server builds (or a list, dict or bytes from Python callers) reaches the factory unchanged.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> Any:
        return self._impl.predict(model_input, **(params or {}))


def log_keras_delegate(uri: str, experiment: str, *, run_name: str, run_tags: Mapping[str, Any], keras_model_uri: str,
                       factory: str, config: Mapping[str, Any], extra_requirements: tuple[str, ...] = (),
                       code_package: Any = None, extra_artifacts: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Log a ``KerasDelegatePyfunc`` of ``keras_model_uri`` in a new run; returns (run_id, logged model id).

    The input is one binary column ``image``; ``code_package`` (a module) is logged as code beside the model;
    ``extra_artifacts`` (name -> URI) are copied in too and handed to the factory as ``<name>_path``.
    """
    from importlib.metadata import PackageNotFoundError, version

    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    prepare_store(uri)
    reqs = model_requirements()
    for dist in extra_requirements:
        with contextlib.suppress(PackageNotFoundError):
            reqs.append(f"{dist}=={version(dist)}")
    code_paths = [str(Path(code_package.__file__).parent)] if code_package is not None else None
    with start_run(uri, experiment, run_name=run_name, tags=run_tags) as run, warnings.catch_warnings(), \
            skip_requirement_scan():
        # An input example would make MLflow load the Keras model once more just to validate it (seconds).
        warnings.filterwarnings("ignore", message=".*input example.*", category=UserWarning)
        info = mlflow.pyfunc.log_model(
            name="service", python_model=KerasDelegatePyfunc(), artifacts={"keras_model": keras_model_uri, **(extra_artifacts or {})},
            model_config={FACTORY_KEY: factory, **config},
            signature=ModelSignature(inputs=Schema([ColSpec("binary", "image")])), code_paths=code_paths,
            pip_requirements=reqs)
        return run.run_id, info.model_id
