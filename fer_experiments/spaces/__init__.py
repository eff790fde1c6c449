"""Search spaces: YAML -> validated SearchSpace, and the adapters to Optuna trials and keras-tuner hp.

Nothing here imports Optuna or keras-tuner at import time; ``define_kt`` / ``build_hyperparameters``
import keras_tuner (and so TensorFlow) when called.
"""

from __future__ import annotations

from fer_experiments.spaces.kerastuner import build_hyperparameters, define_kt
from fer_experiments.spaces.schema import (
    KINDS,
    OBJECTIVES,
    PRUNERS,
    SAMPLERS,
    SHIPPED_SPACES_DIR,
    ParamSpec,
    SearchSpace,
    load_space,
    read_yaml,
    resolve_space_path,
)
from fer_experiments.spaces.suggest import active_values, epochs_for, preset_values_for_space, suggest

__all__ = [
    "KINDS",
    "OBJECTIVES",
    "PRUNERS",
    "SAMPLERS",
    "SHIPPED_SPACES_DIR",
    "ParamSpec",
    "SearchSpace",
    "active_values",
    "build_hyperparameters",
    "define_kt",
    "epochs_for",
    "load_space",
    "preset_values_for_space",
    "read_yaml",
    "resolve_space_path",
    "suggest",
]
