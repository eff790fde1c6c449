"""MLflow Model Registry calls: register a run's model (idempotently), read and move aliases."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from fer_experiments.errors import ConfigError, FatalError
from fer_experiments.tracking import tags as names
from fer_experiments.tracking.runs import _client, _retry
from fer_experiments.tracking.store import prepare_store


@dataclass(frozen=True)
class ModelVersion:
    """A registered model version, without mlflow types."""

    name: str
    version: str
    run_id: str | None
    source: str
    tags: dict[str, str]
    aliases: tuple[str, ...]
    creation_timestamp: int


def _to_version(mv: Any) -> ModelVersion:
    return ModelVersion(name=mv.name, version=str(mv.version), run_id=mv.run_id, source=mv.source,
                        tags=dict(mv.tags or {}), aliases=tuple(getattr(mv, "aliases", []) or []),
                        creation_timestamp=int(mv.creation_timestamp or 0))


def versions_of_run(uri: str, name: str, run_id: str) -> list[ModelVersion]:
    """Versions of registered model ``name`` made from run ``run_id`` (oldest first)."""
    prepare_store(uri)
    found = _retry(lambda: _client(uri).search_model_versions(f"name = '{name}' and run_id = '{run_id}'"))
    return sorted((_to_version(v) for v in found), key=lambda v: int(v.version))


def register_run_model(uri: str, name: str, run_id: str, tags: Mapping[str, Any] | None = None,
                       artifact: str = "model") -> tuple[ModelVersion, bool]:
    """Register ``runs:/<run_id>/<artifact>`` as a version of ``name``; reuse the version if the run has one.

    Returns (version, created). Idempotent so that a rerun after a crash never makes a second version.
    """
    existing = versions_of_run(uri, name, run_id)
    client = _client(uri)
    model_id = _retry(lambda: client.get_run(run_id)).data.tags.get(names.model_id_tag(artifact))
    if existing:
        version = existing[0]
        created = False
        if model_id:  # versions registered before fer-exp linked them: listed on their logged model from now on
            _link_version(uri, model_id, name, version.version)
    else:
        if not model_id:
            raise ConfigError(f"run {run_id} has no logged model '{artifact}' to register")
        version = get_version(uri, name, register_logged_model(uri, name, model_id, run_id))
        created = True
    for k, v in (tags or {}).items():
        if v is not None:
            _retry(lambda k=k, v=v: client.set_model_version_tag(name, version.version, k, str(v)))
    return get_version(uri, name, version.version), created


def register_logged_model(uri: str, name: str, model_id: str, run_id: str, *, description: str = "",
                          version_tags: Mapping[str, Any] | None = None) -> str:
    """Register a LoggedModel (by id) as a new version of ``name`` (created if needed); returns the version."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    try:
        client.create_registered_model(name, description=description or None)
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    clean = {k: str(v) for k, v in (version_tags or {}).items() if v is not None}
    mv = _retry(lambda: client.create_model_version(name, f"models:/{model_id}", run_id=run_id, model_id=model_id,
                                                    tags=clean, await_creation_for=60))
    _link_version(uri, model_id, name, str(mv.version))
    return str(mv.version)


def _link_version(uri: str, model_id: str, name: str, version: str) -> None:
    """Record the version on its LoggedModel, as MLflow's fluent ``register_model`` does: the Models tab lists it."""
    import json

    client = _client(uri)
    try:
        known = json.loads(client.get_logged_model(model_id).tags.get(names.MLFLOW_MODEL_VERSIONS) or "[]")
    except Exception:  # noqa: BLE001 - a missing LoggedModel leaves nothing to link
        return
    entry = {"name": name, "version": version}
    if entry not in known:
        _retry(lambda: client.set_logged_model_tags(model_id, {names.MLFLOW_MODEL_VERSIONS: json.dumps(known + [entry])}))


def get_version(uri: str, name: str, version: str) -> ModelVersion:
    prepare_store(uri)
    return _to_version(_retry(lambda: _client(uri).get_model_version(name, version)))


def alias_version(uri: str, name: str, alias: str) -> ModelVersion | None:
    """The version ``alias`` points at, or None (also when the model does not exist)."""
    from mlflow.exceptions import MlflowException

    prepare_store(uri)
    try:
        return _to_version(_retry(lambda: _client(uri).get_model_version_by_alias(name, alias)))
    except MlflowException as exc:
        # Only "no such model / alias" means no champion; an unreachable store must not look like one.
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            return None
        raise FatalError(f"cannot read {name}@{alias} from the registry: {str(exc).splitlines()[0][:200]}") from exc


def set_alias(uri: str, name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version`` (one atomic update in the registry)."""
    prepare_store(uri)
    _retry(lambda: _client(uri).set_registered_model_alias(name, alias, version))


def delete_alias(uri: str, name: str, alias: str) -> None:
    prepare_store(uri)
    _retry(lambda: _client(uri).delete_registered_model_alias(name, alias))


def list_versions(uri: str, name: str | None = None) -> list[ModelVersion]:
    """All versions (of ``name``, or of every registered model), newest first per model."""
    prepare_store(uri)
    client = _client(uri)
    flt = f"name = '{name}'" if name else ""
    found = [_to_version(v) for v in _retry(lambda: client.search_model_versions(flt, max_results=10000))]
    # search_model_versions leaves aliases out: take them from each registered model.
    aliases: dict[tuple[str, str], list[str]] = {}
    for model_name in {v.name for v in found}:
        for alias, version in (_retry(lambda n=model_name: client.get_registered_model(n)).aliases or {}).items():
            aliases.setdefault((model_name, str(version)), []).append(alias)
    found = [dataclasses.replace(v, aliases=tuple(sorted(aliases.get((v.name, v.version), [])))) for v in found]
    return sorted(found, key=lambda v: (v.name, -int(v.version)))


def get_run_metric(uri: str, run_id: str, key: str) -> float | None:
    """One metric of a run (None when absent)."""
    value = _retry(lambda: _client(uri).get_run(run_id)).data.metrics.get(key)
    return None if value is None else float(value)


def get_model_tag(uri: str, name: str, key: str) -> str | None:
    """A registered model's tag (None when absent)."""
    return _retry(lambda: _client(uri).get_registered_model(name)).tags.get(key)


def set_model_tag(uri: str, name: str, key: str, value: str) -> None:
    _retry(lambda: _client(uri).set_registered_model_tag(name, key, value))
