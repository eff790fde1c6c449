"""Knowledge distillation: train one student network on Training with a teacher's probabilities as soft targets.

Hinton et al. (2015): loss = alpha * CE(labels, p_s) + (1 - alpha) * T^2 * CE(softmax(log p_t / T),
softmax(log p_s / T)). The family's networks end in a softmax, so the student's logits are taken as log p_s (equal
up to a constant per image, which a softmax ignores). The training itself is ``trainer.train_model``: same
callbacks, PublicTest evaluation per epoch and best epoch kept; only the targets and the loss differ.
Plain Keras 3 (``keras.ops``), so any backend works.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from fer_experiments import NUM_CLASSES
from fer_experiments.errors import ConfigError
from fer_experiments.params import ModelParams, TrainParams
from fer_experiments.training.trainer import BatchObserver, EpochObserver, TrainResult, one_hot, train_model

import keras

if TYPE_CHECKING:
    from fer_experiments.data import Split

_EPS = 1e-7


def soften(proba: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the teacher's probabilities at temperature T (T > 1 flattens them)."""
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0; got {temperature}")
    logits = np.log(np.clip(np.asarray(proba, dtype=np.float64), _EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def distillation_targets(y: np.ndarray, teacher_proba: np.ndarray, temperature: float) -> np.ndarray:
    """(N, 14) rows: the one-hot label, then the teacher's softened probabilities (the layout the loss reads).

    One-hot first also keeps the trainer's ``accuracy`` metric right: argmax over the row finds the label's 1.0
    before any soft probability (which is at most 1).
    """
    teacher_proba = np.asarray(teacher_proba)
    if teacher_proba.shape != (len(y), NUM_CLASSES):
        raise ConfigError(f"teacher probabilities of shape {teacher_proba.shape}; expected ({len(y)}, {NUM_CLASSES})")
    return np.concatenate([one_hot(np.asarray(y)), soften(teacher_proba, temperature)], axis=1)


@keras.saving.register_keras_serializable(package="fer_experiments")
class DistillationLoss(keras.losses.Loss):
    """alpha * CE(hard labels) + (1 - alpha) * T^2 * CE(soft targets at T, student at T), per image."""

    def __init__(self, temperature: float = 4.0, alpha: float = 0.3, name: str = "distillation", **kwargs: Any):
        super().__init__(name=name, **kwargs)
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"alpha (the weight of the true labels) must be in [0, 1]; got {alpha}")
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0; got {temperature}")
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        ops = keras.ops
        hard, soft = y_true[:, :NUM_CLASSES], y_true[:, NUM_CLASSES:]
        log_p = ops.log(ops.clip(y_pred, _EPS, 1.0))
        hard_ce = -ops.sum(hard * log_p, axis=-1)
        log_p_t = ops.log_softmax(log_p / self.temperature, axis=-1)
        soft_ce = -ops.sum(soft * log_p_t, axis=-1) * (self.temperature ** 2)
        return self.alpha * hard_ce + (1.0 - self.alpha) * soft_ce

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"temperature": self.temperature, "alpha": self.alpha}


def distill_model(model_params: ModelParams, train_params: TrainParams, train_split: "Split", val_split: "Split", *,
                  teacher_proba: np.ndarray, temperature: float = 4.0, alpha: float = 0.3,
                  objective: str = "val_accuracy", observers: Sequence[EpochObserver] = (),
                  on_batch: BatchObserver | None = None) -> TrainResult:
    """Train the student ``model_params`` on ``train_split`` against ``teacher_proba`` (the teacher's probabilities
    for those same images, in order); best PublicTest epoch kept, as ``train_model`` does."""
    targets = distillation_targets(train_split.y, teacher_proba, temperature)
    result = train_model(model_params, train_params, train_split, val_split, objective=objective,
                         observers=observers, on_batch=on_batch, targets=targets,
                         loss=DistillationLoss(temperature=temperature, alpha=alpha))
    result.extra.update({"temperature": temperature, "alpha": alpha})
    return result
