"""Several local worker processes on one SQLite file: the second is refused with a pointer to PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import copy_migrated_store, run_cli
from tests.integration.test_workers_pg import SPACE, _wait_line

pytestmark = [pytest.mark.slow]


def test_second_sqlite_worker_is_refused(synthetic_csv: Path, tmp_path: Path, migrated_mlflow_db: Path) -> None:
    # The MLflow store exists already (copied): this test is not about creating one.
    copy_migrated_store(migrated_mlflow_db, tmp_path / "mlruns")
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.format(epochs=3))
    args = ["search", "--data", str(synthetic_csv), "--space", str(space), "--study", "s", "--n-trials", "1"]
    first = subprocess.Popen([sys.executable, "-m", "fer_experiments.cli", *args], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_line(first, "epoch 1/3", timeout=300)
        second = run_cli(*args, cwd=tmp_path)
        assert second.returncode == 2
        assert "PostgreSQL" in second.stderr and "journal" in second.stderr and "database is locked" not in second.stderr
        out, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            first.kill()
