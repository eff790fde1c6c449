"""One search command in progress, engine-neutral: the study's settings (``StudySettings``), what the command did
(``SearchOutcome``), the engine protocol (``Engine``), and ``SearchRun``, what an engine calls per trial: one child
run, the progress line, the consecutive-failure limit, the timeout, the epoch budget and the --budget accounting (how
long the refits of the best trials will need, so that trials stop in time).
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator, Protocol, Sequence

from fer_experiments.config import SearchConfig
from fer_experiments.errors import ConfigError, DataError
from fer_experiments.search.progress import Progress
from fer_experiments.search.trial import TrialRun, gpu_label, tracked_trial
from fer_experiments.tracking import tags

if TYPE_CHECKING:
    from fer_experiments.data import TrainingData
    from fer_experiments.search.ranking import SliceCurve
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
    #: The running trial's serving-cost figures, measured before it trains (None: not measured).
    current_cost: dict[str, float] | None = None
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
    #: Seconds of training each trial gets (the space's ``trial_budget``), None: bounded by epochs only.
    trial_seconds: float | None = None
    #: Under ``refit.warm_start``: the trained weights of this command's best COMPLETE trials, by run id, with their
    #: objective value (the ``refit.top_k`` best, and the ``pinned`` start points): what a refit continues.
    trained: dict[str, tuple[float, list[Any]]] = field(default_factory=dict)
    #: Run ids of ``start_from`` trials whose weights stay in ``trained`` whatever their value: the ranking may
    #: refit the first start point above a trial of higher value (``search.ranking``).
    pinned: set[str] = field(default_factory=set)

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
            left = self.trials_left()
            # The least a trial costs: build, tracing, one epoch, evaluation and logging (measured; a guess before);
            # with a trial_budget, its whole slice (trials compare at equal cost, so none starts with less), unless
            # it is the first trial a refit needs.
            floor = sorted(self.epoch_seconds)[len(self.epoch_seconds) // 2] if self.epoch_seconds else 20.0
            if self.trial_seconds is not None and not self._first_needed():
                floor = self.trial_seconds + self.after_training()
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

    def _first_needed(self) -> bool:
        """No trial of the study has completed yet while a refit waits for one: the first trial must run even when
        set-up ate the trials' share of a --budget (a refit with nothing to refit leaves the command with no model)."""
        return self.refit_plan is not None and self.progress.best is None

    def trials_left(self) -> float:
        """Under --budget: seconds a trial starting now may use, before its logging (the first needed trial may
        take half of what the refit reserved)."""
        assert self.budget_deadline is not None
        left = self.trials_end() - time.time()
        if self._first_needed():
            left = max(left, (self.budget_deadline - self.final_reserve - time.time()) / 2)
        return left

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

        guard = refit_guard(self.cfg.tracking_uri, self.cfg.study, self.engine.name, self.space, self.refit_plan,
                            (extra_tags or {}).get(tags.START_FROM), len(self.data.train.y))
        run_tags = tags.trial_tags(study=self.cfg.study, engine=self.engine.name, number=number) | {
            tags.HOST: socket.gethostname(), tags.GPU: gpu_label(self.cfg)} | (extra_tags or {})
        self.running_trial = number
        self.progress.trial_start(number)
        if self.budget_deadline is not None:
            # A trial never trains past the trials' share of the budget (it stops at the step that would overrun),
            # less what logging it takes afterwards; with a trial_budget, every trial gets that same slice.
            left = self.trials_left() - self.after_training()
            if self.trial_seconds is not None:
                left = min(left, self.trial_seconds)
            values = values | {"time_budget_s": max(1.0, round(left, 1))}
        elif self.trial_seconds is not None:
            values = values | {"time_budget_s": round(self.trial_seconds, 1)}
        cost, skip, over = self._serving_cost(values, epochs)
        self.current_cost = cost  # the similar-cost pruner of a two-objective study reads it (search.pareto)
        if cost is not None:
            run_tags[tags.COST_RUNTIME] = self.space.cost_runtime
        started = time.time()
        done = tracked_trial(tracking_uri=self.cfg.tracking_uri, experiment=self.experiment,
                             parent_run_id=self.parent.run_id, number=number, tags=run_tags, data=self.data,
                             values=values, epochs=epochs, objective=objective,
                             extra_params={tags.PARAM_SPACE: self.space.name,
                                           tags.PARAM_ENGINE: self.engine.name},
                             observers=[show, *observers, *guard], stop_exceptions=stop_exceptions, on_run=on_run,
                             on_phase=self.outcome.add_time,
                             on_end=self.interrupts.hold if hold_interrupts else None,
                             on_batch=show_batch if self.progress.tty else None, cost=cost, skip=skip)
        done.constraints, done.cost = over, cost
        self.running_trial = None
        if done.epochs_reached:
            wall = time.time() - started
            fit = done.result.train_seconds if done.result is not None else 0.0
            self.epoch_seconds.append(wall - fit + fit / done.epochs_reached)
        if done.result is not None:
            self.logging_seconds.append(max(0.0, time.time() - started - done.result.wall_seconds))
        self._account(done)
        self._keep_weights(done, pin=bool((extra_tags or {}).get(tags.START_FROM)))
        if self.budget_deadline is not None and self.refit_plan is not None:
            self.refit_need = estimate_refit_seconds(self)
        return done

    def _serving_cost(self, values: dict[str, Any], epochs: int
                      ) -> tuple[dict[str, float] | None, str | None, list[float] | None]:
        """Under the space's ``constraints:`` or cost objective: the configuration's serving cost (measured before it
        trains, cached by architecture), the limits it breaks (None: within them) and how far past each it is."""
        runtime = self.space.cost_runtime
        if runtime is None:
            return None, None, None
        limits = self.space.constraints or {"runtime": runtime}
        from fer_experiments.data import default_cache_dir
        from fer_experiments.models.cost import serving_cost, violations
        from fer_experiments.params import split_params

        try:
            model, _ = split_params(values | {"epochs": epochs})
        except ConfigError:
            return None, None, None  # an invalid combination: the trial fails on it, saying why
        cache = self.cfg.data.cache_dir or default_cache_dir()
        cost = serving_cost(model, runtime, cache_file=f"{cache}/serving_cost.json")
        over, broken = violations(cost, limits)
        if self.space.constraints is None:
            over = None  # no limits: no trial constraints for the sampler
        self.progress.note(f"trial {self.running_trial}: {cost.params:,} params, {cost.latency_ms:.2f} ms a face "
                           f"({cost.faces_per_second:,.0f} faces/s, {runtime})"
                           + (f", measured in {cost.seconds:.1f}s" if not cost.cached else ", cached")
                           + (f": not trained ({'; '.join(broken)})" if broken else ""))
        return cost.figures(), "; ".join(broken) or None, over

    def _keep_weights(self, done: TrialRun, pin: bool = False) -> None:
        """Keep a COMPLETE trial's trained weights in memory when a warm refit may continue them (the top-K, and
        with ``pin`` a start point's whatever its value)."""
        plan = self.refit_plan
        if plan is None or not plan.get("warm_start") or done.result is None:
            return
        self.trained[done.run_id] = (done.result.objective_value, done.result.model.get_weights())
        if pin:
            self.pinned.add(done.run_id)
        ranked = sorted((r for r in self.trained if r not in self.pinned), key=lambda r: -self.trained[r][0])
        for run_id in ranked[plan["top_k"]:]:
            del self.trained[run_id]

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


#: Seconds a refit costs besides its epochs (build, first-batch tracing, model logging).
REFIT_OVERHEAD = 20.0


def top_trials(run: SearchRun) -> list["tags.TrialRecord"]:
    """The study's top-K COMPLETE trials (refits excluded) in the order a refit takes them (``refit_ranking``)."""
    assert run.refit_plan is not None
    return refit_ranking(run.cfg.tracking_uri, run.cfg.study, run.engine.name, run.space)[0][:run.refit_plan["top_k"]]


def refit_ranking(uri: str, study: str, engine: str, space: "SearchSpace"
                  ) -> tuple[list["tags.TrialRecord"], str | None]:
    """The study's COMPLETE trials (refits excluded) by the objective, ties to the earlier trial, and None; in a space
    of equal time slices (``trial_budget``) with ``start_from``, ``search.ranking.refit_order`` instead (the first
    start point stays above a trial that beats it at equal time but not at equal images), with its reason."""
    from fer_experiments.search.ranking import refit_order

    if not ranks_at_equal_images(space):
        return _complete_trials(uri, study, engine), None
    curves = {c.number: (r, c) for r, c in slice_curves(uri, study, engine, space)}
    ranking = refit_order([c for _, c in curves.values()], [name for name, _ in space.start_from])
    return [curves[c.number][0] for c in ranking.order], ranking.reason


def refit_guard(uri: str, study: str, engine: str, space: "SearchSpace", plan: dict[str, Any] | None,
                start_from: str | None, n_train: int) -> list["EpochObserver"]:
    """Where the refit follows the equal-images ranking and takes one trial: an observer that stops a challenger
    of the incumbent once it is out of the running (``search.ranking.out_of_the_running``), so the rest of its
    slice goes to the refit. No observer for the incumbent itself, before it has a COMPLETE trial, or elsewhere."""
    from fer_experiments.search.ranking import best_within, incumbent_of, out_of_the_running
    from fer_experiments.search.trial import OutOfTheRunning

    if plan is None or plan["top_k"] != 1 or not ranks_at_equal_images(space):
        return []
    incumbent = incumbent_of([c for _, c in slice_curves(uri, study, engine, space)],
                             [name for name, _ in space.start_from])
    if incumbent is None or start_from == incumbent.start_from:
        return []
    objective = space.objective
    passes: list[tuple[int, float]] = []

    def guard(epoch: int, metrics: dict[str, float]) -> None:
        # Every pass but a time-cut last one is a whole epoch. A cut one ends the slice anyway, and its overcount
        # never stops a trial the ranking would refit: out_of_the_running then judges the trial's final value.
        passes.append((epoch * n_train, float(metrics[objective])))
        if out_of_the_running(passes, incumbent):
            within = best_within(passes, incumbent.images)
            by_then = (f"its best {objective} by {incumbent.images:,} images, {within:.4f}, is" if passes[0][0] <=
                       incumbent.images else f"its first pass came after {incumbent.images:,} images, so it is")
            raise OutOfTheRunning(
                f"out of the running at epoch {epoch} ({passes[-1][0]:,} images): {by_then} not above trial "
                f"{incumbent.number}'s {incumbent.value:.4f} (start point {incumbent.start_from}), so no refit can "
                "take it", value=max(v for _, v in passes))

    return [guard]


def ranks_at_equal_images(space: "SearchSpace") -> bool:
    """Whether ``space``'s trials are equal time slices led by start points, with one objective: where the refit
    follows ``search.ranking.refit_order``."""
    return space.trial_budget is not None and bool(space.start_from) and space.cost_objective is None


def _complete_trials(uri: str, study: str, engine: str) -> list["tags.TrialRecord"]:
    """The study's COMPLETE trials (refits excluded) by the objective, ties to the earlier trial."""
    from fer_experiments.tracking import find_trial_records

    records = [r for r in find_trial_records(uri, study, engine=engine, state="COMPLETE", kinds=(tags.KIND_TRIAL,))
               if r.objective_value is not None]
    return sorted(records, key=lambda r: (-(r.objective_value or 0.0), r.number))


def slice_curves(uri: str, study: str, engine: str, space: "SearchSpace"
                 ) -> list[tuple["tags.TrialRecord", "SliceCurve"]]:
    """Each COMPLETE trial with its ``SliceCurve``, read from its MLflow run (per-epoch objective, ``n_train``,
    ``train_images_seen``, ``fer.start_from``)."""
    from fer_experiments.search.ranking import SliceCurve, passes_from_history
    from fer_experiments.tracking import get_run
    from fer_experiments.tracking.runs import metric_history

    out = []
    for r in _complete_trials(uri, study, engine):
        info = get_run(uri, r.run_id)
        n_train = int(float(info.params.get(tags.PARAM_N_TRAIN, 0) or 0))
        seen = int(info.metrics.get(tags.TRAIN_IMAGES_SEEN, 0))
        passes = passes_from_history(metric_history(uri, r.run_id, space.objective), n_train, seen)
        out.append((r, SliceCurve(r.number, float(r.objective_value or 0.0), passes, info.tags.get(tags.START_FROM))))
    return out


def refit_rows(run: SearchRun) -> int:
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
    rows, n_val = refit_rows(run), len(run.data.val.y)
    need, known = 0.0, 0
    for record in top_trials(run):
        info = get_run(run.cfg.tracking_uri, record.run_id)
        ips = info.metrics.get(tags.TRAIN_IMAGES_PER_SECOND)
        if not ips:
            continue
        known += 1
        epochs = plan["epochs"] or int(float(info.params.get(tags.PARAM_EPOCHS, run.space.max_epochs)))
        views = 2 if info.params.get("tta") == "flip" else 1
        # Inference runs at roughly three times the training pace per image here.
        need += epochs * (rows / ips + views * n_val / (3 * ips)) + REFIT_OVERHEAD
    if not known:
        return cap
    return min(cap, need)


@contextlib.contextmanager
def no_lock() -> Iterator[None]:
    """For engines whose study lives with one process."""
    yield
