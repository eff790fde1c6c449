"""The exported inference graph (ONNX) of a logged Keras model: logged beside it in the same run, found again.

Layout in a run: ``model/`` (the Keras model, ``mlflow.keras``) and ``exported/`` (an MLflow ``onnx``-flavour model
folder holding ``model.onnx``), so ``mlflow.onnx.load_model("runs:/<id>/exported")`` works too. The run gets the tag
``fer.exported`` (``onnx``) or ``fer.export_error`` (why not: the Keras model then serves alone).

A model logged before exports existed has no ``exported/``: ``ensure_exported`` converts it on first load and logs
the graph to its run then (when the store can be written), so the next load finds it; a local ``.keras`` file or a
model not tied to a run is cached under ``<FER_EXP_CACHE>/exported/<sha256 of the Keras file>.onnx``.
The conversion itself lives in ``models.export`` (no MLflow there).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from fer_experiments.models.export import ONNX_FILE, ExportError, ExportedModel, export_onnx, quantize_int8
from fer_experiments.tracking import tags as names
from fer_experiments.tracking.runs import TrackedRun, _client, _retry

if TYPE_CHECKING:
    import keras
    import numpy as np

log = logging.getLogger("fer_experiments.tracking")

#: Artifact folder of the exported graph, beside the Keras model's ``model/``.
EXPORTED_ARTIFACT = "exported"
#: Artifact folder of its INT8 quantization (``--runtime int8``), made on first use and logged to the run.
INT8_ARTIFACT = "exported-int8"


def _save_onnx_folder(onnx_path: Path, folder: Path) -> Path:
    """An MLflow onnx-flavour model folder for the graph at ``onnx_path`` (pip requirements given: no inference)."""
    from importlib.metadata import version

    import mlflow.onnx
    import onnx

    proto = onnx.load(str(onnx_path))
    reqs = [f"onnx=={version('onnx')}", f"onnxruntime=={version('onnxruntime')}", f"numpy=={version('numpy')}"]
    # One self-contained file (MLflow would split large weights into external-data files beside it otherwise).
    mlflow.onnx.save_model(proto, str(folder), pip_requirements=reqs, save_as_external_data=False)
    return folder


def _log_graph(uri: str, run_id: str, onnx_path: Path, artifact: str = EXPORTED_ARTIFACT) -> None:
    with tempfile.TemporaryDirectory(prefix="fer-export-") as tmp:
        folder = _save_onnx_folder(onnx_path, Path(tmp) / artifact)
        _retry(lambda: _client(uri).log_artifacts(run_id, str(folder), artifact))


def log_exported_model(run: TrackedRun, model: "keras.Model") -> bool:
    """Export ``model`` and log the graph in ``run`` under ``exported/``; False (and a tag saying why) on failure.

    A model that cannot be exported never fails the training: it is served by Keras.
    """
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fer-export-") as tmp:
        try:
            path = export_onnx(model, Path(tmp) / ONNX_FILE)
            _log_graph(run.uri, run.run_id, path)
        except (ExportError, OSError, ImportError) as exc:  # never fails the training: Keras serves it then
            log.warning("model of run %s not exported: %s", run.run_id, exc)
            run.set_tags({names.EXPORT_ERROR: f"{type(exc).__name__}: {exc}"[:500]})
            return False
    run.set_tags({names.EXPORTED: "onnx", names.EXPORT_SECONDS: f"{time.perf_counter() - started:.1f}"})
    return True


def run_id_of(model_uri: str, tracking_uri: str) -> str | None:
    """The run a ``runs:/<id>/...`` or ``models:/<name>/<version>`` URI was logged in (None for other URIs)."""
    if model_uri.startswith("runs:/"):
        return model_uri.removeprefix("runs:/").split("/", 1)[0] or None
    if model_uri.startswith("models:/"):
        rest = model_uri.removeprefix("models:/").rstrip("/")
        name, _, version = rest.partition("/")
        if version.isdigit():
            from fer_experiments.tracking.model_registry import get_version

            return get_version(tracking_uri, name, version).run_id
    return None


def _run_or_none(model_uri: str, tracking_uri: str) -> str | None:
    """``run_id_of``, or None (with a warning) when the registry entry cannot be read: the cache serves then."""
    try:
        return run_id_of(model_uri, tracking_uri)
    except Exception as exc:  # noqa: BLE001 - an unreadable registry entry: fall back to the cache
        log.warning("cannot find the run of %s: %s", model_uri, exc)
        return None


#: The tag a run gets once each graph's upload has finished: a graph without it may still be half written.
_DONE_TAG = {EXPORTED_ARTIFACT: names.EXPORTED, INT8_ARTIFACT: names.INT8_AGREEMENT}


def find_exported(run_id: str, tracking_uri: str, artifact: str = EXPORTED_ARTIFACT) -> Path | None:
    """The local path of run ``run_id``'s exported graph (``artifact``: the INT8 one's folder for that one), or None.

    Only a graph whose upload finished counts (the run's ``fer.exported`` / ``fer.int8_agreement`` tag is set
    after it, and the file has the size the store lists). A local artifact store's file is used where it is; a
    remote one is downloaded once per run into ``<FER_EXP_CACHE>/exported/runs/`` (never a temp folder per load:
    a server polling an alias would fill the disk) and published there by an atomic rename.
    """
    import os
    import shutil
    from urllib.parse import unquote, urlsplit

    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    wanted = f"{artifact}/{ONNX_FILE}"
    try:
        run = client.get_run(run_id)
        listed = {f.path: f for f in client.list_artifacts(run_id, artifact)}
    except (MlflowException, OSError):
        return None
    entry = listed.get(wanted)
    if entry is None or not run.data.tags.get(_DONE_TAG.get(artifact, names.EXPORTED)):
        return None
    size = entry.file_size
    root = urlsplit(run.info.artifact_uri)
    if root.scheme in ("", "file"):
        local = Path(unquote(root.path)) / artifact / ONNX_FILE
        if local.is_file() and (size is None or local.stat().st_size == size):
            return local
    target = _cache_dir() / "runs" / f"{run_id}-{artifact}-{size}" / artifact
    if (target / ONNX_FILE).is_file():
        return target / ONNX_FILE
    staging = target.parent.with_name(f".{target.parent.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:  # the whole folder: a graph saved with external data keeps its weight files beside it
        staging.mkdir(parents=True)
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, tracking_uri=tracking_uri,
                                            dst_path=str(staging))
        got = staging / artifact / ONNX_FILE
        if size is not None and got.stat().st_size != size:
            raise OSError(f"downloaded {got.stat().st_size} of {size} bytes")
        try:
            os.replace(staging, target.parent)  # atomic: a reader sees no folder or the whole one
        except OSError:
            if not (target / ONNX_FILE).is_file():  # anything but "another process published it first"
                raise
    except (MlflowException, OSError) as exc:
        log.warning("exported graph of run %s unreadable: %s", run_id, exc)
        return None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target / ONNX_FILE


@contextlib.contextmanager
def export_lock(tracking_uri: str, run_id: str | None) -> Iterator[None]:
    """One process at a time exports (or quantizes) and logs a run's graph: two at once both uploaded it and
    copied it over each other in the store, where a reader saw it at 26 partial sizes. A flock beside a SQLite
    store, an advisory lock on PostgreSQL, else a flock in this machine's cache (no lock without a run)."""
    import zlib

    from fer_experiments.io import file_lock
    from fer_experiments.locks import EXPORT_KEY, advisory_lock, is_postgres, lock_file_beside, sqlite_file

    if run_id is None:
        yield
        return
    db = sqlite_file(tracking_uri)
    if db is None and is_postgres(tracking_uri):
        with advisory_lock(tracking_uri, (EXPORT_KEY << 32) | zlib.crc32(run_id.encode())):
            yield
        return
    with file_lock(lock_file_beside(db, ".export.lock") if db is not None else _cache_dir() / "locks" / run_id):
        yield


def _cache_dir() -> Path:
    from fer_experiments.data.dataset import default_cache_dir

    return default_cache_dir() / "exported"


def _file_key(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _keras_file(model_uri: str) -> Path | None:
    """The ``.keras`` file behind a local path (a file, or an MLflow Keras model folder)."""
    path = Path(model_uri)
    if "://" in model_uri or model_uri.startswith(("runs:", "models:")) or not path.exists():
        return None
    if path.is_file():
        return path
    found = sorted(path.glob("data/*.keras")) or sorted(path.glob("**/*.keras"))
    return found[0] if found else None


def ensure_exported(model_uri: str, tracking_uri: str | None,
                    load_keras: Callable[[], "keras.Model"]) -> tuple[Path | None, str]:
    """The exported graph of the Keras model at ``model_uri``, exporting it now (``load_keras()``) if it has none.

    Returns (path or None, where it came from: ``run <id>`` / ``exported now, logged to run <id>`` / ``cache`` /
    why not). The Keras model is loaded only when an export is needed.
    """
    from fer_experiments.tracking.store import default_tracking_uri, prepare_store

    tracking_uri = tracking_uri or default_tracking_uri()
    if model_uri.startswith(("runs:", "models:")):
        prepare_store(tracking_uri)
    run_id = _run_or_none(model_uri, tracking_uri)
    if run_id is not None:
        found = find_exported(run_id, tracking_uri)
        if found is not None:
            return found, f"run {run_id}"
    with export_lock(tracking_uri, run_id):
        if run_id is not None and (found := find_exported(run_id, tracking_uri)) is not None:
            return found, f"run {run_id}"  # another process exported it while this one waited
        return _export_now(model_uri, tracking_uri, run_id, load_keras)


def _export_now(model_uri: str, tracking_uri: str, run_id: str | None,
                load_keras: Callable[[], "keras.Model"]) -> tuple[Path | None, str]:
    """``ensure_exported``'s export (under ``export_lock``): cache it, then log it to the run."""
    keras_file = _keras_file(model_uri)
    key = _file_key(keras_file) if keras_file is not None else hashlib.sha256(
        f"{tracking_uri}|{model_uri}|{run_id}".encode()).hexdigest()
    cached = _cache_dir() / f"{key[:32]}.onnx"
    if cached.is_file():
        return cached, "cache"
    try:
        export_onnx(load_keras(), cached)
    except (ExportError, OSError) as exc:
        log.info("%s: no exported graph (%s)", model_uri, exc)
        return None, f"export failed: {exc}"
    if run_id is not None:  # log it to the run, so that every later load (on any machine) finds it there
        try:
            _log_graph(tracking_uri, run_id, cached)
            _retry(lambda: _client(tracking_uri).set_tag(run_id, names.EXPORTED, "onnx"))
            return cached, f"exported now, logged to run {run_id}"
        except Exception as exc:  # noqa: BLE001 - a read-only store: the cached file still serves
            log.warning("exported graph of run %s not logged (%s); cached at %s", run_id, exc, cached)
    return cached, "exported now (cache)"


def int8_agreement(fp32_path: Path, int8_path: Path, faces: "np.ndarray") -> float:
    """The share of ``faces`` on which the INT8 graph's top class is the float graph's."""
    import numpy as np

    from fer_experiments.models.export import exported_predict_proba

    a = exported_predict_proba(ExportedModel(fp32_path), faces).argmax(axis=1)
    b = exported_predict_proba(ExportedModel(int8_path), faces).argmax(axis=1)
    return float(np.mean(a == b))


def ensure_int8(model_uri: str, tracking_uri: str | None, fp32_path: Path,
                faces: Callable[[], tuple["np.ndarray", "np.ndarray", str]]) -> tuple[Path, str]:
    """The INT8 graph of the model at ``model_uri`` whose float graph is ``fp32_path``, quantized now if it has none.

    ``faces()`` gives (calibration faces, check faces, where they come from): called only when quantizing. The
    graph is logged to the model's run under ``exported-int8/`` with ``fer.int8_agreement`` (the share of the check
    faces on which it agrees with the float graph), so that later loads anywhere find it; a model not tied to a run
    is cached beside the exported graphs. Returns (path, where it came from); ExportError when it cannot be made.
    """
    from fer_experiments.tracking.store import default_tracking_uri

    tracking_uri = tracking_uri or default_tracking_uri()
    run_id = _run_or_none(model_uri, tracking_uri)
    if run_id is not None:
        found = find_exported(run_id, tracking_uri, INT8_ARTIFACT)
        if found is not None:
            return found, f"run {run_id}"
    with export_lock(tracking_uri, run_id):
        if run_id is not None and (found := find_exported(run_id, tracking_uri, INT8_ARTIFACT)) is not None:
            return found, f"run {run_id}"  # another process quantized it while this one waited
        return _quantize_now(tracking_uri, run_id, fp32_path, faces)


def _quantize_now(tracking_uri: str, run_id: str | None, fp32_path: Path,
                  faces: Callable[[], tuple["np.ndarray", "np.ndarray", str]]) -> tuple[Path, str]:
    """``ensure_int8``'s quantization (under ``export_lock``): cache it, then log it to the run."""
    cached = _cache_dir() / f"{_file_key(fp32_path)[:32]}.int8.onnx"
    if cached.is_file():
        return cached, "cache"
    calibration, check, origin = faces()
    quantize_int8(fp32_path, cached, calibration)
    agreement = int8_agreement(fp32_path, cached, check)
    where = f"quantized now on {len(calibration)} {origin} (top class as the float graph's on {agreement:.1%} of " \
            f"{len(check)} others)"
    if run_id is not None:
        try:
            _log_graph(tracking_uri, run_id, cached, INT8_ARTIFACT)
            _retry(lambda: _client(tracking_uri).set_tag(run_id, names.INT8_AGREEMENT, f"{agreement:.4f}"))
            return cached, f"{where}, logged to run {run_id}"
        except Exception as exc:  # noqa: BLE001 - a read-only store: the cached file still serves
            log.warning("INT8 graph of run %s not logged (%s); cached at %s", run_id, exc, cached)
    return cached, f"{where}, cached"
