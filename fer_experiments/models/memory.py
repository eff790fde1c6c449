"""How much memory training one CNN of the family needs, estimated from its parameters alone (pure: no Keras).

A search space may offer sizes whose model cannot fit (``filters: 19620`` at batch 256 asks for tens of GiB); the
trainer compares this estimate with the memory available before building anything and fails the trial with the
reason instead of letting the kernel kill the whole search.
"""

from __future__ import annotations

from dataclasses import dataclass

from fer_experiments import IMAGE_SIZE, NUM_CLASSES
from fer_experiments.params import ModelParams, TrainParams

_FLOAT = 4
#: Each weight is held 4 times while training with Adam: the weight, its gradient and two moment slots.
_WEIGHT_COPIES = 4
#: Each activation is kept for the backward pass and gets a gradient of its own size.
_ACTIVATION_COPIES = 2


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one training step needs, by part."""

    weights: int
    activations: int
    n_weights: int
    batch_size: int

    @property
    def total(self) -> int:
        return self.weights + self.activations

    def describe(self) -> str:
        return (f"~{gib(self.total)} GiB ({self.n_weights:,} weights: {gib(self.weights)} GiB with gradients and "
                f"optimizer slots; activations at batch size {self.batch_size}: {gib(self.activations)} GiB)")


def gib(n: int) -> str:
    return f"{n / 2**30:.1f}"


def estimate_training_memory(model: ModelParams, train: TrainParams) -> MemoryEstimate:
    """Weights (with gradients and Adam slots) and activations (kept for backprop) at ``train.batch_size``."""
    bn_conv = model.batchnorm in ("before_activation", "after_activation")
    bn_dense = model.batchnorm != "none"
    # BatchNorm right before the activation replaces the layer's bias (as in the builder).
    bn_before = model.batchnorm in ("before_activation", "dense_only")
    conv_bias, dense_bias = not (bn_conv and bn_before), not (bn_dense and bn_before)
    size, channels = model.input_window or IMAGE_SIZE, 1  # the convolutions see the central window only
    weights = 0
    # Per image: the input (and one copy per augmentation layer and the rescaled copy).
    augment_layers = sum([train.augment_flip, train.augment_rotation > 0, train.augment_translation > 0,
                          train.augment_zoom > 0])
    per_image = IMAGE_SIZE * IMAGE_SIZE * (2 + augment_layers)
    for filters in model.block_filters():
        for _ in range(model.convs_per_block):
            weights += model.kernel_size ** 2 * channels * filters + (filters if conv_bias else 0) + (4 * filters if bn_conv else 0)
            channels = filters
            # conv output, activation output, and the BatchNorm output when there is one
            per_image += size * size * filters * (2 + (1 if bn_conv else 0))
        size = max(1, size // 2)
        per_image += size * size * channels * (2 if model.conv_dropout > 0 else 1)
    features = size * size * channels if model.head == "flatten" else channels
    for _ in range(model.dense_layers):
        weights += (features * model.dense_units + (model.dense_units if dense_bias else 0)
                    + (4 * model.dense_units if bn_dense else 0))
        features = model.dense_units
        per_image += model.dense_units * (3 + (1 if bn_dense else 0))
    weights += features * NUM_CLASSES + NUM_CLASSES
    per_image += 2 * NUM_CLASSES
    return MemoryEstimate(weights=weights * _FLOAT * _WEIGHT_COPIES,
                          activations=per_image * train.batch_size * _FLOAT * _ACTIVATION_COPIES,
                          n_weights=weights, batch_size=train.batch_size)
