"""Issue 14 end to end on tiny real data: residual/separable blocks with crop and flip TTA through `fer-exp train`
and MLflow's real logging path, a search whose space refits, and `--budget` bounding the whole command."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import invoke_cli
from tests.conftest import run_cli as _run_cli

#: A training subprocess took 4-10 minutes on the shared 2-core machine at load 20+: generous, but finite.
SLOW_MACHINE_TIMEOUT = 1800


def run_cli(*args: str, timeout: float = SLOW_MACHINE_TIMEOUT, **kwargs: object):
    return _run_cli(*args, timeout=timeout, **kwargs)

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

NARROW = ("--set", "conv_blocks=2", "--set", "filters=4", "--set", "dense_layers=0", "--set", "head=global_avg",
          "--set", "batchnorm=before_activation")


def _train(work: Path, csv: Path, *sets: str) -> tuple[str, str]:
    proc = invoke_cli("train", "--data", str(csv), "--preset", "seed-base", "--epochs", "1", "--limit", "200",
                      "--batch-size", "64", *NARROW, *sets, cwd=work)
    assert proc.returncode == 0, proc.stderr
    run_id = next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("run: "))
    return run_id, f"sqlite:///{work}/mlruns/mlflow.db"


@pytest.mark.parametrize("sets", [
    ("--set", "block=residual", "--set", "augment_crop=4", "--set", "tta=flip"),
    ("--set", "block=separable", "--set", "tta=flip"),
], ids=["residual-crop-tta", "separable-tta"])
def test_train_logs_a_tta_model_symmetric_under_mirroring(sets: tuple[str, ...], tiny_real_csv: Path, tmp_path: Path,
                                                          real_dataset) -> None:
    import mlflow
    import mlflow.pyfunc

    run_id, uri = _train(tmp_path, tiny_real_csv, *sets)
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["block"] == sets[1].split("=")[1] and run.data.params["tta"] == "flip"
    assert run.data.metrics["train_images_seen"] == 200
    mlflow.set_tracking_uri(uri)
    # MLflow's own loader (what `mlflow models serve` uses), without any fer_experiments code in the model.
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    x = real_dataset.split("PrivateTest").x[:16].astype("float32")[..., None]
    p = np.asarray(model.predict(x))
    q = np.asarray(model.predict(x[:, :, ::-1, :].copy()))
    assert p.shape == (16, 7)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(p, q)
    proc = invoke_cli("evaluate", f"runs:/{run_id}/model", "--data", str(tiny_real_csv), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def _space(path: Path, **extra: object) -> Path:
    space = {"name": "tiny-refit", "max_epochs": 1, "train_limit": 200, "sampler": {"name": "random", "seed": 1},
             "pruner": "none", "params": {
                 "conv_blocks": 1, "filters": {"type": "categorical", "choices": [4, 6]}, "head": "global_avg",
                 "dense_layers": 0, "batch_size": 64, "tta": "flip",
                 "block": {"type": "categorical", "choices": ["plain", "residual"]}}} | extra
    path.write_text(yaml.safe_dump(space))
    return path


def test_search_refits_the_best_trial_and_registers_it_as_challenger(tiny_real_csv: Path, tmp_path: Path,
                                                                    real_dataset) -> None:
    import mlflow

    from fer_experiments.tracking import find_runs, tags

    space = _space(tmp_path / "space.yaml", refit={"top_k": 1, "epochs": 1})
    args = ("search", "--data", str(tiny_real_csv), "--space", str(space), "--study", "r", "--n-trials", "2")
    proc = invoke_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "registered fer-cnn version 1 (alias challenger) from the refit of trial" in proc.stdout
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    refits = find_runs(uri, None, filter_string=tags.study_filter("r", kind=tags.KIND_REFIT))
    trials = find_runs(uri, None, filter_string=tags.study_filter("r", kind=tags.KIND_TRIAL))
    parent = find_runs(uri, None, filter_string=tags.study_filter("r", kind=tags.KIND_STUDY))[0]
    assert len(refits) == 1 and len(trials) == 2
    refit = refits[0]
    assert refit.status == "FINISHED" and refit.tags["mlflow.parentRunId"] == parent.run_id
    best = max(trials, key=lambda r: (float(r.tags[tags.OBJECTIVE_VALUE]), -int(r.tags[tags.TRIAL_NUMBER])))
    assert refit.tags[tags.REFIT_OF] == best.run_id
    assert refit.params["n_train"] == "600"  # all of the tiny data's Training rows
    assert best.params["n_train"] == "200"
    assert refit.params["block"] == best.params["block"] and refit.params["filters"] == best.params["filters"]
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    version = client.get_model_version_by_alias("fer-cnn", "challenger")
    assert version.run_id == refit.run_id
    # promote --study still finds a candidate (refit runs count).
    dry = invoke_cli("promote", "--study", "r", "--data", str(tiny_real_csv), "--dry-run", cwd=tmp_path)
    assert dry.returncode in (0, 6), dry.stderr
    # A second command finds the refit done (FINISHED) and does not refit again.
    again = invoke_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(find_runs(uri, None, filter_string=tags.study_filter("r", kind=tags.KIND_REFIT))) == 1


def test_interrupted_refit_is_redone(tiny_real_csv: Path, tmp_path: Path) -> None:
    from fer_experiments.tracking import end_run, find_runs, tags

    space = _space(tmp_path / "space.yaml", refit={"top_k": 1, "epochs": 1})
    args = ("search", "--data", str(tiny_real_csv), "--space", str(space), "--study", "k", "--n-trials", "1")
    assert invoke_cli(*args, cwd=tmp_path).returncode == 0
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    first = find_runs(uri, None, filter_string=tags.study_filter("k", kind=tags.KIND_REFIT))
    assert len(first) == 1
    end_run(uri, first[0].run_id, "KILLED")  # as Ctrl-C during the refit leaves it
    again = invoke_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    runs = find_runs(uri, None, filter_string=tags.study_filter("k", kind=tags.KIND_REFIT))
    assert sorted(r.status for r in runs) == ["FINISHED", "KILLED"]


def test_budget_bounds_the_whole_command(tiny_real_csv: Path, tmp_path: Path) -> None:
    from fer_experiments.tracking import find_runs, tags

    # The command (a real process: its start and TensorFlow's import count) within 60 s: trials, then a refit
    # with a fifth of it (the command refuses a budget that cannot run a first trial after a slow machine's set-up).
    budget = 60
    # Epochs no machine finishes within the budget (CI's faster CPU ran 50 refit epochs of 600 rows in 36 s).
    epochs = 1000  # the most a space allows
    space = _space(tmp_path / "space.yaml", max_epochs=epochs,
                   refit={"top_k": 1, "epochs": epochs, "budget_share": 0.2})
    started = time.monotonic()
    proc = run_cli("search", "--data", str(tiny_real_csv), "--space", str(space), "--study", "b",
                   "--budget", f"{budget}s", cwd=tmp_path, timeout=budget * 4)
    wall = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    # Within the budget plus a margin (a Python start, a TensorFlow import and a model log on a shared 2-core CPU).
    assert wall <= budget + 40, (wall, proc.stdout[-2000:])
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    trials = find_runs(uri, None, filter_string=tags.study_filter("b", kind=tags.KIND_TRIAL))
    refits = find_runs(uri, None, filter_string=tags.study_filter("b", kind=tags.KIND_REFIT))
    assert trials and len(refits) == 1 and refits[0].status == "FINISHED"
    # Every training was bounded by time, not by its epochs.
    assert all(float(r.params["time_budget_s"]) > 0 for r in trials + refits)
    assert int(refits[0].metrics["epochs_run"]) < epochs
    print(f"--budget {budget}s: wall {wall:.0f}s, {len(trials)} trials, refit epochs {refits[0].metrics['epochs_run']}")
