"""FER2013 as an arrays file (.npz) and the GPU kit's shards (issue 14)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fer_experiments.data import load_dataset
from fer_experiments.data.arrays import assemble_shards, write_arrays
from fer_experiments.data.dataset import FerDataset, Split
from fer_experiments.errors import DataError


def _dataset() -> FerDataset:
    rng = np.random.default_rng(0)
    splits = {name: Split(rng.integers(0, 256, (n, 48, 48)).astype(np.uint8), rng.integers(0, 7, n))
              for name, n in (("Training", 30), ("PublicTest", 10), ("PrivateTest", 12))}
    return FerDataset(splits=splits, source="x.csv", digest="d" * 64)


def test_arrays_round_trip_keeps_the_source_digest(tmp_path: Path) -> None:
    ds = _dataset()
    write_arrays(tmp_path / "fer.npz", ds)
    back = load_dataset(tmp_path / "fer.npz")
    assert back.digest == ds.digest
    for name, split in ds.splits.items():
        assert np.array_equal(back.split(name).x, split.x) and np.array_equal(back.split(name).y, split.y)


def test_shards_assemble_into_the_same_data(tmp_path: Path) -> None:
    ds = _dataset()
    shards = []
    for i, (name, split) in enumerate(ds.splits.items()):
        for j, (a, b) in enumerate(((0, len(split.y) // 2), (len(split.y) // 2, len(split.y)))):
            path = tmp_path / f"fer2013-{i:02d}{j}-{name}.npz"
            np.savez_compressed(path, split=np.array(name), x=split.x[a:b], y=split.y[a:b].astype(np.uint8),
                                source_digest=np.array(ds.digest))
            shards.append(path)
    out = assemble_shards(shards, tmp_path / "all.npz")
    back = load_dataset(out)
    assert back.digest == ds.digest
    assert np.array_equal(back.split("Training").x, ds.split("Training").x)


def test_missing_split_names_the_file_and_array(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x_Training=np.zeros((2, 48, 48), np.uint8), y_Training=np.zeros(2, np.uint8))
    with pytest.raises(DataError, match="bad.npz.*x_PublicTest"):
        load_dataset(path)
