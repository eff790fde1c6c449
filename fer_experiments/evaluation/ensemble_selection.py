"""Ensemble weights from members' probabilities (numpy only): the plain mean and greedy ensemble selection.

Greedy selection is Caruana et al.'s forward selection with replacement (ICML 2004): start from an empty bag, add
the member whose addition gives the bag's averaged probabilities the best accuracy on the selection split
(PublicTest), up to ``max_additions`` times; a member may be added several times. The bag kept is the best one
seen along the way (the earliest of equals), so its selection accuracy is never below the best single member's.
Weights are the members' counts in that bag divided by its size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

_EPS = 1e-12


@dataclass(frozen=True)
class Selection:
    """The result of a selection over M candidate members."""

    #: (M,) times each candidate was added to the kept bag
    counts: tuple[int, ...]
    #: (M,) counts / bag size; they sum to 1
    weights: tuple[float, ...]
    #: selection accuracy of the bag after each addition (len = additions tried)
    accuracy_path: tuple[float, ...]
    #: selection accuracy of the kept bag
    accuracy: float


def stack_probabilities(probas: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """(M, N, C) float64 array from M member probability arrays of shape (N, C); ValueError on mismatched shapes."""
    arrays = [np.asarray(p, dtype=np.float64) for p in probas]
    if not arrays:
        raise ValueError("no member probabilities given")
    shape = arrays[0].shape
    if len(shape) != 2 or any(a.shape != shape for a in arrays):
        raise ValueError(f"member probabilities must all have one (N, C) shape; got {[a.shape for a in arrays]}")
    return np.stack(arrays)


def weighted_average(probas: Sequence[np.ndarray] | np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """(N, C) average of the members' probabilities with ``weights`` (normalised here)."""
    stacked = stack_probabilities(probas)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(stacked),) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"need {len(stacked)} non-negative weights, not all zero; got {list(w)}")
    return np.tensordot(w / w.sum(), stacked, axes=1)


def accuracy(y: np.ndarray, proba: np.ndarray) -> float:
    return float(np.mean(np.asarray(proba).argmax(axis=1) == np.asarray(y))) if len(y) else float("nan")


def _log_loss(y: np.ndarray, proba: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], _EPS, 1.0))))


def mean_selection(probas: Sequence[np.ndarray] | np.ndarray, y: np.ndarray) -> Selection:
    """Every member once, equal weights."""
    stacked = stack_probabilities(probas)
    m = len(stacked)
    acc = accuracy(y, stacked.mean(axis=0))
    return Selection(counts=(1,) * m, weights=(1.0 / m,) * m, accuracy_path=(acc,), accuracy=acc)


def greedy_selection(probas: Sequence[np.ndarray] | np.ndarray, y: np.ndarray, max_additions: int) -> Selection:
    """Forward selection with replacement on accuracy (ties: lower log loss, then the lower member index)."""
    stacked = stack_probabilities(probas)
    y = np.asarray(y, dtype=np.int64)
    if stacked.shape[1] != len(y):
        raise ValueError(f"{stacked.shape[1]} predictions per member but {len(y)} labels")
    if max_additions < 1:
        raise ValueError("max_additions must be at least 1")
    m = len(stacked)
    counts = np.zeros(m, dtype=np.int64)
    total = np.zeros(stacked.shape[1:], dtype=np.float64)
    path: list[float] = []
    best: tuple[float, np.ndarray] | None = None
    for step in range(1, max_additions + 1):
        scores = []
        for j in range(m):
            avg = (total + stacked[j]) / step
            scores.append((accuracy(y, avg), -_log_loss(y, avg), -j))
        j = max(range(m), key=lambda k: scores[k])
        counts[j] += 1
        total += stacked[j]
        acc = scores[j][0]
        path.append(acc)
        if best is None or acc > best[0]:
            best = (acc, counts.copy())
    assert best is not None
    kept = best[1]
    return Selection(counts=tuple(int(c) for c in kept), weights=tuple(float(c) / float(kept.sum()) for c in kept),
                     accuracy_path=tuple(path), accuracy=best[0])
