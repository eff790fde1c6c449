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
    """Build (uncompiled) the CNN described by ``params``.

    ``train`` only contributes the augmentation layers, which are active in ``fit`` and the identity at inference.
    """
    import keras
    from keras import layers

    reg = keras.regularizers.L2(params.l2) if params.l2 > 0 else None
    conv_bn = params.batchnorm in ("before_activation", "after_activation")
    dense_bn = params.batchnorm != "none"
    # BatchNorm right before its activation makes the layer's own bias redundant.
    bn_before = params.batchnorm in ("before_activation", "dense_only")

    inputs = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), dtype="float32", name="pixels")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    if train is not None and train.augments:
        x = _augmentation(train, x)

    for b, filters in enumerate(params.block_filters()):
        for c in range(params.convs_per_block):
            x = layers.Conv2D(filters, params.kernel_size, padding="same", kernel_regularizer=reg,
                              use_bias=not (conv_bn and bn_before), name=f"block{b + 1}_conv{c + 1}")(x)
            x = _norm_act(x, params, conv_bn, bn_before, f"block{b + 1}_conv{c + 1}")
        x = layers.MaxPooling2D(2, name=f"block{b + 1}_pool")(x)
        if params.conv_dropout > 0:
            x = layers.Dropout(params.conv_dropout, name=f"block{b + 1}_dropout")(x)

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
