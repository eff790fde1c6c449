"""The ensemble as one Keras model (weighted average of members, reload through MLflow) and the distillation loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fer_experiments import IMAGE_SIZE, NUM_CLASSES
from fer_experiments.errors import ConfigError
from fer_experiments.models.builder import build_model
from fer_experiments.models.ensemble import build_ensemble, ensemble_members
from fer_experiments.params import ModelParams, TrainParams

TINY = ModelParams(conv_blocks=1, convs_per_block=1, filters=4, dense_layers=0, conv_dropout=0.0)


def _members(n: int) -> list:
    import keras

    out = []
    for i in range(n):
        keras.utils.set_random_seed(i)
        out.append(build_model(TINY, TrainParams(augment_flip=True)))  # augmentation: identity at inference
    return out


def _x(n: int = 8) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE, 1)).astype(np.float32)


def test_output_is_the_weighted_average_of_the_members() -> None:
    members = _members(3)
    x = _x()
    each = [m.predict(x, verbose=0) for m in members]
    model = build_ensemble(members, [1, 2, 1])
    out = model.predict(x, verbose=0)
    np.testing.assert_allclose(out, 0.25 * each[0] + 0.5 * each[1] + 0.25 * each[2], atol=1e-6)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    assert [w for _, w in ensemble_members(model)] == pytest.approx([0.25, 0.5, 0.25])
    assert model.count_params() == sum(m.count_params() for m in members)


def test_zero_weight_members_are_left_out_and_one_member_works() -> None:
    members = _members(2)
    model = build_ensemble(members, [0, 3])
    assert len(ensemble_members(model)) == 1
    np.testing.assert_allclose(model.predict(_x(), verbose=0), members[1].predict(_x(), verbose=0), atol=1e-6)
    with pytest.raises(ConfigError, match="not all zero"):
        build_ensemble(members, [0, 0])
    with pytest.raises(ConfigError, match="2 member"):
        build_ensemble(members, [1])


def test_logs_and_reloads_through_mlflow(tmp_path: Path) -> None:
    import mlflow.keras

    from fer_experiments.tracking import start_run
    from fer_experiments.tracking.model_io import load_keras_model

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    model = build_ensemble(_members(2), [0.3, 0.7])
    with start_run(uri, "ens") as run:
        model_uri = run.log_keras_model(model)
    x = _x()
    expected = model.predict(x, verbose=0)
    loaded = load_keras_model(model_uri, uri)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-6)
    assert [w for _, w in ensemble_members(loaded)] == pytest.approx([0.3, 0.7])
    mlflow.set_tracking_uri(uri)
    np.testing.assert_allclose(mlflow.keras.load_model(model_uri).predict(x, verbose=0), expected, atol=1e-6)


def test_distillation_loss_matches_numpy() -> None:
    import keras

    from fer_experiments.training.distill import DistillationLoss, distillation_targets, soften

    rng = np.random.default_rng(1)
    y = rng.integers(0, NUM_CLASSES, 5)
    teacher = rng.dirichlet(np.ones(NUM_CLASSES), 5)
    student = rng.dirichlet(np.ones(NUM_CLASSES), 5).astype(np.float32)
    t, alpha = 3.0, 0.4
    targets = distillation_targets(y, teacher, t)
    np.testing.assert_allclose(targets[:, :NUM_CLASSES].argmax(1), y)
    np.testing.assert_allclose(soften(teacher, 1.0), teacher, atol=1e-6)
    s_t = np.exp(np.log(student) / t)
    s_t /= s_t.sum(axis=1, keepdims=True)
    soft_t = soften(teacher, t)
    expected = np.mean(alpha * -np.log(student[np.arange(5), y]) + (1 - alpha) * t * t * -(soft_t * np.log(s_t)).sum(1))
    got = float(keras.ops.convert_to_numpy(DistillationLoss(temperature=t, alpha=alpha)(targets, student)))
    assert got == pytest.approx(expected, rel=1e-4)
    restored = DistillationLoss.from_config(DistillationLoss(temperature=t, alpha=alpha).get_config())
    assert (restored.temperature, restored.alpha) == (t, alpha)
    with pytest.raises(ConfigError, match="alpha"):
        DistillationLoss(alpha=1.5)


@pytest.mark.slow
def test_distill_model_trains_against_soft_targets() -> None:
    from fer_experiments.data import Split
    from fer_experiments.training.distill import DistillationLoss, distill_model

    rng = np.random.default_rng(2)
    train = Split(rng.integers(0, 256, (64, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8), np.arange(64) % NUM_CLASSES)
    val = Split(rng.integers(0, 256, (32, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8), np.arange(32) % NUM_CLASSES)
    teacher = rng.dirichlet(np.ones(NUM_CLASSES), 64)
    result = distill_model(TINY, TrainParams(epochs=2, batch_size=16, lr_schedule="none", class_weight="balanced"),
                           train, val, teacher_proba=teacher, temperature=2.0, alpha=0.5)
    assert result.epochs_run == 2 and all(np.isfinite(result.history["loss"]))
    assert 0.0 <= result.history["accuracy"][-1] <= 1.0
    # The returned model (the exported network) carries no distillation loss, so a logged student loads anywhere
    # without custom objects.
    assert not isinstance(getattr(result.model, "loss", None), DistillationLoss)
    assert result.model.predict(val.x[:2, ..., None].astype("float32"), verbose=0).shape == (2, NUM_CLASSES)
    assert result.extra == {"temperature": 2.0, "alpha": 0.5}


def test_members_with_flip_tta_keep_it_inside_the_ensemble(tmp_path: Path) -> None:
    import dataclasses

    import keras

    from fer_experiments.models.builder import build_network, with_tta

    keras.utils.set_random_seed(3)
    tta = with_tta(build_network(dataclasses.replace(TINY, tta="flip")), "flip")
    plain = _members(1)[0]
    x = _x()
    model = build_ensemble([tta, plain], [0.5, 0.5])
    expected = 0.5 * tta.predict(x, verbose=0) + 0.5 * plain.predict(x, verbose=0)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-6)
    # The member still averages each image with its mirror inside the reloaded ensemble.
    model.save(tmp_path / "ens.keras")
    loaded = keras.models.load_model(tmp_path / "ens.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-6)
    mirrored = x[:, :, ::-1, :]
    np.testing.assert_allclose(tta.predict(mirrored, verbose=0), tta.predict(x, verbose=0), atol=1e-5)
