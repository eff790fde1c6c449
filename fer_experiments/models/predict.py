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


def faces_per_second(model: "keras.Model", n: int = 200, warmup: int = 5) -> float:
    """Faces classified per second one at a time, through ``predict_on_batch`` as serving calls it.

    A serving figure for comparing models on one machine; noisy wherever other work shares the CPU.
    """
    import time

    one = np.zeros((1, 48, 48, 1), dtype=np.float32)
    for _ in range(warmup):
        model.predict_on_batch(one)
    t0 = time.perf_counter()
    for _ in range(n):
        model.predict_on_batch(one)
    return n / (time.perf_counter() - t0)
