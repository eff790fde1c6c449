"""The dataset types every other module consumes, and ``load_dataset``: one entry point for CSV files and image trees."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_experiments import IMAGE_SIZE, NUM_CLASSES, SPLITS
from fer_experiments.errors import DataError


# eq=False: the fields hold numpy arrays, so a field-wise __eq__/__hash__ would raise; identity is what callers want.
@dataclass(frozen=True, eq=False)
class Split:
    """One split: ``x`` (N, 48, 48) uint8 images and ``y`` (N,) int64 labels 0-6."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        x = np.asarray(self.x)
        y = np.asarray(self.y)
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"Split.x must be (N, {IMAGE_SIZE}, {IMAGE_SIZE}) uint8, got {x.shape} {x.dtype}")
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"Split.y must be ({len(x)},) integer labels, got {y.shape} {y.dtype}")
        if y.dtype != np.int64:
            y = y.astype(np.int64)  # the cache stores uint8 labels; callers always see int64
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)

    def __len__(self) -> int:
        return len(self.y)

    def counts(self) -> list[int]:
        """Number of images per class 0-6."""
        return np.bincount(self.y, minlength=NUM_CLASSES)[:NUM_CLASSES].tolist()


@dataclass(frozen=True, eq=False)
class FerDataset:
    """The three FER2013 splits plus where they came from (path, content digest) and notes on what loading did."""

    splits: dict[str, Split]
    source: str
    digest: str
    notes: tuple[str, ...] = field(default=())

    def split(self, name: str) -> Split:
        """The split called ``name``; DataError naming it if it is missing or empty."""
        found = self.splits.get(name)
        if found is None or len(found) == 0:
            have = ", ".join(f"{k} {len(v)}" for k, v in self.splits.items()) or "none"
            state = "empty" if found is not None else "missing"
            raise DataError(f"{self.source}: split {name!r} is {state} (splits: {have}; expected one of {', '.join(SPLITS)})")
        return found

    def counts(self) -> dict[str, list[int]]:
        """Per split, the number of images per class 0-6."""
        return {name: s.counts() for name, s in self.splits.items()}

    def summary(self) -> str:
        """One line: rows per split."""
        return ", ".join(f"{k} {len(v):,}" for k, v in self.splits.items())


def default_cache_dir() -> Path:
    """``$FER_EXP_CACHE`` if set, else ``~/.cache/fer-exp``."""
    env = os.environ.get("FER_EXP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fer-exp"


def check_splits(splits: dict[str, Split], source: str, what: str = "rows") -> dict[str, Split]:
    """Return ``splits`` in SPLITS order; DataError naming the first empty split."""
    for name in SPLITS:
        if name not in splits or len(splits[name]) == 0:
            have = ", ".join(f"{k} {len(v)}" for k, v in splits.items() if len(v)) or "none"
            raise DataError(f"{source}: split {name} has no {what} (non-empty splits: {have})")
    return {name: splits[name] for name in SPLITS}


def warn_and_note(notes: list[str], message: str) -> None:
    """Record ``message`` as a dataset note and emit it as a UserWarning (loading code has no logger of its own)."""
    notes.append(message)
    warnings.warn(message, UserWarning, stacklevel=3)


__all__ = ["FerDataset", "Split", "default_cache_dir"]
