"""Running a model of the family on images: uint8 (N, 48, 48) arrays in, class probabilities out."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras

EVAL_BATCH = 512


def as_model_input(x: np.ndarray) -> np.ndarray:
    """(N, 48, 48) uint8 -> (N, 48, 48, 1) view, no copy; the model casts and rescales itself."""
    return x[..., None] if x.ndim == 3 else x


def predict_proba(model: "keras.Model", x: np.ndarray, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Class probabilities for uint8 or float images."""
    return np.asarray(model.predict(as_model_input(x), batch_size=batch_size, verbose=0))
