"""Where runs go: the embedded SQLite default, a tracking server, creating and upgrading the store once."""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit, urlunsplit

from fer_experiments.config import DEFAULT_STORE_DIR, DEFAULT_TRACKING_URI
from fer_experiments.errors import ConfigError, FatalError
from fer_experiments.locks import STORE_SETUP_KEY, setup_lock, sqlite_file, sqlite_write_problem
from fer_experiments.tracking import tags

__all__ = ["DEFAULT_STORE_DIR", "DEFAULT_TRACKING_URI", "default_tracking_uri", "prepare_store", "redact_uri"]


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///mlruns/mlflow.db`` (relative to the working folder)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def artifact_root(uri: str) -> str | None:
    """Artifact folder for experiments in a SQLite store: ``<db folder>/artifacts`` as an absolute file URI.

    MLflow would otherwise put artifacts under the working folder *at experiment creation*, which breaks as soon
    as a command runs from elsewhere. Servers (http) choose their own artifact root.
    """
    db = sqlite_file(uri)
    if db is None:
        return None
    return (db.resolve().parent / "artifacts").as_uri()


def redact_uri(uri: str) -> str:
    """The URI without its password (for tags and messages)."""
    parts = urlsplit(uri)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


def ui_command(uri: str, experiment_id: str | None = None) -> str:
    """The exact ``mlflow ui`` command that shows this store (and the address of ``experiment_id``'s runs)."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    page = f"{base}/#/experiments/{experiment_id}?{tags.UI_TRAINING_VIEW_QUERY}" if experiment_id else base
    if uri.startswith(("http://", "https://")):
        return f"open {page} in a browser"
    return f"mlflow ui --backend-store-uri {uri}, then open {page}"


_prepared: set[str] = set()

#: MLflow's HTTP client retries a failed request 7 times with a backoff factor of 2 and waits 120 s per request:
#: an unreachable tracking server took 249 s to fail. These bounds (the user's own environment wins) make it fail
#: within seconds while still riding out a server restart of a few seconds.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def bound_http_requests() -> None:
    """Bound MLflow's HTTP retries and timeouts (read by MLflow at every request) unless the user set them."""
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)


def check_store_writable(uri: str) -> None:
    """FatalError naming the store when a SQLite tracking store (its database, folder or artifact folder) cannot be
    written, before any work starts; tracking servers are checked by the server."""
    db = sqlite_file(uri)
    if db is None:
        return
    artifacts = db.resolve().parent / "artifacts" if db.parent.exists() else db.parent / "artifacts"
    problem = sqlite_write_problem(uri, (artifacts,))
    if problem:
        raise FatalError(f"the MLflow tracking store {redact_uri(uri)} cannot be written: {problem}")


def require_existing_store(uri: str) -> None:
    """For reading commands: ConfigError saying which store was looked for when a SQLite store does not exist
    (a reading command never creates one, e.g. when run from the wrong folder)."""
    db = sqlite_file(uri)
    if db is not None and not db.is_file():
        raise ConfigError(f"no MLflow tracking store at {db.resolve()} (--tracking-uri {uri}, from {os.getcwd()}); "
                          "run from the folder that holds it or give --tracking-uri")


def prepare_store(uri: str) -> None:
    """Create (and migrate) the tracking store once, under a lock (SQLite file or PostgreSQL database).

    Several processes starting on a fresh MLflow database race in their migrations and leave it broken;
    the lock makes exactly one of them create it.
    """
    import mlflow

    bound_http_requests()
    if uri in _prepared:
        # Fluent calls (start_run, log_model) use the global URIs: point them at this store every time.
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        return

    if not re.match(r"^[a-z][a-z0-9+.-]*:", uri) and not uri.startswith("/"):
        raise ConfigError(f"--tracking-uri {uri!r} is not a URI (e.g. sqlite:///mlruns/mlflow.db or http://host:5000)")
    check_store_writable(uri)
    try:
        with setup_lock(uri, STORE_SETUP_KEY):
            mlflow.MlflowClient(uri, registry_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - any failure here means the store is unusable
        raise FatalError(f"cannot open the MLflow tracking store {redact_uri(uri)}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    _prepared.add(uri)


def ensure_experiment(uri: str, name: str) -> str:
    """The id of experiment ``name``, created with an explicit artifact location when missing."""
    import mlflow
    from mlflow.exceptions import MlflowException

    prepare_store(uri)
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise ConfigError(f"MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore) "
                              "or choose another --experiment")
        if exp.tags.get(tags.EXPERIMENT_KIND) is None:
            # Experiments made by older versions: tag them too, so the UI opens them on their training runs.
            client.set_experiment_tag(exp.experiment_id, tags.EXPERIMENT_KIND, tags.EXPERIMENT_KIND_TRAINING)
        return str(exp.experiment_id)
    root = artifact_root(uri)
    location = f"{root}/{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}" if root else None
    try:
        return str(client.create_experiment(name, artifact_location=location,
                                            tags={tags.EXPERIMENT_KIND: tags.EXPERIMENT_KIND_TRAINING}))
    except MlflowException:
        # Another process created it between our lookup and create.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return str(exp.experiment_id)
