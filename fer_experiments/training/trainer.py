"""Fit one CNN of the family: plain Keras 3 (``keras.callbacks``), data in memory as uint8.

Imports keras at module level: import this module lazily (the CLI does).
One prediction pass over PublicTest per epoch gives val loss, accuracy, macro-F1 and the per-class table;
the callback that makes it writes them into Keras's logs so that ReduceLROnPlateau, EarlyStopping and
pruning observers all read the same numbers. The weights of the best epoch (by the objective on PublicTest,
the selection split) are restored at the end, so the returned model is the one whose numbers are reported.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from fer_experiments import NUM_CLASSES
from fer_experiments.errors import ConfigError, TrialFailed
from fer_experiments.evaluation.metrics import Evaluation, evaluate_probabilities
from fer_experiments.models.builder import build_model
from fer_experiments.models.predict import as_model_input, predict_proba
from fer_experiments.params import ModelParams, TrainParams
from fer_experiments.training.backend import seed_everything

import keras

if TYPE_CHECKING:
    from fer_experiments.data import Split

#: Called after every epoch with (epoch number from 1, that epoch's metrics); may raise to stop training
#: (a pruner raises its "pruned" exception here).
EpochObserver = Callable[[int, dict[str, float]], None]

OBJECTIVES: tuple[str, ...] = ("val_accuracy", "val_macro_f1")


@dataclass
class TrainResult:
    """What a finished training returns."""

    model: keras.Model
    #: per-epoch lists: loss, accuracy, val_loss, val_accuracy, val_macro_f1, lr
    history: dict[str, list[float]]
    best_epoch: int
    epochs_run: int
    #: PublicTest evaluation of the returned (best-epoch) weights
    evaluation: Evaluation
    objective: str
    objective_value: float
    train_seconds: float
    images_per_second: float
    extra: dict[str, Any] = field(default_factory=dict)


def compile_model(model: keras.Model, train: TrainParams, steps_per_epoch: int,
                  loss: keras.losses.Loss | None = None) -> None:
    """Compile with the optimiser, learning-rate schedule and loss that ``train`` asks for (or ``loss``)."""
    lr: Any = train.learning_rate
    if train.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(train.learning_rate, decay_steps=max(1, train.epochs * steps_per_epoch))
    optimizers: dict[str, Callable[[], keras.optimizers.Optimizer]] = {
        "adam": lambda: keras.optimizers.Adam(lr),
        "adamw": lambda: keras.optimizers.AdamW(lr),
        "sgd": lambda: keras.optimizers.SGD(lr, momentum=0.9, nesterov=True),
        "rmsprop": lambda: keras.optimizers.RMSprop(lr),
    }
    model.compile(optimizer=optimizers[train.optimizer](),
                  loss=loss or keras.losses.CategoricalCrossentropy(label_smoothing=train.label_smoothing),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])


def class_weights(y: np.ndarray, mode: str) -> dict[int, float] | None:
    """``balanced`` weights (n / (k * count)) for the classes present, or None."""
    if mode == "none":
        return None
    counts = np.bincount(y, minlength=NUM_CLASSES).astype(float)
    present = counts > 0
    weights = np.ones(NUM_CLASSES)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return {i: float(w) for i, w in enumerate(weights)}


def one_hot(y: np.ndarray) -> np.ndarray:
    """Integer labels -> float32 one-hot (label smoothing needs dense targets)."""
    return np.eye(NUM_CLASSES, dtype=np.float32)[y]


def train_model(model_params: ModelParams, train_params: TrainParams, train_split: "Split", val_split: "Split", *,
                objective: str = "val_accuracy", observers: Sequence[EpochObserver] = (),
                restore_best: bool = True, targets: np.ndarray | None = None,
                loss: keras.losses.Loss | None = None) -> TrainResult:
    """Build, compile and fit one model; evaluate on ``val_split`` (PublicTest) after every epoch.

    ``targets`` (one row per Training image, its first 7 columns the one-hot label) and ``loss`` replace the
    one-hot labels and the cross-entropy (distillation: ``fer_experiments.training.distill``); the model is
    recompiled with the plain loss before it is returned, so that a logged model carries no custom loss.

    Raises TrialFailed on a NaN/inf loss or an out-of-memory error; observers' exceptions propagate.
    """

    if objective not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}; got {objective!r}")
    if len(train_split.y) == 0 or len(val_split.y) == 0:
        raise ConfigError("training and PublicTest splits must not be empty")
    # Drop Keras's global state from earlier models (a search builds hundreds); no gc.collect here: it scans every
    # live object and costs ~1 s per trial, while Python's own collector frees the cycles soon enough.
    keras.backend.clear_session(free_memory=False)
    seed_everything(train_params.seed)
    model = build_model(model_params, train_params)
    steps = math.ceil(len(train_split.y) / train_params.batch_size)
    compile_model(model, train_params, steps, loss)
    y_fit = one_hot(train_split.y) if targets is None else np.asarray(targets, dtype=np.float32)
    if len(y_fit) != len(train_split.y):
        raise ConfigError(f"{len(y_fit)} target rows for {len(train_split.y)} Training images")
    weights = class_weights(train_split.y, train_params.class_weight)

    evaluator = _EpochEvaluator(val_split, objective, observers, restore_best, len(train_split.y))
    callbacks: list[keras.callbacks.Callback] = [evaluator]
    if train_params.lr_schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=3, min_lr=1e-6))
    if train_params.early_stopping_patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=objective, mode="max",
                                                       patience=train_params.early_stopping_patience))
    try:
        # Custom targets get the class weights as per-image weights: Keras's class_weight reads the class from
        # the targets, which need not be a plain one-hot row then.
        per_image = None if weights is None or targets is None else \
            np.array([weights[int(c)] for c in train_split.y], dtype=np.float32)
        model.fit(as_model_input(train_split.x), y_fit, batch_size=train_params.batch_size,
                  epochs=train_params.epochs, shuffle=True, verbose=0, callbacks=callbacks,
                  class_weight=weights if targets is None else None, sample_weight=per_image)
    except (TrialFailed, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - only resource exhaustion is re-labelled; the rest propagates
        if _is_out_of_memory(exc):
            raise TrialFailed(f"out of memory: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from exc
        raise
    if evaluator.best is None:
        raise TrialFailed("training ran no epoch")
    best_epoch, best_eval, best_weights = evaluator.best
    if restore_best and best_weights is not None:
        model.set_weights(best_weights)
    if loss is not None:
        # The plain loss for the returned model, keeping the trained optimizer (a fresh one would be saved unbuilt,
        # and Keras warns about the mismatch when the logged model is loaded).
        model.compile(optimizer=model.optimizer,
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=train_params.label_smoothing),
                      metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    return TrainResult(
        model=model, history=evaluator.history, best_epoch=best_epoch, epochs_run=len(evaluator.history["loss"]),
        evaluation=best_eval, objective=objective, objective_value=_objective_value(best_eval, objective),
        train_seconds=evaluator.train_seconds, images_per_second=evaluator.images_per_second,
    )


def _objective_value(ev: Evaluation, objective: str) -> float:
    return ev.accuracy if objective == "val_accuracy" else ev.macro_f1


def _is_out_of_memory(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return isinstance(exc, MemoryError) or "resourceexhausted" in text or "out of memory" in text or "oom" in text.split()


class _EpochEvaluator(keras.callbacks.Callback):
    """Evaluates PublicTest after every epoch, feeds Keras's logs and the observers, keeps the best weights."""

    def __init__(self, val: "Split", objective: str, observers: Sequence[EpochObserver], keep_best: bool,
                 n_train: int) -> None:
        super().__init__()
        self.val = val
        self.objective = objective
        self.observers = list(observers)
        self.keep_best = keep_best
        self.n_train = n_train
        self.history: dict[str, list[float]] = {
            k: [] for k in ("loss", "accuracy", "val_loss", "val_accuracy", "val_macro_f1", "lr")}
        self.best: tuple[int, Evaluation, list[np.ndarray] | None] | None = None
        self.train_seconds = 0.0
        self._t0 = 0.0

    @property
    def images_per_second(self) -> float:
        return self.n_train * len(self.history["loss"]) / self.train_seconds if self.train_seconds else 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.train_seconds += time.perf_counter() - self._t0
        logs = logs if logs is not None else {}
        loss = float(logs.get("loss", math.nan))
        if not math.isfinite(loss):
            self.model.stop_training = True
            raise TrialFailed(f"loss became {loss} at epoch {epoch + 1}")
        ev = evaluate_probabilities(self.val.y, predict_proba(self.model, self.val.x), "PublicTest")
        # Written into Keras's own logs so ReduceLROnPlateau / EarlyStopping see the same numbers.
        logs.update({"val_loss": ev.loss, "val_accuracy": ev.accuracy, "val_macro_f1": ev.macro_f1})
        lr = float(np.asarray(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        metrics = {"loss": loss, "accuracy": float(logs.get("accuracy", math.nan)), "val_loss": ev.loss,
                   "val_accuracy": ev.accuracy, "val_macro_f1": ev.macro_f1, "lr": lr}
        for k, v in metrics.items():
            self.history[k].append(v)
        value = _objective_value(ev, self.objective)
        if self.best is None or value > _objective_value(self.best[1], self.objective):
            self.best = (epoch + 1, ev, self.model.get_weights() if self.keep_best else None)
        for observer in self.observers:
            observer(epoch + 1, metrics)
