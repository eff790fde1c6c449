"""The exported ONNX graph gives the Keras model's probabilities (within 1e-5) on real PrivateTest faces.

Covered: the family's plain, BatchNorm, residual and separable networks (``models.builder``, ``ModelParams.block``),
its flip test-time-augmentation wrapper (``with_tta``) and an ensemble of two members (``models.ensemble``); on a
checkout without those builders the same shapes are built here from plain ``keras.layers``. BatchNorm moving
statistics are set to random values, so an untrained network still exercises them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from fer_experiments import IMAGE_SIZE, NUM_CLASSES

pytestmark = [pytest.mark.realdata]


def _randomise_bn(model) -> None:
    rng = np.random.default_rng(0)
    import keras

    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                               rng.normal(0, 0.1, beta.shape).astype("float32"),
                               rng.normal(0, 0.2, mean.shape).astype("float32"),
                               rng.uniform(0.5, 2.0, var.shape).astype("float32")])


def _plain():
    from fer_experiments.models.builder import build_model
    from fer_experiments.params import ModelParams

    return build_model(ModelParams(conv_blocks=2, convs_per_block=1, filters=8, batchnorm="none", dense_layers=1,
                                   dense_units=16, head="flatten"))


def _batchnorm():
    from fer_experiments.models.builder import build_model
    from fer_experiments.params import ModelParams

    return build_model(ModelParams(conv_blocks=2, convs_per_block=2, filters=8, batchnorm="after_activation",
                                   dense_layers=1, dense_units=16, head="global_avg"))


def _head(x):
    from keras import layers

    x = layers.GlobalAveragePooling2D()(x)
    return layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32")(x)


def _stem():
    import keras
    from keras import layers

    inputs = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), dtype="float32", name="pixels")
    x = layers.Rescaling(1 / 255)(inputs)
    return inputs, layers.Conv2D(8, 3, padding="same", activation="relu")(x)


def _family(block: str):
    """The family's own residual / separable network (``ModelParams.block``), when issue 14's builder is on main."""
    from fer_experiments.models.builder import build_model
    from fer_experiments.params import ModelParams

    if "block" not in ModelParams.__dataclass_fields__:
        return None
    return build_model(ModelParams(conv_blocks=2, convs_per_block=2, filters=8, batchnorm="after_activation",
                                   dense_layers=1, dense_units=16, head="global_avg", block=block))


def _residual():
    """conv-BN-relu, conv-BN, + a strided 1x1 shortcut, relu (the block issue 14 adds)."""
    import keras

    if (model := _family("residual")) is not None:
        return model
    from keras import layers

    inputs, x = _stem()
    shortcut = layers.Conv2D(16, 1, strides=2, use_bias=False)(x)
    shortcut = layers.BatchNormalization()(shortcut)
    y = layers.Conv2D(16, 3, padding="same", use_bias=False)(x)
    y = layers.BatchNormalization()(y)
    y = layers.Activation("relu")(y)
    y = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization()(y)
    x = layers.Activation("relu")(layers.Add()([y, shortcut]))
    return keras.Model(inputs, _head(x))


def _separable():
    """two depthwise-separable convs with BatchNorm, max-pool (mini-Xception's block)."""
    import keras

    if (model := _family("separable")) is not None:
        return model
    from keras import layers

    inputs, x = _stem()
    for filters in (16, 32):
        x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    return keras.Model(inputs, _head(x))


def _flip_tta():
    """The mean of a network's probabilities for the image and its mirror."""
    import keras
    from keras import layers

    try:
        from fer_experiments.models.builder import with_tta  # issue 14's wrapper, once on main
    except ImportError:
        with_tta = None
    network = _batchnorm()
    if with_tta is not None:
        return with_tta(network, "flip")
    inputs = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), dtype="float32", name="pixels")
    flipped = layers.Lambda(lambda t: keras.ops.flip(t, axis=2))(inputs)
    return keras.Model(inputs, layers.Average()([network(inputs), network(flipped)]))


def _ensemble():
    """The mean of two members' probabilities as one model."""
    import keras
    from keras import layers

    try:
        from fer_experiments.models.ensemble import build_ensemble  # issue 15's builder, once on main
    except ImportError:
        build_ensemble = None
    members = [_plain(), _residual()]
    if build_ensemble is not None:
        return build_ensemble(members)
    members[0].name, members[1].name = "member_0", "member_1"
    inputs = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), dtype="float32", name="pixels")
    return keras.Model(inputs, layers.Average()([m(inputs) for m in members]))


def _window():
    """mini-Xception's separable blocks on the central 40x40 window (``input_window``, cpu-hour's first start point),
    with flip TTA: the static crop must export as a slice."""
    from fer_experiments.models.builder import build_network, with_tta
    from fer_experiments.params import ModelParams

    return with_tta(build_network(ModelParams(conv_blocks=2, convs_per_block=2, filters=8, stem_filters=4,
                                              batchnorm="before_activation", dense_layers=0, head="global_avg",
                                              block="separable", input_window=40)), "flip")


BUILDERS: dict[str, Callable] = {"plain": _plain, "batchnorm": _batchnorm, "residual": _residual,
                                 "separable": _separable, "flip-tta": _flip_tta, "ensemble": _ensemble,
                                 "window": _window}


@pytest.fixture(scope="module")
def private_faces(real_dataset) -> np.ndarray:
    split = real_dataset.split("PrivateTest")
    return split.x[:96]


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_exported_graph_matches_keras(kind: str, private_faces: np.ndarray, tmp_path: Path) -> None:
    import keras

    from fer_experiments.models.export import ExportedModel, export_onnx, exported_predict_proba
    from fer_experiments.models.predict import predict_proba

    keras.utils.set_random_seed(3)
    model = BUILDERS[kind]()
    _randomise_bn(model)
    expected = predict_proba(model, private_faces)
    path = export_onnx(model, tmp_path / "model.onnx")
    got = exported_predict_proba(ExportedModel(path), private_faces)
    assert got.shape == (len(private_faces), NUM_CLASSES)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # Not a trivial agreement: the faces get different answers.
    assert np.ptp(expected, axis=0).max() > 1e-4
    # One face at a time gives the same rows (the batch dimension is dynamic).
    np.testing.assert_allclose(exported_predict_proba(ExportedModel(path), private_faces[:1]), expected[:1],
                               atol=1e-5, rtol=0)


def test_a_damaged_graph_is_reported(tmp_path: Path) -> None:
    from fer_experiments.models.export import ExportedModel, ExportError

    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(ExportError, match="not a loadable ONNX graph"):
        ExportedModel(bad)


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_int8_graph_is_quantized_and_close_to_the_float_graph(kind: str, real_dataset, private_faces: np.ndarray,
                                                              tmp_path: Path) -> None:
    import keras
    import onnx

    from fer_experiments.models.export import ExportedModel, export_onnx, exported_predict_proba, quantize_int8

    keras.utils.set_random_seed(3)
    model = BUILDERS[kind]()
    _randomise_bn(model)
    fp32 = export_onnx(model, tmp_path / "model.onnx")
    int8 = quantize_int8(fp32, tmp_path / "int8" / "model.onnx", real_dataset.split("Training").x[:128])
    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, ops
    expected = exported_predict_proba(ExportedModel(fp32), private_faces)
    got = exported_predict_proba(ExportedModel(int8), private_faces)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-3)
    # INT8 rounding moves the probabilities a little, never far (faces it was not calibrated on).
    assert np.abs(got - expected).max() < 0.05, np.abs(got - expected).max()
    assert not list(tmp_path.joinpath("int8").glob(".*")), "no temporary file is left"


def test_int8_needs_calibration_faces(tmp_path: Path) -> None:
    from fer_experiments.models.export import ExportError, export_onnx, quantize_int8

    fp32 = export_onnx(_plain(), tmp_path / "model.onnx")
    with pytest.raises(ExportError, match="no calibration faces"):
        quantize_int8(fp32, tmp_path / "int8.onnx", np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8))
    assert not (tmp_path / "int8.onnx").exists()
