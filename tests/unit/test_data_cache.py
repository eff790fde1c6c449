"""The npz cache: hits without parsing, misses on changed content, never trusts a partial or damaged file."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_experiments import EXPRESSIONS, SPLITS
from fer_experiments.data import cache, fer2013, file_digest, folders, load_dataset
from fer_experiments.errors import DataError


def write_csv(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lines = ["emotion,pixels,Usage"]
    for usage, n in zip(SPLITS, (14, 7, 7)):
        lines += [f"{i % 7},{' '.join(map(str, rng.integers(0, 256, 2304)))},{usage}" for i in range(n)]
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def no_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any CSV parse fail loudly, so a successful load proves the cache answered."""

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("parsed although the cache should have answered")

    monkeypatch.setattr(fer2013, "parse_csv_bytes", boom)


def same(a, b) -> None:
    assert list(a.splits) == list(b.splits)
    for name in a.splits:
        np.testing.assert_array_equal(a.splits[name].x, b.splits[name].x)
        np.testing.assert_array_equal(a.splits[name].y, b.splits[name].y)
        assert a.splits[name].y.dtype == np.int64 and a.splits[name].x.dtype == np.uint8
    assert a.notes == b.notes and a.digest == b.digest


def test_second_load_hits_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_csv(tmp_path / "fer.csv.gz")
    cache_dir = tmp_path / "cache"
    first = load_dataset(src, cache_dir=cache_dir)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    assert first.digest == digest == file_digest(src)
    assert (cache_dir / f"{digest}.npz").is_file()
    assert sorted(p.name for p in cache_dir.iterdir()) == [f"{digest}.npz"]  # no temp files left behind

    no_parse(monkeypatch)
    second = load_dataset(src, cache_dir=cache_dir)
    same(first, second)
    # Same content under another name: same digest, still a hit.
    copy = tmp_path / "copy.csv.gz"
    copy.write_bytes(src.read_bytes())
    assert load_dataset(copy, cache_dir=cache_dir).source == str(copy)


def test_changed_source_misses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_csv(tmp_path / "fer.csv")
    cache_dir = tmp_path / "cache"
    first = load_dataset(src, cache_dir=cache_dir)
    write_csv(src, seed=1)
    calls = []
    real = fer2013.parse_csv_bytes
    monkeypatch.setattr(fer2013, "parse_csv_bytes", lambda *a: calls.append(1) or real(*a))
    second = load_dataset(src, cache_dir=cache_dir)
    assert calls == [1] and second.digest != first.digest
    assert not np.array_equal(first.split("Training").x, second.split("Training").x)
    assert len(list(cache_dir.glob("*.npz"))) == 2


def test_partial_write_never_becomes_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_csv(tmp_path / "fer.csv")
    cache_dir = tmp_path / "cache"

    def half_then_fail(fh, **arrays: np.ndarray) -> None:
        fh.write(b"PK\x03\x04 half an npz")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache.np, "savez", half_then_fail)
    with pytest.warns(UserWarning, match="could not write cache file"):
        ds = load_dataset(src, cache_dir=cache_dir)
    assert len(ds.split("Training")) == 14  # the load itself succeeded
    assert list(cache_dir.iterdir()) == []  # neither the cache file nor the temp file exists


def test_interrupted_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_csv(tmp_path / "fer.csv")
    cache_dir = tmp_path / "cache"

    def interrupted(fh, **arrays: np.ndarray) -> None:
        fh.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(cache.np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(src, cache_dir=cache_dir)
    assert list(cache_dir.iterdir()) == []


def test_damaged_cache_file_is_rebuilt(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "fer.csv")
    cache_dir = tmp_path / "cache"
    target = cache_dir / f"{file_digest(src)}.npz"
    cache_dir.mkdir()
    target.write_bytes(b"not a zip file at all")
    with pytest.warns(UserWarning, match="ignoring unreadable cache file"):
        ds = load_dataset(src, cache_dir=cache_dir)
    assert len(ds.split("PublicTest")) == 7
    assert cache.read_cache(target) is not None  # overwritten with a good file


def test_other_cache_version_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_csv(tmp_path / "fer.csv")
    load_dataset(src, cache_dir=tmp_path)
    monkeypatch.setattr(cache, "CACHE_VERSION", cache.CACHE_VERSION + 1)
    assert cache.read_cache(cache.cache_path(tmp_path, file_digest(src))) is None


def test_use_cache_false_neither_reads_nor_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_csv(tmp_path / "fer.csv")
    cache_dir = tmp_path / "cache"
    load_dataset(src, cache_dir=cache_dir, use_cache=False)
    assert not cache_dir.exists()
    load_dataset(src, cache_dir=cache_dir)
    no_parse(monkeypatch)
    with pytest.raises(AssertionError, match="parsed although"):
        load_dataset(src, cache_dir=cache_dir, use_cache=False)


def test_default_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FER_EXP_CACHE", str(tmp_path / "envcache"))
    src = write_csv(tmp_path / "fer.csv")
    ds = load_dataset(src)
    assert (tmp_path / "envcache" / f"{ds.digest}.npz").is_file()


def test_folder_notes_survive_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "tree"
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("test", 2)):
        for name in EXPRESSIONS:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                cv2.imwrite(str(root / split / name / f"{i}.png"), rng.integers(0, 256, (48, 48), dtype=np.uint8))
    first = load_dataset(root, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(folders, "read_tree", lambda *a: pytest.fail("decoded although cached"))
    second = load_dataset(root, cache_dir=tmp_path / "cache")
    same(first, second)
    assert any("PublicTest taken from train" in n for n in second.notes)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nothing-here: no such file or folder") as info:
        load_dataset(tmp_path / "nothing-here", cache_dir=tmp_path)
    assert info.value.exit_code == 3
