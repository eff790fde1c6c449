"""The real FER2013 file: split sizes, shapes, label range, the cache round trip, and known cross-split duplicates."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fer_experiments.data import check_dataset, fer2013, file_digest, load_dataset

pytestmark = pytest.mark.realdata

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("FER2013_CSV", REPO.parent / "shared" / "data" / "fer2013.csv.gz"))


@pytest.fixture(scope="module")
def real_csv() -> Path:
    if not DATA.is_file():
        pytest.skip(f"FER2013 file not found at {DATA} (set FER2013_CSV)")
    return DATA


def test_real_file_loads_and_caches(real_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = load_dataset(real_csv, cache_dir=tmp_path)
    assert {k: len(v) for k, v in ds.splits.items()} == {"Training": 28709, "PublicTest": 3589, "PrivateTest": 3589}
    for split in ds.splits.values():
        assert split.x.shape[1:] == (48, 48) and split.x.dtype == np.uint8
        assert split.y.dtype == np.int64 and split.y.min() >= 0 and split.y.max() <= 6
        assert min(split.counts()) > 0  # every class, Disgust included, in every split
    assert ds.digest == file_digest(real_csv)
    assert (tmp_path / f"{ds.digest}.npz").is_file()

    monkeypatch.setattr(fer2013, "parse_csv_bytes", lambda *a: pytest.fail("parsed although cached"))
    cached = load_dataset(real_csv, cache_dir=tmp_path)
    for name in ds.splits:
        np.testing.assert_array_equal(cached.splits[name].x, ds.splits[name].x)
        np.testing.assert_array_equal(cached.splits[name].y, ds.splits[name].y)

    report = check_dataset(cached)
    assert report.leakage > 0  # FER2013 repeats some images across its splits
    assert report.repeated_rows > 0
