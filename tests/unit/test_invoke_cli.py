"""``invoke_cli`` (fer-exp in this process) answers as ``run_cli`` (a real process) does, and puts back what the
command changed in this process (tests/conftest.py)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from tests.conftest import invoke_cli, run_cli


@pytest.mark.parametrize("args", [["--help"], ["search", "--help"], ["train", "--data", "missing.csv"],
                                  ["studies"], ["train", "--set", "nope=1"]])
def test_same_exit_code_and_output_as_a_process(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    real = run_cli(*args, cwd=tmp_path / "a")
    here = invoke_cli(*args, cwd=tmp_path / "b")
    assert here.returncode == real.returncode
    assert here.stdout.replace("/b", "/a") == real.stdout
    assert here.stderr.replace("/b", "/a") == real.stderr
    assert real.returncode == 0 or real.stderr  # an error says so


def test_process_state_is_put_back(prepared_stores: dict[str, str], tmp_path: Path) -> None:
    """A command that points MLflow at its store (``models`` -> prepare_store -> mlflow.set_tracking_uri, which
    exports MLFLOW_TRACKING_URI) leaves this process's MLflow URIs, environment, folder, argv and SIGTERM handler as
    they were."""
    import mlflow

    from fer_experiments.tracking import store

    work = Path(prepared_stores["root"]).parent
    before = (mlflow.get_tracking_uri(), dict(os.environ), os.getcwd(), list(sys.argv),
              signal.getsignal(signal.SIGTERM), set(store._prepared))
    proc = invoke_cli("models", "--tracking-uri", prepared_stores["tracking_uri"], cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert (mlflow.get_tracking_uri(), dict(os.environ), os.getcwd(), list(sys.argv),
            signal.getsignal(signal.SIGTERM), set(store._prepared)) == before
    # The environment a test sets for a command reaches it, and is gone afterwards.
    proc = invoke_cli("models", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": prepared_stores["tracking_uri"]})
    assert proc.returncode == 0, proc.stderr
    assert "MLFLOW_TRACKING_URI" not in os.environ
    # Without it, the command looks in its own folder (as a new process would), not in the store used before.
    (tmp_path / "elsewhere").mkdir()
    proc = invoke_cli("models", cwd=tmp_path / "elsewhere")
    assert proc.returncode == 2 and "no MLflow tracking store" in proc.stderr


def test_log_handlers_write_to_the_commands_streams_then_back() -> None:
    """A library's log handler on the process's stderr (Optuna's, MLflow's) writes into the command's stderr while it
    runs, as in a process of its own, and is put back afterwards."""
    import logging

    handler = logging.StreamHandler(sys.__stderr__)
    logger = logging.getLogger("fer-exp-tests-invoke")
    logger.addHandler(handler)
    try:
        proc = invoke_cli("--version")
        assert proc.returncode == 0 and "version" in proc.stdout
        assert handler.stream is sys.__stderr__
    finally:
        logger.removeHandler(handler)


def test_the_default_store_of_each_folder_is_its_own(synthetic_csv: Path, tmp_path: Path) -> None:
    """The default ``sqlite:///mlruns/mlflow.db`` is relative: two commands in two folders write two stores (MLflow
    caches stores and engines per URI string for the life of a process)."""
    import mlflow

    runs = {}
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        proc = invoke_cli("train", "--data", str(synthetic_csv), "--preset", "seed-base", "--set", "conv_blocks=1",
                          "--set", "filters=4", "--set", "dense_layers=0", "--epochs", "1", "--limit", "70",
                          "--experiment", name, cwd=tmp_path / name)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        runs[name] = next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("run: "))
    for name, run_id in runs.items():
        uri = f"sqlite:///{tmp_path / name}/mlruns/mlflow.db"
        client = mlflow.MlflowClient(uri, registry_uri=uri)
        found = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert [r.info.run_id for r in found] == [run_id], name
        assert client.get_run(run_id).info.artifact_uri.startswith(f"file://{tmp_path / name}/mlruns")


def test_a_registry_uri_set_by_a_test_does_not_outlive_it(prepared_stores: dict[str, str]) -> None:
    """First half: set MLflow's global URIs as a test may (test_promote_cli does). The autouse fixture clears them
    after the test, so the next test's ``models:/`` lookups follow the tracking URI it sets (test_ensemble_real)."""
    import mlflow

    mlflow.set_tracking_uri(prepared_stores["tracking_uri"])
    mlflow.set_registry_uri(prepared_stores["tracking_uri"])
    assert mlflow.get_registry_uri() == prepared_stores["tracking_uri"]


def test_a_registry_uri_set_by_a_test_does_not_outlive_it_2(tmp_path: Path) -> None:
    """Second half (runs after the first in this file)."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    assert mlflow.get_registry_uri() == uri
