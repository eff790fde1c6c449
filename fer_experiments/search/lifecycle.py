"""The one search lifecycle every engine plugs into.

``run_search(cfg, engine)`` does, for Optuna and keras-tuner alike (keras-tuner's own shape: one ``search()`` loop
and a ``run_trial`` that an engine overrides):

1. load the space, open the tracking store, load the data;
2. open the engine's study (create or resume) and check that the space, data and Training subset are the study's own;
3. find or create the study's parent MLflow run (once, under the engine's set-up lock);
4. let the engine run its loop; each trial goes through ``SearchRun.trial``: one child run, the progress line, the
   epochs-vs-best curve, the consecutive-failure limit, the timeout and the epoch budget;
5. end the parent run with an honest status, write the engine's summary, register the study's best COMPLETE trial
   as ``challenger`` when it is a new best.

An engine (``fer_experiments.search.engines``) only says how its study is stored and how it picks the next trial.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator, Protocol, Sequence

from fer_experiments.config import DEFAULT_CHALLENGER_ALIAS, DataConfig, SearchConfig
from fer_experiments.errors import ConfigError, DataError, FatalError
from fer_experiments.search.progress import Progress
from fer_experiments.tracking import tags

if TYPE_CHECKING:
    from fer_experiments.data import TrainingData
    from fer_experiments.spaces import SearchSpace
    from fer_experiments.tracking import TrackedRun
    from fer_experiments.training.trainer import EpochObserver, TrainResult


@dataclass(frozen=True)
class StudySettings:
    """What a study remembers from the command that created it; later commands (and workers) must agree."""

    space: "SearchSpace"
    data_digest: str
    limit: int | None
    experiment: str
    n_trials: int | None = None
    #: The hash of the space the study was created with (the space's own where the engine stores it).
    space_hash: str = ""
    space_source: str = ""

    def __post_init__(self) -> None:
        if not self.space_hash:
            object.__setattr__(self, "space_hash", self.space.content_hash())
        if not self.space_source:
            object.__setattr__(self, "space_source", str(self.space.source))


@dataclass
class SearchOutcome:
    """What a search command did and where the study stands (any engine)."""

    study: str
    engine: str
    parent_run_id: str = ""
    #: Trials this command ran, and how they ended.
    ran: int = 0
    #: The whole study: COMPLETE + PRUNED, and each state.
    finished: int = 0
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    best_value: float | None = None
    best_trial: int | None = None
    best_run_id: str | None = None
    registered_version: str | None = None
    #: Why the search stopped early (consecutive failures), or None.
    stopped: str | None = None
    notes: list[str] = field(default_factory=list)
    #: Epochs trained by this command's trials (pruned ones count what they ran).
    epochs_spent: int = 0
    #: (cumulative epochs, best COMPLETE value so far) after each trial, for engine comparisons.
    curve: list[tuple[int, float | None]] = field(default_factory=list)
    last_failure: str | None = None


@dataclass
class TrialRun:
    """How one trial's training ended: COMPLETE (``result``), FAIL (``failure``) or stopped on purpose by the
    engine (``stopped``, e.g. Optuna's pruning exception)."""

    run_id: str
    number: int
    epochs_reached: int = 0
    result: "TrainResult | None" = None
    failure: str | None = None
    stopped: BaseException | None = None

    @property
    def state(self) -> str:
        return "COMPLETE" if self.result is not None else "PRUNED" if self.stopped is not None else "FAIL"


class Engine(Protocol):
    """What the lifecycle needs from a search engine."""

    name: str

    def session(self, cfg: SearchConfig) -> ContextManager[None]:
        """Held for the whole command (e.g. Optuna's one-process-per-SQLite-file guard)."""

    def open(self, cfg: SearchConfig, space: "SearchSpace | None", data_digest: str) -> StudySettings:
        """Create the study or resume it; return its settings (identity checked with ``check_identity``)."""

    def setup_lock(self) -> ContextManager[None]:
        """A cross-process lock for creating the parent run and registering the challenger."""

    def parent_run_id(self) -> str | None:
        """The study's parent run, if one was created already."""

    def remember_parent(self, run_id: str) -> None:
        """Store the parent run's id with the study."""

    def parent_tags(self) -> dict[str, Any]:
        """Engine-specific tags of the parent run."""

    def search(self, run: "SearchRun") -> None:
        """The engine's loop: ``run.trial(...)`` per trial until ``run.should_stop()`` or the engine is done."""

    def counts(self) -> tuple[int, int, int]:
        """(complete, pruned, failed) trials of the whole study."""

    def others_running(self) -> bool:
        """Whether other workers still run trials of this study (they end the parent run then)."""

    def summarise(self, parent: "TrackedRun", tracking_uri: str) -> list[str]:
        """Engine-specific summary artifacts on the parent run; returns notes."""


def check_identity(name: str, stored: StudySettings, *, space: "SearchSpace | None", data_digest: str,
                   limit: int | None, experiment: str | None) -> None:
    """Refuse to resume study ``name`` with another space, data set, Training subset or experiment: mixing them
    would make its trials incomparable."""
    if space is not None and space.content_hash() != stored.space_hash:
        raise ConfigError(
            f"{space.source}: this search space differs from the one study {name!r} was created with "
            f"({stored.space_source}, hash {stored.space_hash[:12]}; this one {space.content_hash()[:12]}). "
            f"Start a new study with another --study name, or rerun with the original space.")
    if stored.data_digest != data_digest:
        raise DataError(f"study {name!r} was created on data with digest {str(stored.data_digest)[:12]}, this data "
                        f"has digest {data_digest[:12]}: point --data at this host's copy of the same data set")
    if limit is not None and limit != stored.limit:
        raise ConfigError(f"--limit {limit}: study {name!r} trains on limit {stored.limit}; leave --limit out to use "
                          "the study's, or start a new study")
    if experiment is not None and experiment != stored.experiment:
        raise ConfigError(f"--experiment {experiment!r}: study {name!r} logs to MLflow experiment "
                          f"{stored.experiment!r}")


def gpu_label(cfg: SearchConfig) -> str | None:
    """The GPU a worker runs on: --gpu, or FER_EXP_GPU_LABEL where a container runtime already pinned the device."""
    return str(cfg.gpu) if cfg.gpu is not None else os.environ.get("FER_EXP_GPU_LABEL")


@dataclass
class SearchRun:
    """One search command in progress: what engines call per trial."""

    cfg: SearchConfig
    engine: Engine
    space: "SearchSpace"
    settings: StudySettings
    data: "TrainingData"
    parent: "TrackedRun"
    n_trials: int
    outcome: SearchOutcome
    progress: Progress
    epoch_budget: int | None = None
    deadline: float | None = None
    consecutive_failures: int = 0

    @property
    def experiment(self) -> str:
        return self.settings.experiment

    def should_stop(self) -> str | None:
        """Why no further trial may start (consecutive failures, epoch budget, --timeout), or None."""
        if self.outcome.stopped:
            return self.outcome.stopped
        if self.epoch_budget is not None and self.outcome.epochs_spent >= self.epoch_budget:
            return "epoch budget spent"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "--timeout reached"
        return None

    def trial(self, number: int, values: dict[str, Any], epochs: int, *, extra_tags: dict[str, Any] | None = None,
              observers: Sequence["EpochObserver"] = (), stop_exceptions: tuple[type[BaseException], ...] = (),
              on_run: Callable[[str], None] | None = None) -> TrialRun:
        """Run one trial as a child run of the study's parent run and account for it."""
        objective = self.space.objective

        def show(epoch: int, metrics: dict[str, float]) -> None:
            self.progress.epoch(number, epoch, epochs, metrics, objective)

        run_tags = tags.trial_tags(study=self.cfg.study, engine=self.engine.name, number=number) | {
            tags.HOST: socket.gethostname(), tags.GPU: gpu_label(self.cfg)} | (extra_tags or {})
        done = tracked_trial(tracking_uri=self.cfg.tracking_uri, experiment=self.experiment,
                             parent_run_id=self.parent.run_id, number=number, tags=run_tags, data=self.data,
                             values=values, epochs=epochs, objective=objective,
                             extra_params={tags.PARAM_SPACE: self.space.name,
                                           tags.PARAM_ENGINE: self.engine.name},
                             observers=[show, *observers], stop_exceptions=stop_exceptions, on_run=on_run)
        self._account(done)
        return done

    def _account(self, done: TrialRun) -> None:
        out = self.outcome
        out.ran += 1
        out.epochs_spent += done.epochs_reached
        value = done.result.objective_value if done.result is not None else None
        if done.state == "FAIL":
            self.consecutive_failures += 1
            out.last_failure = done.failure
            if self.consecutive_failures >= self.cfg.max_consecutive_failures:
                out.stopped = f"{self.consecutive_failures} consecutive failed trials"
        else:
            self.consecutive_failures = 0
        self.progress.trial_end(done.number, done.state, value if done.state != "PRUNED" else None,
                                done.failure or "")
        out.curve.append((out.epochs_spent, self.progress.best))
        if value is not None and self.progress.best is not None:
            self.parent.log_metrics({tags.BEST_VALUE: self.progress.best}, step=done.number)


def tracked_trial(*, tracking_uri: str, experiment: str, parent_run_id: str, number: int, tags: dict[str, Any],
                  data: "TrainingData", values: dict[str, Any], epochs: int, objective: str,
                  extra_params: dict[str, Any], observers: Sequence["EpochObserver"] = (),
                  stop_exceptions: tuple[type[BaseException], ...] = (),
                  on_run: Callable[[str], None] | None = None) -> TrialRun:
    """One trial as a child MLflow run of the study's parent run.

    The run ends FINISHED (trial_state COMPLETE), FAILED (FAIL, with the reason: NaN loss, out of memory, an invalid
    combination or any other error of this trial alone) or KILLED (PRUNED, tagged with the epoch reached, when an
    observer raises one of ``stop_exceptions``). Ctrl-C/SIGTERM propagate after tagging the run FAIL.
    """
    from fer_experiments.errors import TrialFailed
    from fer_experiments.params import split_params
    from fer_experiments.tracking import start_run, tags as names
    from fer_experiments.tracking.training_run import base_tags, tracked_training

    reached = {"epoch": 0}

    def count(epoch: int, metrics: dict[str, float]) -> None:
        reached["epoch"] = epoch

    with start_run(tracking_uri, experiment, run_name=f"trial-{number}", tags=base_tags(data) | tags,
                   parent_run_id=parent_run_id) as run:
        if on_run is not None:
            on_run(run.run_id)
        outcome = TrialRun(run_id=run.run_id, number=number)
        try:
            model_params, train_params = split_params(values | {"epochs": epochs})
            outcome.result = tracked_training(run, model_params, train_params, data, objective=objective,
                                              extra_params={names.TRIAL_NUMBER: number} | extra_params,
                                              observers=[count, *observers])
        except stop_exceptions as exc:
            run.set_tags({names.TRIAL_STATE: "PRUNED", names.PRUNED_AT_EPOCH: reached["epoch"]})
            # Pruned = stopped on purpose before its last epoch: KILLED, for every pruned trial alike.
            run.final_status = "KILLED"
            outcome.stopped = exc
        except KeyboardInterrupt:
            run.set_tags({names.TRIAL_STATE: "FAIL"})
            raise
        except (TrialFailed, ConfigError) as exc:
            outcome.failure = str(exc)
        except Exception as exc:  # noqa: BLE001 - an unexpected error fails this trial, not the search
            outcome.failure = f"{type(exc).__name__}: {exc}"
        if outcome.failure is not None:
            outcome.failure = outcome.failure.splitlines()[0][:1000] if outcome.failure else "unknown error"
            run.set_tags({names.TRIAL_STATE: "FAIL", names.FAILURE_REASON: outcome.failure})
            run.final_status = "FAILED"
        elif outcome.result is not None:
            run.set_tags({names.TRIAL_STATE: "COMPLETE", names.OBJECTIVE_VALUE: outcome.result.objective_value})
    outcome.epochs_reached = reached["epoch"]
    return outcome


def run_search(cfg: SearchConfig, engine: Engine, *, space: "SearchSpace | None" = None,
               epoch_budget: int | None = None, register: bool = True, progress_stream: Any = None) -> SearchOutcome:
    """Run the search ``cfg`` describes with ``engine``; see the module docstring.

    ``space`` replaces the YAML file (engine comparisons vary its sampler and pruner); ``epoch_budget`` stops the
    search once its trials have trained that many epochs; ``register=False`` leaves the registry alone.
    Raises FatalError after ``max_consecutive_failures`` failed trials in a row or when no trial could finish.
    """
    with engine.session(cfg):
        return _run(cfg, engine, space, epoch_budget, register, progress_stream)


def _run(cfg: SearchConfig, engine: Engine, space: "SearchSpace | None", epoch_budget: int | None, register: bool,
         progress_stream: Any) -> SearchOutcome:
    from fer_experiments.data import load_dataset, load_training_data
    from fer_experiments.spaces import load_space, resolve_space_path
    from fer_experiments.tracking import TrackedRun, prepare_store, set_status

    if space is None and cfg.space_path is not None:
        space = load_space(resolve_space_path(cfg.space_path))
    prepare_store(cfg.tracking_uri)
    dataset = load_dataset(cfg.data.path, cache_dir=cfg.data.cache_dir)
    settings = engine.open(cfg, space, dataset.digest)
    check_identity(cfg.study, settings, space=space, data_digest=dataset.digest, limit=cfg.data.limit,
                   experiment=cfg.experiment)
    n_trials = cfg.n_trials if cfg.n_trials is not None else settings.n_trials
    if n_trials is None:
        raise ConfigError(f"study {cfg.study!r} has no --n-trials target yet; give --n-trials")
    data = load_training_data(DataConfig(path=cfg.data.path, limit=settings.limit, subset_seed=cfg.data.subset_seed,
                                         cache_dir=cfg.data.cache_dir), dataset)
    parent_id = _ensure_parent_run(cfg, engine, settings)
    outcome = SearchOutcome(study=cfg.study, engine=engine.name, parent_run_id=parent_id)
    parent = TrackedRun(parent_id, cfg.tracking_uri)
    progress = Progress(n_trials, progress_stream)
    best = best_trial_record(cfg.tracking_uri, cfg.study, engine.name)
    complete, pruned, failed = engine.counts()
    progress.seed(complete + pruned, complete, pruned, failed, best.objective_value if best else None,
                  best.number if best else None)
    run = SearchRun(cfg=cfg, engine=engine, space=settings.space, settings=settings, data=data, parent=parent,
                    n_trials=n_trials, outcome=outcome, progress=progress, epoch_budget=epoch_budget,
                    deadline=None if cfg.timeout_seconds is None else time.monotonic() + cfg.timeout_seconds)
    final = "FAILED"
    # From here on the parent run is RUNNING; every way out below gives it a terminal status.
    set_status(cfg.tracking_uri, parent_id, "RUNNING")
    try:
        engine.search(run)
        final = "FAILED" if outcome.stopped else "FINISHED"
    except KeyboardInterrupt:
        final = "KILLED"
        raise
    finally:
        if final != "FINISHED" or not engine.others_running():
            set_status(cfg.tracking_uri, parent_id, final)
    _finish(run, register)
    return outcome


def _ensure_parent_run(cfg: SearchConfig, engine: Engine, settings: StudySettings) -> str:
    """The study's parent MLflow run, created once (under the engine's lock) by the first command."""
    from fer_experiments.tracking import create_run, redact_uri
    from fer_experiments.tracking.runs import git_commit

    with engine.setup_lock():
        # Read under the lock: another worker may have created it since this one opened the study.
        known = engine.parent_run_id()
        if known:
            return known
        space = settings.space
        commit = git_commit()
        run_id = create_run(cfg.tracking_uri, settings.experiment, f"study-{cfg.study}", tags={
            tags.KIND: tags.KIND_STUDY, tags.ENGINE: engine.name, tags.STUDY: cfg.study,
            tags.STORAGE: redact_uri(cfg.storage), tags.SPACE_FILE: str(space.source),
            tags.SPACE_HASH: space.content_hash(), tags.SPACE_NAME: space.name, tags.DATA_DIGEST: settings.data_digest,
            tags.TRAIN_LIMIT: str(settings.limit), tags.GIT_COMMIT: commit, tags.MLFLOW_GIT_COMMIT: commit,
            tags.OBJECTIVE: space.objective} | engine.parent_tags())
        engine.remember_parent(run_id)
        return run_id


def _finish(run: SearchRun, register: bool) -> None:
    """Counts, best trial, summary and challenger after the loop (also after a fatal stop)."""
    from fer_experiments.tracking import TrackedRun

    cfg, out, engine = run.cfg, run.outcome, run.engine
    out.complete, out.pruned, out.failed = engine.counts()
    out.finished = out.complete + out.pruned
    best = best_trial_record(cfg.tracking_uri, cfg.study, engine.name)
    if best is not None:
        out.best_value, out.best_trial, out.best_run_id = best.objective_value, best.number, best.run_id
    try:
        out.notes += engine.summarise(TrackedRun(out.parent_run_id, cfg.tracking_uri), cfg.tracking_uri)
    except Exception as exc:  # noqa: BLE001 - a summary must never lose the trials already run
        out.notes.append(f"summary incomplete: {type(exc).__name__}: {exc}")
    if register:
        with engine.setup_lock():  # workers ending together register the new best once
            out.registered_version = register_challenger(cfg, run.settings, out)
    if out.stopped:
        raise FatalError(f"search stopped: {out.stopped} (last reason: {out.last_failure or 'none'}); "
                         f"{format_outcome(out)}")
    if out.ran and out.finished == 0 and out.failed:
        raise FatalError(f"{engine.name} study {cfg.study!r}: no trial finished ({out.failed} failed; last reason: "
                         f"{out.last_failure or 'unknown'})")


def best_trial_record(tracking_uri: str, study: str, engine: str | None = None) -> "tags.TrialRecord | None":
    """The study's best COMPLETE trial as its MLflow runs record it (pruned and failed trials never qualify)."""
    from fer_experiments.tracking import find_trial_records

    complete = [r for r in find_trial_records(tracking_uri, study, engine=engine, state="COMPLETE")
                if r.objective_value is not None]
    return max(complete, key=lambda r: (r.objective_value, -r.number)) if complete else None


def register_challenger(cfg: SearchConfig, settings: StudySettings, out: SearchOutcome) -> str | None:
    """Register the study's best COMPLETE run as a new version with the ``challenger`` alias, once per new best."""
    from fer_experiments.tracking import get_run
    from fer_experiments.tracking.model_registry import register_run_model, set_alias

    if out.best_run_id is None:
        return None
    parent = get_run(cfg.tracking_uri, out.parent_run_id)
    if parent.tags.get(tags.CHALLENGER_RUN) == out.best_run_id:
        return None
    version, _ = register_run_model(cfg.tracking_uri, cfg.model_name, out.best_run_id, tags={
        tags.VERSION_STUDY: cfg.study, tags.VERSION_TRIAL: out.best_trial, tags.VERSION_ENGINE: out.engine,
        tags.OBJECTIVE: settings.space.objective, tags.OBJECTIVE_VALUE: out.best_value,
        tags.DATA_DIGEST: settings.data_digest})
    set_alias(cfg.tracking_uri, cfg.model_name, DEFAULT_CHALLENGER_ALIAS, version.version)
    from fer_experiments.tracking import TrackedRun

    TrackedRun(out.parent_run_id, cfg.tracking_uri).set_tags({tags.CHALLENGER_RUN: out.best_run_id})
    return version.version


def format_outcome(o: SearchOutcome) -> str:
    """One line: the study's trial counts and its best trial."""
    best = "none" if o.best_value is None else f"{o.best_value:.4f} (trial {o.best_trial})"
    return (f"study {o.study}: {o.finished} finished ({o.complete} complete, {o.pruned} pruned), {o.failed} failed; "
            f"best {best}")


@contextlib.contextmanager
def no_lock() -> Iterator[None]:
    """For engines whose study lives with one process."""
    yield
