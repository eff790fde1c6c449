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
