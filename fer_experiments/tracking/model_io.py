"""Loading logged or registered models back: runs:/, models:/name/version, models:/name@alias, local paths."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fer_experiments.errors import ConfigError, FatalError

if TYPE_CHECKING:
    import keras


def load_keras_model(model_uri: str, tracking_uri: str | None = None) -> "keras.Model":
    """A Keras model from an MLflow URI, an MLflow model folder or a ``.keras`` file."""
    path = Path(model_uri)
    if "://" not in model_uri and not model_uri.startswith(("runs:", "models:")):
        if not path.exists():
            raise ConfigError(f"model {model_uri}: no such file or folder (expected runs:/<run_id>/model, "
                              "models:/<name>/<version>, models:/<name>@<alias> or a local path)")
        if path.is_file():
            import keras

            return keras.models.load_model(path)
    import mlflow.keras

    _prepare(tracking_uri)
    try:
        return mlflow.keras.load_model(model_uri)
    except Exception as exc:  # noqa: BLE001 - mlflow raises many types for "not found"
        raise _load_error(model_uri, exc) from exc


def _prepare(tracking_uri: str | None) -> None:
    from fer_experiments.tracking.store import default_tracking_uri, prepare_store

    prepare_store(tracking_uri or default_tracking_uri())


def _load_error(model_uri: str, exc: BaseException) -> Exception:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    lowered = text.lower()
    if any(s in lowered for s in ("not found", "does not exist", "no such", "resource_does_not_exist", "not exist")):
        return ConfigError(f"model {model_uri}: not found ({text[:300]})")
    return FatalError(f"model {model_uri}: cannot be loaded: {type(exc).__name__}: {text[:300]}")




def model_run_id(model_uri: str, tracking_uri: str | None = None) -> str | None:
    """The MLflow run a model came from: ``runs:/<id>/...`` directly, ``models:/<name>/<version>`` and
    ``models:/<name>@<alias>`` through the registry; None for local files and folders (no run to log to)."""
    import re

    if m := re.match(r"^runs:/([^/]+)/", model_uri):
        return m.group(1)
    version = re.match(r"^models:/([^/@]+)/(\d+)/?$", model_uri)
    alias = re.match(r"^models:/([^/@]+)@([^/@]+)/?$", model_uri)
    if not (version or alias):
        return None
    from fer_experiments.tracking.model_registry import alias_version, get_version
    from fer_experiments.tracking.store import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    _prepare(uri)
    if version:
        return get_version(uri, version.group(1), version.group(2)).run_id
    mv = alias_version(uri, alias.group(1), alias.group(2))  # type: ignore[union-attr]
    return mv.run_id if mv is not None else None
