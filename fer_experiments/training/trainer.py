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
from fer_experiments.models.builder import build_network, with_augmentation, with_tta
from fer_experiments.models.predict import as_model_input, predict_proba
from fer_experiments.params import ModelParams, TrainParams
from fer_experiments.training.backend import seed_everything

import keras

if TYPE_CHECKING:
    from fer_experiments.data import Split

#: Called after every epoch with (epoch number from 1, that epoch's metrics); may raise to stop training
#: (a pruner raises its "pruned" exception here).
EpochObserver = Callable[[int, dict[str, float]], None]
#: Called with (epoch, step, steps per epoch) after training batches: a live display within an epoch.
BatchObserver = Callable[[int, int, int], None]

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
    #: Training images fitted (epochs x rows, an epoch cut short by a time budget counting what it ran).
    images_seen: int = 0
    #: Wall seconds of the whole ``train_model`` call (build, fit, evaluations).
    wall_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def compile_model(model: keras.Model, train: TrainParams, steps_per_epoch: int,
                  loss: keras.losses.Loss | None = None) -> None:
    """Compile with the optimiser, learning-rate schedule and loss that ``train`` asks for (or ``loss``).

    A cosine schedule under a time budget is driven by ``_TimeBudget`` (sized once the first epoch is timed), so the
    optimiser gets a plain learning rate then.
    """
    lr: Any = train.learning_rate
    if train.lr_schedule == "cosine" and not train.time_budget_s:
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


def check_fits_in_memory(model_params: ModelParams, train_params: TrainParams) -> None:
    """TrialFailed, before anything is built, when the model's estimated training memory exceeds what is available
    (the kernel would otherwise kill the whole process, and a search with it)."""
    from fer_experiments.models.memory import estimate_training_memory, gib
    from fer_experiments.training.backend import available_memory_bytes

    need = estimate_training_memory(model_params, train_params)
    available = available_memory_bytes()
    if available is not None and need.total > available:
        raise TrialFailed(f"does not fit in memory: needs {need.describe()}, {gib(available)} GiB available; "
                          "not started (lower filters, dense_units or batch_size)")


def train_model(model_params: ModelParams, train_params: TrainParams, train_split: "Split", val_split: "Split", *,
                objective: str = "val_accuracy", observers: Sequence[EpochObserver] = (),
                restore_best: bool = True, on_batch: BatchObserver | None = None,
                targets: np.ndarray | None = None, loss: keras.losses.Loss | None = None,
                initial_weights: Sequence[np.ndarray] | None = None) -> TrainResult:
    """Build, compile and fit one model; evaluate on ``val_split`` (PublicTest) after every epoch.

    ``initial_weights`` (the exported model's ``get_weights()`` of a network of the same ``model_params``: a trial's
    best epoch) continues that training instead of starting from random weights; they are evaluated on PublicTest
    first as epoch 0, so the returned model is never worse on PublicTest than where it started.

    ``targets`` (one row per Training image, its first 7 columns the one-hot label) and ``loss`` replace the
    one-hot labels and the cross-entropy (distillation: ``fer_experiments.training.distill``); the
    returned model is the uncompiled exported network, so a logged model carries no custom loss.

    Raises TrialFailed on a NaN/inf loss or an out-of-memory error; observers' exceptions propagate.
    """

    if objective not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}; got {objective!r}")
    if len(train_split.y) == 0 or len(val_split.y) == 0:
        raise ConfigError("training and PublicTest splits must not be empty")
    # Drop Keras's global state from earlier models (a search builds hundreds); no gc.collect here: it scans every
    # live object and costs ~1 s per trial, while Python's own collector frees the cycles soon enough.
    check_fits_in_memory(model_params, train_params)
    keras.backend.clear_session(free_memory=False)
    seed_everything(train_params.seed)
    started = time.monotonic()
    network = build_network(model_params)
    # Fitted: the network behind the augmentation layers. Evaluated every epoch and returned: the network with its
    # test-time augmentation, i.e. the model that is exported, so the epoch PublicTest selects is the shipped one's.
    model = with_augmentation(network, train_params)
    exported = with_tta(network, model_params.tta)
    if initial_weights is not None:
        try:
            exported.set_weights(list(initial_weights))
        except ValueError as exc:
            raise ConfigError(f"initial weights do not fit this network ({str(exc).splitlines()[0][:200]})") from exc
    steps = math.ceil(len(train_split.y) / train_params.batch_size)
    compile_model(model, train_params, steps, loss)
    y_fit = one_hot(train_split.y) if targets is None else np.asarray(targets, dtype=np.float32)
    if len(y_fit) != len(train_split.y):
        raise ConfigError(f"{len(y_fit)} target rows for {len(train_split.y)} Training images")
    weights = class_weights(train_split.y, train_params.class_weight)

    evaluator = _EpochEvaluator(val_split, objective, observers, restore_best, len(train_split.y), exported,
                                settle=(network, train_split.x))
    if initial_weights is not None:
        evaluator.start_from_current()
    callbacks: list[keras.callbacks.Callback] = [evaluator]
    if on_batch is not None:
        callbacks.append(_BatchReporter(on_batch, steps))
    if train_params.time_budget_s:
        # After the evaluator: the epoch's PublicTest pass counts in the time it judges.
        views = 2 if model_params.tta == "flip" else 1
        callbacks.append(_TimeBudget(train_params, steps, started, evaluator, eval_images=views * len(val_split.y),
                                     batch_size=train_params.batch_size))
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
    if evaluator.best is None or not evaluator.history["loss"]:
        raise TrialFailed("training ran no epoch")
    best_epoch, best_eval, best_weights = evaluator.best
    if restore_best and best_weights is not None:
        exported.set_weights(best_weights)
    if loss is not None and getattr(exported, "compiled", False):
        # Without augmentation or TTA the exported model is the fitted one, compiled with the custom loss: give it
        # the plain loss (keeping the trained optimizer) so the logged model loads without this package.
        exported.compile(optimizer=exported.optimizer,
                         loss=keras.losses.CategoricalCrossentropy(label_smoothing=train_params.label_smoothing),
                         metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    return TrainResult(
        model=exported, history=evaluator.history, best_epoch=best_epoch, epochs_run=len(evaluator.history["loss"]),
        evaluation=best_eval, objective=objective, objective_value=_objective_value(best_eval, objective),
        train_seconds=evaluator.train_seconds, images_per_second=evaluator.images_per_second,
        images_seen=evaluator.images_seen, wall_seconds=time.monotonic() - started,
    )


def _objective_value(ev: Evaluation, objective: str) -> float:
    return ev.accuracy if objective == "val_accuracy" else ev.macro_f1


def _is_out_of_memory(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return isinstance(exc, MemoryError) or "resourceexhausted" in text or "out of memory" in text or "oom" in text.split()


class _EpochEvaluator(keras.callbacks.Callback):
    """Evaluates PublicTest after every epoch, feeds Keras's logs and the observers, keeps the best weights."""

    def __init__(self, val: "Split", objective: str, observers: Sequence[EpochObserver], keep_best: bool,
                 n_train: int, exported: keras.Model, settle: "tuple[keras.Model, np.ndarray] | None" = None) -> None:
        super().__init__()
        self.val = val
        #: The model PublicTest judges (the network with its test-time augmentation); it shares the fitted weights.
        self.exported = exported
        self.objective = objective
        self.observers = list(observers)
        self.keep_best = keep_best
        self.n_train = n_train
        self.history: dict[str, list[float]] = {
            k: [] for k in ("loss", "accuracy", "val_loss", "val_accuracy", "val_macro_f1", "lr")}
        self.best: tuple[int, Evaluation, list[np.ndarray] | None] | None = None
        self.train_seconds = 0.0
        self._t0 = 0.0

        self._seen = 0
        self.last_fit_seconds = 0.0
        self.steps_done = 0
        #: (network, Training images): BatchNorm statistics are re-estimated from them before a PublicTest pass
        #: that comes too early for the moving averages to have settled (see ``recalibrate_batchnorm``).
        self.settle = settle

    def start_from_current(self) -> None:
        """Judge the model's current (continued) weights on PublicTest as epoch 0: the best epoch to beat."""
        ev = evaluate_probabilities(self.val.y, predict_proba(self.exported, self.val.x), "PublicTest")
        self.best = (0, ev, self.exported.get_weights() if self.keep_best else None)

    @property
    def images_per_second(self) -> float:
        return self._seen / self.train_seconds if self.train_seconds else 0.0

    @property
    def images_seen(self) -> int:
        """Training images fitted so far (an epoch stopped early by a time budget counts what it ran)."""
        return self._seen

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._t0 = time.perf_counter()
        self._batches = 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._batches = batch + 1
        self.steps_done += 1

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.last_fit_seconds = time.perf_counter() - self._t0
        self.train_seconds += self.last_fit_seconds
        steps = (getattr(self, "params", None) or {}).get("steps")
        if steps and 0 < self._batches < steps:  # an epoch cut short by a time budget
            self._seen += min(self.n_train, self._batches * math.ceil(self.n_train / steps))
        else:
            self._seen += self.n_train
        logs = logs if logs is not None else {}
        loss = float(logs.get("loss", math.nan))
        if not math.isfinite(loss):
            self.model.stop_training = True
            raise TrialFailed(f"loss became {loss} at epoch {epoch + 1}")
        if self.settle is not None and self.steps_done < BATCHNORM_SETTLE_STEPS:
            recalibrate_batchnorm(*self.settle)
        ev = evaluate_probabilities(self.val.y, predict_proba(self.exported, self.val.x), "PublicTest")
        # Written into Keras's own logs so ReduceLROnPlateau / EarlyStopping see the same numbers.
        logs.update({"val_loss": ev.loss, "val_accuracy": ev.accuracy, "val_macro_f1": ev.macro_f1})
        lr = float(np.asarray(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        metrics = {"loss": loss, "accuracy": float(logs.get("accuracy", math.nan)), "val_loss": ev.loss,
                   "val_accuracy": ev.accuracy, "val_macro_f1": ev.macro_f1, "lr": lr}
        for k, v in metrics.items():
            self.history[k].append(v)
        value = _objective_value(ev, self.objective)
        if self.best is None or value > _objective_value(self.best[1], self.objective):
            self.best = (epoch + 1, ev, self.exported.get_weights() if self.keep_best else None)
        for observer in self.observers:
            observer(epoch + 1, metrics)


#: Below this many training steps BatchNorm's moving averages (momentum 0.99) still hold much of their initial
#: value (0.99**600 ~ 0.2%): a short training (a trial's time slice of a few hundred steps) would be judged with
#: statistics that predict one class for every face.
BATCHNORM_SETTLE_STEPS = 600


def recalibrate_batchnorm(network: keras.Model, x: np.ndarray, batches: int = 16, batch_size: int = 128,
                          seed: int = 0) -> None:
    """Re-estimate every BatchNormalization layer's moving mean and variance as the plain average of its batch
    statistics over ``batches`` batches of ``x`` (Training images, no augmentation). The weights do not change."""
    layers = [layer for layer in network._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    if not layers or len(x) == 0:
        return
    rng = np.random.default_rng(seed)
    momenta = [layer.momentum for layer in layers]
    try:
        for k in range(batches):
            for layer in layers:
                layer.momentum = k / (k + 1)  # the k-th batch weighs 1/(k+1): a running plain average
            idx = rng.choice(len(x), size=min(batch_size, len(x)), replace=False)
            network(as_model_input(x[idx]), training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum


class _BatchReporter(keras.callbacks.Callback):
    """Feeds ``on_batch`` with (epoch, step, steps), at most ~5 times a second (a terminal's live line)."""

    def __init__(self, on_batch: BatchObserver, steps: int, every: float = 0.2) -> None:
        super().__init__()
        self.on_batch, self.steps, self.every = on_batch, steps, every
        self._epoch, self._last = 1, 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch, self._last = epoch + 1, 0.0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        now = time.monotonic()
        if now - self._last >= self.every or batch + 1 == self.steps:
            self._last = now
            self.on_batch(self._epoch, batch + 1, self.steps)


class _TimeBudget(keras.callbacks.Callback):
    """Bounds a training by ``time_budget_s`` seconds of wall time (from the start of ``train_model``).

    The budget is counted in steps, not whole epochs: training stops after the batch past which only the PublicTest
    pass that follows still fits (that pass measured after the first epoch; before, at a third of the training pace
    per image), so the last, partial epoch is still evaluated and the best epoch kept, and no time is left unused.
    With ``lr_schedule: cosine`` it drives a cosine decay over the steps that fit, sized from the measured pace per
    step (after a few steps, again at every epoch's end), so the learning rate reaches its floor when the time does.
    """

    #: Steps timed before the first sizing of the schedule (the first step, which traces the graph, is not timed).
    WARMUP_STEPS = 8

    def __init__(self, train: TrainParams, steps_per_epoch: int, started: float, evaluator: "_EpochEvaluator", *,
                 eval_images: int = 0, batch_size: int = 64) -> None:
        super().__init__()
        self.eval_images = eval_images
        self.batch_size = batch_size
        self.evaluator = evaluator
        self.eval_seconds: float | None = None
        self._fit_started = 0.0
        self.budget = train.time_budget_s
        self.cosine = train.lr_schedule == "cosine"
        self.base_lr = train.learning_rate
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.max_steps = max(1, train.epochs * self.steps_per_epoch)
        self.total_steps = self.max_steps
        self.started = started
        self.epochs_done = 0
        #: Seconds of training steps timed so far and how many (the first step is tracing, never timed).
        self._timed_seconds = 0.0
        self._timed_steps = 0
        self._batch_started = 0.0

    @property
    def step(self) -> int:
        """Training steps run so far: the evaluator's count (it runs before this callback at every batch end)."""
        return self.evaluator.steps_done

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    def _pace(self) -> float | None:
        """Seconds per training step, measured; None before any step was timed."""
        return self._timed_seconds / self._timed_steps if self._timed_steps else None

    def _resize(self) -> None:
        """Size the cosine to the steps that still fit: each costs its pace plus its share of a PublicTest pass per
        epoch, and one pass follows the last step."""
        pace = self._pace()
        if pace is None:
            return
        reserve = self._eval_reserve()
        per_step = pace + reserve / self.steps_per_epoch
        more = int(max(0.0, self.budget - self._elapsed() - reserve) / per_step)
        self.total_steps = max(self.step + 1, min(self.max_steps, self.step + more))

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._batch_started = time.monotonic()
        if self.cosine:
            progress = min(1.0, self.step / self.total_steps)
            self.model.optimizer.learning_rate.assign(self.base_lr * 0.5 * (1.0 + math.cos(math.pi * progress)))

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._fit_started = time.monotonic()

    def _eval_reserve(self) -> float:
        """Seconds the PublicTest pass after this epoch will take."""
        if self.eval_seconds is not None:
            return self.eval_seconds
        pace = self._pace()
        if pace is None:
            return 0.0
        # Before a pass was timed: inference at ~3x the training pace per image (a guess that errs on time's side).
        return self.eval_images * pace / (self.batch_size * 3.0)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.step > 1:  # the first step traces the graph: never timed
            self._timed_seconds += time.monotonic() - self._batch_started
            self._timed_steps += 1
        if self._timed_steps == self.WARMUP_STEPS and self.cosine:
            self._resize()
        pace = self._pace() or 0.0
        # Stop when one more step and the pass after it would overrun.
        if self._elapsed() + pace + self._eval_reserve() >= self.budget:
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.epochs_done == 0:
            # This callback runs after the evaluator: its pass is what followed the fit of this epoch.
            self.eval_seconds = max(0.0, time.monotonic() - self._fit_started - self._last_fit_seconds())
        self.epochs_done = epoch + 1
        if self.cosine:
            self._resize()
        # Not even one more step and its PublicTest pass fit: stop here rather than start an epoch to cut at once.
        if self._elapsed() + (self._pace() or 0.0) + self._eval_reserve() >= self.budget:
            self.model.stop_training = True

    def _last_fit_seconds(self) -> float:
        """The evaluator's fit time of the epoch just ended (it stops its clock before its PublicTest pass)."""
        return self.evaluator.last_fit_seconds
