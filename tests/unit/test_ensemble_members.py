"""Which runs `fer-exp ensemble` takes as members: refit runs where a study has them, else its best COMPLETE trials
(any engine), best first; runs without a model, unfinished or other studies' runs never."""

from __future__ import annotations

from pathlib import Path

import pytest

from fer_experiments.ensembles.members import find_members
from fer_experiments.errors import ConfigError
from fer_experiments.tracking import TrackedRun, create_run, end_run, tags


def _run(uri: str, study: str, number: int, *, kind: str = tags.KIND_TRIAL, state: str = "COMPLETE",
         value: float | None = None, status: str = "FINISHED", model: bool = True, engine: str = "optuna") -> str:
    extra = {tags.TRIAL_STATE: state} | ({tags.OBJECTIVE_VALUE: value} if value is not None else {})
    if model:
        extra[tags.model_id_tag()] = f"m-{study}-{kind}-{number}"
    run_id = create_run(uri, study, f"{kind}-{number}", tags=tags.trial_tags(
        study=study, engine=engine, number=number, kind=kind) | extra)
    if value is not None:
        TrackedRun(run_id, uri).log_metrics({tags.PUBLIC_ACCURACY: value})
    if status != "RUNNING":
        end_run(uri, run_id, status)
    return run_id


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


def test_best_complete_trials_first_any_engine(uri: str) -> None:
    a = _run(uri, "s", 0, value=0.30)
    b = _run(uri, "s", 1, value=0.50, engine="keras-tuner")
    c = _run(uri, "s", 2, value=0.40)
    _run(uri, "s", 3, value=0.90, state="PRUNED", status="KILLED")
    _run(uri, "s", 4, value=0.95, model=False)
    _run(uri, "s", 5, value=0.99, status="RUNNING")
    _run(uri, "other", 0, value=0.99)
    members, kind = find_members(uri, "s", 5)
    assert kind == tags.KIND_TRIAL
    assert [m.run_id for m in members] == [b, c, a]
    assert [m.run_id for m in find_members(uri, "s", 2)[0]] == [b, c]


def test_refit_runs_are_preferred(uri: str) -> None:
    _run(uri, "r", 0, value=0.60)
    refit = _run(uri, "r", 0, kind=tags.KIND_REFIT, state="", value=0.55)
    members, kind = find_members(uri, "r", 3)
    assert kind == tags.KIND_REFIT and [m.run_id for m in members] == [refit]


def test_no_candidates(uri: str) -> None:
    _run(uri, "f", 0, state="FAIL", status="FAILED")
    with pytest.raises(ConfigError, match="no COMPLETE trial"):
        find_members(uri, "f", 3)
    with pytest.raises(ConfigError, match="unknown study 'nope'"):
        find_members(uri, "nope", 3)
    with pytest.raises(ConfigError, match="--top"):
        find_members(uri, "f", 0)
