"""The npz cache: ``<cache_dir>/<sha256 of the source>.npz`` holding every split, written atomically.

Keyed by content, not by path or mtime: a changed source gets a new digest and misses; a copy elsewhere hits.
Stored uncompressed because a warm load must stay well under half a second (82 MB of pixels).
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from fer_experiments import SPLITS
from fer_experiments.data.dataset import Split
from fer_experiments.io import atomic_open

#: Bump when the parsers change what they produce, so older cache files are ignored rather than trusted.
CACHE_VERSION = 1


def bytes_digest(data: bytes) -> str:
    """sha256 hex of ``data``."""
    return hashlib.sha256(data).hexdigest()


def cache_path(cache_dir: str | os.PathLike[str], digest: str) -> Path:
    """Where the cache file for ``digest`` lives."""
    return Path(cache_dir).expanduser() / f"{digest}.npz"


def read_cache(path: Path) -> tuple[dict[str, Split], tuple[str, ...]] | None:
    """The splits and notes stored at ``path``, or None when it is absent, unreadable or from another version."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != CACHE_VERSION:
                return None
            splits = {name: Split(z[f"x_{name}"], z[f"y_{name}"]) for name in SPLITS}
            notes = tuple(str(n) for n in z["notes"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        # A damaged cache is never fatal: the source is still there, so rebuild and overwrite it.
        warnings.warn(f"ignoring unreadable cache file {path}: {exc}", UserWarning, stacklevel=3)
        return None
    return splits, notes


def write_cache(path: Path, splits: dict[str, Split], notes: tuple[str, ...] | list[str]) -> bool:
    """Store ``splits`` and ``notes`` at ``path`` atomically; warn and return False if that fails."""
    arrays: dict[str, np.ndarray] = {"version": np.array(CACHE_VERSION, dtype=np.int64)}
    for name, split in splits.items():
        arrays[f"x_{name}"] = split.x
        arrays[f"y_{name}"] = split.y.astype(np.uint8)  # labels 0-6: a quarter of the bytes of int64
    arrays["notes"] = np.array(list(notes), dtype=str)
    try:
        # atomic_open writes a temp file beside ``path`` and renames it only after a complete write.
        with atomic_open(path, "wb") as fh:
            np.savez(fh, **arrays)
    except OSError as exc:
        # A read-only or full cache folder must not stop a load that has already succeeded.
        warnings.warn(f"could not write cache file {path}: {exc}", UserWarning, stacklevel=3)
        return False
    return True
