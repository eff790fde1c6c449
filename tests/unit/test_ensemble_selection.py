"""Greedy ensemble selection and the plain mean on hand-made probability arrays (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from fer_experiments.evaluation.ensemble_selection import (
    accuracy,
    greedy_selection,
    mean_selection,
    weighted_average,
)

Y = np.array([0, 1, 2, 0])
# A is right (confidently) on images 0 and 1 only, B on images 2 and 3 only: each 50%, their mean 100%.
A = np.array([[.9, .05, .05], [.05, .9, .05], [.4, .5, .1], [.3, .6, .1]])
B = np.array([[.2, .45, .35], [.45, .2, .35], [.05, .05, .9], [.9, .05, .05]])
# C is right on 0, 1 and 3 (75%, the best single member), wrong on 2.
C = np.array([[.6, .3, .1], [.3, .6, .1], [.6, .3, .1], [.6, .3, .1]])


def test_greedy_adds_complementary_members_and_beats_the_best_single() -> None:
    sel = greedy_selection([A, B, C], Y, max_additions=3)
    assert accuracy(Y, C) == 0.75 and accuracy(Y, A) == accuracy(Y, B) == 0.5
    assert sel.accuracy_path[0] == 0.75  # the first addition is the best single member
    assert sel.accuracy == 1.0
    assert sum(sel.weights) == pytest.approx(1.0)
    assert accuracy(Y, weighted_average([A, B, C], sel.weights)) == sel.accuracy
    assert sel.counts[2] >= 1 and sum(sel.counts) <= 3


def test_greedy_keeps_the_best_bag_seen_not_the_last() -> None:
    # D is always right; E is confidently wrong everywhere: adding E only hurts, so the kept bag is D alone.
    d = np.eye(3)[Y] * 0.6 + 0.4 / 3
    e = np.eye(3)[(Y + 1) % 3] * 0.99 + 0.01 / 3
    sel = greedy_selection([e, d], Y, max_additions=5)
    assert sel.counts == (0, 5) or sel.counts == (0, 1)
    assert sel.weights == (0.0, 1.0) and sel.accuracy == 1.0


def test_greedy_with_replacement_can_weigh_one_member_twice() -> None:
    # Two classes; columns are P(class 0). F alone and F+G averaged equally get 3 of 4; 2 F + 1 G gets all 4.
    y = np.array([0, 0, 1, 1])
    two = lambda p0: np.stack([p0, 1 - np.asarray(p0)], axis=1)  # noqa: E731
    f, g, h = two([.8, .7, .6, .3]), two([.3, .15, .1, .1]), two([.2, .8, .7, .9])
    assert accuracy(y, f) == 0.75 and accuracy(y, (f + g) / 2) == 0.75 and accuracy(y, (f + g + h) / 3) < 1
    sel = greedy_selection([f, g, h], y, max_additions=3)
    assert sel.counts == (2, 1, 0) and sel.weights == pytest.approx((2 / 3, 1 / 3, 0.0))
    assert sel.accuracy_path == (0.75, 0.75, 1.0) and sel.accuracy == 1.0


@pytest.mark.parametrize("seed", range(8))
def test_greedy_never_below_best_member_and_weights_sum_to_one(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 7, 50)
    probas = [rng.dirichlet(np.ones(7), 50) for _ in range(4)]
    sel = greedy_selection(probas, y, max_additions=6)
    assert sum(sel.weights) == pytest.approx(1.0) and all(w >= 0 for w in sel.weights)
    assert sel.accuracy >= max(accuracy(y, p) for p in probas)
    assert sel.accuracy == accuracy(y, weighted_average(probas, sel.weights))
    assert len(sel.accuracy_path) == 6


def test_ties_go_to_the_lower_index() -> None:
    sel = greedy_selection([A, A.copy()], Y, max_additions=1)
    assert sel.counts == (1, 0)


def test_mean_selection_is_equal_weights() -> None:
    sel = mean_selection([A, B, C], Y)
    assert sel.weights == pytest.approx((1 / 3,) * 3) and sel.counts == (1, 1, 1)
    assert sel.accuracy == accuracy(Y, (A + B + C) / 3)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="one \\(N, C\\) shape"):
        greedy_selection([A, A[:2]], Y, 2)
    with pytest.raises(ValueError, match="labels"):
        greedy_selection([A], Y[:3], 2)
    with pytest.raises(ValueError, match="max_additions"):
        greedy_selection([A], Y, 0)
    with pytest.raises(ValueError, match="non-negative"):
        weighted_average([A, B], [1.0, -1.0])
