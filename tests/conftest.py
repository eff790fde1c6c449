"""Shared fixtures: quiet, home-free environment; synthetic Kaggle-format data; the real FER2013 file and tiny real
subsets; temporary stores.

Tests are fast by construction: tiny models, a few hundred images, 1-2 epochs, CPU, fixed seeds. Tests that need no
real pixels use ``synthetic_csv`` (made here, seeded: no file needed); only those that do (face detection on photos
made from FER2013 faces, the real file's counts, one end-to-end train/search/promote) use ``real_csv`` /
``tiny_real_csv`` / ``real_dataset`` and carry ``@pytest.mark.realdata``.
"""

from __future__ import annotations

import os
import signal
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
# The decoded-array cache (written atomically) is shared by pytest-xdist's workers of one run: the real file is decoded
# once per run, not once per worker.
_XDIST_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
os.environ["FER_EXP_CACHE"] = str(Path(tempfile.gettempdir()) / f"fer-exp-tests-cache-{_XDIST_RUN}" if _XDIST_RUN
                                  else _SESSION_TMP / "cache")
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
    log into: clear it after each test so that each test's commands use the store they name or their own default.
    MLflow's global URIs go too: a registry URI a test (or a library call in it) set would otherwise send a later
    test's ``models:/`` lookups to that store (test files run in any order and mix under pytest-xdist)."""
    yield
    for var in _TRACKING_VARS:
        os.environ.pop(var, None)
    if "mlflow" in sys.modules:
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        tracking_utils._tracking_uri = None
        registry_utils._registry_uri = None


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


def synthetic_split(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 48x48 uint8 images whose class (0-6, balanced, shuffled) shows in their pixels, plus noise.

    Class c: mean brightness 32 + 32 c and a grating at angle c * 180/7 degrees with a random phase, plus Gaussian
    noise (sigma 25). A one-block, 4-filter net reaches ~30% PublicTest accuracy in 2 epochs on 200 images (chance
    is 14%), never near 100%: enough for tests that need a model to learn something, and for runs to differ.
    """
    from fer_experiments import IMAGE_SIZE, NUM_CLASSES

    y = np.arange(n) % NUM_CLASSES
    rng.shuffle(y)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] / IMAGE_SIZE
    x = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i, c in enumerate(y):
        theta = np.pi * c / NUM_CLASSES
        grating = np.sin(2 * np.pi * 3 * (np.cos(theta) * xx + np.sin(theta) * yy) + rng.uniform(0, 2 * np.pi))
        img = 32 + 32 * c + 30 * grating + rng.normal(0, 25, (IMAGE_SIZE, IMAGE_SIZE))
        x[i] = np.clip(img, 0, 255).astype(np.uint8)
    return x, y.astype(np.int64)


#: Rows per split of ``synthetic_csv`` (the sizes of ``tiny_real_csv``).
SYNTHETIC_SIZES = {"Training": 600, "PublicTest": 240, "PrivateTest": 240}


@pytest.fixture(scope="session")
def synthetic_csv() -> Path:
    """A Kaggle-format CSV of synthetic, learnable images (``synthetic_split``): 600 Training, 240 PublicTest,
    240 PrivateTest rows, every class in every split; seeded, so its digest is the same in every session."""
    rng = np.random.default_rng(2013)
    parts = {name: synthetic_split(n, rng) for name, n in SYNTHETIC_SIZES.items()}
    return write_kaggle_csv(_SESSION_TMP / "fer2013-synthetic.csv", parts)


@pytest.fixture(scope="session")
def synthetic_dataset(synthetic_csv: Path):
    """``synthetic_csv`` loaded (a FerDataset)."""
    from fer_experiments.data import load_dataset

    return load_dataset(synthetic_csv)


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


def tiny_space(name: str, *, seed: int = 1, batch_size: int = 64, lr: tuple[str, str] = ("1.0e-3", "3.0e-3")) -> str:
    """The YAML of the tiny space most real-data tests search: 1 block of 1 convolution of 4 or 8 filters, no dense
    layer, 1 epoch on 200 Training rows, random sampling, no pruning (a few seconds a trial)."""
    return (f"name: {name}\nmax_epochs: 1\ntrain_limit: 200\nsampler: {{name: random, seed: {seed}}}\npruner: none\n"
            "params:\n  conv_blocks: 1\n  convs_per_block: 1\n  filters: {type: categorical, choices: [4, 8]}\n"
            f"  dense_layers: 0\n  batch_size: {batch_size}\n"
            f"  learning_rate: {{type: float, low: {lr[0]}, high: {lr[1]}, log: true}}\n")


@pytest.fixture
def stores(tmp_path: Path) -> dict[str, str]:
    """Fresh MLflow and Optuna SQLite stores in a temporary folder."""
    root = tmp_path / "mlruns"
    root.mkdir()
    return {"tracking_uri": f"sqlite:///{root}/mlflow.db", "storage": f"sqlite:///{root}/optuna.db", "root": str(root)}


@pytest.fixture(scope="session")
def migrated_mlflow_db() -> Path:
    """One MLflow SQLite database created and migrated once per session (the migrations take seconds per store).

    Made with a plain client, not ``prepare_store``, so that MLflow's global tracking URI never points at it (a
    fluent call logging into it would leak runs into every later copy)."""
    import mlflow

    path = _SESSION_TMP / "migrated" / "mlflow.db"
    path.parent.mkdir(exist_ok=True)
    uri = f"sqlite:///{path}"
    mlflow.MlflowClient(uri, registry_uri=uri).search_experiments(max_results=1)
    return path


def copy_migrated_store(migrated_db: Path, root: Path) -> dict[str, str]:
    """Stores in ``root`` (the keys of ``stores``) whose MLflow database is a copy of ``migrated_db``."""
    import sqlite3

    root.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(migrated_db) as src, sqlite3.connect(root / "mlflow.db") as dst:
        src.backup(dst)  # a consistent copy even if a connection to the source is still open
    return {"tracking_uri": f"sqlite:///{root}/mlflow.db", "storage": f"sqlite:///{root}/optuna.db", "root": str(root)}


@pytest.fixture
def prepared_stores(stores: dict[str, str], migrated_mlflow_db: Path) -> dict[str, str]:
    """``stores`` whose MLflow database already exists (a copy of a session-wide migrated one, no runs): for tests
    that are not about creating a store. Same keys as ``stores``; the Optuna file is still absent."""
    return copy_migrated_store(migrated_mlflow_db, Path(stores["root"]))


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """Run ``fer-exp ARGS`` in a subprocess (as a user would) and capture its output."""
    # A tracking URI exported by an in-process mlflow call must not redirect the command's runs.
    # PYTHONFAULTHANDLER: a native crash (CI once saw a -11 with empty stderr) prints every thread's Python stack.
    full_env = ({k: v for k, v in os.environ.items() if k not in _TRACKING_VARS} | {"PYTHONFAULTHANDLER": "1"}
                | (env or {}))
    return subprocess.run([sys.executable, "-m", "fer_experiments.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def _rebind_log_streams(streams: dict[int, object]) -> list[tuple[object, object]]:
    """Point every logging ``StreamHandler`` whose stream is a key (by id) of ``streams`` at its value; the
    (handler, previous stream) pairs changed."""
    import logging

    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    changed = []
    for handler in {h for logger in loggers for h in logger.handlers}:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            if id(handler.stream) in streams:
                changed.append((handler, handler.setStream(streams[id(handler.stream)])))
    return changed


def _forget_relative_stores() -> None:
    """Drop MLflow's cached stores and database engines (kept per URI string for the process's life) of relative
    SQLite URIs such as the default ``sqlite:///mlruns/mlflow.db``: in another folder the same string names another
    file, which a new process would open."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore
    from mlflow.tracking._model_registry.registry import ModelRegistryStoreRegistry
    from mlflow.tracking._tracking_service.registry import TrackingStoreRegistry

    TrackingStoreRegistry._get_store_with_resolved_uri.cache_clear()
    ModelRegistryStoreRegistry._get_store_with_resolved_uri.cache_clear()
    for store_class in (TrackingStore, RegistryStore):
        with store_class._engine_map_lock:
            for uri in [u for u in store_class._engine_map if u.startswith("sqlite:") and not
                        u.startswith("sqlite:////")]:
                store_class._engine_map.pop(uri).dispose()


def invoke_cli(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict[str, str] | None = None,
               ) -> subprocess.CompletedProcess[str]:
    """Run ``fer-exp ARGS`` in this process (click's ``CliRunner`` streams) and answer as ``run_cli`` does.

    The same entry point (``fer_experiments.cli.main``: error taxonomy -> exit code, one-line messages), the same
    environment rules (tracking variables dropped, ``env`` added), ``cwd`` and ``sys.argv`` as a user's command would
    see them; a ``CompletedProcess`` with the exit code and the captured stdout/stderr. It saves the ~5 s a new
    Python process spends importing TensorFlow. Use ``run_cli`` where the process itself is under test (signals,
    crashes, workers, native output, start-up quietness): only what goes through ``sys.stdout``/``sys.stderr`` is
    captured here, and ``timeout`` is not enforced.

    What the command changes in this process is put back afterwards: the environment (``mlflow.set_tracking_uri``
    exports ``MLFLOW_TRACKING_URI``), MLflow's global tracking/registry URIs and active runs, the stores
    ``prepare_store`` remembers and the stores and engines MLflow caches for relative SQLite URIs (the default
    ``sqlite:///mlruns/mlflow.db`` means another file in another folder), the working folder,
    ``sys.argv``, the SIGTERM and SIGINT handlers, the root/mlflow logger levels; library log handlers that write
    to the process's stdout/stderr write to the command's while it runs (as they would in its own process).
    """
    import logging

    import click.testing
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from fer_experiments.cli import main
    from fer_experiments.tracking import store

    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    saved_argv = sys.argv
    saved_signals = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    saved_uris = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    saved_prepared = set(store._prepared)
    saved_levels = {name: logging.getLogger(name).level for name in ("", "mlflow", "alembic")}
    active_before = mlflow.active_run()
    code = 0
    try:
        for var in _TRACKING_VARS:
            os.environ.pop(var, None)
        os.environ.update(env or {})
        if cwd is not None:
            os.chdir(cwd)
        sys.argv = ["fer-exp", *args]
        store._prepared.clear()  # as in a new process: each command prepares its store (and points mlflow at it)
        _forget_relative_stores()
        runner = click.testing.CliRunner()
        outer = {"stdout": sys.stdout, "stderr": sys.stderr}
        with runner.isolation() as (out, err, _mixed):
            click.formatting.FORCED_WIDTH = None  # help wraps as in a process with no terminal (isolation forces 80)
            inner = {"stdout": sys.stdout, "stderr": sys.stderr}
            # Library loggers (Optuna's, MLflow's) write to the process's streams: to this command's while it runs.
            rebound = _rebind_log_streams({id(outer[k]): inner[k] for k in inner}
                                          | {id(getattr(sys, f"__{k}__")): inner[k] for k in inner})
            try:
                main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                # ...and back afterwards; handlers made during the command go to the real streams.
                for handler, stream in rebound:
                    handler.setStream(stream)
                _rebind_log_streams({id(inner[k]): getattr(sys, f"__{k}__") for k in inner})
            stdout, stderr = out.getvalue().decode(), err.getvalue().decode("utf-8", "backslashreplace")
    finally:
        # A run the command left open (the process's exit would have ended it): end it as the atexit hook does.
        while mlflow.active_run() is not None and mlflow.active_run() is not active_before:
            mlflow.end_run()
        _forget_relative_stores()
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        for sig, handler in saved_signals.items():
            signal.signal(sig, handler)
        os.environ.clear()
        os.environ.update(saved_env)
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved_uris
        store._prepared.clear()
        store._prepared.update(saved_prepared)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
    return subprocess.CompletedProcess(["fer-exp", *args], code, stdout, stderr)
