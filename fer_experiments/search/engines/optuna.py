"""Optuna as a search engine: the study lives in an Optuna RDB storage (SQLite, or PostgreSQL for many workers).

The lifecycle (``search.lifecycle``) does everything engine-neutral; this adapter creates or resumes the study,
asks it for trials one at a time under a cross-process gate (so ``--n-trials`` is the study's exact total across
workers), reports every epoch for pruning, and reconciles trials of dead workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ContextManager

import optuna
from optuna.trial import TrialState

from fer_experiments.config import SearchConfig
from fer_experiments.errors import ConfigError, TrialFailed
from fer_experiments.search.run import SearchRun, StudySettings
from fer_experiments.search.reconcile import fail_stale, reconcile
from fer_experiments.search.study import (
    TrialGate,
    create_or_resume,
    finished_count,
    open_storage,
    retry_callback,
    sole_sqlite_writer,
    storage_lock,
)
from fer_experiments.search.trial import OutOfTheRunning
from fer_experiments.tracking import tags

if TYPE_CHECKING:
    from fer_experiments.spaces import SearchSpace
    from fer_experiments.tracking import TrackedRun

NAME = "optuna"


class OptunaEngine:
    """Optuna's ask-one-trial loop behind the lifecycle's ``Engine`` protocol."""

    name = NAME

    def __init__(self, enqueue: tuple[str, ...] = ()) -> None:
        self.enqueue = enqueue
        self.study: optuna.Study | None = None
        self.storage: optuna.storages.BaseStorage | None = None
        self.cfg: SearchConfig | None = None

    def session(self, cfg: SearchConfig) -> ContextManager[None]:
        return sole_sqlite_writer(cfg.storage)

    def open(self, cfg: SearchConfig, space: "SearchSpace | None", data_digest: str) -> StudySettings:
        self.cfg = cfg
        self.storage = storage = open_storage(cfg.storage, cfg.heartbeat_interval, cfg.grace_period)
        self.study, settings, _ = create_or_resume(storage, cfg.storage, cfg.study, space, data_digest=data_digest,
                                                   limit=cfg.data.limit, experiment=cfg.experiment,
                                                   n_trials=cfg.n_trials)
        return settings

    def setup_lock(self) -> ContextManager[None]:
        assert self.cfg is not None
        return storage_lock(self.cfg.storage)

    def parent_run_id(self) -> str | None:
        assert self.study is not None and self.cfg is not None
        attrs = optuna.load_study(study_name=self.study.study_name, storage=self.storage).user_attrs
        return attrs.get(tags.ATTR_PARENT_RUN)

    def remember_parent(self, run_id: str) -> None:
        assert self.study is not None
        self.study.set_user_attr(tags.ATTR_PARENT_RUN, run_id)

    def parent_tags(self) -> dict[str, Any]:
        return {}

    def search(self, run: SearchRun) -> None:
        from fer_experiments.models.presets import get_preset
        from fer_experiments.spaces import preset_values_for_space

        study, cfg = self.study, run.cfg
        assert study is not None
        # The space's known-good starting points first, then --enqueue's presets; a resumed study skips those it ran.
        starts = run.space.start_points() + [
            (name, preset_values_for_space(run.space, get_preset(name).values())) for name in self.enqueue]
        for name, values in starts:
            study.enqueue_trial(values, user_attrs={tags.ATTR_START_FROM: name}, skip_if_exists=True)
        self._reconcile(run)
        gate = TrialGate(cfg.storage)
        objective = _Objective(run, on_start=gate.release)
        ran_any = False
        try:
            while not run.should_stop():
                # Count and start under one cross-process lock (released by the trial as soon as it exists), so
                # that workers together start exactly the trials the study still needs: --n-trials is the total.
                gate.acquire()
                try:
                    fail_stale(study)  # a dead worker's RUNNING trial must not hold a slot
                    if _taken(study) >= run.n_trials:
                        break
                    ran_any = True
                    # gc_after_trial off: a full collection costs ~1 s a trial here; the trainer clears Keras's state.
                    # The first callback runs once Optuna has recorded the trial: an interruption held since the
                    # trial's end is delivered there, between trials.
                    study.optimize(objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=False,
                                   callbacks=[lambda st, t: run.interrupts.release(),
                                              lambda st, t: self._reconcile(run)])
                    run.interrupts.release()  # in case no callback ran
                finally:
                    gate.release()
                    run.interrupts.holding = False
        finally:
            gate.close()
        if not ran_any and finished_count(study) >= run.n_trials:
            run.outcome.notes.append(f"study {cfg.study!r} already holds {run.n_trials} finished trials; "
                                     "raise --n-trials to add more")
        self._reconcile(run)

    def _reconcile(self, run: SearchRun) -> None:
        """Reconcile, but never let a tracking hiccup end a search: report it as a note instead."""
        assert self.study is not None
        try:
            notes = reconcile(self.study, run.cfg.tracking_uri, run.experiment)
        except Exception as exc:  # noqa: BLE001 - reconciling is housekeeping; the next call retries it
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            notes = [f"reconcile skipped: {type(exc).__name__}: {first}"]
        for note in notes:
            run.progress.note(note)

    def counts(self) -> tuple[int, int, int]:
        assert self.study is not None
        trials = self.study.get_trials(deepcopy=False)
        return (sum(t.state == TrialState.COMPLETE for t in trials), sum(t.state == TrialState.PRUNED for t in trials),
                sum(t.state == TrialState.FAIL for t in trials))

    def others_running(self) -> bool:
        assert self.study is not None
        return bool(self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

    def summarise(self, parent: "TrackedRun", tracking_uri: str) -> list[str]:
        from fer_experiments.search.summary import write_summary

        assert self.study is not None
        return write_summary(self.study, parent, tracking_uri)


class _Objective:
    """Callable for ``study.optimize``: each call is one trial through the lifecycle."""

    def __init__(self, run: SearchRun, on_start: Callable[[], None]) -> None:
        self.run = run
        self.on_start = on_start

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        from fer_experiments.spaces import epochs_for, suggest
        from fer_experiments.tracking import redact_uri

        self.on_start()
        self.run.running_trial = trial.number  # from here an interruption stops this trial (Optuna marks it FAIL)
        values = suggest(self.run.space, trial)
        epochs = epochs_for(self.run.space, values)
        start = trial.user_attrs.get(tags.ATTR_START_FROM)
        try:
            done = self.run.trial(trial.number, values, epochs,
                                  extra_tags={tags.STORAGE: redact_uri(self.run.cfg.storage)} | (
                                      {tags.START_FROM: start} if start else {}),
                                  observers=[self._reporter(trial)], stop_exceptions=(optuna.TrialPruned,),
                                  on_run=lambda run_id: trial.set_user_attr(tags.ATTR_RUN_ID, run_id),
                                  hold_interrupts=True)
        except KeyboardInterrupt:
            trial.set_user_attr(tags.ATTR_FAIL_REASON, "interrupted")
            _queue_again(trial)
            raise
        self.run.running_trial = None
        if done.constraints is not None:
            # A configuration past a serving limit never trains; TPE and GP read the amounts past each limit
            # (Optuna's trial constraints, <= 0 feasible) and steer away from its region.
            trial.set_user_attr(tags.ATTR_CONSTRAINTS, done.constraints)
            for key, amount in zip(constraint_names(self.run.space), done.constraints):
                trial.set_constraint(key, amount)
        if done.skipped is not None:
            trial.set_user_attr(tags.ATTR_FAIL_REASON, f"not trained: {done.skipped}")
        if isinstance(done.stopped, OutOfTheRunning):
            raise optuna.TrialPruned(str(done.stopped))
        if done.stopped is not None:
            raise done.stopped
        if done.failure is not None:
            trial.set_user_attr(tags.ATTR_FAIL_REASON, done.failure)
            raise TrialFailed(f"trial {trial.number}: {done.failure}")
        assert done.result is not None
        cost_name = self.run.space.cost_objective
        if cost_name is None:
            return done.result.objective_value
        if done.cost is None:  # an invalid combination fails before its cost is measured; never a COMPLETE trial
            raise TrialFailed(f"trial {trial.number}: its serving cost could not be measured")
        return done.result.objective_value, float(done.cost[cost_name])

    def _reporter(self, trial: optuna.Trial) -> Callable[[int, dict[str, float]], None]:
        objective = self.run.space.objective
        if self.run.space.cost_objective is not None:
            return self._similar_cost_reporter(trial)

        def report(epoch: int, metrics: dict[str, float]) -> None:
            trial.report(metrics[objective], step=epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} ({objective} {metrics[objective]:.4f})")

        return report

    def _similar_cost_reporter(self, trial: optuna.Trial) -> Callable[[int, dict[str, float]], None]:
        """A two-objective study's pruning (Optuna's pruners support none): each epoch's value is kept on the trial
        (user attr) and compared with trials of similar serving cost (``search.pareto.similar_cost_prune``)."""
        from fer_experiments.search.pareto import similar_cost_prune

        space, run = self.run.space, self.run
        options = dict(space.pruner)
        curve: dict[str, float] = {}

        def report(epoch: int, metrics: dict[str, float]) -> None:
            value = float(metrics[space.objective])
            curve[str(epoch)] = value
            cost = (run.current_cost or {}).get(space.cost_objective or "")
            trial.set_user_attr(tags.ATTR_CURVE, dict(curve))
            if cost is None:
                return
            if len(curve) == 1:
                trial.set_user_attr(tags.ATTR_COST, float(cost))
            if options.get("name") != "median":
                return
            why = similar_cost_prune(value, float(cost), epoch, _curves(trial.study),
                                     min_neighbours=int(options.get("n_startup_trials", 5)),
                                     warmup_steps=int(options.get("n_warmup_steps", 0)))
            if why is not None:
                raise optuna.TrialPruned(f"pruned at epoch {epoch} ({space.objective} {value:.4f}, {why})")

        return report


def constraint_names(space: "SearchSpace") -> list[str]:
    """The space's limits in the order ``models.cost.violations`` gives their amounts."""
    from fer_experiments.models.cost import LIMITS

    return [k for k in LIMITS if k in (space.constraints or {})]


def _curves(study: optuna.Study) -> list[tuple[float, dict[int, float]]]:
    """(cost, {epoch: value}) of the finished trials of a two-objective study that recorded both."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        cost, curve = t.user_attrs.get(tags.ATTR_COST), t.user_attrs.get(tags.ATTR_CURVE)
        if isinstance(cost, (int, float)) and isinstance(curve, dict):
            out.append((float(cost), {int(k): float(v) for k, v in curve.items()}))
    return out


def _queue_again(trial: optuna.Trial) -> None:
    """Ctrl-C / SIGTERM (``docker stop``) is no verdict on the params: queue them again for the next trial of any
    worker, as the heartbeat retry does for a dead worker's trial (same system attrs, the same one retry)."""
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    retry_callback()(trial.study, frozen)


def _taken(study: optuna.Study) -> int:
    """Trials that use up --n-trials: finished ones and those running now (in any worker)."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)))


def reconcile_study(storage_url: str, name: str, tracking_uri: str, grace_period: int) -> list[str]:
    """``fer-exp reconcile``: fail dead workers' trials (after ``grace_period``) and end their MLflow runs KILLED."""
    from fer_experiments.search.study import study_exists
    from fer_experiments.tracking import prepare_store, redact_uri

    prepare_store(tracking_uri)
    # The heartbeat interval only matters to the process that beats; the grace period decides staleness here.
    storage = open_storage(storage_url, heartbeat_interval=max(1, grace_period // 3), grace_period=grace_period)
    if not study_exists(storage, name):
        raise ConfigError(f"unknown study {name!r} in {redact_uri(storage_url)}")
    study = optuna.load_study(study_name=name, storage=storage)
    return reconcile(study, tracking_uri, study.user_attrs.get(tags.ATTR_EXPERIMENT, name))
