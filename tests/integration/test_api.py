"""The Python API (``import fer_experiments as fx``): train, search, promote, rollback, models, load_model, predict
and evaluate on the synthetic data set, in-process, against real MLflow and Optuna stores in a temporary folder."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fer_experiments as fx
from tests.conftest import copy_migrated_store, tiny_space

pytestmark = [pytest.mark.slow]

SPACE = tiny_space("api-tiny", seed=3)


def test_import_is_light_and_names_resolve_lazily() -> None:
    # The package and its API module must not pull TensorFlow, MLflow or Optuna in: `fer-exp --help` and
    # `import fer_experiments` stay instant; the heavy imports happen inside the functions.
    code = ("import sys, fer_experiments as fx\n"
            "assert 'fer_experiments.api' not in sys.modules\n"
            "fns = [fx.train, fx.search, fx.promote, fx.rollback, fx.models, fx.evaluate, fx.load_model, fx.predict]\n"
            "assert all(callable(f) for f in fns) and fx.ConfigError.exit_code == 2\n"
            "heavy = [m for m in ('tensorflow', 'keras', 'mlflow', 'optuna', 'numpy') if m in sys.modules]\n"
            "print(heavy)\n"
            # Importing the subpackages that share a name with an API function does not hide the function.
            "import fer_experiments.search.study, fer_experiments.models.presets\n"
            "from fer_experiments.search.study import list_studies\n"
            "assert fx.search is fx.api.search and fx.models is fx.api.models, (fx.search, fx.models)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    with pytest.raises(AttributeError):
        fx.no_such_name  # noqa: B018


@pytest.fixture(scope="module")
def study(synthetic_csv: Path, tmp_path_factory: pytest.TempPathFactory, migrated_mlflow_db: Path) -> dict:
    """A 3-trial study searched through the API, with its stores."""
    work = tmp_path_factory.mktemp("api")
    stores = copy_migrated_store(migrated_mlflow_db, work / "mlruns")
    (work / "space.yaml").write_text(SPACE)
    result = fx.search(synthetic_csv, work / "space.yaml", "api", n_trials=3, storage=stores["storage"],
                       tracking_uri=stores["tracking_uri"])
    return {"result": result, "csv": synthetic_csv, "uri": stores["tracking_uri"], "storage": stores["storage"],
            "work": work}


def test_search_returns_a_frozen_result_and_prints_nothing(study: dict, capsys: pytest.CaptureFixture) -> None:
    import mlflow

    r = study["result"]
    assert isinstance(r, fx.SearchResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.best_value = 1.0  # type: ignore[misc]
    assert (r.study, r.engine, r.ran, r.finished, r.complete, r.failed) == ("api", "optuna", 3, 3, 3, 0)
    assert r.registered_version == "1" and r.challenger_run_id == r.best_run_id
    client = mlflow.MlflowClient(study["uri"], registry_uri=study["uri"])
    best = client.get_run(r.best_run_id)
    assert best.data.metrics["best_val_accuracy"] == pytest.approx(r.best_value)
    assert best.data.tags["mlflow.parentRunId"] == r.parent_run_id
    assert client.get_model_version_by_alias("fer-cnn", "challenger").run_id == r.best_run_id
    assert r.best_model_uri == f"runs:/{r.best_run_id}/model"
    # Resuming a full study runs nothing, and with no progress stream nothing is printed.
    again = fx.search(study["csv"], study["work"] / "space.yaml", "api", n_trials=3, storage=study["storage"],
                      tracking_uri=study["uri"])
    assert (again.ran, again.finished, again.best_run_id) == (0, 3, r.best_run_id)
    assert capsys.readouterr().out == ""


def test_search_progress_goes_to_the_stream_given(study: dict) -> None:
    stream = io.StringIO()
    fx.search(study["csv"], study["work"] / "space.yaml", "api", n_trials=3, storage=study["storage"],
              tracking_uri=study["uri"], progress=stream)
    assert "loading data" in stream.getvalue() and "api" in stream.getvalue()


def test_search_argument_errors_are_config_errors(study: dict) -> None:
    with pytest.raises(fx.ConfigError, match="n_trials, budget"):
        fx.search(study["csv"], study["work"] / "space.yaml", "api", storage=study["storage"],
                  tracking_uri=study["uri"])
    with pytest.raises(fx.ConfigError, match="budget"):
        fx.search(study["csv"], study["work"] / "space.yaml", "api", budget=0, storage=study["storage"],
                  tracking_uri=study["uri"])
    with pytest.raises(fx.ConfigError, match="study name"):
        fx.search(study["csv"], study["work"] / "space.yaml", "bad name!", n_trials=1, storage=study["storage"],
                  tracking_uri=study["uri"])


def test_promote_load_predict_evaluate_rollback(study: dict) -> None:
    import mlflow

    uri, csv, r = study["uri"], study["csv"], study["result"]
    client = mlflow.MlflowClient(uri, registry_uri=uri)

    promotion = fx.promote(study="api", data=csv, tracking_uri=uri)
    assert isinstance(promotion, fx.Promotion)
    assert (promotion.decision, promotion.run_id, promotion.champion_version) == ("promote", r.best_run_id, None)
    assert promotion.version == str(client.get_model_version_by_alias("fer-cnn", "champion").version)
    assert promotion.model_uri == "models:/fer-cnn@champion"
    # PrivateTest was evaluated once and logged to the run; evaluate() on the champion finds the same accuracy.
    assert promotion.private_accuracy == pytest.approx(client.get_run(r.best_run_id).data.metrics["test_accuracy"])
    evaluated = fx.evaluate(promotion.model_uri, csv, "PrivateTest", tracking_uri=uri)
    assert isinstance(evaluated, fx.Evaluated) and evaluated.evaluation.split == "PrivateTest"
    assert evaluated.accuracy == pytest.approx(promotion.private_accuracy, abs=1e-6)
    assert evaluated.predictions.probabilities.shape == (240, 7)

    assert fx.promote(study="api", data=csv, tracking_uri=uri).decision == "already"
    rows = {row.version: row for row in fx.models("fer-cnn", tracking_uri=uri)}
    assert "champion" in rows[promotion.version].aliases

    # A worse (or equal) trial is refused without force, and changes nothing.
    trials = client.search_runs([client.get_run(r.best_run_id).info.experiment_id],
                                "tags.`fer.kind` = 'trial'", order_by=["metrics.best_val_accuracy ASC"])
    worst = next(t.info.run_id for t in trials if t.info.run_id != r.best_run_id)
    with pytest.raises(fx.Refused):
        fx.promote(run=worst, data=csv, tracking_uri=uri)
    assert client.get_model_version_by_alias("fer-cnn", "champion").run_id == r.best_run_id
    forced = fx.promote(run=worst, data=csv, force=True, tracking_uri=uri)
    assert forced.champion_version == promotion.version and forced.version != promotion.version
    back = fx.rollback(tracking_uri=uri)
    assert (back.from_version, back.to_version) == (forced.version, promotion.version)
    assert client.get_model_version_by_alias("fer-cnn", "champion").run_id == r.best_run_id

    # load_model + predict on 48x48 crops given as an array, as PNG bytes and as a file: the same answer.
    from fer_experiments.data import load_dataset
    from fer_experiments.models.predict import predict_proba
    from fer_experiments.tracking.model_io import load_keras_model

    faces = load_dataset(csv).split("PrivateTest").x[:4]
    model = fx.load_model(tracking_uri=uri, runtime="keras")
    assert model.version == promotion.version
    assert model.predictor.detector.name == "yunet"  # the CNN detector by default, as `fer-exp predict` uses
    assert fx.load_model(tracking_uri=uri, runtime="keras", detector="haar").predictor.detector.name == "haar"
    assert fx.load_model(tracking_uri=uri, runtime="keras", detector=None).predictor.detector is None
    predictions = fx.predict(list(faces), model, detect=False)
    assert [p.source for p in predictions] == ["<array>"] * 4
    expected = predict_proba(load_keras_model(f"models:/fer-cnn/{promotion.version}", uri), faces)
    for p, probs in zip(predictions, expected):
        assert isinstance(p, fx.ImagePrediction) and len(p.faces) == 1 and p.model_version == promotion.version
        assert p.faces[0].probabilities == pytest.approx(tuple(probs), abs=1e-5)
        assert p.labels == (fx.EXPRESSIONS[int(np.argmax(probs))],)
    import cv2

    png = cv2.imencode(".png", faces[0])[1].tobytes()
    path = study["work"] / "face.png"
    path.write_bytes(png)
    from_bytes, from_file = fx.predict([png, path], model, detect=False)
    assert from_bytes.faces[0].probabilities == pytest.approx(predictions[0].faces[0].probabilities, abs=1e-5)
    assert from_file.source == str(path) and from_file.to_dict()["faces"] == from_bytes.to_dict()["faces"]
    # A model URI works too (loaded on the call), and a file that is not an image is a DataError naming it.
    assert fx.predict(path, f"models:/fer-cnn/{promotion.version}", detect=False, tracking_uri=uri,
                      runtime="keras")[0].labels == from_file.labels
    (study["work"] / "notes.txt").write_text("not an image")
    with pytest.raises(fx.DataError, match="notes.txt"):
        fx.predict(study["work"] / "notes.txt", model, detect=False)


def test_train_returns_the_run_and_its_public_test_evaluation(synthetic_csv: Path, tmp_path: Path,
                                                              migrated_mlflow_db: Path) -> None:
    import mlflow

    stores = copy_migrated_store(migrated_mlflow_db, tmp_path / "mlruns")
    plans: list[fx.TrainPlan] = []
    epochs: list[int] = []
    result = fx.train(synthetic_csv, "seed-base", params={"conv_blocks": 1, "filters": 4, "dense_layers": 0},
                      epochs=1, limit=200, tracking_uri=stores["tracking_uri"], run_name="api-train",
                      on_start=plans.append, on_epoch=lambda epoch, metrics: epochs.append(epoch))
    assert isinstance(result, fx.TrainResult)
    assert plans == [fx.TrainPlan("seed-base", 200, 240, 1, plans[0].notes)] and epochs == [1]
    assert (result.best_epoch, result.epochs_run, result.evaluation.split) == (1, 1, "PublicTest")
    assert result.model_uri == f"runs:/{result.run_id}/model" and len(result.history["val_accuracy"]) == 1
    run = mlflow.MlflowClient(stores["tracking_uri"]).get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "api-train"
    assert run.info.experiment_id == result.experiment_id
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(result.accuracy)
    assert run.data.params["filters"] == "4"
    with pytest.raises(fx.ConfigError, match="no_such_param"):
        fx.train(synthetic_csv, params={"no_such_param": 1}, tracking_uri=stores["tracking_uri"])
    with pytest.raises(fx.ConfigError):
        fx.train(synthetic_csv, "no-such-preset", tracking_uri=stores["tracking_uri"])
