"""params -> keras.Model: the one builder of the CNN family. Pure: no I/O, no global state beyond Keras's.

Every model takes raw 48x48x1 pixel values 0-255 (float32) and rescales them itself, so a logged model
needs no outside preprocessing and serving cannot drift from training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fer_experiments import IMAGE_SIZE, NUM_CLASSES
from fer_experiments.params import ModelParams, TrainParams

if TYPE_CHECKING:  # keras is imported lazily so that `fer-exp --help` stays instant
    import keras


#: Keras's default (0.99) lets the moving statistics lag far behind in short runs (a few hundred steps), so that
#: inference-mode accuracy sticks at the majority class while training accuracy climbs; 0.9 tracks them closely.
BN_MOMENTUM = 0.9


def build_model(params: ModelParams, train: TrainParams | None = None, *, name: str = "fer_cnn") -> "keras.Model":
    """The graph that is fitted: the network of ``params``, behind ``train``'s augmentation layers if it asks for any.

    Augmentation is active in ``fit`` and the identity at inference; without augmentation this is the network itself.
    """
    return with_augmentation(build_network(params, name=name), train)


def build_network(params: ModelParams, *, name: str = "fer_cnn") -> "keras.Model":
    """Build (uncompiled) the CNN described by ``params``: raw pixels in, class probabilities out, no augmentation."""
    import keras
    from keras import layers

    reg = keras.regularizers.L2(params.l2) if params.l2 > 0 else None
    conv_bn = params.batchnorm in ("before_activation", "after_activation")
    dense_bn = params.batchnorm != "none"
    # BatchNorm right before its activation makes the layer's own bias redundant.
    bn_before = params.batchnorm in ("before_activation", "dense_only")

    inputs = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), dtype="float32", name="pixels")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    if params.input_window:
        # Behind the training graph's random shift (augment_crop) the centre is a random window of the image. A plain
        # static slice: keras.layers.CenterCrop exports to ONNX with a resize fallback that served 2.5x slower.
        top = (IMAGE_SIZE - params.input_window) // 2
        bottom = IMAGE_SIZE - params.input_window - top
        x = layers.Cropping2D(((top, bottom), (top, bottom)), name="input_window")(x)

    for s in range(2 if params.stem_filters else 0):
        x = layers.Conv2D(params.stem_filters, 3, padding="same", kernel_regularizer=reg,
                          use_bias=not (conv_bn and bn_before), name=f"stem_conv{s + 1}")(x)
        x = _norm_act(x, params, conv_bn, bn_before, f"stem_conv{s + 1}")

    for b, filters in enumerate(params.block_filters()):
        prefix = f"block{b + 1}"
        if params.block == "plain":
            for c in range(params.convs_per_block):
                x = layers.Conv2D(filters, params.kernel_size, padding="same", kernel_regularizer=reg,
                                  use_bias=not (conv_bn and bn_before), name=f"{prefix}_conv{c + 1}")(x)
                x = _norm_act(x, params, conv_bn, bn_before, f"{prefix}_conv{c + 1}")
            x = layers.MaxPooling2D(2, name=f"{prefix}_pool")(x)
        elif params.block == "residual":
            x = _residual_block(x, params, filters, reg, conv_bn, bn_before, prefix)
            x = layers.MaxPooling2D(2, name=f"{prefix}_pool")(x)
        else:
            x = _separable_block(x, params, filters, reg, conv_bn, prefix)
        if params.conv_dropout > 0:
            x = layers.Dropout(params.conv_dropout, name=f"{prefix}_dropout")(x)

    x = layers.Flatten(name="flatten")(x) if params.head == "flatten" else layers.GlobalAveragePooling2D(name="gap")(x)
    for d in range(params.dense_layers):
        x = layers.Dense(params.dense_units, kernel_regularizer=reg, use_bias=not (dense_bn and bn_before),
                         name=f"dense{d + 1}")(x)
        x = _norm_act(x, params, dense_bn, bn_before, f"dense{d + 1}")
        if params.dense_dropout > 0:
            x = layers.Dropout(params.dense_dropout, name=f"dense{d + 1}_dropout")(x)
    # float32 softmax so probabilities stay well-formed under a mixed-precision policy.
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name="expression")(x)
    return keras.Model(inputs, outputs, name=name)


def _residual_block(x: "keras.KerasTensor", params: ModelParams, filters: int, reg: object, conv_bn: bool,
                    bn_before: bool, prefix: str) -> "keras.KerasTensor":
    """``convs_per_block`` convolutions plus a shortcut (a 1x1 projection when the width changes), added before the
    last activation (ResNet v1 order; with BatchNorm the last convolution is normalised before the addition)."""
    from keras import layers

    shortcut = x
    if x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, padding="same", kernel_regularizer=reg, use_bias=not conv_bn,
                                 name=f"{prefix}_proj")(x)
        if conv_bn:
            shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{prefix}_proj_bn")(shortcut)
    for c in range(params.convs_per_block):
        last = c == params.convs_per_block - 1
        x = layers.Conv2D(filters, params.kernel_size, padding="same", kernel_regularizer=reg,
                          use_bias=not (conv_bn and (bn_before or last)), name=f"{prefix}_conv{c + 1}")(x)
        if not last:
            x = _norm_act(x, params, conv_bn, bn_before, f"{prefix}_conv{c + 1}")
        elif conv_bn:
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{prefix}_conv{c + 1}_bn")(x)
    x = layers.Add(name=f"{prefix}_add")([x, shortcut])
    return layers.Activation(params.activation, name=f"{prefix}_{params.activation}")(x)


def _separable_block(x: "keras.KerasTensor", params: ModelParams, filters: int, reg: object, conv_bn: bool,
                     prefix: str) -> "keras.KerasTensor":
    """mini-Xception's block: ``convs_per_block`` depthwise-separable convolutions (activation between them), a 3x3/2
    max-pool, and a 1x1 convolution of every second pixel as the shortcut, added (the block halves the resolution
    itself)."""
    from keras import layers

    # The strided 1x1 projection as a subsample then a 1x1 convolution: the same function and weights, but
    # TensorFlow's oneDNN backward pass of a strided 1x1 Conv2D corrupts the heap (TF 2.21 on x86 CPUs: training
    # aborted or segfaulted in most runs here; tests/integration/test_native_crash.py).
    shortcut = layers.MaxPooling2D(1, strides=2, name=f"{prefix}_subsample")(x)
    shortcut = layers.Conv2D(filters, 1, kernel_regularizer=reg, use_bias=not conv_bn, name=f"{prefix}_proj")(shortcut)
    if conv_bn:
        shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{prefix}_proj_bn")(shortcut)
    for c in range(params.convs_per_block):
        name = f"{prefix}_sepconv{c + 1}"
        x = layers.SeparableConv2D(filters, params.kernel_size, padding="same", depthwise_regularizer=reg,
                                   pointwise_regularizer=reg, use_bias=not conv_bn, name=name)(x)
        if conv_bn:
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
        if c < params.convs_per_block - 1:
            x = layers.Activation(params.activation, name=f"{name}_{params.activation}")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"{prefix}_pool")(x)
    return layers.Add(name=f"{prefix}_add")([x, shortcut])


def with_augmentation(network: "keras.Model", train: TrainParams | None) -> "keras.Model":
    """``network`` behind ``train``'s augmentation layers (on raw pixels), sharing its weights; ``network`` itself
    when there is none. Only this graph is fitted; what is evaluated and exported is the network (or ``with_tta``)."""
    import keras

    if train is None or not train.augments:
        return network
    inputs = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), dtype="float32", name="pixels")
    return keras.Model(inputs, network(_augmentation(train, inputs)), name=f"{network.name}_augmented")


def with_tta(network: "keras.Model", tta: str) -> "keras.Model":
    """The exported model: ``network`` itself (``tta="none"``), or for ``"flip"`` the mean of its probabilities for
    the image and its mirror image, sharing ``network``'s weights.

    Built from stock Keras layers only (the mirror is a frozen permutation ``Dense`` over the width axis, exact for
    pixel values), so the saved model loads anywhere Keras does, MLflow's model server included, without this
    package. The mean is symmetric: an image and its mirror get the same probabilities.
    """
    import keras
    import numpy as np
    from keras import layers

    if tta == "none":
        return network
    if tta != "flip":
        raise ValueError(f"unknown tta {tta!r}")
    inputs = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), dtype="float32", name="pixels")
    rows = layers.Reshape((IMAGE_SIZE, IMAGE_SIZE), name="tta_rows")(inputs)
    mirror = layers.Dense(IMAGE_SIZE, use_bias=False, trainable=False, name="tta_mirror")
    flipped = layers.Reshape((IMAGE_SIZE, IMAGE_SIZE, 1), name="tta_flipped")(mirror(rows))
    mirror.set_weights([np.eye(IMAGE_SIZE, dtype="float32")[::-1].copy()])
    outputs = layers.Average(name="expression_tta", dtype="float32")([network(inputs), network(flipped)])
    return keras.Model(inputs, outputs, name=f"{network.name}_tta_flip")


def _norm_act(x: "keras.KerasTensor", params: ModelParams, use_bn: bool, bn_before: bool, name: str) -> "keras.KerasTensor":
    from keras import layers

    if use_bn and bn_before:
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    x = layers.Activation(params.activation, name=f"{name}_{params.activation}")(x)
    if use_bn and not bn_before:
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return x


def _augmentation(train: TrainParams, x: "keras.KerasTensor") -> "keras.KerasTensor":
    from keras import layers

    seed = train.seed
    if train.augment_crop > 0:
        x = RandomReflectCrop(train.augment_crop, seed=seed + 4, name="aug_crop")(x)
    if train.augment_flip:
        x = layers.RandomFlip("horizontal", seed=seed, name="aug_flip")(x)
    if train.augment_rotation > 0:
        x = layers.RandomRotation(train.augment_rotation, fill_mode="nearest", seed=seed + 1, name="aug_rotation")(x)
    if train.augment_translation > 0:
        t = train.augment_translation
        x = layers.RandomTranslation(t, t, fill_mode="nearest", seed=seed + 2, name="aug_translation")(x)
    if train.augment_zoom > 0:
        x = layers.RandomZoom(train.augment_zoom, fill_mode="nearest", seed=seed + 3, name="aug_zoom")(x)
    return x


def count_params(model: "keras.Model") -> int:
    """Total number of weights (trainable and not)."""
    return int(model.count_params())


def _register_layers() -> type:
    """Define and register the crop layer (keras is imported lazily, so the class is made on first use)."""
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="fer_experiments")
    class RandomReflectCrop(keras.layers.Layer):
        """Pad ``pad`` pixels by reflection, then crop a random window of the input's size, per image (training
        only; the identity at inference). Plain ``keras.ops``, so every backend runs it."""

        def __init__(self, pad: int, seed: int | None = None, **kwargs: object) -> None:
            super().__init__(**kwargs)
            self.pad = int(pad)
            self.seed = seed
            self.seed_generator = keras.random.SeedGenerator(seed)

        def call(self, inputs: object, training: bool | None = None) -> object:
            if not training or self.pad == 0:
                return inputs
            p = self.pad
            shape = ops.shape(inputs)
            batch, height, width = shape[0], shape[1], shape[2]
            padded = ops.pad(inputs, [[0, 0], [p, p], [p, p], [0, 0]], mode="reflect")
            dy = keras.random.randint((batch,), 0, 2 * p + 1, seed=self.seed_generator)
            dx = keras.random.randint((batch,), 0, 2 * p + 1, seed=self.seed_generator)
            # One-hot selection matrices: an exact gather (one non-zero term) in plain ops on every backend.
            rows = ops.one_hot(dy[:, None] + ops.arange(height)[None, :], height + 2 * p, dtype=inputs.dtype)
            cols = ops.one_hot(dx[:, None] + ops.arange(width)[None, :], width + 2 * p, dtype=inputs.dtype)
            x = ops.einsum("bhH,bHWc->bhWc", rows, padded)
            return ops.einsum("bwW,bhWc->bhwc", cols, x)

        def compute_output_shape(self, input_shape: tuple) -> tuple:
            return input_shape

        def get_config(self) -> dict:
            return {**super().get_config(), "pad": self.pad, "seed": self.seed}

    return RandomReflectCrop


_CROP_CLASS: type | None = None


def RandomReflectCrop(pad: int, seed: int | None = None, **kwargs: object) -> "keras.layers.Layer":  # noqa: N802
    """A new crop layer (see ``_register_layers``); calling it registers the class for loading saved models."""
    return crop_layer_class()(pad, seed=seed, **kwargs)


def crop_layer_class() -> type:
    """The registered ``RandomReflectCrop`` class (``fer_experiments>RandomReflectCrop`` in saved models)."""
    global _CROP_CLASS
    if _CROP_CLASS is None:
        _CROP_CLASS = _register_layers()
    return _CROP_CLASS
