"""``fer-exp search``: create or resume a study, run trials until it holds --n-trials finished ones, summarise."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from fer_experiments.config import DataConfig, SearchConfig
from fer_experiments.errors import ConfigError, FatalError, TrialFailed
from fer_experiments.search.objective import Objective
from fer_experiments.search.progress import Progress
from fer_experiments.search.reconcile import fail_stale, reconcile
from fer_experiments.search.study import (
    ATTR_CHALLENGER,
    ATTR_PARENT_RUN,
    create_or_resume,
    finished_count,
    TrialGate,
    open_storage,
    sole_sqlite_writer,
    storage_lock,
)
from fer_experiments.tracking.store import redact_uri


@dataclass
class SearchOutcome:
    """What a search command did and where the study stands."""

    study: str
    parent_run_id: str
    ran: int = 0
    finished: int = 0
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    best_value: float | None = None
    best_trial: int | None = None
    registered_version: str | None = None
    stopped: str | None = None
    notes: list[str] = field(default_factory=list)
    #: Epochs trained by this command's trials (pruned ones count what they ran).
    epochs_spent: int = 0
    #: (cumulative epochs, best COMPLETE value so far) after each trial, for engine comparisons
    curve: list[tuple[int, float | None]] = field(default_factory=list)


def _ensure_parent_run(study: optuna.Study, storage: Any, cfg: SearchConfig, experiment: str, space: Any,
                       digest: str) -> str:
    """The study's parent MLflow run, created once (under the storage lock) by the first command."""
    from fer_experiments.tracking import create_run
    from fer_experiments.tracking.runs import git_commit

    with storage_lock(cfg.storage):
        # Re-read under the lock: another worker may have created it since this one loaded the study.
        attrs = optuna.load_study(study_name=study.study_name, storage=storage).user_attrs
        if attrs.get(ATTR_PARENT_RUN):
            return str(attrs[ATTR_PARENT_RUN])
        run_id = create_run(cfg.tracking_uri, experiment, f"study-{study.study_name}", tags={
            "fer.kind": "study", "fer.engine": "optuna", "study": study.study_name, "optuna_study": study.study_name,
            "optuna_storage": redact_uri(cfg.storage),
            "space_file": str(space.source), "space_hash": space.content_hash(), "space_name": space.name,
            "data_digest": digest, "git_commit": git_commit(), "mlflow.source.git.commit": git_commit(),
            "objective": space.objective})
        study.set_user_attr(ATTR_PARENT_RUN, run_id)
        return run_id


def run_search(cfg: SearchConfig, progress_stream: Any = None, *, space: Any = None, epoch_budget: int | None = None,
               register: bool = True) -> SearchOutcome:
    """Run the search that ``cfg`` describes; see the module docstring. Raises FatalError after K failures in a row.

    ``space`` replaces the YAML file (engine comparisons vary its sampler and pruner); ``epoch_budget`` stops the
    search once its trials have trained that many epochs; ``register=False`` leaves the registry alone.
    """
    with sole_sqlite_writer(cfg.storage):
        return _run_search(cfg, progress_stream, space, epoch_budget, register)


def _run_search(cfg: SearchConfig, progress_stream: Any, space_override: Any, epoch_budget: int | None,
                register: bool) -> SearchOutcome:
    from fer_experiments.data import load_dataset
    from fer_experiments.experiment import load_training_data
    from fer_experiments.models.presets import get_preset
    from fer_experiments.spaces import load_space, preset_values_for_space, resolve_space_path
    from fer_experiments.tracking import TrackedRun, prepare_store, set_status

    space = space_override or (load_space(resolve_space_path(cfg.space_path)) if cfg.space_path else None)
    prepare_store(cfg.tracking_uri)
    dataset = load_dataset(cfg.data.path, cache_dir=cfg.data.cache_dir)
    storage = open_storage(cfg.storage, cfg.heartbeat_interval, cfg.grace_period)
    study, settings, _ = create_or_resume(storage, cfg.storage, cfg.study, space, data_digest=dataset.digest,
                                          limit=cfg.data.limit, experiment=cfg.experiment, n_trials=cfg.n_trials)
    space = settings.space
    n_trials = cfg.n_trials if cfg.n_trials is not None else settings.n_trials
    if n_trials is None:
        raise ConfigError(f"study {cfg.study!r} has no --n-trials target yet; give --n-trials")
    data = load_training_data(DataConfig(path=cfg.data.path, limit=settings.limit, subset_seed=cfg.data.subset_seed,
                                         cache_dir=cfg.data.cache_dir), dataset)
    parent_id = _ensure_parent_run(study, storage, cfg, settings.experiment, space, dataset.digest)
    outcome = SearchOutcome(study=cfg.study, parent_run_id=parent_id)
    progress = Progress(n_trials, progress_stream)
    parent = TrackedRun(parent_id, cfg.tracking_uri)
    objective = Objective(space=space, data=data, tracking_uri=cfg.tracking_uri, experiment=settings.experiment,
                          parent_run_id=parent_id, study_name=cfg.study,
                          tags={"gpu": _gpu_label(cfg), "optuna_storage": redact_uri(cfg.storage)},
                          on_epoch=lambda t, e, n, m: progress.epoch(t, e, n, m, space.objective))
    consecutive = {"failures": 0}
    stop = {"requested": False}

    def after_trial(st: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        state = trial.state.name
        progress.trial_end(trial.number, state, trial.value, trial.user_attrs.get("fail_reason", ""))
        outcome.ran += 1
        outcome.epochs_spent += len(trial.intermediate_values)
        outcome.curve.append((outcome.epochs_spent, progress.best))
        if epoch_budget is not None and outcome.epochs_spent >= epoch_budget:
            stop["requested"] = True
        if trial.state == TrialState.FAIL:
            consecutive["failures"] += 1
            if consecutive["failures"] >= cfg.max_consecutive_failures:
                outcome.stopped = f"{consecutive['failures']} consecutive failed trials"
        else:
            consecutive["failures"] = 0
        if trial.state == TrialState.COMPLETE and progress.best is not None:
            parent.log_metrics({"best_value": progress.best}, step=trial.number)
        for note in _safe_reconcile(st, cfg.tracking_uri, settings.experiment):
            progress.note(note)

    gate = TrialGate(cfg.storage)
    objective.on_start = gate.release
    deadline = None if cfg.timeout_seconds is None else time.monotonic() + cfg.timeout_seconds
    ran_any = False
    final = "FAILED"
    # From here on the parent run is RUNNING; every way out below gives it a terminal status.
    set_status(cfg.tracking_uri, parent_id, "RUNNING")
    try:
        for name in cfg.enqueue:
            study.enqueue_trial(preset_values_for_space(space, get_preset(name).values()), skip_if_exists=True)
        outcome.notes += _safe_reconcile(study, cfg.tracking_uri, settings.experiment)
        _seed_progress(progress, study)
        while not outcome.stopped and not stop["requested"] and (deadline is None or time.monotonic() < deadline):
            # Count and start under one cross-process lock (released by the trial as soon as it exists), so that
            # workers together start exactly the trials the study still needs: --n-trials is the study's total.
            gate.acquire()
            try:
                fail_stale(study)  # a dead worker's RUNNING trial must not hold a slot
                if _taken(study) >= n_trials:
                    break
                ran_any = True
                # gc_after_trial off: a full collection costs ~1 s a trial here; the trainer clears Keras's state.
                study.optimize(objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=False,
                               callbacks=[after_trial])
            finally:
                gate.release()
        if not ran_any and finished_count(study) >= n_trials:
            outcome.notes.append(f"study {cfg.study!r} already holds {n_trials} finished trials; "
                                 "raise --n-trials to add more")
        final = "FAILED" if outcome.stopped else "FINISHED"
    except KeyboardInterrupt:
        final = "KILLED"
        raise
    finally:
        gate.close()
        _end_parent(study, cfg.tracking_uri, parent_id, final)
    outcome.notes += _safe_reconcile(study, cfg.tracking_uri, settings.experiment)
    _fill_outcome(outcome, study)
    outcome.notes += _summarise(study, parent, cfg)
    if register:
        with storage_lock(cfg.storage):  # workers ending together register the new best once
            outcome.registered_version = _register_challenger(study, cfg, outcome)
    if outcome.stopped:
        raise FatalError(f"search stopped: {outcome.stopped} (last reason: "
                         f"{_last_fail_reason(study)}); {format_outcome(outcome)}")
    return outcome


def _end_parent(study: optuna.Study, uri: str, parent_id: str, status: str) -> None:
    """End the study's parent run, unless it finished normally while another worker still runs a trial (that worker
    ends it later)."""
    from fer_experiments.tracking import set_status

    if status == "FINISHED" and study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        return
    set_status(uri, parent_id, status)


def _safe_reconcile(study: optuna.Study, uri: str, experiment: str) -> list[str]:
    """Reconcile, but never let a tracking hiccup end a search: report it as a note instead."""
    try:
        return reconcile(study, uri, experiment)
    except Exception as exc:  # noqa: BLE001 - reconciling is housekeeping; the next call retries it
        return [f"reconcile skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"]


def _taken(study: optuna.Study) -> int:
    """Trials that use up --n-trials: finished ones and those running now (in any worker)."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)))


def _gpu_label(cfg: SearchConfig) -> str | None:
    """The GPU a worker runs on: --gpu, or FER_EXP_GPU_LABEL where a container runtime already pinned the device."""
    return str(cfg.gpu) if cfg.gpu is not None else os.environ.get("FER_EXP_GPU_LABEL")


def _seed_progress(progress: Progress, study: optuna.Study) -> None:
    trials = study.get_trials(deepcopy=False)
    count = {s: sum(1 for t in trials if t.state == s) for s in TrialState}
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = max(complete, key=lambda t: t.value) if complete else None  # type: ignore[arg-type, return-value]
    progress.seed(count[TrialState.COMPLETE] + count[TrialState.PRUNED], count[TrialState.COMPLETE],
                  count[TrialState.PRUNED], count[TrialState.FAIL], None if best is None else best.value,
                  None if best is None else best.number)


def _fill_outcome(outcome: SearchOutcome, study: optuna.Study) -> None:
    trials = study.get_trials(deepcopy=False)
    outcome.complete = sum(t.state == TrialState.COMPLETE for t in trials)
    outcome.pruned = sum(t.state == TrialState.PRUNED for t in trials)
    outcome.failed = sum(t.state == TrialState.FAIL for t in trials)
    outcome.finished = outcome.complete + outcome.pruned
    if outcome.complete:
        best = study.best_trial
        outcome.best_value, outcome.best_trial = best.value, best.number


def _last_fail_reason(study: optuna.Study) -> str:
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    return failed[-1].user_attrs.get("fail_reason", "unknown") if failed else "none"


def _summarise(study: optuna.Study, parent: Any, cfg: SearchConfig) -> list[str]:
    from fer_experiments.search.summary import write_summary

    try:
        return write_summary(study, parent, cfg.tracking_uri)
    except Exception as exc:  # noqa: BLE001 - a summary must never lose the trials already run
        return [f"summary incomplete: {type(exc).__name__}: {exc}"]


def _register_challenger(study: optuna.Study, cfg: SearchConfig, outcome: SearchOutcome) -> str | None:
    """Register the best COMPLETE trial's model as a new ``challenger`` version when it is a new best."""
    from fer_experiments.tracking.registry import register_run_model, set_alias

    if outcome.best_trial is None:
        return None
    best = study.best_trial
    if study.user_attrs.get(ATTR_CHALLENGER) == best.number:
        return None
    run_id = best.user_attrs.get("mlflow_run_id")
    if not run_id:
        return None
    version, _ = register_run_model(cfg.tracking_uri, cfg.model_name, run_id, tags={
        "study": cfg.study, "trial": best.number, "objective": study.user_attrs.get("fer.space", {}).get("objective"),
        "objective_value": best.value, "data_digest": study.user_attrs.get("fer.data_digest")})
    set_alias(cfg.tracking_uri, cfg.model_name, "challenger", version.version)
    study.set_user_attr(ATTR_CHALLENGER, best.number)
    return version.version


def format_outcome(o: SearchOutcome) -> str:
    best = "none" if o.best_value is None else f"{o.best_value:.4f} (trial {o.best_trial})"
    return (f"study {o.study}: {o.finished} finished ({o.complete} complete, {o.pruned} pruned), {o.failed} failed; "
            f"best {best}")



def reconcile_study(storage_url: str, name: str, tracking_uri: str, grace_period: int) -> list[str]:
    """``fer-exp reconcile``: fail dead workers' trials (after ``grace_period``) and end their MLflow runs KILLED."""
    from fer_experiments.search.study import ATTR_EXPERIMENT, study_exists
    from fer_experiments.tracking import prepare_store

    prepare_store(tracking_uri)
    # The heartbeat interval only matters to the process that beats; the grace period decides staleness here.
    storage = open_storage(storage_url, heartbeat_interval=max(1, grace_period // 3), grace_period=grace_period)
    if not study_exists(storage, name):
        raise ConfigError(f"unknown study {name!r} in {redact_uri(storage_url)}")
    study = optuna.load_study(study_name=name, storage=storage)
    return reconcile(study, tracking_uri, study.user_attrs.get("fer.mlflow_experiment", name))
