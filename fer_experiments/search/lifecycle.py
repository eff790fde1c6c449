"""The one search lifecycle every engine plugs into.

``run_search(cfg, engine)`` does, for Optuna and keras-tuner alike (keras-tuner's own shape: one ``search()`` loop
and a ``run_trial`` that an engine overrides):

1. load the space, open the tracking store, load the data;
2. open the engine's study (create or resume) and check that the space, data and Training subset are the study's own;
3. find or create the study's parent MLflow run (once, under the engine's set-up lock);
4. let the engine run its loop; each trial goes through ``SearchRun.trial``: one child run (``search.trial``), the
   progress line, the epochs-vs-best curve, the consecutive-failure limit, the timeout and the epoch budget;
5. refit (when the space has ``refit:`` and ``--no-refit`` is not given): retrain the top-K COMPLETE trials'
   configurations on all of Training (PublicTest still picks the epoch), each a child run tagged ``fer.kind=refit``
   and ``fer.refit_of=<trial run>``; a refit is done once its run is FINISHED, so an interrupted one is redone by
   the next command;
6. end the parent run with an honest status, write the engine's summary, register the best refit (else the study's
   best COMPLETE trial) as ``challenger`` when it is a new best.

``--budget`` bounds the whole command by wall time: trials stop starting when what is left is what the refits need
(estimated from the images/s the top trials measured, at most ``refit.budget_share`` of the budget), every training
is bounded by time (``TrainParams.time_budget_s``: it stops after the epoch that would overrun, keeping the best
epoch), and the refits share what is left.

An engine (``fer_experiments.search.engines``) only says how its study is stored and how it picks the next trial.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator, Protocol, Sequence

from fer_experiments.config import DEFAULT_CHALLENGER_ALIAS, DataConfig, SearchConfig
from fer_experiments.errors import ConfigError, DataError, FatalError
from fer_experiments.search.progress import Progress
from fer_experiments.search.trial import TrialRun, gpu_label, tracked_trial
from fer_experiments.tracking import tags

if TYPE_CHECKING:
    from fer_experiments.data import TrainingData
    from fer_experiments.spaces import SearchSpace
    from fer_experiments.tracking import TrackedRun
    from fer_experiments.training.trainer import EpochObserver


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


#: The phases a search command's wall time is recorded in (``SearchOutcome.timings``): set-up before the engine's
#: loop (space, store, data, study, parent run); per trial, its run's start (``trial_setup``), the training up to its
#: last epoch (``training``, with the per-epoch metrics and the params logged before it) and the end-of-trial logging
#: and run end (``tracking``: evaluation artifacts, figures, the model); after the loop, the engine's summary and the
#: challenger registration. Time not in a phase is the engine's own (asking, pruning, reconciling).
TIMED_PHASES: tuple[str, ...] = ("setup", "trial_setup", "training", "tracking", "summary", "registration")


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
    #: Refits this command ran: (trial number, refit run id, state, objective value).
    refits: list[tuple[int, str, str, float | None]] = field(default_factory=list)
    #: The run registered (or kept) as challenger: the best refit, else the best trial.
    challenger_run_id: str | None = None
    challenger_trial: int | None = None
    challenger_value: float | None = None
    #: Wall seconds per phase of ``TIMED_PHASES``, summed over this command's trials: where a search's time goes
    #: (``bench/search_overhead.py`` reads it).
    timings: dict[str, float] = field(default_factory=dict)

    def add_time(self, phase: str, seconds: float) -> None:
        """Add ``seconds`` to ``phase`` (one of ``TIMED_PHASES``)."""
        if phase not in TIMED_PHASES:
            raise ValueError(f"unknown phase {phase!r}; phases: {', '.join(TIMED_PHASES)}")
        self.timings[phase] = self.timings.get(phase, 0.0) + seconds


class InterruptHold:
    """Holds a Ctrl-C / SIGTERM that arrives while a finished trial is being recorded, and delivers it right after.

    Between the end of a trial's training and its engine recording the outcome (Optuna's ``tell``) an interruption
    would fail a trial whose MLflow run already says COMPLETE; held, it lands between trials instead.
    """

    def __init__(self) -> None:
        self.holding = False
        self.pending: BaseException | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers belong to the main thread; elsewhere nothing is held
            return
        from fer_experiments.errors import Terminated

        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum: int, frame: Any) -> None:
            exc: BaseException = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
            if self.holding:
                self.pending = exc
                return
            raise exc

        for sig in previous:
            signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def hold(self) -> None:
        self.holding = True

    def release(self) -> None:
        """Stop holding; raise the interruption that arrived meanwhile, if any."""
        self.holding = False
        if self.pending is not None:
            exc, self.pending = self.pending, None
            raise exc


@dataclass
class Interruption:
    """What a Ctrl-C (or SIGTERM) stopped, attached to the KeyboardInterrupt as ``exc.search_interruption``."""

    #: The trial that was running (now FAIL, its MLflow run KILLED), or None when it came between trials.
    running_trial: int | None
    best_trial: int | None = None
    best_value: float | None = None
    #: The challenger version registered on the way out (a new best found before the interruption).
    registered_version: str | None = None
    note: str | None = None


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
    #: The trial being run now (set by the engine as soon as its trial exists), None between trials: what an
    #: interruption stops.
    running_trial: int | None = None
    interrupts: InterruptHold = field(default_factory=InterruptHold)
    #: ``--budget``: ``time.time()`` by which the command ends, and that budget's length in seconds.
    budget_deadline: float | None = None
    budget_seconds: float = 0.0
    #: The space's ``refit:`` settings when this command refits, else None.
    refit_plan: dict[str, Any] | None = None
    #: Seconds the refits are estimated to need (updated after every trial under --budget).
    refit_need: float = 0.0
    #: Wall seconds of a one-epoch trial as this command measured them (a trial's wall time less all its epochs but
    #: one): a trial is not started when less than that is left of the trials' share of a --budget.
    epoch_seconds: list[float] = field(default_factory=list)
    #: Wall seconds a trial took outside ``train_model`` (run set-up, evaluation artifacts, model logging).
    logging_seconds: list[float] = field(default_factory=list)

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
        if self.budget_deadline is not None:
            left = self.trials_end() - time.time()
            # The least a trial costs: build, tracing, one epoch, evaluation and logging (measured; a guess before).
            floor = sorted(self.epoch_seconds)[len(self.epoch_seconds) // 2] if self.epoch_seconds else 20.0
            if left <= floor:
                return "--budget: the time left is the refit's" if self.refit_plan else "--budget spent"
        return None

    @property
    def final_reserve(self) -> float:
        """Seconds kept at the end of a --budget for the summary, the registration and the exit."""
        return min(30.0, max(5.0, 0.03 * self.budget_seconds))

    def after_training(self) -> float:
        """Seconds a training run costs after its training (median measured; 15 before any measurement)."""
        return sorted(self.logging_seconds)[len(self.logging_seconds) // 2] if self.logging_seconds else 15.0

    def trials_end(self) -> float:
        """Under --budget: the ``time.time()`` after which no trial may train (the rest is the refits')."""
        assert self.budget_deadline is not None
        return self.budget_deadline - self.final_reserve - self.refit_need

    def trial(self, number: int, values: dict[str, Any], epochs: int, *, extra_tags: dict[str, Any] | None = None,
              observers: Sequence["EpochObserver"] = (), stop_exceptions: tuple[type[BaseException], ...] = (),
              on_run: Callable[[str], None] | None = None, hold_interrupts: bool = False) -> TrialRun:
        """Run one trial as a child run of the study's parent run and account for it.

        ``hold_interrupts``: from the trial's end, hold Ctrl-C / SIGTERM until the engine has recorded the outcome
        and calls ``self.interrupts.release()``.
        """
        objective = self.space.objective

        def show(epoch: int, metrics: dict[str, float]) -> None:
            self.progress.epoch(number, epoch, epochs, metrics, objective)

        def show_batch(epoch: int, step: int, steps: int) -> None:
            self.progress.batch(number, epoch, epochs, step, steps)

        run_tags = tags.trial_tags(study=self.cfg.study, engine=self.engine.name, number=number) | {
            tags.HOST: socket.gethostname(), tags.GPU: gpu_label(self.cfg)} | (extra_tags or {})
        self.running_trial = number
        self.progress.trial_start(number)
        if self.budget_deadline is not None:
            # A trial never trains past the trials' share of the budget (it stops after the epoch that would overrun),
            # less what logging it takes afterwards.
            left = self.trials_end() - time.time() - self.after_training()
            values = values | {"time_budget_s": max(1.0, round(left, 1))}
        started = time.time()
        done = tracked_trial(tracking_uri=self.cfg.tracking_uri, experiment=self.experiment,
                             parent_run_id=self.parent.run_id, number=number, tags=run_tags, data=self.data,
                             values=values, epochs=epochs, objective=objective,
                             extra_params={tags.PARAM_SPACE: self.space.name,
                                           tags.PARAM_ENGINE: self.engine.name},
                             observers=[show, *observers], stop_exceptions=stop_exceptions, on_run=on_run,
                             on_phase=self.outcome.add_time,
                             on_end=self.interrupts.hold if hold_interrupts else None,
                             on_batch=show_batch if self.progress.tty else None)
        self.running_trial = None
        if done.epochs_reached:
            wall = time.time() - started
            fit = done.result.train_seconds if done.result is not None else 0.0
            self.epoch_seconds.append(wall - fit + fit / done.epochs_reached)
        if done.result is not None:
            self.logging_seconds.append(max(0.0, time.time() - started - done.result.wall_seconds))
        self._account(done)
        if self.budget_deadline is not None and self.refit_plan is not None:
            self.refit_need = estimate_refit_seconds(self)
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


def run_search(cfg: SearchConfig, engine: Engine, *, space: "SearchSpace | None" = None,
               epoch_budget: int | None = None, register: bool = True, progress_stream: Any = None) -> SearchOutcome:
    """Run the search ``cfg`` describes with ``engine``; see the module docstring.

    ``space`` replaces the YAML file (engine comparisons vary its sampler and pruner); ``epoch_budget`` stops the
    search once its trials have trained that many epochs; ``register=False`` leaves the registry alone.
    Raises FatalError after ``max_consecutive_failures`` failed trials in a row or when no trial could finish.
    """
    if space is None and cfg.space_path is not None:
        from fer_experiments.spaces import load_space, resolve_space_path

        # Before the engine's session: a space with an error must leave nothing behind (no lock file, no store).
        space = load_space(resolve_space_path(cfg.space_path))
    _check_stores_writable(cfg)
    with engine.session(cfg):
        return _run(cfg, engine, space, epoch_budget, register, progress_stream)


def _check_stores_writable(cfg: SearchConfig) -> None:
    """Both stores writable before anything is written to either (one line naming the store, exit 5)."""
    from fer_experiments.locks import sqlite_write_problem
    from fer_experiments.tracking.store import check_store_writable, redact_uri

    check_store_writable(cfg.tracking_uri)
    problem = sqlite_write_problem(cfg.storage)
    if problem:
        raise FatalError(f"the Optuna storage {redact_uri(cfg.storage)} cannot be written: {problem}")


def _run(cfg: SearchConfig, engine: Engine, space: "SearchSpace | None", epoch_budget: int | None, register: bool,
         progress_stream: Any) -> SearchOutcome:
    from fer_experiments.data import load_dataset, load_training_data
    from fer_experiments.tracking import TrackedRun, prepare_store, set_status
    from fer_experiments.tracking.runs import heartbeat, process_tags

    started = time.perf_counter()
    # The first ~30 s (decoding the data, opening the stores, importing TensorFlow) say what they do.
    early = Progress(cfg.n_trials or 0, progress_stream)
    early.header(command_header(cfg, engine.name, space))
    with early.step(f"loading data {cfg.data.path}"):
        dataset = load_dataset(cfg.data.path, cache_dir=cfg.data.cache_dir)
    with early.step("opening the MLflow and Optuna stores"):
        prepare_store(cfg.tracking_uri)
        settings = engine.open(cfg, space, dataset.digest)
    check_identity(cfg.study, settings, space=space, data_digest=dataset.digest, limit=cfg.data.limit,
                   experiment=cfg.experiment)
    n_trials = cfg.n_trials if cfg.n_trials is not None else settings.n_trials
    if n_trials is None:
        raise ConfigError(f"study {cfg.study!r} has no --n-trials target yet; give --n-trials")
    data = load_training_data(DataConfig(path=cfg.data.path, limit=settings.limit, subset_seed=cfg.data.subset_seed,
                                         cache_dir=cfg.data.cache_dir), dataset)
    plan = (space or settings.space).refit
    refit_planned = cfg.refit is not False and (plan is not None or bool(cfg.refit))
    _check_budget_fits(cfg, (plan or _DEFAULT_REFIT)["budget_share"] if refit_planned else 0.0,
                       sum(engine.counts()[:2]))
    parent_id = _ensure_parent_run(cfg, engine, settings)
    outcome = SearchOutcome(study=cfg.study, engine=engine.name, parent_run_id=parent_id)
    parent = TrackedRun(parent_id, cfg.tracking_uri)
    progress = Progress(n_trials, progress_stream)
    best = best_trial_record(cfg.tracking_uri, cfg.study, engine.name)
    complete, pruned, failed = engine.counts()
    progress.header(search_header(cfg, engine.name, settings, data, n_trials, complete + pruned))
    with progress.step("starting TensorFlow"):
        import fer_experiments.training.trainer  # noqa: F401 - imports Keras: the first trial would sit silent
    progress.seed(complete + pruned, complete, pruned, failed, best.objective_value if best else None,
                  best.number if best else None)
    run = SearchRun(cfg=cfg, engine=engine, space=settings.space, settings=settings, data=data, parent=parent,
                    n_trials=n_trials, outcome=outcome, progress=progress, epoch_budget=epoch_budget,
                    deadline=None if cfg.timeout_seconds is None else time.monotonic() + cfg.timeout_seconds,
                    budget_deadline=cfg.budget_deadline)
    # The YAML's refit settings (not part of the study's identity) win over the ones stored with the study.
    if cfg.refit is not False and (plan is not None or cfg.refit):
        run.refit_plan = plan or dict(_DEFAULT_REFIT)
    if cfg.budget_deadline is not None:
        run.budget_seconds = max(0.0, cfg.budget_deadline - time.time())
        if run.refit_plan is not None:
            run.refit_need = estimate_refit_seconds(run)
    final = "FAILED"
    # From here on the parent run is RUNNING; every way out below gives it a terminal status.
    set_status(cfg.tracking_uri, parent_id, "RUNNING")
    parent.set_tags(process_tags())  # this command now keeps the parent run RUNNING: reconcile checks on it
    outcome.add_time("setup", time.perf_counter() - started)
    try:
        with heartbeat(cfg.tracking_uri, parent_id), run.interrupts.installed():
            engine.search(run)
            if run.refit_plan is not None and not outcome.stopped and not engine.others_running():
                refit(run)
        final = "FAILED" if outcome.stopped else "FINISHED"
    except KeyboardInterrupt as exc:
        final = "KILLED"
        exc.search_interruption = _on_interrupt(run, register)  # type: ignore[attr-defined]
        raise
    finally:
        if final != "FINISHED" or not engine.others_running():
            set_status(cfg.tracking_uri, parent_id, final)
    _finish(run, register)
    return outcome


#: Seconds a first trial needs at the least (build, tracing, one epoch, evaluation, logging; ``should_stop``'s
#: guess before any measurement) and importing TensorFlow takes before it.
_FIRST_TRIAL_SECONDS = 20.0
_BACKEND_START_SECONDS = 10.0


def _check_budget_fits(cfg: SearchConfig, refit_share: float, finished: int) -> None:
    """ConfigError, before anything is logged, when a --budget leaves no time for the first trial of a study that
    has none yet (it would run 0 trials and exit 0 without a word): what is left after set-up, the refit's share
    and the final reserve, against what a trial needs."""
    if cfg.budget_deadline is None or finished > 0:
        return
    left = cfg.budget_deadline - time.time()
    reserve = min(30.0, max(5.0, 0.03 * left))  # SearchRun.final_reserve
    for_trials = left * (1 - refit_share) - reserve - _BACKEND_START_SECONDS
    if for_trials <= _FIRST_TRIAL_SECONDS:
        need = (_FIRST_TRIAL_SECONDS + _BACKEND_START_SECONDS + 30.0) / (1 - refit_share)
        why = f"{refit_share:.0%} of it is kept for the refit, " if refit_share else ""
        raise ConfigError(f"--budget: too short to run a single trial ({left:.0f} s left after set-up; {why}"
                          f"{reserve:.0f} s for the summary, and a first trial needs ~{_FIRST_TRIAL_SECONDS:.0f} s "
                          f"after TensorFlow starts); give at least --budget {math.ceil(need / 60)}m")


def _on_interrupt(run: SearchRun, register: bool) -> Interruption:
    """Say what the interruption stopped, and register a new best found before it as challenger now rather than at
    the next resume (a failure to do so is a note: the interruption itself must go through)."""
    cfg, out = run.cfg, run.outcome
    info = Interruption(running_trial=run.running_trial)
    try:
        best = best_trial_record(cfg.tracking_uri, cfg.study, run.engine.name)
        if best is not None:
            info.best_trial, info.best_value = best.number, best.objective_value
            out.best_value, out.best_trial, out.best_run_id = best.objective_value, best.number, best.run_id
            if register:
                with run.engine.setup_lock():
                    info.registered_version = register_challenger(cfg, run.settings, out)
    except Exception as exc:  # noqa: BLE001 - housekeeping on the way out; the next run registers it
        info.note = f"challenger not registered: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return info


def _ensure_parent_run(cfg: SearchConfig, engine: Engine, settings: StudySettings) -> str:
    """The study's parent MLflow run, created once (under the engine's lock) by the first command."""
    from fer_experiments.tracking import TrackedRun, create_run, redact_uri
    from fer_experiments.tracking.runs import command_source, git_commit

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
            tags.OBJECTIVE: space.objective, tags.MLFLOW_SOURCE_NAME: command_source(),
            tags.MLFLOW_SOURCE_TYPE: "LOCAL"} | engine.parent_tags())
        TrackedRun(run_id, cfg.tracking_uri).log_params(study_params(engine.name, settings))
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
    parent = TrackedRun(out.parent_run_id, cfg.tracking_uri)
    started = time.perf_counter()
    chosen = best_trial_record(cfg.tracking_uri, cfg.study, engine.name, kinds=(tags.KIND_REFIT,)) or best
    if chosen is not None:
        out.challenger_run_id, out.challenger_trial = chosen.run_id, chosen.number
        out.challenger_value = chosen.objective_value
    try:
        out.notes += engine.summarise(parent, cfg.tracking_uri)
    except Exception as exc:  # noqa: BLE001 - a summary must never lose the trials already run
        out.notes.append(f"summary incomplete: {type(exc).__name__}: {exc}")
    out.add_time("summary", time.perf_counter() - started)
    if register:
        started = time.perf_counter()
        with engine.setup_lock():  # workers ending together register the new best once
            out.registered_version = register_challenger(cfg, run.settings, out)
        out.add_time("registration", time.perf_counter() - started)
    try:
        describe_parent(parent, cfg, run.settings, out)
    except Exception as exc:  # noqa: BLE001 - a description must never lose the trials already run
        out.notes.append(f"study description incomplete: {type(exc).__name__}: {exc}")
    try:
        from fer_experiments.search.report import log_study_report

        log_study_report(cfg.study, cfg.tracking_uri, cfg.storage if engine.name == "optuna" else None, parent)
    except Exception as exc:  # noqa: BLE001 - the report is a view; the study is what matters
        out.notes.append(f"study report not written: {type(exc).__name__}: {exc}")
    if out.stopped:
        raise FatalError(f"search stopped: {out.stopped} (last reason: {out.last_failure or 'none'}); "
                         f"{format_outcome(out)}")
    if out.ran and out.finished == 0 and out.failed:
        raise FatalError(f"{engine.name} study {cfg.study!r}: no trial finished ({out.failed} failed; last reason: "
                         f"{out.last_failure or 'unknown'})")


def command_header(cfg: SearchConfig, engine: str, space: "SearchSpace | None") -> list[tuple[str, str]]:
    """What a search command searches, printed before anything slow starts (storages without passwords)."""
    from fer_experiments.tracking import redact_uri

    lines = [("study", f"{cfg.study} ({engine})")]
    if space is not None:
        lines += [("space", f"{space.name} ({space.source}, hash {space.content_hash()[:12]})"),
                  ("target", f"maximise {space.objective} on PublicTest; up to {space.max_epochs} epochs a trial"
                             + (f"; {cfg.n_trials} finished trials" if cfg.n_trials else ""))]
    lines.append(("MLflow", redact_uri(cfg.tracking_uri)))
    if engine == "optuna":
        lines.append(("storage", redact_uri(cfg.storage)))
    return lines


def search_header(cfg: SearchConfig, engine: str, settings: StudySettings, data: "TrainingData", n_trials: int,
                  finished: int) -> list[tuple[str, str]]:
    """What the study holds once opened: its data (digest, subset), experiment and progress so far."""
    limit = f"{len(data.train.y)} Training rows" + (f" (limit {settings.limit})" if settings.limit else " (all)")
    return [
        ("data", f"{data.dataset.source} (digest {data.dataset.digest[:12]}); {limit}, "
                 f"{len(data.val.y)} PublicTest rows"),
        ("experiment", f"{settings.experiment} (space {settings.space.name}, hash {settings.space_hash[:12]})"),
        ("trials", f"{finished} of {n_trials} finished so far"),
    ]


def study_params(engine: str, settings: StudySettings) -> dict[str, Any]:
    """The study's settings as its parent run's params (fixed for the study's life, as MLflow params must be)."""
    space = settings.space
    params: dict[str, Any] = {tags.PARAM_ENGINE: engine, tags.PARAM_SPACE: space.name,
                              tags.SPACE_FILE: settings.space_source, tags.OBJECTIVE: space.objective,
                              tags.PARAM_MAX_EPOCHS: space.max_epochs, tags.TRAIN_LIMIT: settings.limit,
                              tags.DATA_DIGEST: settings.data_digest[:12]}
    if engine == "optuna":
        params |= {tags.PARAM_SAMPLER: space.sampler, tags.PARAM_PRUNER: space.pruner}
    for spec in space.params:
        params[tags.PARAM_SPACE_PREFIX + spec.name] = spec.describe() + (
            f" when {', '.join(f'{k} in {list(v)}' for k, v in spec.when)}" if spec.when else "")
    return params


def describe_parent(parent: "TrackedRun", cfg: SearchConfig, settings: StudySettings, out: SearchOutcome) -> None:
    """The parent run's description (MLflow's note) with the outcome, and the best trial's params.

    MLflow params cannot change once logged: the best trial's params (``best.<name>``) are logged with the first
    best; the ``best_trial`` tag and the description always name the current best.
    """
    from fer_experiments.models.labels import run_name
    from fer_experiments.tracking import get_run

    space = settings.space
    lines = [f"**Study {cfg.study}** ({out.engine}): space `{space.name}`, maximise `{space.objective}` on "
             f"PublicTest, up to {space.max_epochs} epochs a trial, Training limit {settings.limit}.", "",
             f"{out.finished} finished ({out.complete} complete, {out.pruned} pruned), {out.failed} failed."]
    if out.best_run_id is not None and out.best_value is not None:
        best = get_run(cfg.tracking_uri, out.best_run_id)
        values = {k: v for k, v in best.params.items() if k in _hyperparameter_names()}
        searched = {k: v for k, v in values.items() if k in space.names}
        lines += ["", f"Best: **{space.objective} {out.best_value:.4f}**, trial {out.best_trial} "
                      f"(`{run_name(out.best_trial or 0, values)}`, run {out.best_run_id})."]
        info = parent.info()
        best_key = tags.PARAM_BEST_PREFIX + "trial"
        logged = {k: v for k, v in info.params.items() if k.startswith(tags.PARAM_BEST_PREFIX)}
        if not logged:
            parent.log_params({tags.PARAM_BEST_PREFIX + k: v for k, v in searched.items()} | {best_key: out.best_trial})
        elif logged.get(best_key) != str(out.best_trial):
            lines.append(f"(The `best.*` params are trial {logged.get(best_key)}'s, the first best; MLflow params "
                         "cannot change.)")
        parent.set_tags({tags.BEST_TRIAL: out.best_trial})
    version = out.registered_version or None
    if version:
        lines.append(f"Registered as {cfg.model_name} version {version} (alias `{DEFAULT_CHALLENGER_ALIAS}`).")
    if out.stopped:
        lines.append(f"Stopped early: {out.stopped}.")
    lines += ["", "Report: `summary/report.html` in this run's artifacts."]
    parent.set_tags({tags.MLFLOW_NOTE: "\n".join(lines)})


def _hyperparameter_names() -> set[str]:
    """The names of the family's model and training parameters (what a trial's params hold besides bookkeeping)."""
    import dataclasses

    from fer_experiments.params import ModelParams, TrainParams

    return {f.name for f in (*dataclasses.fields(ModelParams), *dataclasses.fields(TrainParams))}


def best_trial_record(tracking_uri: str, study: str, engine: str | None = None,
                      kinds: tuple[str, ...] = (tags.KIND_TRIAL,)) -> "tags.TrialRecord | None":
    """The study's best COMPLETE trial (or refit, with ``kinds``) as its MLflow runs record it (pruned and failed
    trials never qualify)."""
    from fer_experiments.tracking import find_trial_records

    complete = [r for r in find_trial_records(tracking_uri, study, engine=engine, state="COMPLETE", kinds=kinds)
                if r.objective_value is not None]
    return max(complete, key=lambda r: (r.objective_value, -r.number)) if complete else None


def register_challenger(cfg: SearchConfig, settings: StudySettings, out: SearchOutcome) -> str | None:
    """Register the study's challenger (its best refit, else its best COMPLETE trial) as a new version with the
    ``challenger`` alias, once per new challenger run."""
    from fer_experiments.tracking import get_run
    from fer_experiments.tracking.model_registry import register_run_model, set_alias

    run_id = out.challenger_run_id or out.best_run_id
    if run_id is None:
        return None
    parent = get_run(cfg.tracking_uri, out.parent_run_id)
    if parent.tags.get(tags.CHALLENGER_RUN) == run_id:
        return None
    trial = out.challenger_trial if out.challenger_run_id else out.best_trial
    value = out.challenger_value if out.challenger_run_id else out.best_value
    version, _ = register_run_model(cfg.tracking_uri, cfg.model_name, run_id, tags={
        tags.VERSION_STUDY: cfg.study, tags.VERSION_TRIAL: trial, tags.VERSION_ENGINE: out.engine,
        tags.OBJECTIVE: settings.space.objective, tags.OBJECTIVE_VALUE: value,
        tags.DATA_DIGEST: settings.data_digest})
    set_alias(cfg.tracking_uri, cfg.model_name, DEFAULT_CHALLENGER_ALIAS, version.version)
    from fer_experiments.tracking import TrackedRun

    TrackedRun(out.parent_run_id, cfg.tracking_uri).set_tags({tags.CHALLENGER_RUN: run_id})
    return version.version


def format_outcome(o: SearchOutcome) -> str:
    """One line: the study's trial counts and its best trial (and best refit)."""
    best = "none" if o.best_value is None else f"{o.best_value:.4f} (trial {o.best_trial})"
    line = (f"study {o.study}: {o.finished} finished ({o.complete} complete, {o.pruned} pruned), {o.failed} failed; "
            f"best {best}")
    if o.challenger_run_id and o.challenger_run_id != o.best_run_id and o.challenger_value is not None:
        line += f"; best refit {o.challenger_value:.4f} (of trial {o.challenger_trial})"
    return line


#: ``--refit`` on a space without ``refit:``: the best trial, its own epochs, all of Training.
_DEFAULT_REFIT: dict[str, Any] = {"top_k": 1, "epochs": None, "train_limit": None, "budget_share": 0.5}
#: Seconds a refit costs besides its epochs (build, first-batch tracing, model logging), and the least worth starting.
_REFIT_OVERHEAD = 20.0
_MIN_REFIT_SECONDS = 10.0


def _top_trials(run: SearchRun) -> list["tags.TrialRecord"]:
    """The study's top-K COMPLETE trials (refits excluded) by the objective, ties to the earlier trial."""
    from fer_experiments.tracking import find_trial_records

    assert run.refit_plan is not None
    records = [r for r in find_trial_records(run.cfg.tracking_uri, run.cfg.study, engine=run.engine.name,
                                             state="COMPLETE", kinds=(tags.KIND_TRIAL,))
               if r.objective_value is not None]
    records.sort(key=lambda r: (-(r.objective_value or 0.0), r.number))
    return records[:run.refit_plan["top_k"]]


def _refit_rows(run: SearchRun) -> int:
    assert run.refit_plan is not None
    n = len(run.data.dataset.split("Training").y)
    limit = run.refit_plan["train_limit"]
    return n if limit is None else min(n, limit)


def estimate_refit_seconds(run: SearchRun) -> float:
    """Seconds the refits of the current top-K trials need, from each trial's measured images/s (fit only) plus
    a PublicTest pass per epoch; at most ``refit.budget_share`` of the budget (before any trial: that share)."""
    from fer_experiments.tracking import get_run

    plan = run.refit_plan
    assert plan is not None
    cap = plan["budget_share"] * run.budget_seconds
    rows, n_val = _refit_rows(run), len(run.data.val.y)
    need, known = 0.0, 0
    for record in _top_trials(run):
        info = get_run(run.cfg.tracking_uri, record.run_id)
        ips = info.metrics.get(tags.TRAIN_IMAGES_PER_SECOND)
        if not ips:
            continue
        known += 1
        epochs = plan["epochs"] or int(float(info.params.get(tags.PARAM_EPOCHS, run.space.max_epochs)))
        views = 2 if info.params.get("tta") == "flip" else 1
        # Inference runs at roughly three times the training pace per image here.
        need += epochs * (rows / ips + views * n_val / (3 * ips)) + _REFIT_OVERHEAD
    if not known:
        return cap
    return min(cap, need)


def _refit_values(params: dict[str, str]) -> dict[str, Any]:
    """A trial run's model and training parameters (as logged) -> values for ``split_params``."""
    from fer_experiments.params import ALL_FIELDS

    return {k: params[k] for k in ALL_FIELDS if k in params and k != "time_budget_s"}


def refit(run: SearchRun) -> None:
    """Retrain the top-K trials' configurations on the refit rows (all of Training by default), each as a child run
    of the study (``fer.kind=refit``, ``fer.refit_of``); a trial whose refit run is FINISHED is not refit again."""
    from fer_experiments.data import load_training_data
    from fer_experiments.tracking import end_run, find_runs, get_run

    plan, cfg, out = run.refit_plan, run.cfg, run.outcome
    assert plan is not None
    top = _top_trials(run)
    existing = find_runs(cfg.tracking_uri, None, filter_string=tags.study_filter(
        cfg.study, kind=tags.KIND_REFIT, engine=run.engine.name))
    done = {r.tags.get(tags.REFIT_OF) for r in existing if r.status == "FINISHED"}
    for r in existing:  # a refit whose process died on this host (SIGKILL) must not stay RUNNING
        if r.status == "RUNNING" and r.tags.get(tags.HOST) == socket.gethostname() and not _alive(r.tags.get(tags.PID)):
            end_run(cfg.tracking_uri, r.run_id, "KILLED", reason="its process is gone; refit again")
    todo = [t for t in top if t.run_id not in done]
    if not todo:
        return
    data = load_training_data(DataConfig(path=cfg.data.path, limit=plan["train_limit"],
                                         subset_seed=cfg.data.subset_seed, cache_dir=cfg.data.cache_dir),
                              run.data.dataset)
    objective = run.space.objective
    for i, record in enumerate(todo):
        values = _refit_values(get_run(cfg.tracking_uri, record.run_id).params)
        epochs = plan["epochs"] or int(values.get(tags.PARAM_EPOCHS, run.space.max_epochs))
        if run.budget_deadline is not None:
            share = (run.budget_deadline - run.final_reserve - time.time()) / (len(todo) - i)
            if share < _MIN_REFIT_SECONDS:
                run.progress.note(f"--budget: no time left to refit trial {record.number}")
                break
            after = run.after_training()
            values["time_budget_s"] = round(share - after, 1) if share > 2 * after else round(share / 2, 1)
        run.progress.note(f"refit of trial {record.number} on {len(data.train.y)} Training rows, up to {epochs} epochs"
                          + (f", {values['time_budget_s']:.0f}s" if "time_budget_s" in values else ""))

        def show(epoch: int, metrics: dict[str, float], number: int = record.number) -> None:
            run.progress.epoch(number, epoch, epochs, metrics, objective)

        refit_tags = tags.trial_tags(study=cfg.study, engine=run.engine.name, number=record.number,
                                     kind=tags.KIND_REFIT) | {
            tags.REFIT_OF: record.run_id, tags.HOST: socket.gethostname(), tags.PID: os.getpid(),
            tags.GPU: gpu_label(cfg)}
        result = tracked_trial(tracking_uri=cfg.tracking_uri, experiment=run.experiment,
                               parent_run_id=run.parent.run_id, number=record.number, tags=refit_tags, data=data,
                               values=values, epochs=epochs, objective=objective,
                               extra_params={"space": run.space.name, "engine": run.engine.name,
                                             tags.PARAM_REFIT_OF: record.run_id},
                               observers=[show], run_name=f"refit-{record.number}")
        value = result.result.objective_value if result.result is not None else None
        out.refits.append((record.number, result.run_id, result.state, value))
        shown = f"{value:.4f}" if value is not None else (result.failure or result.state)
        run.progress.note(f"refit of trial {record.number} {result.state}: {objective} {shown} "
                          f"(trial: {record.objective_value:.4f})")


def _alive(pid: str | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def no_lock() -> Iterator[None]:
    """For engines whose study lives with one process."""
    yield
