"""``load_dataset``: a FER2013 Kaggle CSV or an image tree, through the npz cache keyed by content digest."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Callable

from fer_experiments.data import cache, fer2013, folders
from fer_experiments.data.dataset import FerDataset, Split, default_cache_dir
from fer_experiments.errors import DataError


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 hex of a file's bytes; for a folder, the image-tree digest ``load_dataset`` uses."""
    p = Path(path)
    if p.is_dir():
        return folders.tree_digest(p, folders.scan_tree(p, str(path)))
    h = hashlib.sha256()
    with open(p, "rb") as fh:  # hashlib.file_digest would need Python 3.11; the project supports 3.10
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def load_dataset(
    path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
) -> FerDataset:
    """Load FER2013 from a Kaggle CSV (``.csv``/``.csv.gz``) or an image tree, through an npz cache keyed by content.

    The digest is always computed from the content (never from mtime), so a changed source misses the cache.
    ``cache_dir`` defaults to ``default_cache_dir()``; ``use_cache=False`` neither reads nor writes the cache.
    Every problem with the input raises DataError (exit code 3) naming the file, line or image.
    """
    source = str(path)
    p = Path(path).expanduser()
    parse: Callable[[], tuple[dict[str, Split], tuple[str, ...]]]
    fresh_notes: tuple[str, ...]
    if p.is_dir():
        scan = folders.scan_tree(p, source)
        digest = folders.tree_digest(p, scan)
        parse = functools.partial(folders.read_tree, p, scan, source)
        fresh_notes = folders.scan_notes(scan)
    elif p.is_file() and p.suffix == ".npz":
        # Arrays are already decoded: no parsing and no cache (see data/arrays.py).
        from fer_experiments.data.arrays import read_arrays

        return read_arrays(p, file_digest(p))
    elif p.is_file():
        try:
            data = p.read_bytes()  # read once: hashed here, parsed below on a cache miss
        except OSError as exc:
            raise DataError(f"{source}: cannot read file ({exc.strerror or exc})") from exc
        fer2013.check_container(data, source)
        digest = cache.bytes_digest(data)
        fresh_notes = ()

        def parse() -> tuple[dict[str, Split], tuple[str, ...]]:
            return fer2013.parse_csv_bytes(data, source), ()

    elif p.exists():
        raise DataError(f"{source}: neither a file nor a folder")
    else:
        raise DataError(f"{source}: no such file or folder (expected a FER2013 .csv/.csv.gz file or an image folder)")

    target = cache.cache_path(cache_dir if cache_dir is not None else default_cache_dir(), digest)
    if use_cache:
        hit = cache.read_cache(target)
        if hit is not None:
            splits, notes = hit
            # Notes about the scan are this load's own (older caches stored them too: drop those).
            notes = tuple(n for n in notes if not n.startswith(folders.IGNORED_NOTE + " ")) + fresh_notes
            return FerDataset(splits=splits, source=source, digest=digest, notes=notes)

    splits, notes = parse()
    if use_cache:
        cache.write_cache(target, splits, notes)
    return FerDataset(splits=splits, source=source, digest=digest, notes=tuple(notes) + fresh_notes)
