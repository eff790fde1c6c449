"""FER2013 as numpy arrays in one ``.npz`` file: ``x_<split>`` (N, 48, 48) uint8 and ``y_<split>`` (N,) labels per
split, and ``source_digest``: the sha256 of the CSV they came from, which stays the data set's digest (so a study
run on the arrays, e.g. on the GPU machine, has the same data identity as one run on the CSV).

``bench/gpu/pack.py`` writes FER2013 as compressed shards (row ranges of one split each: ``split``, ``x``, ``y``,
``source_digest``); ``assemble_shards`` joins them back into one such file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fer_experiments import SPLITS
from fer_experiments.data.dataset import FerDataset, Split, check_splits
from fer_experiments.errors import DataError
from fer_experiments.io import atomic_open


def read_arrays(path: str | os.PathLike[str], digest_of_bytes: str) -> FerDataset:
    """Load an arrays file; DataError naming the file and the missing or malformed array."""
    source = str(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            splits = {}
            for split in SPLITS:
                if f"x_{split}" not in names or f"y_{split}" not in names:
                    raise DataError(f"{source}: arrays x_{split} and y_{split} are required (found: "
                                    f"{', '.join(sorted(names))})")
                try:
                    splits[split] = Split(z[f"x_{split}"], z[f"y_{split}"])
                except ValueError as exc:
                    raise DataError(f"{source}: {split}: {exc}") from None
            digest = str(z["source_digest"]) if "source_digest" in names else digest_of_bytes
    except (OSError, ValueError) as exc:
        raise DataError(f"{source}: not a readable .npz file ({exc})") from None
    return FerDataset(splits=check_splits(splits, source, "images"), source=source, digest=digest)


def write_arrays(path: str | os.PathLike[str], dataset: FerDataset, *, compressed: bool = True) -> None:
    """Write ``dataset`` as an arrays file (atomically)."""
    arrays: dict[str, np.ndarray] = {"source_digest": np.array(dataset.digest)}
    for name, split in dataset.splits.items():
        arrays[f"x_{name}"], arrays[f"y_{name}"] = split.x, split.y.astype(np.uint8)
    with atomic_open(Path(path), "wb") as fh:
        (np.savez_compressed if compressed else np.savez)(fh, **arrays)


def assemble_shards(shards: list[Path], out: Path) -> Path:
    """Join shards (``split``, ``x``, ``y``, ``source_digest``; in file-name order) into one arrays file."""
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {s: [] for s in SPLITS}
    digests = set()
    for shard in sorted(shards):
        with np.load(shard, allow_pickle=False) as z:
            parts[str(z["split"])].append((z["x"], z["y"]))
            digests.add(str(z["source_digest"]))
    if len(digests) != 1:
        raise DataError(f"shards come from {len(digests)} different sources: {sorted(digests)}")
    splits = {s: Split(np.concatenate([x for x, _ in p]), np.concatenate([y for _, y in p])) for s, p in parts.items()
              if p}
    write_arrays(out, FerDataset(splits=splits, source=str(out), digest=digests.pop()), compressed=False)
    return out
