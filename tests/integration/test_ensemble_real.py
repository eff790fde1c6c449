"""`fer-exp ensemble` and `fer-exp distill` on a small real study (3 COMPLETE trials), real MLflow/Optuna stores.

Checked: the mean ensemble's registered version scores, on PrivateTest through `fer-exp evaluate`, exactly the
accuracy of its members' averaged probabilities computed here; greedy weights sum to 1 and its PublicTest accuracy
is at least the best member's; `predict --no-detect` and the REST app answer with the ensemble; `promote --run`
guards and promotes it; `distill` registers a student.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import invoke_cli, tiny_space

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

SPACE = tiny_space("ensemble-tiny", seed=3, batch_size=32, lr=("2.0e-3", "5.0e-3"))


@pytest.fixture(scope="module")
def env(tiny_real_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 3-trial study `e` (every trial COMPLETE) in a fresh folder."""
    work = tmp_path_factory.mktemp("ensemble")
    (work / "space.yaml").write_text(SPACE)
    proc = invoke_cli("search", "--data", str(tiny_real_csv), "--space", "space.yaml", "--study", "e",
                      "--n-trials", "3", cwd=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"work": work, "csv": str(tiny_real_csv), "uri": f"sqlite:///{work}/mlruns/mlflow.db"}


def _client(env: dict):
    import mlflow

    return mlflow.MlflowClient(env["uri"], registry_uri=env["uri"])


def _trial_runs(env: dict) -> list:
    client = _client(env)
    exp = client.get_experiment_by_name("e")
    return client.search_runs([exp.experiment_id], "tags.`fer.kind` = 'trial' and tags.trial_state = 'COMPLETE'")


def _ensemble(env: dict, *args: str) -> dict:
    proc = invoke_cli("ensemble", "--study", "e", "--top", "3", "--data", env["csv"], *args, cwd=env["work"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id = re.search(r"^run: (\w+)$", proc.stdout, re.M).group(1)
    version = re.search(r"registered fer-cnn version (\d+)", proc.stdout).group(1)
    return {"run_id": run_id, "version": version, "stdout": proc.stdout,
            "run": _client(env).get_run(run_id)}


@pytest.fixture(scope="module")
def mean(env: dict) -> dict:
    return _ensemble(env, "--method", "mean")


@pytest.fixture(scope="module")
def greedy(env: dict) -> dict:
    return _ensemble(env, "--method", "greedy")


def _members_proba(env: dict, run_ids: list[str], x: np.ndarray) -> list[np.ndarray]:
    import mlflow.keras

    mlflow.set_tracking_uri(env["uri"])
    return [mlflow.keras.load_model(f"runs:/{r}/model").predict(x[..., None].astype("float32"), verbose=0)
            for r in run_ids]


def test_mean_ensemble_private_accuracy_equals_averaged_members(env: dict, mean: dict, real_dataset) -> None:
    from fer_experiments.data import load_dataset

    run = mean["run"]
    trials = {r.info.run_id for r in _trial_runs(env)}
    members = run.data.params["ensemble_members"].split(",")
    assert len(trials) == 3 and set(members) == trials
    assert run.data.tags["fer.kind"] == "ensemble" and run.data.params["method"] == "mean"
    assert run.data.tags["study"] == "e" and run.data.tags["data_digest"]
    weights = [float(w) for w in run.data.params["ensemble_weights"].split(",")]
    assert weights == pytest.approx([1 / 3] * 3, abs=1e-5)
    for key in ("best_val_accuracy", "best_val_macro_f1", "val_f1_disgust", "n_params",
                "faces_per_second_one_at_a_time"):
        assert key in run.data.metrics
    arts = {a.path for a in _client(env).list_artifacts(mean["run_id"], "evaluation")}
    assert "evaluation/val_classification_report.json" in arts and "evaluation/val_confusion_matrix.png" in arts
    assert str(_client(env).get_model_version_by_alias("fer-cnn", "challenger").version) == mean["version"]
    assert "params" in mean["stdout"] and "faces/s" in mean["stdout"] and "best member" in mean["stdout"]

    ds = load_dataset(env["csv"])
    proc = invoke_cli("evaluate", f"models:/fer-cnn/{mean['version']}", "--data", env["csv"], "--split", "PrivateTest",
                      "--json", "--tracking-uri", env["uri"], cwd=env["work"])
    assert proc.returncode == 0, proc.stderr
    reported = json.loads(proc.stdout)["accuracy"]
    priv = ds.split("PrivateTest")
    expected = float(np.mean(np.mean(_members_proba(env, members, priv.x), axis=0).argmax(1) == priv.y))
    assert reported == pytest.approx(expected, abs=1e-12)
    pub = ds.split("PublicTest")
    expected_pub = float(np.mean(np.mean(_members_proba(env, members, pub.x), axis=0).argmax(1) == pub.y))
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(expected_pub)


def test_greedy_weights_and_not_below_best_member(env: dict, greedy: dict) -> None:
    run = greedy["run"]
    weights = [float(w) for w in run.data.params["ensemble_weights"].split(",")]
    assert sum(weights) == pytest.approx(1.0, abs=1e-5) and all(w > 0 for w in weights)
    members = run.data.params["ensemble_members"].split(",")
    assert len(members) == len(weights) and set(members) <= set(run.data.params["ensemble_candidates"].split(","))
    best_member = max(r.data.metrics["best_val_accuracy"] for r in _trial_runs(env))
    assert run.data.metrics["best_val_accuracy"] >= best_member - 1e-9
    assert run.data.params["method"] == "greedy"


def test_predict_and_serve_with_the_ensemble(env: dict, mean: dict, tmp_path: Path) -> None:
    import cv2
    import mlflow.keras
    from fastapi.testclient import TestClient

    from fer_experiments.data import load_dataset
    from fer_experiments.serving.app import create_app
    from fer_experiments.serving.detector import DetectorConfig, FaceDetector
    from fer_experiments.serving.predictor import ModelHolder

    face = load_dataset(env["csv"]).split("PrivateTest").x[0]
    crop = tmp_path / "crop.png"
    cv2.imwrite(str(crop), face)
    mlflow.set_tracking_uri(env["uri"])
    expected = mlflow.keras.load_model(f"models:/fer-cnn/{mean['version']}").predict(
        face[None, ..., None].astype("float32"), verbose=0)[0]
    proc = invoke_cli("predict", str(crop), "--no-detect", "--json", "--model", f"models:/fer-cnn/{mean['version']}",
                      "--tracking-uri", env["uri"], cwd=env["work"])
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)[0]["faces"][0]["probabilities"]
    np.testing.assert_allclose(list(got.values()), expected, atol=2e-5)

    holder = ModelHolder(f"models:/fer-cnn/{mean['version']}", env["uri"], FaceDetector(DetectorConfig()))
    holder.refresh()
    with TestClient(create_app(holder)) as client:
        health = client.get("/health").json()
        assert health["ready"] and str(health["model"]["version"]) == mean["version"]
        answer = client.post("/predict?detect=false", content=crop.read_bytes())
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(list(answer.json()["faces"][0]["probabilities"].values()), expected, atol=2e-5)


def test_promote_guards_and_promotes_an_ensemble(env: dict, greedy: dict) -> None:
    client = _client(env)
    best = invoke_cli("promote", "--study", "e", "--data", env["csv"], "--model-name", "fer-cnn", cwd=env["work"])
    assert best.returncode == 0, best.stderr
    champion = client.get_model_version_by_alias("fer-cnn", "champion")
    champ_acc = client.get_run(champion.run_id).data.metrics["best_val_accuracy"]
    ens_acc = greedy["run"].data.metrics["best_val_accuracy"]
    proc = invoke_cli("promote", "--run", greedy["run_id"], "--data", env["csv"], cwd=env["work"])
    if ens_acc > champ_acc:
        assert proc.returncode == 0, proc.stderr
    else:  # the guard refuses an ensemble that is not better on PublicTest, like any model; --force overrides
        assert proc.returncode == 6 and "not better" in proc.stderr
        proc = invoke_cli("promote", "--run", greedy["run_id"], "--data", env["csv"], "--force", cwd=env["work"])
        assert proc.returncode == 0, proc.stderr
    assert f"reused fer-cnn version {greedy['version']}" in proc.stdout
    now = client.get_model_version_by_alias("fer-cnn", "champion")
    assert now.run_id == greedy["run_id"] and str(now.version) == greedy["version"]
    run = client.get_run(greedy["run_id"])
    assert 0 <= run.data.metrics["test_accuracy"] <= 1  # promote's PrivateTest report, through the ensemble


def test_distill_registers_a_student(env: dict, mean: dict) -> None:
    import mlflow.keras

    proc = invoke_cli("distill", "--run", mean["run_id"], "--data", env["csv"], "--epochs", "1", "--temperature", "3",
                      "--alpha", "0.5", cwd=env["work"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id = re.search(r"^run: (\w+)$", proc.stdout, re.M).group(1)
    version = re.search(r"registered fer-cnn version (\d+)", proc.stdout).group(1)
    client = _client(env)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["fer.kind"] == "distilled"
    assert run.data.params["teacher_run_id"] == mean["run_id"]
    assert float(run.data.params["distill_temperature"]) == 3.0 and float(run.data.params["distill_alpha"]) == 0.5
    assert run.data.params["n_train"] == "600" and "best_val_accuracy" in run.data.metrics
    # By default the student is the best member's network: as many weights as one member, not three.
    teacher_best = mean["run"].data.params["ensemble_best_member"]
    assert run.data.params["filters"] == client.get_run(teacher_best).data.params["filters"]
    mv = client.get_model_version_by_alias("fer-cnn", "challenger")
    assert str(mv.version) == version and mv.run_id == run_id
    mlflow.set_tracking_uri(env["uri"])
    student = mlflow.keras.load_model(f"models:/fer-cnn/{version}")
    assert student.count_params() == int(run.data.metrics["n_params"])


def test_errors(env: dict) -> None:
    proc = invoke_cli("ensemble", "--study", "nope", "--data", env["csv"], cwd=env["work"])
    assert proc.returncode == 2 and "unknown study 'nope'" in proc.stderr
    proc = invoke_cli("distill", "--run", "0123456789abcdef0123456789abcdef", "--data", env["csv"], cwd=env["work"])
    assert proc.returncode == 2 and "not found" in proc.stderr and "Traceback" not in proc.stderr
