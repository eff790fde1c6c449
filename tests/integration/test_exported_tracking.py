"""The exported graph in MLflow: logged beside the Keras model, found again, exported on first load for old models.

A real MLflow SQLite store in a temporary folder; a small untrained BatchNorm network (speed does not depend on
training, agreement is checked on random pixels here and on PrivateTest faces in tests/unit/test_export.py).
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.slow]


def _model():
    import keras

    from fer_experiments.models.builder import build_model
    from fer_experiments.params import ModelParams

    keras.utils.set_random_seed(9)
    return build_model(ModelParams(conv_blocks=2, convs_per_block=1, filters=8, batchnorm="after_activation",
                                   dense_layers=1, dense_units=16, head="global_avg"))


def test_logged_beside_the_keras_model_and_served(stores: dict) -> None:
    from fer_experiments.serving.predictor import load_model
    from fer_experiments.tracking import get_run, start_run, tags
    from fer_experiments.tracking.exported import EXPORTED_ARTIFACT, find_exported, log_exported_model

    uri = stores["tracking_uri"]
    model = _model()
    with start_run(uri, "export-test", run_name="tiny") as run:
        run.log_keras_model(model)
        assert log_exported_model(run, model)
    info = get_run(uri, run.run_id)
    assert info.tags[tags.EXPORTED] == "onnx" and float(info.tags[tags.EXPORT_SECONDS]) > 0
    path = find_exported(run.run_id, uri)
    assert path is not None and path.name == "model.onnx" and path.parent.name == EXPORTED_ARTIFACT
    # The folder is an MLflow onnx-flavour model.
    assert (path.parent / "MLmodel").read_text().count("onnx") >= 1

    faces = np.random.default_rng(0).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    exported = load_model(f"runs:/{run.run_id}/model", uri, runtime="exported")
    assert exported.runtime["runtime"] == "exported" and exported.runtime["source"] == f"run {run.run_id}"
    keras_side = load_model(f"runs:/{run.run_id}/model", uri, runtime="keras")
    assert keras_side.runtime["runtime"] == "keras"
    np.testing.assert_allclose(exported.predictor.classifier.predict_proba(faces),
                               keras_side.predictor.classifier.predict_proba(faces), atol=1e-5)


def test_a_model_registered_before_exports_is_exported_on_first_load(stores: dict) -> None:
    from fer_experiments.serving.predictor import load_model
    from fer_experiments.tracking import get_run, start_run, tags
    from fer_experiments.tracking.exported import find_exported
    from fer_experiments.tracking.model_registry import register_run_model

    uri = stores["tracking_uri"]
    with start_run(uri, "export-test", run_name="old") as run:
        run.log_keras_model(_model())  # as before exports existed: no exported/ in the run
    mv, _ = register_run_model(uri, "fer-cnn", run.run_id)
    assert find_exported(run.run_id, uri) is None
    first = load_model(f"models:/fer-cnn/{mv.version}", uri)
    assert first.runtime["runtime"] == "exported"
    assert first.runtime["source"] == f"exported now, logged to run {run.run_id}"
    assert find_exported(run.run_id, uri) is not None and get_run(uri, run.run_id).tags[tags.EXPORTED] == "onnx"
    again = load_model(f"models:/fer-cnn/{mv.version}", uri)
    assert again.runtime["source"] == f"run {run.run_id}"  # found in the run, not exported twice
