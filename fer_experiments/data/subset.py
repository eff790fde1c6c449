"""Stratified, seeded subsets: small training sets for quick searches, and the PublicTest carve-out for folders."""

from __future__ import annotations

import numpy as np

from fer_experiments.data.dataset import Split
from fer_experiments.errors import DataError


def allocate(counts: np.ndarray, n: int) -> np.ndarray:
    """How many rows to take per class so that ``n`` rows keep the class proportions of ``counts``.

    Largest-remainder rounding; when ``n`` is at least the number of classes present, each present class keeps
    at least one row (rare classes such as Disgust must not vanish from a small subset).
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if n >= total:
        return counts.copy()
    ideal = counts * (n / total)
    take = np.floor(ideal).astype(np.int64)
    present = counts > 0
    if n >= int(present.sum()):
        take[present & (take == 0)] = 1
    # Too many after the minimum of one: take back from the classes most above their ideal share.
    while take.sum() > n:
        excess = np.where(take > 1, take - ideal, -np.inf)
        take[int(np.argmax(excess))] -= 1
    # Too few after flooring: give to the classes most below their ideal share (ties: lowest class id).
    while take.sum() < n:
        deficit = np.where(take < counts, ideal - take, -np.inf)
        take[int(np.argmax(deficit))] += 1
    return take


def stratified_indices(y: np.ndarray, n: int, seed: int = 42) -> np.ndarray:
    """Sorted indices of ``n`` rows of ``y`` drawn per class without replacement; deterministic for ``seed``."""
    y = np.asarray(y)
    if n < 1:
        raise DataError(f"subset size must be at least 1, got {n}")
    if n >= len(y):
        return np.arange(len(y))
    classes, counts = np.unique(y, return_counts=True)
    take = allocate(counts, n)
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(y == c), size=int(k), replace=False) for c, k in zip(classes, take) if k]
    # Sorted: the subset keeps the source order; shuffling is the trainer's job.
    return np.sort(np.concatenate(picked))


def stratified_subset(split: Split, n: int, seed: int = 42) -> Split:
    """``n`` rows of ``split`` with the class proportions kept; ``n >= len(split)`` returns ``split`` itself."""
    if n < 1:
        raise DataError(f"subset size must be at least 1, got {n}")
    if n >= len(split):
        return split
    idx = stratified_indices(split.y, n, seed)
    return Split(split.x[idx], split.y[idx])


def stratified_split(split: Split, fraction: float, seed: int = 42) -> tuple[Split, Split]:
    """Split ``split`` into (rest, taken) where ``taken`` is a stratified ``fraction`` of it (at least one row)."""
    n = max(1, int(round(len(split) * fraction)))
    if n >= len(split):
        raise DataError(f"cannot take {fraction:.0%} out of {len(split)} rows and leave any behind")
    idx = stratified_indices(split.y, n, seed)
    keep = np.ones(len(split), dtype=bool)
    keep[idx] = False
    return Split(split.x[keep], split.y[keep]), Split(split.x[idx], split.y[idx])
