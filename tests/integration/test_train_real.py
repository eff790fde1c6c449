"""One tracked training on real FER2013 rows into a temporary MLflow store, as `fer-exp train` does it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fer_experiments import EXPRESSIONS
from tests.conftest import invoke_cli

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


@pytest.fixture(scope="module")
def trained(tiny_real_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`fer-exp train --preset seed-base --epochs 1 --limit 300` in a subprocess, in a fresh folder."""
    work = tmp_path_factory.mktemp("train")
    proc = invoke_cli("train", "--data", str(tiny_real_csv), "--preset", "seed-base", "--epochs", "1", "--limit", "300",
                      "--batch-size", "64", cwd=work)
    assert proc.returncode == 0, proc.stderr
    run_id = next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("run: "))
    return {"work": work, "stdout": proc.stdout, "run_id": run_id,
            "uri": f"sqlite:///{work}/mlruns/mlflow.db", "csv": tiny_real_csv}


def test_train_prints_report_and_ui_command(trained: dict) -> None:
    out = trained["stdout"]
    assert "mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db" in out
    for name in EXPRESSIONS:
        assert name in out
    assert "macro avg" in out and "epoch 1/1" in out
    assert (trained["work"] / "mlruns" / "mlflow.db").is_file()
    assert (trained["work"] / "mlruns" / "artifacts").is_dir()


def test_run_has_params_metrics_artifacts_and_input(trained: dict) -> None:
    import mlflow

    client = mlflow.MlflowClient(trained["uri"], registry_uri=trained["uri"])
    run = client.get_run(trained["run_id"])
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["conv_blocks"] == "1" and p["convs_per_block"] == "2" and p["epochs"] == "1"
    assert p["limit"] == "300" and p["n_train"] == "300" and p["preset"] == "seed-base"
    assert run.data.tags["preset"] == "seed-base"
    assert run.data.tags["keras_backend"] == "tensorflow"
    assert len(run.data.tags["data_digest"]) == 64
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "val_macro_f1"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1], key
    per_class = [k for k in run.data.metrics if k.startswith(("val_precision_", "val_recall_", "val_f1_"))]
    assert len(per_class) == 21
    for name in EXPRESSIONS:
        assert 0.0 <= run.data.metrics[f"val_f1_{name.lower()}"] <= 1.0
    assert 0.0 <= run.data.metrics["best_val_macro_f1"] <= 1.0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"learning_curves.png", "history.csv", "evaluation"} <= artifacts
    # The exported ONNX graph beside the Keras model (an MLflow onnx-flavour folder).
    assert "exported" in artifacts and run.data.tags["fer.exported"] == "onnx"
    assert {a.path for a in client.list_artifacts(run.info.run_id, "exported")} >= {"exported/model.onnx",
                                                                                     "exported/MLmodel"}
    evaluation = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert evaluation == {f"evaluation/val_{n}" for n in ("confusion_matrix.png", "confusion_matrix.csv",
                                                        "classification_report.txt", "classification_report.json",
                                                        "classification_table.json")}
    report = json.loads(Path(client.download_artifacts(run.info.run_id, "evaluation/val_classification_report.json",
                                                       str(trained["work"]))).read_text())
    assert report["split"] == "PublicTest" and report["n"] == 240
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.digest == run.data.tags["data_digest"][:36]


def test_reloaded_model_gives_same_probabilities(trained: dict, real_dataset) -> None:
    import mlflow
    import mlflow.keras
    import mlflow.pyfunc

    from fer_experiments.models.predict import as_model_input

    mlflow.set_tracking_uri(trained["uri"])
    mlflow.set_registry_uri(trained["uri"])
    x = real_dataset.split("PrivateTest").x[:32]
    uri = f"runs:/{trained['run_id']}/model"
    k = np.asarray(mlflow.keras.load_model(uri).predict(as_model_input(x).astype("float32"), verbose=0))
    py = np.asarray(mlflow.pyfunc.load_model(uri).predict(as_model_input(x).astype("float32")))
    assert k.shape == (32, 7)
    np.testing.assert_allclose(k.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(py, k, rtol=1e-5, atol=1e-6)


def test_evaluate_cli_matches_library(trained: dict) -> None:
    from fer_experiments.data import load_dataset
    from fer_experiments.evaluation.metrics import evaluate_probabilities
    from fer_experiments.tracking.model_io import load_keras_model
    from fer_experiments.models.predict import predict_proba

    uri = f"runs:/{trained['run_id']}/model"
    proc = invoke_cli("evaluate", uri, "--data", str(trained["csv"]), "--split", "PrivateTest", "--json",
                      cwd=trained["work"])
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    test = load_dataset(trained["csv"]).split("PrivateTest")
    expected = evaluate_probabilities(test.y, predict_proba(load_keras_model(uri, trained["uri"]), test.x), "PrivateTest")
    assert got["split"] == "PrivateTest" and got["n"] == 240
    assert got["accuracy"] == pytest.approx(expected.accuracy)
    assert got["report"]["Disgust"]["support"] == expected.support[1]
    text = invoke_cli("evaluate", uri, "--data", str(trained["csv"]), cwd=trained["work"])
    assert text.returncode == 0 and "split: PrivateTest" in text.stdout and "weighted avg" in text.stdout
