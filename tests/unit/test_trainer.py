"""The trainer on tiny synthetic data: history, best epoch, objective, NaN -> TrialFailed, observers, seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fer_experiments import IMAGE_SIZE, NUM_CLASSES
from fer_experiments.data import Split
from fer_experiments.errors import ConfigError, TrialFailed
from fer_experiments.evaluation.metrics import evaluate_probabilities
from fer_experiments.params import ModelParams, TrainParams
from fer_experiments.training.trainer import class_weights, predict_proba, train_model

# Every test here fits a (tiny) model in-process.
pytestmark = pytest.mark.slow

TINY = ModelParams(conv_blocks=1, convs_per_block=1, filters=4, dense_layers=0, conv_dropout=0.0)
HISTORY_KEYS = {"loss", "accuracy", "val_loss", "val_accuracy", "val_macro_f1", "lr"}


def _train(**kw) -> TrainParams:
    return TrainParams(**({"epochs": 2, "batch_size": 16, "lr_schedule": "none"} | kw))


def _split(n: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8), np.arange(n) % NUM_CLASSES)


@pytest.fixture(scope="module")
def data() -> tuple[Split, Split]:
    return _split(64, 0), _split(32, 1)


@pytest.fixture(scope="module")
def two_epochs(data):
    return train_model(TINY, _train(seed=5), *data)


def test_history_keys_and_lengths(two_epochs) -> None:
    r = two_epochs
    assert set(r.history) == HISTORY_KEYS
    assert all(len(v) == 2 for v in r.history.values())
    assert r.epochs_run == 2
    assert all(math.isfinite(v) for vs in r.history.values() for v in vs)
    assert all(0.0 <= v <= 1.0 for v in r.history["val_accuracy"] + r.history["accuracy"])
    assert r.history["lr"] == pytest.approx([1e-3, 1e-3])
    assert r.train_seconds > 0 and r.images_per_second > 0


def test_best_epoch_and_objective_value(two_epochs, data) -> None:
    r = two_epochs
    accs = r.history["val_accuracy"]
    assert r.best_epoch == 1 + int(np.argmax(accs))  # the first of equal maxima
    assert r.objective == "val_accuracy"
    assert r.objective_value == r.evaluation.accuracy == pytest.approx(accs[r.best_epoch - 1])
    assert r.evaluation.loss == pytest.approx(r.history["val_loss"][r.best_epoch - 1])
    assert r.evaluation.split == "PublicTest" and r.evaluation.n == len(data[1].y)
    # The returned model carries the best epoch's weights: re-evaluating it gives the reported numbers.
    again = evaluate_probabilities(data[1].y, predict_proba(r.model, data[1].x), "PublicTest")
    assert again.accuracy == pytest.approx(r.evaluation.accuracy)
    assert again.loss == pytest.approx(r.evaluation.loss, rel=1e-4)


def test_macro_f1_objective(data) -> None:
    r = train_model(TINY, _train(seed=5), *data, objective="val_macro_f1")
    f1s = r.history["val_macro_f1"]
    assert r.objective == "val_macro_f1"
    assert r.best_epoch == 1 + int(np.argmax(f1s))
    assert r.objective_value == r.evaluation.macro_f1 == pytest.approx(f1s[r.best_epoch - 1])


def test_bad_objective_and_empty_split(data) -> None:
    with pytest.raises(ConfigError, match="objective"):
        train_model(TINY, _train(), *data, objective="val_loss")
    empty = Split(np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8), np.zeros(0, np.int64))
    with pytest.raises(ConfigError, match="empty"):
        train_model(TINY, _train(), data[0], empty)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_nan_loss_is_trial_failed(data, optimizer: str) -> None:
    # 1e39 is inf in float32: the first step makes every weight inf or NaN, whatever the initialisation.
    calls: list[int] = []
    with pytest.raises(TrialFailed, match=r"nan|inf") as info:
        train_model(TINY, _train(epochs=2, learning_rate=1e39, optimizer=optimizer), *data,
                    observers=[lambda e, m: calls.append(e)])
    assert "epoch 1" in str(info.value)
    assert calls == []  # no observer sees a non-finite epoch


def test_observers_called_once_per_epoch(data) -> None:
    seen: list[tuple[int, dict[str, float]]] = []
    other: list[int] = []
    r = train_model(TINY, _train(seed=5), *data,
                    observers=[lambda e, m: seen.append((e, dict(m))), lambda e, m: other.append(e)])
    assert [e for e, _ in seen] == [1, 2] and other == [1, 2]
    for epoch, metrics in seen:
        assert set(metrics) == HISTORY_KEYS
        for k, v in metrics.items():
            assert v == r.history[k][epoch - 1], k


class _Stop(Exception):
    pass


def test_observer_exception_propagates(data) -> None:
    calls: list[int] = []

    def observer(epoch: int, metrics: dict[str, float]) -> None:
        calls.append(epoch)
        raise _Stop(f"pruned at {epoch}")

    with pytest.raises(_Stop, match="pruned at 1"):
        train_model(TINY, _train(epochs=3), *data, observers=[observer])
    assert calls == [1]  # training stopped at the first epoch


def test_class_weights_balanced() -> None:
    y = np.array([0, 0, 0, 0, 1, 3, 3, 3])  # 4 / 1 / 3 of three present classes, n = 8
    w = class_weights(y, "balanced")
    assert w is not None and set(w) == set(range(NUM_CLASSES))
    assert w[0] == pytest.approx(8 / (3 * 4))
    assert w[1] == pytest.approx(8 / (3 * 1))
    assert w[3] == pytest.approx(8 / (3 * 3))
    assert all(w[k] == 1.0 for k in (2, 4, 5, 6))  # absent classes keep weight 1
    # balanced weights make every present class weigh the same in total
    assert {round(w[c] * int(np.sum(y == c)), 9) for c in (0, 1, 3)} == {round(8 / 3, 9)}
    assert class_weights(y, "none") is None
    uniform = class_weights(np.arange(14) % NUM_CLASSES, "balanced")
    assert uniform == {i: pytest.approx(1.0) for i in range(NUM_CLASSES)}


def test_balanced_class_weight_trains(data) -> None:
    r = train_model(TINY, _train(epochs=1, class_weight="balanced"), *data)
    assert r.epochs_run == 1 and math.isfinite(r.history["loss"][0])


def test_same_seed_same_history_different_seed_differs(data, two_epochs) -> None:
    again = train_model(TINY, _train(seed=5), *data)
    assert again.history == two_epochs.history
    assert again.best_epoch == two_epochs.best_epoch
    np.testing.assert_array_equal(predict_proba(again.model, data[1].x), predict_proba(two_epochs.model, data[1].x))
    other = train_model(TINY, _train(seed=6), *data)
    assert other.history["loss"] != two_epochs.history["loss"]


def test_batches_reported_for_a_live_line(data) -> None:
    """``on_batch`` (a terminal's in-epoch progress) hears each epoch's last step; steps = ceil(64 / 16)."""
    calls: list[tuple[int, int, int]] = []
    train_model(TINY, _train(seed=5), *data, on_batch=lambda e, s, n: calls.append((e, s, n)))
    assert calls and all(n == 4 and 1 <= s <= 4 for _, s, n in calls)
    assert (1, 4, 4) in calls and (2, 4, 4) in calls
