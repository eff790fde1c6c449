"""ModelParams / TrainParams validation, split/flat params, the model builder and the seed presets."""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np
import pytest

from fer_experiments import IMAGE_SIZE, NUM_CLASSES
from fer_experiments.errors import ConfigError
from fer_experiments.models.builder import build_model, count_params
from fer_experiments.models.presets import PRESETS, get_preset
from fer_experiments.params import (
    ALL_FIELDS,
    MODEL_FIELDS,
    TRAIN_FIELDS,
    ModelParams,
    TrainParams,
    flat_params,
    split_params,
)

# Two blocks of two convs (filters 4 then 8), two hidden dense layers of 8: builds in a fraction of a second.
SMALL = ModelParams(conv_blocks=2, convs_per_block=2, filters=4, dense_layers=2, dense_units=8)


def _layers(model: keras.Model, kind: type) -> list:
    return [layer for layer in model.layers if isinstance(layer, kind)]


def _hidden_dense(model: keras.Model) -> list:
    return [layer for layer in _layers(model, keras.layers.Dense) if layer.name != "expression"]


def _images(n: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE, 1)).astype("float32")


# ----------------------------------------------------------------------------------------------- validation
BAD_MODEL = [
    ("conv_blocks", 0), ("conv_blocks", 6), ("convs_per_block", 0), ("convs_per_block", 4), ("filters", 0),
    ("filter_growth", 0.0), ("kernel_size", 2), ("batchnorm", "sometimes"), ("activation", "tanh"),
    ("conv_dropout", 1.0), ("conv_dropout", -0.1), ("dense_layers", -1), ("dense_layers", 7), ("dense_units", 0),
    ("dense_dropout", 1.0), ("head", "pool"), ("l2", -1e-4),
]
BAD_TRAIN = [
    ("epochs", 0), ("batch_size", 0), ("optimizer", "lbfgs"), ("learning_rate", 0.0), ("learning_rate", -1.0),
    ("lr_schedule", "step"), ("early_stopping_patience", -1), ("class_weight", "auto"), ("augment_rotation", 0.6),
    ("augment_translation", -0.1), ("augment_zoom", 0.51), ("label_smoothing", 1.0),
]


@pytest.mark.parametrize(("field", "value"), BAD_MODEL)
def test_model_params_bad_value_names_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        ModelParams(**{field: value})
    assert str(info.value).startswith(field), str(info.value)
    assert str(value) in str(info.value)


@pytest.mark.parametrize(("field", "value"), BAD_TRAIN)
def test_train_params_bad_value_names_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        TrainParams(**{field: value})
    assert str(info.value).startswith(field), str(info.value)


def test_defaults_are_valid_and_boundaries_accepted() -> None:
    ModelParams()
    TrainParams()
    ModelParams(conv_blocks=5, convs_per_block=3, kernel_size=7, conv_dropout=0.0, dense_layers=0, l2=0.0)
    TrainParams(augment_rotation=0.5, augment_translation=0.5, augment_zoom=0.5, early_stopping_patience=0)


def test_block_filters_grow() -> None:
    assert ModelParams(conv_blocks=3, filters=32, filter_growth=2.0).block_filters() == [32, 64, 128]
    assert ModelParams(conv_blocks=3, filters=3, filter_growth=0.1).block_filters() == [3, 1, 1]


def test_augments_flag() -> None:
    assert not TrainParams().augments
    assert TrainParams(augment_flip=True).augments
    assert TrainParams(augment_zoom=0.1).augments


# ------------------------------------------------------------------------------------------- split / flat
def test_split_params_unknown_key_lists_names() -> None:
    with pytest.raises(ConfigError) as info:
        split_params({"filters": 8, "foo": 1, "bar_baz": 2})
    msg = str(info.value)
    assert "foo" in msg and "bar_baz" in msg
    assert "unknown" in msg


def test_split_params_applies_over_bases() -> None:
    base_m, base_t = ModelParams(filters=16, head="global_avg"), TrainParams(batch_size=32)
    model, train = split_params({"filters": 8, "epochs": 3, "optimizer": "sgd"}, base_m, base_t)
    assert model.filters == 8 and model.head == "global_avg"
    assert train.epochs == 3 and train.optimizer == "sgd" and train.batch_size == 32
    # bases are untouched (frozen dataclasses replaced, not mutated)
    assert base_m.filters == 16 and base_t.epochs == TrainParams().epochs


def test_split_params_bad_value_is_config_error() -> None:
    with pytest.raises(ConfigError, match="dense_layers"):
        split_params({"dense_layers": 99})


def test_flat_params_round_trip() -> None:
    assert not set(MODEL_FIELDS) & set(TRAIN_FIELDS)
    model, train = ModelParams(filters=12, batchnorm="dense_only"), TrainParams(epochs=2, augment_flip=True)
    flat = flat_params(model, train)
    assert list(flat) == list(ALL_FIELDS)
    assert flat["filters"] == 12 and flat["epochs"] == 2 and flat["augment_flip"] is True
    assert split_params(flat) == (model, train)


# ------------------------------------------------------------------------------------------------- builder
def test_input_output_contract_and_softmax_on_raw_pixels() -> None:
    model = build_model(SMALL)
    assert tuple(model.inputs[0].shape) == (None, IMAGE_SIZE, IMAGE_SIZE, 1)
    assert model.inputs[0].dtype == "float32"
    assert tuple(model.outputs[0].shape) == (None, NUM_CLASSES)
    proba = np.asarray(model.predict(_images(5), verbose=0))
    assert proba.shape == (5, NUM_CLASSES)
    assert np.all(proba >= 0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)


def test_rescaling_is_first_layer_inside_model() -> None:
    model = build_model(SMALL)
    first = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)][0]
    assert isinstance(first, keras.layers.Rescaling)
    assert float(first.scale) == pytest.approx(1 / 255)


@pytest.mark.parametrize(("blocks", "convs"), [(1, 1), (2, 3), (3, 2)])
def test_conv_count_is_blocks_times_convs(blocks: int, convs: int) -> None:
    model = build_model(dataclasses.replace(SMALL, conv_blocks=blocks, convs_per_block=convs, filters=2))
    convs_found = _layers(model, keras.layers.Conv2D)
    assert len(convs_found) == blocks * convs
    assert len(_layers(model, keras.layers.MaxPooling2D)) == blocks
    # filters grow per block
    assert [c.filters for c in convs_found] == [f for f in (2 * 2**b for b in range(blocks)) for _ in range(convs)]


@pytest.mark.parametrize(("placement", "n_bn"), [("none", 0), ("before_activation", 6), ("after_activation", 6),
                                                 ("dense_only", 2)])
def test_batchnorm_placement_counts(placement: str, n_bn: int) -> None:
    model = build_model(dataclasses.replace(SMALL, batchnorm=placement))  # 4 convs + 2 dense
    assert len(_layers(model, keras.layers.BatchNormalization)) == n_bn
    names = [layer.name for layer in model.layers]
    convs, dense = _layers(model, keras.layers.Conv2D), _hidden_dense(model)
    with_bn = {"none": [], "before_activation": convs + dense, "after_activation": convs + dense,
               "dense_only": dense}[placement]
    for layer in with_bn:
        bn, act = names.index(f"{layer.name}_bn"), names.index(f"{layer.name}_relu")
        assert (bn < act) == (placement != "after_activation"), (placement, layer.name)
        # BatchNorm right before the activation makes the layer's bias redundant
        assert layer.use_bias == (placement == "after_activation")
    for layer in set(convs + dense) - set(with_bn):
        assert f"{layer.name}_bn" not in names
        assert layer.use_bias


def test_head_global_avg_vs_flatten() -> None:
    flat = build_model(dataclasses.replace(SMALL, head="flatten", dense_layers=1))
    gap = build_model(dataclasses.replace(SMALL, head="global_avg", dense_layers=1))
    assert _layers(flat, keras.layers.Flatten) and not _layers(flat, keras.layers.GlobalAveragePooling2D)
    assert _layers(gap, keras.layers.GlobalAveragePooling2D) and not _layers(gap, keras.layers.Flatten)
    # 48 -> 24 -> 12 after two pools, 8 channels in the last block
    assert flat.get_layer("dense1").kernel.shape[0] == 12 * 12 * 8
    assert gap.get_layer("dense1").kernel.shape[0] == 8
    assert count_params(gap) < count_params(flat)


@pytest.mark.parametrize("n_dense", [0, 1, 3])
def test_dense_layer_count_and_width(n_dense: int) -> None:
    model = build_model(dataclasses.replace(SMALL, dense_layers=n_dense, dense_units=12))
    hidden = _hidden_dense(model)
    assert len(hidden) == n_dense
    assert all(layer.units == 12 for layer in hidden)
    assert model.get_layer("expression").units == NUM_CLASSES


def test_dropout_layers_present_or_absent() -> None:
    both = build_model(dataclasses.replace(SMALL, conv_dropout=0.25, dense_dropout=0.5))
    drops = {layer.name: layer.rate for layer in _layers(both, keras.layers.Dropout)}
    assert drops == {"block1_dropout": 0.25, "block2_dropout": 0.25, "dense1_dropout": 0.5, "dense2_dropout": 0.5}
    conv_only = build_model(dataclasses.replace(SMALL, conv_dropout=0.1, dense_dropout=0.0))
    assert {layer.name for layer in _layers(conv_only, keras.layers.Dropout)} == {"block1_dropout", "block2_dropout"}
    none = build_model(dataclasses.replace(SMALL, conv_dropout=0.0, dense_dropout=0.0))
    assert not _layers(none, keras.layers.Dropout)


def test_l2_regularizer_set_on_conv_and_dense() -> None:
    model = build_model(dataclasses.replace(SMALL, l2=1e-4))
    regularized = _layers(model, keras.layers.Conv2D) + _hidden_dense(model)
    assert len(regularized) == 6
    for layer in regularized:
        assert isinstance(layer.kernel_regularizer, keras.regularizers.L2)
        assert float(layer.kernel_regularizer.l2) == pytest.approx(1e-4)
    model(_images(1), training=False)
    assert len(model.losses) == 6 and all(float(v) > 0 for v in model.losses)
    plain = build_model(SMALL)
    assert all(layer.kernel_regularizer is None for layer in _layers(plain, keras.layers.Conv2D) + _hidden_dense(plain))


def test_augmentation_layers_only_when_asked() -> None:
    kinds = (keras.layers.RandomFlip, keras.layers.RandomRotation, keras.layers.RandomTranslation,
             keras.layers.RandomZoom)

    def aug(model: keras.Model) -> list:
        return [layer for layer in model.layers if isinstance(layer, kinds)]

    assert not aug(build_model(SMALL))
    assert not aug(build_model(SMALL, TrainParams()))
    flip_only = build_model(SMALL, TrainParams(augment_flip=True))
    assert [type(layer) for layer in aug(flip_only)] == [keras.layers.RandomFlip]
    full = build_model(SMALL, TrainParams(augment_flip=True, augment_rotation=0.1, augment_translation=0.1,
                                          augment_zoom=0.1))
    assert [type(layer) for layer in aug(full)] == list(kinds)


def test_augmentation_is_identity_at_inference_and_active_in_training() -> None:
    params = dataclasses.replace(SMALL, conv_dropout=0.0, dense_dropout=0.0)  # only augmentation is random
    model = build_model(params, TrainParams(augment_flip=True, augment_rotation=0.2, augment_translation=0.2,
                                            augment_zoom=0.2, seed=3))
    x = _images(8, seed=1)
    first = model.predict(x, verbose=0)
    second = model.predict(x, verbose=0)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(np.asarray(model(x, training=False)), first, rtol=1e-5, atol=1e-6)
    trained_view = np.asarray(model(x, training=True))
    assert not np.allclose(trained_view, first, atol=1e-6), "augmentation layers did nothing in training mode"


def test_builder_is_pure(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = dataclasses.replace(SMALL, batchnorm="after_activation", l2=1e-3)
    a, b = build_model(params), build_model(params)
    assert a is not b
    assert count_params(a) == count_params(b) > 0
    assert [layer.name for layer in a.layers] == [layer.name for layer in b.layers]
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------------- presets
def test_three_presets() -> None:
    # The seed's three networks plus the mini-Xception comparisons (issue 14).
    assert set(PRESETS) == {"seed-base", "seed-deep", "seed-deep-bn", "mini-xception", "mini-xception-wide"}
    for name, preset in PRESETS.items():
        assert preset.name == name and preset.description
        assert split_params(preset.values()) == (preset.model, preset.train)


def test_seed_deep_shape() -> None:
    model = build_model(get_preset("seed-deep").model)
    convs = _layers(model, keras.layers.Conv2D)
    assert len(convs) == 6
    assert len(_layers(model, keras.layers.MaxPooling2D)) == 3
    assert {c.name.split("_")[0] for c in convs} == {"block1", "block2", "block3"}
    dense = _hidden_dense(model)
    assert len(dense) == 4 and all(d.units == 256 for d in dense)
    assert not _layers(model, keras.layers.BatchNormalization)


def test_seed_deep_bn_has_batchnorm_on_every_conv_and_dense() -> None:
    model = build_model(get_preset("seed-deep-bn").model)
    names = {layer.name for layer in model.layers}
    weighted = _layers(model, keras.layers.Conv2D) + _hidden_dense(model)
    assert len(weighted) == 10
    assert all(f"{layer.name}_bn" in names for layer in weighted)
    assert len(_layers(model, keras.layers.BatchNormalization)) == 10


def test_seed_base_shape() -> None:
    model = build_model(get_preset("seed-base").model)
    assert len(_layers(model, keras.layers.Conv2D)) == 2
    assert len(_hidden_dense(model)) == 2


def test_unknown_preset_lists_known() -> None:
    with pytest.raises(ConfigError) as info:
        get_preset("nope")
    msg = str(info.value)
    assert "nope" in msg
    assert all(name in msg for name in PRESETS)
