"""``search.reconcile.reconcile`` on a real Optuna SQLite study and a real MLflow SQLite store (no training)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from fer_experiments.search.reconcile import reconcile
from fer_experiments.search.study import open_storage
from fer_experiments.tracking import create_run, end_run, get_run, tags

# Heartbeats are recorded by hand here (a worker's optimize loop records them in real searches).
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")


def _trial_run(uri: str, study: str, number: int, experiment: str = "s", engine: str = "optuna") -> str:
    """A RUNNING MLflow run of trial ``number`` of ``study``, tagged as the lifecycle tags them."""
    return create_run(uri, experiment, f"trial-{number}", tags=tags.trial_tags(study=study, engine=engine,
                                                                                 number=number))


def _backdate_heartbeats(db: Path) -> None:
    """Make every recorded heartbeat an hour old, as if its worker had died then."""
    with sqlite3.connect(db) as con:
        con.execute("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-1 hour')")


@pytest.fixture
def setup(prepared_stores: dict[str, str]) -> dict:
    stores = prepared_stores
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(stores["storage"], heartbeat_interval=1, grace_period=60)
    return {"uri": stores["tracking_uri"], "storage": storage, "db": Path(stores["root"]) / "optuna.db",
            "study": optuna.create_study(study_name="s", storage=storage, direction="maximize"),
            "other": optuna.create_study(study_name="other", storage=storage, direction="maximize")}


def test_failed_trial_with_running_run_is_killed_and_stale_trial_failed(setup: dict) -> None:
    uri, study, storage = setup["uri"], setup["study"], setup["storage"]
    # Trial 0: its worker told Optuna FAIL but died before ending its MLflow run.
    t0 = study.ask()
    run0 = _trial_run(uri, "s", 0)
    study.tell(t0, state=TrialState.FAIL)
    # Trial 1: COMPLETE, its run ended normally: untouched.
    t1 = study.ask()
    run1 = _trial_run(uri, "s", 1)
    study.tell(t1, 0.5)
    end_run(uri, run1, "FINISHED")
    # Trial 2: RUNNING, its worker stopped beating an hour ago (SIGKILL): stale.
    t2 = study.ask()
    storage.record_heartbeat(t2._trial_id)
    run2 = _trial_run(uri, "s", 2)
    _backdate_heartbeats(setup["db"])
    # Trial 3: RUNNING with a fresh heartbeat (a live worker): untouched, as is its RUNNING run.
    t3 = study.ask()
    storage.record_heartbeat(t3._trial_id)
    run3 = _trial_run(uri, "s", 3)
    # Another study's FAIL trial 0 with a RUNNING run in the same experiment, and a keras-tuner run of "s": not ours.
    o0 = setup["other"].ask()
    setup["other"].tell(o0, state=TrialState.FAIL)
    other_run = _trial_run(uri, "other", 0)
    kt_run = _trial_run(uri, "s", 0, engine="keras-tuner")

    done = reconcile(study, uri, "s")

    assert "trial 2: its worker stopped (stale heartbeat), marked FAIL" in done
    assert f"MLflow run {run0} of trial 0: RUNNING -> KILLED" in done
    assert f"MLflow run {run2} of trial 2: RUNNING -> KILLED" in done
    assert len(done) == 3, done
    states = {t.number: t.state for t in study.get_trials()}
    assert states[0] == TrialState.FAIL and states[1] == TrialState.COMPLETE
    assert states[2] == TrialState.FAIL and states[3] == TrialState.RUNNING
    assert states.get(4) == TrialState.WAITING  # the retry callback re-enqueued the stale trial
    for run_id, number, state in ((run0, 0, "FAIL"), (run2, 2, "FAIL")):
        run = get_run(uri, run_id)
        assert run.status == "KILLED" and run.end_time is not None
        reason = f"trial {number} is {state} in Optuna: its worker died before ending this run"
        assert tags.failure_of(run.tags) == reason
    assert get_run(uri, run1).status == "FINISHED"
    for run_id in (run3, other_run, kt_run):
        assert get_run(uri, run_id).status == "RUNNING"

    assert reconcile(study, uri, "s") == []  # nothing left to do


def test_runs_in_another_experiment_are_not_searched(setup: dict) -> None:
    uri, study = setup["uri"], setup["study"]
    t0 = study.ask()
    elsewhere = _trial_run(uri, "s", 0, experiment="elsewhere")
    study.tell(t0, state=TrialState.FAIL)
    assert reconcile(study, uri, "s") == []
    assert get_run(uri, elsewhere).status == "RUNNING"


def test_without_heartbeat_running_trials_are_left_alone(prepared_stores: dict[str, str]) -> None:
    stores = prepared_stores
    storage = open_storage(stores["storage"])  # no heartbeat: a RUNNING trial may be alive, never "stale"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.ask()
    run = _trial_run(stores["tracking_uri"], "s", 0)
    assert reconcile(study, stores["tracking_uri"], "s") == []
    assert study.get_trials()[0].state == TrialState.RUNNING
    assert get_run(stores["tracking_uri"], run).status == "RUNNING"
