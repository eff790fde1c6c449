"""Parameters of the CNN family (architecture) and of training: plain frozen data, validated on creation."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from fer_experiments import IMAGE_SIZE
from fer_experiments.errors import ConfigError, short_repr

BATCHNORM_PLACEMENTS: tuple[str, ...] = ("none", "before_activation", "after_activation", "dense_only")
HEADS: tuple[str, ...] = ("flatten", "global_avg")
ACTIVATIONS: tuple[str, ...] = ("relu", "elu", "gelu", "swish")
#: Hard upper bounds of the size parameters: far above anything useful on 48x48 images, far below what kills a
#: machine (a single conv of 19,620 filters at batch 64 needs ~20 GiB). The trainer also checks the estimated memory
#: of the whole model against what is available (``models.memory``).
MAX_FILTERS = 1024
MAX_BLOCK_FILTERS = 4096
MAX_FILTER_GROWTH = 4.0
MAX_DENSE_UNITS = 8192
MAX_BATCH_SIZE = 4096
MAX_EPOCHS = 1000
#: The smallest central window a network may classify (``ModelParams.input_window``): half the image's side.
MIN_INPUT_WINDOW = IMAGE_SIZE // 2
#: plain: stacked convolutions; residual: the block's convolutions plus a shortcut (a 1x1 projection when the width
#: changes); separable: depthwise-separable convolutions, 3x3/2 max-pool and a strided 1x1 shortcut (mini-Xception).
BLOCKS: tuple[str, ...] = ("plain", "residual", "separable")
#: Test-time augmentation built into the exported model: none, or the mean of the image's and its mirror's probabilities.
TTAS: tuple[str, ...] = ("none", "flip")


@dataclass(frozen=True)
class ModelParams:
    """Architecture of one CNN of the family (see ``fer_experiments.models.builder.build_model``)."""

    #: Convolution blocks, each ending in a max-pool that halves the maps.
    conv_blocks: int = 3
    #: Convolutions in each block.
    convs_per_block: int = 2
    #: Filters of the first block's convolutions.
    filters: int = 32
    #: Filters are multiplied by this after each block (32, 64, 128 for growth 2).
    filter_growth: float = 2.0
    #: Side of the convolution kernels.
    kernel_size: int = 3
    #: BatchNorm on every conv and dense layer, before or after its activation, on the dense layers only, or none.
    batchnorm: str = "none"
    #: Activation of the convolutions and dense layers.
    activation: str = "relu"
    #: Dropout after each conv block's max-pool.
    conv_dropout: float = 0.25
    #: Dense layers between the head and the softmax.
    dense_layers: int = 1
    #: Units of each dense layer.
    dense_units: int = 256
    #: Dropout after each dense layer.
    dense_dropout: float = 0.5
    #: How the last block's maps become a vector: flatten them, or average each channel (global average pooling).
    head: str = "flatten"
    #: L2 penalty on the convolution and dense kernels (0: none).
    l2: float = 0.0
    #: Block kind (see ``BLOCKS``): plain, residual or separable (mini-Xception).
    block: str = "plain"
    #: Filters of a stem of two 3x3 convolutions before the blocks (0: no stem); mini-Xception starts with one.
    stem_filters: int = 0
    #: Built into the exported model only (training trains the network itself): see ``models.builder.with_tta``.
    tta: str = "none"
    #: Classify the central ``input_window`` x ``input_window`` pixels of each 48x48 image (0: all of it). With
    #: ``augment_crop`` = (48 - window) / 2 training sees every window position of the image, and each step costs
    #: (window / 48)^2 of a whole image's (40: about 2/3), in training and in serving alike.
    input_window: int = 0

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str]] = [
            (1 <= self.conv_blocks <= 5, f"conv_blocks must be 1-5, got {self.conv_blocks}"),
            (self.input_window == 0 or MIN_INPUT_WINDOW <= self.input_window < IMAGE_SIZE,
             f"input_window must be 0 (the whole image) or {MIN_INPUT_WINDOW}-{IMAGE_SIZE - 1} pixels, got "
             f"{self.input_window}"),
            (1 <= self.convs_per_block <= 3, f"convs_per_block must be 1-3, got {self.convs_per_block}"),
            (1 <= self.filters <= MAX_FILTERS, f"filters must be 1-{MAX_FILTERS}, got {self.filters}"),
            (0 < self.filter_growth <= MAX_FILTER_GROWTH,
             f"filter_growth must be in (0, {MAX_FILTER_GROWTH:g}], got {self.filter_growth}"),
            (self.kernel_size in (1, 3, 5, 7), f"kernel_size must be 1, 3, 5 or 7, got {self.kernel_size}"),
            (self.batchnorm in BATCHNORM_PLACEMENTS,
             f"batchnorm must be one of {', '.join(BATCHNORM_PLACEMENTS)}; got {short_repr(self.batchnorm)}"),
            (self.activation in ACTIVATIONS, f"activation must be one of {', '.join(ACTIVATIONS)}; got {short_repr(self.activation)}"),
            (0.0 <= self.conv_dropout < 1.0, f"conv_dropout must be in [0, 1), got {self.conv_dropout}"),
            (0 <= self.dense_layers <= 6, f"dense_layers must be 0-6, got {self.dense_layers}"),
            (1 <= self.dense_units <= MAX_DENSE_UNITS, f"dense_units must be 1-{MAX_DENSE_UNITS}, got {self.dense_units}"),
            (0.0 <= self.dense_dropout < 1.0, f"dense_dropout must be in [0, 1), got {self.dense_dropout}"),
            (self.head in HEADS, f"head must be one of {', '.join(HEADS)}; got {short_repr(self.head)}"),
            (self.l2 >= 0.0, f"l2 must be >= 0, got {self.l2}"),
            (self.block in BLOCKS, f"block must be one of {', '.join(BLOCKS)}; got {self.block!r}"),
            (0 <= self.stem_filters <= 512, f"stem_filters must be 0-512, got {self.stem_filters}"),
            (self.tta in TTAS, f"tta must be one of {', '.join(TTAS)}; got {self.tta!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        widest = self.block_filters()[-1]
        if widest > MAX_BLOCK_FILTERS:
            raise ConfigError(f"filters {self.filters} x filter_growth {self.filter_growth:g} over {self.conv_blocks} "
                              f"blocks gives {widest} filters in the last block; at most {MAX_BLOCK_FILTERS}")

    def block_filters(self) -> list[int]:
        """Filters of each conv block."""
        return [max(1, int(round(self.filters * self.filter_growth**i))) for i in range(self.conv_blocks)]


@dataclass(frozen=True)
class TrainParams:
    """How one model is trained: optimisation, augmentation, class weighting, stopping."""

    #: Epochs to train at most (the PublicTest-best epoch's weights are kept).
    epochs: int = 10
    #: Training batch size.
    batch_size: int = 64
    #: Optimizer.
    optimizer: str = "adam"
    #: Initial learning rate.
    learning_rate: float = 1e-3
    #: "none", "plateau" (ReduceLROnPlateau on PublicTest loss) or "cosine" (cosine decay over the epochs).
    lr_schedule: str = "plateau"
    #: Stop when PublicTest accuracy has not improved for this many epochs (0 disables early stopping).
    early_stopping_patience: int = 0
    #: "balanced" weighs each class's loss by n / (k * its count in Training) (Disgust is rare), "none" by 1.
    class_weight: str = "none"
    #: Random horizontal flips during training.
    augment_flip: bool = False
    #: keras.layers.RandomRotation factor: a fraction of a full turn (0.05 = +-18 degrees).
    augment_rotation: float = 0.0
    #: keras.layers.RandomTranslation factor: a fraction of the image's side.
    augment_translation: float = 0.0
    #: keras.layers.RandomZoom factor.
    augment_zoom: float = 0.0
    #: Label smoothing of the cross-entropy loss.
    label_smoothing: float = 0.0
    #: Seed of the weights' initialisation, the shuffling and the augmentation.
    seed: int = 42
    #: Pad this many pixels by reflection and crop a random 48x48 window back (0: off).
    augment_crop: int = 0
    #: Wall-clock limit of the training in seconds (0: none): it stops after the epoch that would overrun (or
    #: mid-epoch past the limit), keeps the best epoch, and a cosine schedule is sized to the epochs that fit.
    time_budget_s: float = 0.0

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str]] = [
            (1 <= self.epochs <= MAX_EPOCHS, f"epochs must be 1-{MAX_EPOCHS}, got {self.epochs}"),
            (1 <= self.batch_size <= MAX_BATCH_SIZE, f"batch_size must be 1-{MAX_BATCH_SIZE}, got {self.batch_size}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {short_repr(self.optimizer)}"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
            (self.lr_schedule in LR_SCHEDULES,
             f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {short_repr(self.lr_schedule)}"),
            (0 <= self.early_stopping_patience <= MAX_EPOCHS, f"early_stopping_patience must be 0-{MAX_EPOCHS}"),
            (self.class_weight in CLASS_WEIGHTS,
             f"class_weight must be one of {', '.join(CLASS_WEIGHTS)}; got {short_repr(self.class_weight)}"),
            (0.0 <= self.augment_rotation <= 0.5, f"augment_rotation must be in [0, 0.5], got {self.augment_rotation}"),
            (0.0 <= self.augment_translation <= 0.5, f"augment_translation must be in [0, 0.5], got {self.augment_translation}"),
            (0.0 <= self.augment_zoom <= 0.5, f"augment_zoom must be in [0, 0.5], got {self.augment_zoom}"),
            (0.0 <= self.label_smoothing < 1.0, f"label_smoothing must be in [0, 1), got {self.label_smoothing}"),
            (0 <= self.augment_crop <= 16, f"augment_crop must be 0-16 pixels, got {self.augment_crop}"),
            (self.time_budget_s >= 0.0, f"time_budget_s must be >= 0, got {self.time_budget_s}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def augments(self) -> bool:
        """Whether any augmentation layer is switched on."""
        return (self.augment_flip or self.augment_rotation > 0 or self.augment_translation > 0 or self.augment_zoom > 0
                or self.augment_crop > 0)


OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd", "rmsprop")
LR_SCHEDULES: tuple[str, ...] = ("none", "plateau", "cosine")
CLASS_WEIGHTS: tuple[str, ...] = ("none", "balanced")

#: Parameters with a fixed set of allowed values, for search-space validation.
CHOICES: dict[str, tuple[str, ...]] = {
    "batchnorm": BATCHNORM_PLACEMENTS,
    "head": HEADS,
    "activation": ACTIVATIONS,
    "optimizer": OPTIMIZERS,
    "lr_schedule": LR_SCHEDULES,
    "class_weight": CLASS_WEIGHTS,
    "block": BLOCKS,
    "tta": TTAS,
}

MODEL_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ModelParams))
TRAIN_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainParams))
#: Every parameter name a search space or a preset may set.
ALL_FIELDS: tuple[str, ...] = MODEL_FIELDS + TRAIN_FIELDS


def split_params(values: dict[str, Any], base_model: ModelParams | None = None,
                 base_train: TrainParams | None = None) -> tuple[ModelParams, TrainParams]:
    """Split a flat ``{name: value}`` dict into (ModelParams, TrainParams) over the given defaults.

    Unknown names are a ConfigError naming the key; invalid values raise the dataclasses' ConfigError.
    """
    unknown = sorted(set(values) - set(ALL_FIELDS))
    if unknown:
        raise ConfigError(f"unknown parameter(s): {', '.join(unknown)} (known: {', '.join(ALL_FIELDS)})")
    values = {k: _coerce(k, v) for k, v in values.items()}
    model = dataclasses.replace(base_model or ModelParams(), **{k: v for k, v in values.items() if k in MODEL_FIELDS})
    train = dataclasses.replace(base_train or TrainParams(), **{k: v for k, v in values.items() if k in TRAIN_FIELDS})
    return model, train


# Annotations are strings under `from __future__ import annotations`: resolve them once.
_TYPES: dict[str, type] = {**typing.get_type_hints(ModelParams), **typing.get_type_hints(TrainParams)}


def _coerce(name: str, value: Any) -> Any:
    """Convert ``value`` to the field's type (an int for a float field, "3" for an int); ConfigError naming it else."""
    kind = _TYPES[name]
    if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
        return value
    try:
        if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, (float, str)) and float(value) == int(float(value)):
            return int(float(value))
        if kind is bool and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"{name} must be {kind.__name__}, got {short_repr(value)}")


def flat_params(model: ModelParams, train: TrainParams) -> dict[str, Any]:
    """The flat ``{name: value}`` view of both parameter sets (what is logged to MLflow)."""
    return {**dataclasses.asdict(model), **dataclasses.asdict(train)}


