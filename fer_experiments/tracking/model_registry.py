"""MLflow Model Registry calls: register a run's model (idempotently), read and move aliases."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import socket
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

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


def register_with_alias(uri: str, name: str, run_id: str, alias: str, tags: Mapping[str, Any] | None = None) -> str:
    """Register the run's model as a version of ``name`` (once per run) and point ``alias`` at it; returns the
    version. The one registration path of searches, ensembles and distilled students."""
    version, _ = register_run_model(uri, name, run_id, tags=tags)
    set_alias(uri, name, alias, version.version)
    return version.version


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


# ------------------------------------------------------------------------------------------ the registry lock
#: A tracking server offers no lock: a lease in a registered-model tag, held at most this long without renewal.
LEASE_SECONDS = 900.0
#: After writing its lease a promoter waits this long and reads it back: a rival that wrote in between wins.
LEASE_SETTLE_SECONDS = 1.0


@contextlib.contextmanager
def registry_lock(uri: str, name: str, wait_seconds: float = 1800.0) -> Iterator[None]:
    """One critical section per registered model across processes and machines, for promote and rollback.

    SQLite store: an flock on ``<db>.registry.lock`` beside the database (every process using the file is on this
    machine). PostgreSQL store: a session advisory lock (released by the server if the process dies). Tracking
    server (http): a lease in a registered-model tag, written, then read back after a pause; see
    docs/how-to/promote.md for what that guarantees.
    """
    from fer_experiments.io import file_lock
    from fer_experiments.locks import REGISTRY_KEY, advisory_lock, is_postgres, lock_file_beside, sqlite_file

    db = sqlite_file(uri)
    if db is not None:
        with file_lock(lock_file_beside(db, ".registry.lock")):
            yield
    elif is_postgres(uri):
        with advisory_lock(uri, (REGISTRY_KEY << 32) | zlib.crc32(name.encode())):
            yield
    else:
        with _tag_lease(uri, name, wait_seconds):
            yield


def _read_lease(uri: str, name: str) -> tuple[str, float] | None:
    raw = get_model_tag(uri, name, names.PROMOTE_LEASE)
    if not raw:
        return None
    owner, _, expires = raw.rpartition(" ")
    try:
        return owner, float(expires)
    except ValueError:
        return None


@contextlib.contextmanager
def _tag_lease(uri: str, name: str, wait_seconds: float) -> Iterator[None]:
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    with contextlib.suppress(MlflowException):  # exists already
        client.create_registered_model(name)
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_seconds
    while True:
        held = _read_lease(uri, name)
        if held is None or held[1] < time.time():
            set_model_tag(uri, name, names.PROMOTE_LEASE, f"{token} {time.time() + LEASE_SECONDS:.0f}")
            time.sleep(LEASE_SETTLE_SECONDS)
            held = _read_lease(uri, name)
            if held is not None and held[0] == token:
                break
        if time.monotonic() > deadline:
            owner = held[0] if held else "?"
            raise FatalError(f"{name}: another promote or rollback ({owner}) holds the registry lease; "
                             f"gave up after {wait_seconds:.0f} s")
        time.sleep(0.5 + random.random())
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            held = _read_lease(uri, name)
            if held is not None and held[0] == token:
                client.delete_registered_model_tag(name, names.PROMOTE_LEASE)


# ------------------------------------------------------------------------------------- can a version be loaded
def model_artifact_problem(uri: str, name: str, version: str) -> str | None:
    """Why version ``version`` of ``name`` cannot be loaded (its artifacts are gone: names the missing path), or
    None when its model files are there. Local artifact stores are checked on disk, others by listing."""
    client = _client(uri)
    try:
        location = _retry(lambda: client.get_model_version_download_uri(name, version))
    except Exception as exc:  # noqa: BLE001 - a version whose logged model is gone cannot say where it was
        return f"its model location cannot be resolved ({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})"
    return artifact_location_problem(location)


def artifact_location_problem(location: str) -> str | None:
    """Why the model at ``location`` (a file path or URI of a logged model's folder) cannot be loaded, or None."""
    import re
    from urllib.parse import unquote, urlparse

    # A path, or a file: URI, is checked on disk; any other scheme (s3://, mlflow-artifacts:/ of a tracking server
    # proxying its artifacts, ...) by listing through MLflow.
    if location.startswith("file:") or not re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", location):
        path = Path(unquote(urlparse(location).path) if location.startswith("file:") else location)
        if not (path / "MLmodel").is_file():
            return f"model files missing: {path / 'MLmodel'} does not exist"
        return None
    try:
        import mlflow

        listed = mlflow.artifacts.list_artifacts(artifact_uri=location)
    except Exception as exc:  # noqa: BLE001 - an unreachable or emptied artifact store
        return f"model files cannot be listed at {location}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    if not any(Path(f.path).name == "MLmodel" for f in listed):
        return f"model files missing: no MLmodel under {location}"
    return None


def run_model_problem(uri: str, run_id: str, artifact: str = "model") -> str | None:
    """Why the model a run logged cannot be loaded (its files are gone), or None."""
    client = _client(uri)
    model_id = _retry(lambda: client.get_run(run_id)).data.tags.get(names.model_id_tag(artifact))
    if not model_id:
        return f"run {run_id} has no logged model '{artifact}'"
    try:
        location = _retry(lambda: client.get_logged_model(model_id)).artifact_location
    except Exception as exc:  # noqa: BLE001 - the logged model's record is gone
        return f"logged model {model_id} cannot be read ({str(exc).splitlines()[0][:160] if str(exc) else ''})"
    return artifact_location_problem(location)
