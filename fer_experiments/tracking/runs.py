"""MLflow runs: start/end with an honest status, params, metrics, tags, artifacts, datasets and models.

A run that crashes ends FAILED and one that is interrupted ends KILLED, never FINISHED and never left
RUNNING (MLflow's own atexit hook would mark a still-open run FINISHED, mlflow#3932).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from fer_experiments.errors import FatalError
from fer_experiments.tracking import tags as names
from fer_experiments.tracking.store import ensure_experiment, prepare_store

if TYPE_CHECKING:
    import keras
    from matplotlib.figure import Figure

TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
#: MLflow caps a param value at 6000 characters; long ones are cut and say so.
_MAX_PARAM = 6000


@dataclass(frozen=True)
class RunInfo:
    """A run as the rest of the code sees it (no mlflow types leak out)."""

    run_id: str
    name: str
    status: str
    experiment_id: str
    start_time: int | None
    end_time: int | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    artifact_uri: str


class TrackedRun:
    """An open MLflow run. Use through ``start_run``; set ``final_status`` to end with something else than FINISHED."""

    def __init__(self, run_id: str, uri: str) -> None:
        self.run_id = run_id
        self.uri = uri
        self.final_status = "FINISHED"

    def _client(self) -> Any:
        import mlflow

        return _client(self.uri)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (values stringified; None as "None")."""
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit is 100 params
            _retry(lambda: self._client().log_batch(self.run_id, params=items[i:i + 100]))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, model_id: str | None = None) -> None:
        """Log finite metrics at ``step`` (NaN/inf are skipped: MLflow's UI cannot plot them); with ``model_id``
        they are also the metrics of that logged model (MLflow 3's Models tab shows them)."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step or 0, model_id=model_id) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        for i in range(0, len(items), 1000):
            _retry(lambda: self._client().log_batch(self.run_id, metrics=items[i:i + 1000]))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (values stringified)."""
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        if items:
            _retry(lambda: self._client().log_batch(self.run_id, tags=items))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._client().log_text(self.run_id, text, artifact_file)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self._client().log_text(self.run_id, json.dumps(data, indent=2, default=_json_default), artifact_file)

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        """Log rows as an MLflow table (a JSON artifact the run's Evaluation/Artifacts views show as a table)."""
        import mlflow

        columns = list(dict.fromkeys(k for row in rows for k in row))
        mlflow.log_table({c: [row.get(c) for row in rows] for c in columns}, artifact_file, run_id=self.run_id)

    def log_artifact(self, local_path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Upload one local file into the run's artifacts (under the folder ``artifact_path``)."""
        self._client().log_artifact(self.run_id, str(local_path), artifact_path)

    def log_figure(self, fig: "Figure", artifact_file: str) -> None:
        self._client().log_figure(self.run_id, fig, artifact_file)

    def log_dataset(self, *, name: str, digest: str, source: str, context: str, tags: Mapping[str, str] | None = None) -> None:
        """Record the data set as an MLflow input (name, content digest, source path), without uploading it."""
        import mlflow
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource

        ds = MetaDataset(source=LocalArtifactDatasetSource(str(Path(source).resolve())), name=name, digest=digest[:36])
        with self._active():
            _retry(lambda: mlflow.log_input(ds, context=context, tags=dict(tags or {})))

    def log_keras_model(self, model: "keras.Model", name: str = "model", metrics: Mapping[str, float] | None = None,
                        step: int | None = None) -> str:
        """Log ``model`` with signature, input example and explicit pip requirements; return ``runs:/<id>/<name>``.

        Explicit requirements keep the call at ~1 s (inferring them re-imports TensorFlow in a subprocess, ~20 s).
        ``metrics`` (e.g. its PublicTest numbers) are linked to the logged model, so MLflow's Models tab shows them
        beside its registered versions; its metadata names the classes in output order. The logged model keeps the
        name ``name`` (``runs:/<run>/model`` finds a run's model by that name); its tags carry the run's name.
        """
        import mlflow
        import mlflow.keras
        import numpy as np
        from mlflow.models import infer_signature

        from fer_experiments import IMAGE_SIZE

        example = np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.float32)
        signature = infer_signature(example, np.asarray(model.predict(example, verbose=0)))
        import keras

        interactive = keras.utils.is_interactive_logging_enabled()
        keras.utils.disable_interactive_logging()  # mlflow calls predict on the example: no progress bar
        try:
            with self._active(), _keras_save_dir_fix(), skip_requirement_scan():
                info = mlflow.keras.log_model(model, name=name, signature=signature, input_example=example,
                                              pip_requirements=model_requirements(), metadata=model_metadata())
        finally:
            if interactive:
                keras.utils.enable_interactive_logging()
        # MLflow 3 keeps the model as a LoggedModel; the registry registers it by this id.
        self.set_tags({names.model_id_tag(name): info.model_id})
        run_name = self._client().get_run(self.run_id).info.run_name
        if run_name:
            _retry(lambda: self._client().set_logged_model_tags(info.model_id, {
                names.MLFLOW_RUN_NAME: run_name, names.MLFLOW_SOURCE_NAME: command_source()}))
        if metrics:
            self.log_metrics(metrics, step=step, model_id=info.model_id)
        return f"runs:/{self.run_id}/{name}"

    @contextlib.contextmanager
    def _active(self) -> Iterator[None]:
        """Fluent-only MLflow calls (log_model, log_input) need this run to be the active one: ``start_run`` makes it so."""
        import mlflow

        active = mlflow.active_run()
        if active is None or active.info.run_id != self.run_id:
            raise RuntimeError(f"run {self.run_id} is not MLflow's active run")
        yield

    def info(self) -> RunInfo:
        return get_run(self.uri, self.run_id)


@contextlib.contextmanager
def start_run(uri: str, experiment: str, *, run_name: str | None = None, tags: Mapping[str, Any] | None = None,
              parent_run_id: str | None = None, run_id: str | None = None) -> Iterator[TrackedRun]:
    """Open a run (new, or ``run_id`` resumed) and end it with an honest status.

    Normal exit: ``run.final_status`` (FINISHED unless changed). KeyboardInterrupt / SystemExit: KILLED.
    Any other exception: FAILED, with the reason as the ``failure_reason`` tag.
    """
    import mlflow

    prepare_store(uri)
    if run_id is None:
        exp_id = ensure_experiment(uri, experiment)
        all_tags = {k: str(v) for k, v in (process_tags() | dict(tags or {})).items() if v is not None}
        active = _retry(lambda: mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=all_tags,
                                                 parent_run_id=parent_run_id))
    else:
        active = _retry(lambda: mlflow.start_run(run_id=run_id))
        if tags:
            TrackedRun(run_id, uri).set_tags(tags)
    tracked = TrackedRun(active.info.run_id, uri)
    if run_id is not None:
        tracked.set_tags(process_tags())
    beat = heartbeat(uri, tracked.run_id)
    beat.__enter__()
    try:
        yield tracked
    except (KeyboardInterrupt, SystemExit) as exc:
        beat.__exit__(None, None, None)
        _end_active(uri, tracked.run_id, "KILLED", f"interrupted ({type(exc).__name__})")
        raise
    except BaseException as exc:
        beat.__exit__(None, None, None)
        _end_active(uri, tracked.run_id, "FAILED", f"{type(exc).__name__}: {exc}")
        raise
    else:
        beat.__exit__(None, None, None)
        _end_active(uri, tracked.run_id, tracked.final_status, None)


#: How often a RUNNING run's process renews its heartbeat tag.
HEARTBEAT_SECONDS = 60.0


def process_tags() -> dict[str, str]:
    """Where this process runs, for the runs it opens: host, pid and a first heartbeat."""
    return {names.HOST: socket.gethostname(), names.PID: str(os.getpid()), names.HEARTBEAT: f"{time.time():.0f}"}


@contextlib.contextmanager
def heartbeat(uri: str, run_id: str, every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """Renew the run's heartbeat tag every ``every`` seconds from a daemon thread while the block runs, so that
    ``fer-exp reconcile`` on another host can tell a live run from one whose process died (SIGKILL, lost host)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            with contextlib.suppress(Exception):  # a missed beat only makes the run look older
                _client(uri).set_tag(run_id, names.HEARTBEAT, f"{time.time():.0f}")

    thread = threading.Thread(target=beat, name=f"fer-heartbeat-{run_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


def _end_active(uri: str, run_id: str, status: str, reason: str | None) -> None:
    """End the fluent active run with ``status``; fall back to the client if the fluent stack was lost."""
    import mlflow

    active = mlflow.active_run()
    if reason:
        with contextlib.suppress(Exception):
            _client(uri).set_tag(run_id, names.FAILURE_REASON, reason[:5000])
    if active is not None and active.info.run_id == run_id:
        try:
            _retry(lambda: mlflow.end_run(status=status))
            return
        except Exception:  # noqa: BLE001 - the client call below still records the status
            pass
    end_run(uri, run_id, status)


def end_run(uri: str, run_id: str, status: str, reason: str | None = None) -> None:
    """Terminate a run with ``status`` (FINISHED, FAILED or KILLED), recording ``reason`` as a tag."""
    if status not in TERMINAL_STATUSES:
        raise ValueError(f"not a terminal run status: {status}")
    client = _client(uri)
    if reason:
        with contextlib.suppress(Exception):
            client.set_tag(run_id, names.FAILURE_REASON, reason[:5000])
    _retry(lambda: client.set_terminated(run_id, status=status))


def get_run(uri: str, run_id: str) -> RunInfo:
    """Load one run."""
    return _to_info(_client(uri).get_run(run_id))


def find_runs(uri: str, experiment: str | None = None, filter_string: str = "", max_results: int = 1000,
              order_by: list[str] | None = None) -> list[RunInfo]:
    """Runs of ``experiment`` (all experiments when None) matching an MLflow filter string."""
    client = _client(uri)
    if experiment is None:
        exp_ids = [e.experiment_id for e in client.search_experiments()]
    else:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return []
        exp_ids = [exp.experiment_id]
    if not exp_ids:
        return []
    runs = client.search_runs(exp_ids, filter_string=filter_string, max_results=max_results, order_by=order_by)
    return [_to_info(r) for r in runs]


@contextlib.contextmanager
def _keras_save_dir_fix() -> Iterator[None]:
    """Work around mlflow 3.17's keras flavour writing the input example before it creates the model folder.

    ``mlflow.keras.save_model`` calls ``_save_example(path)`` and only later ``os.makedirs(path/data)``, so any
    ``input_example`` fails with FileNotFoundError. Creating the (empty) folder first is what the flavour meant to do.
    """
    import mlflow.keras

    original = mlflow.keras.save_model

    def save_model(model: Any, path: str, *args: Any, **kwargs: Any) -> Any:
        os.makedirs(path, exist_ok=True)
        return original(model, path, *args, **kwargs)

    mlflow.keras.save_model = save_model
    try:
        yield
    finally:
        mlflow.keras.save_model = original


@contextlib.contextmanager
def skip_requirement_scan() -> Iterator[None]:
    """Skip MLflow's check that a logged model's pip requirements match this environment.

    Our requirements are pinned from the versions installed here (``model_requirements``), so the check can only
    agree; it scans every installed distribution's files (``packages_distributions``), ~1 s of CPU per process and
    much more on a busy machine, at every ``log_model``.
    """
    import mlflow.utils.environment as environment

    original = environment.warn_dependency_requirement_mismatches
    environment.warn_dependency_requirement_mismatches = lambda requirements: None
    try:
        yield
    finally:
        environment.warn_dependency_requirement_mismatches = original


def model_metadata() -> dict[str, Any]:
    """What a logged model's MLmodel ``metadata`` says about its input and output (class names in output order)."""
    from fer_experiments import EXPRESSIONS, IMAGE_SIZE

    return {"class_names": list(EXPRESSIONS),
            "output": "softmax probabilities, one per class in class_names order (index = FER2013 label id)",
            "input": f"{IMAGE_SIZE}x{IMAGE_SIZE}x1 grayscale pixels 0-255 (the model rescales them itself)"}


def model_requirements() -> list[str]:
    """Pinned pip requirements of a logged model: the Keras backend actually in use, keras and numpy."""
    from importlib.metadata import PackageNotFoundError, version

    import keras

    backend = keras.backend.backend()
    candidates = {"tensorflow": ["tensorflow-cpu", "tensorflow"], "jax": ["jax"], "torch": ["torch"]}[backend]
    reqs = [f"keras=={version('keras')}", f"numpy=={version('numpy')}"]
    for dist in candidates:
        with contextlib.suppress(PackageNotFoundError):
            reqs.append(f"{dist}=={version(dist)}")
            break
    return reqs


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of metric ``key`` (e.g. the objective per epoch), by step."""
    history = _retry(lambda: _client(uri).get_metric_history(run_id, key))
    return sorted((int(m.step), float(m.value)) for m in history)


def read_artifact(uri: str, run_id: str, path: str) -> bytes | None:
    """The bytes of one artifact file of a run, or None when it is not there."""
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp,
                                                        tracking_uri=uri)
        except Exception:  # noqa: BLE001 - a missing artifact (MLflow raises several types) is "not there"
            return None
        p = Path(local)
        return p.read_bytes() if p.is_file() else None


def list_artifacts(uri: str, run_id: str, folder: str | None = None) -> list[str]:
    """Paths of the files directly in ``folder`` of a run's artifacts ([] when absent)."""
    try:
        return [f.path for f in _client(uri).list_artifacts(run_id, folder) if not f.is_dir]
    except Exception:  # noqa: BLE001 - no such folder
        return []


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """Where a run opens in a browser: on the tracking server for http(s) stores, else on ``mlflow ui``'s default
    address (http://127.0.0.1:5000) once ``mlflow ui --backend-store-uri <store>`` runs."""
    return f"{experiment_url(uri, experiment_id).split('?')[0]}/runs/{run_id}?{names.UI_TRAINING_VIEW_QUERY}"


def experiment_url(uri: str, experiment_id: str) -> str:
    """Where an experiment's runs open in a browser, in the UI's model-training view (see ``run_url``)."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}?{names.UI_TRAINING_VIEW_QUERY}"


def command_source() -> str:
    """The command that made a run, for MLflow's Source column: ``fer-exp search --data fer2013.csv.gz ...``.

    Paths and URIs show their last part only: MLflow's UI shows a source after its last ``/`` (and URIs could
    hold passwords); a long command line is cut.
    """
    import sys

    from fer_experiments.tracking.store import redact_uri

    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if prog in ("fer-exp", "__main__.py") or sys.argv[0].endswith("fer_experiments/cli/__main__.py"):
        prog = "fer-exp"
    text = " ".join([prog, *(redact_uri(a).rstrip("/").rsplit("/", 1)[-1] if "/" in a else a for a in sys.argv[1:])])
    return text if len(text) <= 500 else text[:497] + "..."


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the fer-exp checkout in use, if it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _client(uri: str) -> Any:
    import mlflow

    # Explicit registry URI: MlflowClient would otherwise take a registry URI set globally for another store.
    return mlflow.MlflowClient(uri, registry_uri=uri)


def _to_info(run: Any) -> RunInfo:
    return RunInfo(run_id=run.info.run_id, name=run.info.run_name or "", status=run.info.status,
                   experiment_id=run.info.experiment_id, start_time=run.info.start_time, end_time=run.info.end_time,
                   params=dict(run.data.params), metrics=dict(run.data.metrics), tags=dict(run.data.tags),
                   artifact_uri=run.info.artifact_uri)


def _param_value(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, dict, tuple)) else str(v)
    return s if len(s) <= _MAX_PARAM else s[:_MAX_PARAM - 20] + "...(truncated)"


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _retry(fn: Any, attempts: int = 5, first_delay: float = 0.5) -> Any:
    """Call ``fn`` with exponential backoff on connection-type errors (a tracking server restarting)."""
    delay = first_delay
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - filtered just below
            if attempt == attempts - 1 or not _transient(exc):
                if _transient(exc):
                    raise FatalError(f"MLflow tracking store unreachable after {attempts} attempts: {exc}") from exc
                raise
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def _transient(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    # "duplicate key": workers starting together race to create the same row (e.g. the data set input, dataset_pk)
    # in a PostgreSQL-backed server; the retry finds the row the other one made.
    return any(s in text for s in ("connection refused", "connectionerror", "max retries exceeded",
                                   "database is locked", "temporarily unavailable", "503", "502", "timed out",
                                   "duplicate key value violates unique constraint"))




def create_run(uri: str, experiment: str, run_name: str, tags: Mapping[str, Any] | None = None) -> str:
    """Create a run without making it MLflow's active run (a study's parent run); it starts RUNNING."""
    prepare_store(uri)
    exp_id = ensure_experiment(uri, experiment)
    clean = {k: str(v) for k, v in (process_tags() | dict(tags or {})).items() if v is not None}
    return _retry(lambda: _client(uri).create_run(exp_id, run_name=run_name, tags=clean)).info.run_id


def set_status(uri: str, run_id: str, status: str) -> None:
    """Set a run's status (RUNNING while a command works on it, then a terminal one)."""
    if status in TERMINAL_STATUSES:
        end_run(uri, run_id, status)
    else:
        _retry(lambda: _client(uri).update_run(run_id, status=status))


def find_trial_records(uri: str, study: str, *, engine: str | None = None, state: str | None = None,
                       kinds: tuple[str, ...] = names.STUDY_MODEL_KINDS) -> list[names.TrialRecord]:
    """The trial (and refit) runs of ``study`` in any experiment, as engine-neutral records."""
    found: list[names.TrialRecord] = []
    for kind in kinds:
        flt = names.study_filter(study, kind=kind, engine=engine, state=state)
        found += [names.TrialRecord.from_run(r.run_id, r.tags) for r in find_runs(uri, None, filter_string=flt)]
    return found


def experiment_name(uri: str, experiment_id: str) -> str:
    """The name of the experiment with this id."""
    return _retry(lambda: _client(uri).get_experiment(experiment_id)).name
