"""Reconcile Optuna and MLflow after a crash: fail stale trials, end their orphaned MLflow runs (KILLED, or FINISHED
when Optuna had recorded the trial COMPLETE or PRUNED)."""

from __future__ import annotations

import os
import socket
import time
import warnings
from pathlib import Path

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


def _process_start(pid: int) -> float | None:
    """Unix time a process on this host started (from /proc), or None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def process_gone(pid: int, run_started_ms: int | None) -> bool:
    """Whether the process that ran a run on this host is gone: no such pid, or the pid now belongs to a process
    that started after the run did (pids are reused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, another user's
    started = _process_start(pid)
    return started is not None and run_started_ms is not None and started > run_started_ms / 1000 + 2


def reconcile_runs(tracking_uri: str, grace_period: float, now: float | None = None) -> list[str]:
    """End KILLED every RUNNING fer-exp run of the store (trials, studies' parent runs, ``train`` runs) whose process
    is gone: at once when it ran on this host and its pid no longer exists, else when its heartbeat (or its start,
    for runs without one) is older than ``grace_period`` seconds. Returns what it did."""
    from fer_experiments.tracking import end_run, find_runs, tags

    now = time.time() if now is None else now
    here = socket.gethostname()
    done: list[str] = []
    for run in find_runs(tracking_uri, None, filter_string="attributes.status = 'RUNNING'", max_results=10000):
        if tags.KIND not in run.tags:
            continue  # not a fer-exp run: someone else's business
        host, pid = run.tags.get(tags.HOST), run.tags.get(tags.PID)
        kind = run.tags.get(tags.KIND)
        if host == here and pid and pid.isdigit():
            if process_gone(int(pid), run.start_time):
                reason = f"its process {pid} on {host} is gone"
            else:
                continue
        else:
            beats = [float(run.tags[tags.HEARTBEAT])] if run.tags.get(tags.HEARTBEAT, "").replace(".", "").isdigit() else []
            last = max(beats + [(run.start_time or 0) / 1000])
            if now - last <= grace_period:
                continue
            reason = (f"no sign of life from {host or 'an unknown host'} for {now - last:.0f} s "
                      f"(grace period {grace_period:.0f} s)")
        end_run(tracking_uri, run.run_id, "KILLED", reason=f"reconciled: {reason}")
        done.append(f"MLflow run {run.run_id} ({kind} {run.name}): RUNNING -> KILLED, {reason}")
    return done
