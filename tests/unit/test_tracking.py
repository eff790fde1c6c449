"""Tracking against real temporary SQLite stores: store creation, experiments, honest run statuses, logging,
the model registry, and atomic file writes."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from fer_experiments.errors import ConfigError
from fer_experiments.io import atomic_write_text
from fer_experiments.tracking import (
    create_run,
    find_runs,
    get_run,
    prepare_store,
    redact_uri,
    start_run,
    ui_command,
)
from fer_experiments.tracking.store import ensure_experiment


def _db(stores: dict[str, str]) -> Path:
    return Path(stores["root"]) / "mlflow.db"


@pytest.fixture(autouse=True)
def _no_leaked_active_run():
    yield
    leaked = mlflow.active_run()
    if leaked is not None:  # keep later tests clean, then fail this one
        mlflow.end_run("KILLED")
        pytest.fail(f"test left MLflow run {leaked.info.run_id} active")


# ------------------------------------------------------------------------------------------------- the store
def test_prepare_store_creates_db_once(stores: dict[str, str]) -> None:
    uri, db = stores["tracking_uri"], _db(stores)
    assert not db.exists()
    prepare_store(uri)
    assert db.is_file() and db.stat().st_size > 0
    inode = db.stat().st_ino
    exp_id = ensure_experiment(uri, "kept")
    prepare_store(uri)  # second call: no re-creation
    assert db.stat().st_ino == inode
    assert mlflow.MlflowClient(uri).get_experiment_by_name("kept").experiment_id == exp_id


def test_prepare_store_concurrent_processes_on_fresh_file(stores: dict[str, str]) -> None:
    """Two processes racing on a fresh SQLite file: the lock lets one create it; both then work."""
    uri = stores["tracking_uri"]
    code = ("import sys; from fer_experiments.tracking import create_run; "
            "print(create_run(sys.argv[1], 'race', 'r'))")
    procs = [subprocess.Popen([sys.executable, "-c", code, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    ids = {o.strip().splitlines()[-1] for o, _ in outs}
    assert len(ids) == 2
    assert {r.run_id for r in find_runs(uri, "race")} == ids


def test_prepare_store_rejects_non_uri() -> None:
    with pytest.raises(ConfigError, match="not a URI"):
        prepare_store("just-a-name")


def test_ensure_experiment_artifact_location(prepared_stores: dict[str, str]) -> None:
    stores = prepared_stores  # the store exists already: these tests are not about creating it
    uri = stores["tracking_uri"]
    exp_id = ensure_experiment(uri, "my exp/1")
    assert ensure_experiment(uri, "my exp/1") == exp_id  # idempotent
    exp = mlflow.MlflowClient(uri).get_experiment(exp_id)
    root = (_db(stores).resolve().parent / "artifacts").as_uri()
    assert exp.artifact_location.startswith(root + "/")
    assert exp.artifact_location == f"{root}/my_exp_1"
    # a deleted experiment is not silently reused or recreated
    exp_id = ensure_experiment(uri, "gone")
    mlflow.MlflowClient(uri).delete_experiment(exp_id)
    with pytest.raises(ConfigError, match="gone"):
        ensure_experiment(uri, "gone")


def test_runs_go_to_the_store_they_name(tmp_path: Path) -> None:
    """Alternating two stores in one process: each run lands in the store passed to start_run."""
    a, b = (f"sqlite:///{tmp_path}/{n}/mlflow.db" for n in ("a", "b"))
    with start_run(a, "exp-a") as r1:
        pass
    with start_run(b, "exp-b") as r2:
        pass
    with start_run(a, "exp-a") as r3:
        pass
    assert {r.run_id for r in find_runs(a)} == {r1.run_id, r3.run_id}
    assert {r.run_id for r in find_runs(b)} == {r2.run_id}


# -------------------------------------------------------------------------------------------------- statuses
def test_start_run_finished(prepared_stores: dict[str, str]) -> None:
    stores = prepared_stores  # the store exists already: these tests are not about creating it
    uri = stores["tracking_uri"]
    with start_run(uri, "e", run_name="ok", tags={"k": "v", "skip": None}) as run:
        assert mlflow.active_run().info.run_id == run.run_id
        assert get_run(uri, run.run_id).status == "RUNNING"
    info = get_run(uri, run.run_id)
    assert info.status == "FINISHED" and info.name == "ok" and info.end_time is not None
    assert info.tags["k"] == "v" and "skip" not in info.tags and "failure_reason" not in info.tags
    assert mlflow.active_run() is None


def test_start_run_failed_on_exception(prepared_stores: dict[str, str]) -> None:
    stores = prepared_stores  # the store exists already: these tests are not about creating it
    uri = stores["tracking_uri"]
    with pytest.raises(ValueError, match="boom"):
        with start_run(uri, "e") as run:
            raise ValueError("boom")
    info = get_run(uri, run.run_id)
    assert info.status == "FAILED"
    assert info.tags["failure_reason"] == "ValueError: boom"
    assert mlflow.active_run() is None


def test_start_run_killed_on_keyboard_interrupt(prepared_stores: dict[str, str]) -> None:
    stores = prepared_stores  # the store exists already: these tests are not about creating it
    uri = stores["tracking_uri"]
    with pytest.raises(KeyboardInterrupt):
        with start_run(uri, "e") as run:
            raise KeyboardInterrupt
    info = get_run(uri, run.run_id)
    assert info.status == "KILLED"
    assert "interrupted" in info.tags["failure_reason"]
    assert mlflow.active_run() is None


def test_start_run_honours_final_status(prepared_stores: dict[str, str]) -> None:
    stores = prepared_stores  # the store exists already: these tests are not about creating it
    uri = stores["tracking_uri"]
    for status in ("KILLED", "FAILED"):
        with start_run(uri, "e") as run:
            run.final_status = status
        info = get_run(uri, run.run_id)
        assert info.status == status
        assert "failure_reason" not in info.tags


def test_parent_run_id_sets_parent_tag(prepared_stores: dict[str, str]) -> None:
    stores = prepared_stores  # the store exists already: these tests are not about creating it
    uri = stores["tracking_uri"]
    parent = create_run(uri, "study", "study-x")
    assert get_run(uri, parent).status == "RUNNING"
    with start_run(uri, "study", run_name="trial-0", parent_run_id=parent) as child:
        pass
    info = get_run(uri, child.run_id)
    assert info.tags["mlflow.parentRunId"] == parent
    assert info.status == "FINISHED"
    assert [r.run_id for r in find_runs(uri, "study", f"tags.mlflow.parentRunId = '{parent}'")] == [child.run_id]


def test_resume_run_by_id(prepared_stores: dict[str, str]) -> None:
    stores = prepared_stores  # the store exists already: these tests are not about creating it
    uri = stores["tracking_uri"]
    with start_run(uri, "e") as first:
        first.final_status = "KILLED"
    with start_run(uri, "e", run_id=first.run_id, tags={"resumed": 1}) as again:
        assert again.run_id == first.run_id
    info = get_run(uri, first.run_id)
    assert info.status == "FINISHED" and info.tags["resumed"] == "1"


# ------------------------------------------------------------------------------------------------- logging
def test_params_metrics_tags_round_trip(prepared_stores: dict[str, str]) -> None:
    stores = prepared_stores  # the store exists already: these tests are not about creating it
    uri = stores["tracking_uri"]
    with start_run(uri, "e") as run:
        many = {f"p{i:03d}": i for i in range(150)}  # more than one MLflow batch of 100
        run.log_params({"lr": 0.001, "none": None, "shape": [48, 48], "flag": True} | many)
        run.log_metrics({"acc": 0.5, "nan": math.nan, "inf": math.inf, "none": None}, step=1)
        run.log_metrics({"acc": 0.75}, step=2)
        run.set_tags({"preset": "seed-base", "n": 3, "dropped": None})
    info = get_run(uri, run.run_id)
    assert info.params["lr"] == "0.001" and info.params["none"] == "None"
    assert info.params["shape"] == "[48, 48]" and info.params["flag"] == "True"
    assert all(info.params[k] == str(v) for k, v in many.items())
    assert info.metrics == {"acc": 0.75}  # NaN, inf and None skipped
    history = mlflow.MlflowClient(uri).get_metric_history(run.run_id, "acc")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.75)]
    assert info.tags["preset"] == "seed-base" and info.tags["n"] == "3" and "dropped" not in info.tags
    # a value over MLflow's 6000-character limit is cut and says so
    with start_run(uri, "e") as run:
        run.log_params({"long": "x" * 7000})
    value = get_run(uri, run.run_id).params["long"]
    assert len(value) <= 6000 and value.endswith("(truncated)")


def test_redact_uri_and_ui_command() -> None:
    assert redact_uri("postgresql://fer:s3cret@db:5432/mlflow") == "postgresql://fer:***@db:5432/mlflow"
    assert "s3cret" not in redact_uri("http://u:s3cret@host:5000")
    assert redact_uri("sqlite:///mlruns/mlflow.db") == "sqlite:///mlruns/mlflow.db"
    assert redact_uri("http://host:5000") == "http://host:5000"
    assert ui_command("sqlite:////tmp/x/mlflow.db").startswith("mlflow ui --backend-store-uri sqlite:////tmp/x/mlflow.db")
    # MLflow 3.17's UI opens in its GenAI view unless the address asks for the model-training view.
    assert ui_command("sqlite:///m.db", "3").endswith("http://127.0.0.1:5000/#/experiments/3?workflowType=machine_learning")
    assert "http://host:5000" in ui_command("http://host:5000")
    assert "mlflow ui" not in ui_command("http://host:5000")


# ------------------------------------------------------------------------------------------------- registry
def test_register_run_model_idempotent_and_aliases(prepared_stores: dict[str, str]) -> None:
    stores = prepared_stores  # the store exists already: these tests are not about creating it
    from fer_experiments.models.builder import build_model
    from fer_experiments.params import ModelParams
    from fer_experiments.tracking.model_registry import alias_version, list_versions, register_run_model, set_alias

    uri = stores["tracking_uri"]
    model = build_model(ModelParams(conv_blocks=1, convs_per_block=1, filters=2, dense_layers=0))
    with start_run(uri, "reg") as run:
        model_uri = run.log_keras_model(model)
    assert model_uri == f"runs:/{run.run_id}/model"
    assert get_run(uri, run.run_id).status == "FINISHED"

    v1, created1 = register_run_model(uri, "fer-cnn", run.run_id, tags={"val_accuracy": 0.5, "skip": None})
    v2, created2 = register_run_model(uri, "fer-cnn", run.run_id)
    assert (created1, created2) == (True, False)
    assert v1.version == v2.version == "1"
    assert v1.run_id == run.run_id
    assert v1.tags.get("val_accuracy") == "0.5" and "skip" not in v1.tags
    assert len(list_versions(uri, "fer-cnn")) == 1

    assert alias_version(uri, "fer-cnn", "champion") is None
    assert alias_version(uri, "no-such-model", "champion") is None
    set_alias(uri, "fer-cnn", "champion", v1.version)
    got = alias_version(uri, "fer-cnn", "champion")
    assert got is not None and got.version == v1.version and "champion" in got.aliases


def test_register_without_logged_model_is_config_error(prepared_stores: dict[str, str]) -> None:
    stores = prepared_stores  # the store exists already: these tests are not about creating it
    from fer_experiments.tracking.model_registry import register_run_model

    uri = stores["tracking_uri"]
    with start_run(uri, "reg") as run:
        pass
    with pytest.raises(ConfigError, match=run.run_id):
        register_run_model(uri, "fer-cnn", run.run_id)


# ------------------------------------------------------------------------------------------------------ io
def test_atomic_write_text(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "report.txt"
    atomic_write_text(target, "first\n")
    assert target.read_text() == "first\n"
    atomic_write_text(target, "second\n")
    assert target.read_text() == "second\n"
    assert os.listdir(target.parent) == ["report.txt"]


def test_atomic_write_text_error_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "report.txt"
    target.write_text("old\n")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(target, "half \ud800 written")  # a lone surrogate cannot be encoded as UTF-8
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["report.txt"]
    fresh = tmp_path / "new.txt"
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(fresh, "\ud800")
    assert not fresh.exists()
    assert os.listdir(tmp_path) == ["report.txt"]


def test_a_create_race_on_a_postgresql_backed_server_is_retried() -> None:
    # Two workers starting together log the same data set input: the MLflow server's insert of the second one fails
    # with a unique violation (seen in docker/smoke.sh); the retry finds the row the first one made.
    from fer_experiments.tracking.runs import _retry, _transient

    race = RuntimeError('RestException: BAD_REQUEST: (psycopg.errors.UniqueViolation) duplicate key value violates '
                        'unique constraint "dataset_pk"')
    assert _transient(race)
    calls = []

    def log_input() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise race
        return "logged"

    assert _retry(log_input, first_delay=0.01) == "logged" and len(calls) == 2
    assert not _transient(RuntimeError("INVALID_PARAMETER_VALUE: Changing param values is not allowed"))
