"""Tracked trainings on synthetic data: `fer-exp train` end to end and on a NaN loss (subprocesses), and the same
seed giving the same metrics (in-process). The real-data training is in test_train_real.py."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fer_experiments import IMAGE_SIZE, NUM_CLASSES
from tests.conftest import invoke_cli, write_kaggle_csv

pytestmark = pytest.mark.slow

TINY_SETS = ("--set", "conv_blocks=1", "--set", "convs_per_block=1", "--set", "filters=4", "--set", "dense_layers=0",
             "--epochs", "1")


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """70 / 35 / 35 random images, every class in every split."""
    rng = np.random.default_rng(0)
    parts = {}
    for name, n in (("Training", 70), ("PublicTest", 35), ("PrivateTest", 35)):
        parts[name] = (rng.integers(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8), np.arange(n) % NUM_CLASSES)
    return write_kaggle_csv(tmp_path_factory.mktemp("cli-data") / "tiny.csv", parts)


def _runs(uri: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_train_end_to_end(tiny_csv: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    proc = invoke_cli("train", "--data", str(tiny_csv), *TINY_SETS, "--tracking-uri", uri, "--experiment", "cli-e2e",
                      cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    m = re.search(r"^run: ([0-9a-f]{32})$", proc.stdout, re.MULTILINE)
    assert m, proc.stdout
    assert "epoch 1/1" in proc.stdout and "precision" in proc.stdout
    runs = _runs(uri)
    assert [r.info.run_id for r in runs] == [m.group(1)]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["filters"] == "4" and run.data.params["epochs"] == "1"
    assert run.data.params["n_train"] == "70" and run.data.params["n_val"] == "35"
    assert "best_val_accuracy" in run.data.metrics and "val_precision_angry" in run.data.metrics
    assert "failure_reason" not in run.data.tags
    # artifacts live beside the database, not in the working folder
    assert run.info.artifact_uri.startswith((tmp_path / "store" / "artifacts").as_uri())
    assert not (tmp_path / "mlruns").exists()
    import mlflow

    names = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(run.info.run_id)}
    assert {"learning_curves.png", "history.csv"} <= names


def test_train_nan_exits_4_and_run_failed(tiny_csv: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    proc = invoke_cli("train", "--data", str(tiny_csv), *TINY_SETS, "--batch-size", "16", "--learning-rate", "1e39",
                      "--set", "optimizer=sgd", "--tracking-uri", uri, cwd=tmp_path, timeout=300)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    _assert_one_line_error(proc, "nan")
    runs = _runs(uri)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FAILED"
    assert "nan" in run.data.tags["failure_reason"].lower()
    assert run.info.end_time is not None


def test_same_seed_same_metrics(synthetic_csv: Path, stores: dict) -> None:
    from fer_experiments.config import DataConfig, TrackingConfig, TrainConfig
    from fer_experiments.data import load_training_data
    from fer_experiments.tracking.training_run import run_training
    from fer_experiments.params import ModelParams, TrainParams

    cfg = TrainConfig(data=DataConfig(path=str(synthetic_csv), limit=200),
                      tracking=TrackingConfig(tracking_uri=stores["tracking_uri"], experiment="det"),
                      model=ModelParams(conv_blocks=2, convs_per_block=1, filters=8, dense_layers=1, dense_units=16,
                                        batchnorm="after_activation"),
                      train=TrainParams(epochs=2, batch_size=32, seed=123, augment_flip=True))
    data = load_training_data(cfg.data)
    _, a = run_training(cfg, data)
    _, b = run_training(cfg, data)
    assert a.history == b.history
    assert a.evaluation.confusion == b.evaluation.confusion
