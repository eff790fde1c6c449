"""Reconcile Optuna and MLflow after a crash: fail stale trials, end their orphaned MLflow runs (KILLED, or FINISHED
when Optuna had recorded the trial COMPLETE or PRUNED)."""

from __future__ import annotations

import warnings

import optuna
from optuna.trial import TrialState


def fail_stale(study: optuna.Study) -> None:
    """Mark trials whose heartbeat is older than the grace period FAIL (the retry callback re-enqueues them).

    Acts only when the storage has a heartbeat.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def reconcile(study: optuna.Study, tracking_uri: str, experiment: str) -> list[str]:
    """Fail trials whose worker stopped beating (Optuna's retry callback re-enqueues their params), then mark
    every RUNNING MLflow run of this study whose trial is no longer RUNNING: FINISHED when Optuna recorded the trial
    COMPLETE or PRUNED (a normal end), else KILLED. Returns what it did."""
    from fer_experiments.tracking import TrackedRun, end_run, find_runs, tags

    done: list[str] = []
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    fail_stale(study)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for t in trials.values():
        if t.state == TrialState.FAIL and t.number not in before:
            done.append(f"trial {t.number}: its worker stopped (stale heartbeat), marked FAIL")
    running = find_runs(tracking_uri, experiment, filter_string=tags.study_filter(
        study.study_name, kind=tags.KIND_TRIAL, engine="optuna", status="RUNNING"))
    for run in running:
        number = tags.trial_number_of(run.tags)
        trial = trials.get(-1 if number is None else number)
        if trial is None or trial.state == TrialState.RUNNING:
            continue
        reason = f"trial {number} is {trial.state.name} in Optuna: its worker died before ending this run"
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            # Optuna recorded the trial's normal end: the run ends as a finished trial would (pruned ones too).
            state = "COMPLETE" if trial.state == TrialState.COMPLETE else "PRUNED"
            TrackedRun(run.run_id, tracking_uri).set_tags({tags.TRIAL_STATE: state})
            end_run(tracking_uri, run.run_id, "FINISHED")
            done.append(f"MLflow run {run.run_id} of trial {number}: RUNNING -> FINISHED ({state})")
            continue
        end_run(tracking_uri, run.run_id, "KILLED", reason=reason)
        done.append(f"MLflow run {run.run_id} of trial {number}: RUNNING -> KILLED")
    return done
