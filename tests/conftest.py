"""Shared fixtures: quiet, home-free environment; the real FER2013 file; tiny real subsets; temporary stores.

Tests are fast by construction: tiny models, a few hundred real images, 1-2 epochs, CPU, fixed seeds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="fer-exp-tests-"))
# Before any heavy import: keep Keras, matplotlib and the data cache out of the home folder, silence TF.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("KERAS_HOME", str(_SESSION_TMP / "keras"))
os.environ.setdefault("MPLCONFIGDIR", str(_SESSION_TMP / "mpl"))
os.environ["FER_EXP_CACHE"] = str(_SESSION_TMP / "cache")
os.environ.pop("MLFLOW_TRACKING_URI", None)

REAL_CSV = Path(os.environ.get("FER2013_CSV", REPO.parent / "shared" / "data" / "fer2013.csv.gz"))
#: CI sets this so that a missing real-data file fails instead of skipping.
REQUIRE_REAL = os.environ.get("FER_EXP_REQUIRE_REAL_DATA") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if REQUIRE_REAL and not REAL_CSV.is_file():
        raise pytest.UsageError(f"FER_EXP_REQUIRE_REAL_DATA=1 but the FER2013 file is missing: {REAL_CSV}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ARG001
    """Under FER_EXP_REQUIRE_REAL_DATA=1 a skipped real-data test is a failure, not a skip."""
    outcome = yield
    report = outcome.get_result()
    needs_real = item.get_closest_marker("realdata") is not None or "real_csv" in getattr(item, "fixturenames", ())
    if REQUIRE_REAL and report.skipped and needs_real:
        report.outcome = "failed"
        report.longrepr = f"real-data test skipped under FER_EXP_REQUIRE_REAL_DATA=1: {report.longrepr}"


_TRACKING_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@pytest.fixture(autouse=True)
def _isolated_tracking_uri():
    """mlflow.set_tracking_uri() also exports MLFLOW_TRACKING_URI, which every later subprocess would inherit and
    log into: clear it after each test so that each test's commands use the store they name or their own default."""
    yield
    for var in _TRACKING_VARS:
        os.environ.pop(var, None)


@pytest.fixture(scope="session")
def real_csv() -> Path:
    if not REAL_CSV.is_file():
        pytest.skip(f"FER2013 file not found at {REAL_CSV} (set FER2013_CSV)")
    return REAL_CSV


@pytest.fixture(scope="session")
def real_dataset(real_csv: Path):
    from fer_experiments.data import load_dataset

    return load_dataset(real_csv)


def write_kaggle_csv(path: Path, parts: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Write images/labels per split as a Kaggle-format CSV (plain or .gz by suffix)."""
    import gzip

    lines = ["emotion,pixels,Usage"]
    for usage, (x, y) in parts.items():
        for img, label in zip(x, y):
            lines.append(f"{int(label)},{' '.join(map(str, img.reshape(-1).tolist()))},{usage}")
    data = ("\n".join(lines) + "\n").encode()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


@pytest.fixture(scope="session")
def tiny_real_csv(real_dataset) -> Path:
    """A small Kaggle CSV cut from the real file: 600 Training, 240 PublicTest, 240 PrivateTest rows, stratified."""
    from fer_experiments.data import stratified_subset

    sizes = {"Training": 600, "PublicTest": 240, "PrivateTest": 240}
    parts = {}
    for name, n in sizes.items():
        sub = stratified_subset(real_dataset.split(name), n, seed=7)
        parts[name] = (sub.x, sub.y)
    return write_kaggle_csv(_SESSION_TMP / "fer2013-tiny.csv", parts)


@pytest.fixture
def stores(tmp_path: Path) -> dict[str, str]:
    """Fresh MLflow and Optuna SQLite stores in a temporary folder."""
    root = tmp_path / "mlruns"
    root.mkdir()
    return {"tracking_uri": f"sqlite:///{root}/mlflow.db", "storage": f"sqlite:///{root}/optuna.db", "root": str(root)}


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """Run ``fer-exp ARGS`` in a subprocess (as a user would) and capture its output."""
    # A tracking URI exported by an in-process mlflow call must not redirect the command's runs.
    full_env = {k: v for k, v in os.environ.items() if k not in _TRACKING_VARS} | (env or {})
    return subprocess.run([sys.executable, "-m", "fer_experiments.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
