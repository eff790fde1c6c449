"""Shared set-up of the benchmark scripts: a quiet, home-free environment made *before* any heavy import.

Import this module first in a bench script: it creates one temporary folder for the run (Keras and matplotlib
homes, the MLflow and Optuna SQLite stores), sets the environment variables TensorFlow, MLflow, Keras and
matplotlib read at import time, and puts the checkout on ``sys.path`` so the scripts run without installing.
"""

from __future__ import annotations

import atexit
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing

#: This run's scratch folder (stores, Keras/matplotlib homes); removed at exit unless keep_tmp() was called.
TMP = Path(tempfile.mkdtemp(prefix="fer-bench-"))
_keep = {"tmp": False}

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # tf.data's harmless E0000 lines
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("DISABLE_TELEMETRY", "true")
os.environ["KERAS_HOME"] = str(TMP / "keras")
os.environ["MPLCONFIGDIR"] = str(TMP / "mpl")
os.environ.setdefault("MPLBACKEND", "Agg")
# A tracking URI from the caller's shell must not redirect the benchmark's runs into a real store.
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("FER_EXP_STORAGE", None)

from fer_experiments.cli.native_noise import filter_tensorflow_startup  # noqa: E402 - after sys.path is set

filter_tensorflow_startup()  # TensorFlow's oneDNN start-up lines, written before TF_CPP_MIN_LOG_LEVEL is read


def _cleanup() -> None:
    if _keep["tmp"]:
        print(f"(kept the scratch folder {TMP})")
    else:
        shutil.rmtree(TMP, ignore_errors=True)


atexit.register(_cleanup)


def keep_tmp() -> None:
    """Leave the scratch folder (stores, artifacts) in place at exit, for inspection."""
    _keep["tmp"] = True


def default_data_path() -> str:
    """``$FER2013_CSV``, else ``<repo>/../shared/data/fer2013.csv.gz``."""
    return os.environ.get("FER2013_CSV", str(REPO.parent / "shared" / "data" / "fer2013.csv.gz"))


def default_cache_dir() -> str:
    """``$FER_EXP_CACHE``, else a bench cache under the system temp folder (kept between runs, out of home)."""
    return os.environ.get("FER_EXP_CACHE") or str(Path(tempfile.gettempdir()) / "fer-exp-bench-cache")


def sqlite_url(name: str) -> str:
    """``sqlite:///<TMP>/<name>`` (an absolute path: four slashes in all)."""
    return f"sqlite:///{TMP / name}"


def quiet_libraries() -> None:
    """Silence warnings and chatty loggers (TensorFlow, MLflow, alembic, Optuna) the way the CLI does."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    # Optuna's ExperimentalWarning (heartbeats, fail_stale_trials) is a plain Warning: match its text.
    warnings.filterwarnings("ignore", message=r".*(is experimental|an experimental feature).*")
    for name in ("mlflow", "alembic", "optuna", "tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def machine_line() -> str:
    """One line: CPUs and the 1-minute load average (others' work on the same cores makes figures noisy)."""
    try:
        load = f"{os.getloadavg()[0]:.2f}"
    except OSError:
        load = "?"
    return f"cpus: {os.cpu_count()}, load average (1 min) at start: {load}"
