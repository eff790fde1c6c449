"""FER2013 as an image tree: ``<root>/<split>/<class>/*.png|jpg|jpeg`` (the layout of Kaggle's image versions).

Split folders are ``train``/``val``/``test`` or ``Training``/``PublicTest``/``PrivateTest`` and class folders are
expression names, all case-insensitive. Without a ``val`` folder, a stratified, seeded 10% of train becomes
PublicTest, and the dataset's notes say so. Images that are not 48x48 grayscale are converted and counted.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_experiments import EXPRESSIONS, IMAGE_SIZE, SPLITS
from fer_experiments.data.dataset import Split, check_splits, warn_and_note
from fer_experiments.data.subset import stratified_split
from fer_experiments.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
SPLIT_FOLDERS = {
    "train": "Training",
    "val": "PublicTest",
    "test": "PrivateTest",
    **{name.lower(): name for name in SPLITS},
}
CLASS_FOLDERS = {name.lower(): label for label, name in enumerate(EXPRESSIONS)}
#: The carve-out when a tree has no validation folder.
PUBLIC_FRACTION = 0.10
PUBLIC_SEED = 42
_SKIP = ("__MACOSX",)  # folders that zip tools add; never data
_DIGEST_TAG = b"fer-exp image tree v1\n"
_WORKERS = max(1, min(8, os.cpu_count() or 1))
_CHUNK = 512


@dataclass(frozen=True)
class TreeFile:
    """One image: its path relative to the root (POSIX form), its split and its label."""

    rel: str
    split: str
    label: int


@dataclass(frozen=True)
class TreeScan:
    """What ``scan_tree`` found: the images in sorted order, and how many other files it skipped."""

    files: tuple[TreeFile, ...]
    ignored: int


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in _SKIP


def _is_file(entry: os.DirEntry[str]) -> bool:
    """Whether an entry is a regular file (following symlinks); a symlink loop is a DataError naming it."""
    try:
        return entry.is_file()
    except OSError as exc:
        raise DataError(f"{entry.path}: cannot be read ({exc.strerror or exc}); a symlink loop or a broken link "
                        "among the images") from None


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError as exc:
        raise DataError(f"{entry.path}: cannot be read ({exc.strerror or exc}); a symlink loop or a broken link "
                        "in the image tree") from None


def scan_tree(root: str | os.PathLike[str], source: str | None = None) -> TreeScan:
    """List the images of an image tree and check its layout; DataError naming the folder at fault."""
    root = Path(root)
    source = source if source is not None else str(root)
    seen: dict[str, str] = {}  # split -> folder name that provided it
    files: list[TreeFile] = []
    ignored = 0
    split_dirs: list[tuple[os.DirEntry[str], str]] = []
    # Names first, contents second: a layout mistake is reported before any folder's contents.
    for sd in sorted((e for e in os.scandir(root) if not _hidden(e.name)), key=lambda e: e.name):
        if not _is_dir(sd):
            ignored += 1  # a README or licence beside the split folders
            continue
        split = SPLIT_FOLDERS.get(sd.name.lower())
        if split is None:
            raise DataError(
                f"{sd.path}: unknown split folder {sd.name!r} (expected train/val/test or Training/PublicTest/PrivateTest)"
            )
        if split in seen:
            raise DataError(f"{sd.path}: folders {seen[split]!r} and {sd.name!r} both name split {split}")
        seen[split] = sd.name
        split_dirs.append((sd, split))
    for sd, split in split_dirs:
        found = 0
        for cd in sorted((e for e in os.scandir(sd.path) if not _hidden(e.name)), key=lambda e: e.name):
            if not _is_dir(cd):
                if cd.name.lower().endswith(IMAGE_EXTENSIONS):
                    raise DataError(f"{cd.path}: image outside a class folder (expected {sd.name}/<class>/{cd.name})")
                ignored += 1
                continue
            label = CLASS_FOLDERS.get(cd.name.lower())
            if label is None:
                expected = ", ".join(CLASS_FOLDERS)
                raise DataError(f"{cd.path}: unknown class folder {cd.name!r} (expected one of {expected})")
            for f in os.scandir(cd.path):
                if _hidden(f.name) or not _is_file(f) or not f.name.lower().endswith(IMAGE_EXTENSIONS):
                    ignored += 1
                    continue
                files.append(TreeFile(f"{sd.name}/{cd.name}/{f.name}", split, label))
                found += 1
        if found == 0:
            raise DataError(f"{sd.path}: split {split} has no images (expected {sd.name}/<class>/*.png|jpg|jpeg)")
    if "Training" not in seen:
        raise DataError(f"{source}: no training folder (train or Training) among {sorted(seen.values()) or 'none'}")
    if "PrivateTest" not in seen:
        raise DataError(f"{source}: no test folder (test or PrivateTest) among {sorted(seen.values())}")
    files.sort(key=lambda f: f.rel)
    return TreeScan(tuple(files), ignored)


def tree_digest(root: str | os.PathLike[str], scan: TreeScan) -> str:
    """sha256 over the sorted relative paths and bytes of the images: any rename, move or edit changes it."""
    root = Path(root)
    h = hashlib.sha256(_DIGEST_TAG)
    for f in scan.files:
        data = _read(root / f.rel)
        # Length-prefixed so that no two different trees can produce the same byte stream.
        h.update(f.rel.encode("utf-8") + b"\0" + len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def read_tree(
    root: str | os.PathLike[str], scan: TreeScan, source: str | None = None
) -> tuple[dict[str, Split], tuple[str, ...]]:
    """Decode every image to 48x48 grayscale uint8; return the three splits and the notes on what was done."""
    root = Path(root)
    source = source if source is not None else str(root)
    files = scan.files
    x = np.empty((len(files), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)

    def load(lo: int) -> int:
        converted = 0
        for i in range(lo, min(lo + _CHUNK, len(files))):
            x[i], changed = _decode(root / files[i].rel)
            converted += changed
        return converted

    # OpenCV releases the GIL while decoding, so threads use every core; map raises the earliest failure first.
    with ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="fer-images") as pool:
        converted = sum(pool.map(load, range(0, len(files), _CHUNK)))

    labels = np.fromiter((f.label for f in files), dtype=np.int64, count=len(files))
    split_of = np.array([f.split for f in files], dtype=object)
    splits = {name: Split(x[split_of == name], labels[split_of == name]) for name in SPLITS}
    notes: list[str] = []
    if len(splits["PublicTest"]) == 0:
        splits["Training"], splits["PublicTest"] = stratified_split(splits["Training"], PUBLIC_FRACTION, PUBLIC_SEED)
        notes.append(
            f"PublicTest taken from train: {PUBLIC_FRACTION:.0%} stratified, seed {PUBLIC_SEED}"
            f" ({len(splits['PublicTest'])} images)"
        )
    if converted:
        warn_and_note(notes, f"converted {converted} images to {IMAGE_SIZE}x{IMAGE_SIZE} grayscale")
    return check_splits(splits, source, what="images"), tuple(notes)


def scan_notes(scan: TreeScan) -> tuple[str, ...]:
    """Notes on what this scan skipped: made for every load, cache hit or not (the digest covers images only, so
    files added beside them change the notes without changing the cache key)."""
    if scan.ignored:
        return (f"{IGNORED_NOTE} {scan.ignored} files that are not {'/'.join(IMAGE_EXTENSIONS)} images",)
    return ()


IGNORED_NOTE = "ignored"


#: Largest image the tree may hold, by what its header declares (FER2013's are 48x48; a photo is a few megapixels).
#: Checked before decoding, so a 100000x100000 header costs nothing.
MAX_IMAGE_PIXELS = 50_000_000


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) a PNG's IHDR or a JPEG's SOF header declares, or None when it cannot tell."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 <= len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            length = int.from_bytes(data[i + 2:i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
            i += 2 + length
    return None


def _read(path: Path) -> bytes:
    from fer_experiments.io import read_capped

    return read_capped(path)  # a 100 GB sparse file is refused by name, not a MemoryError


def _decode(path: Path) -> tuple[np.ndarray, bool]:
    """One image as 48x48 grayscale uint8, and whether it had to be converted."""
    import cv2  # lazy: OpenCV is only needed for image trees

    data = _read(path)
    size = declared_size(data)
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise DataError(f"{path}: its header declares {size[0]}x{size[1]} pixels; at most {MAX_IMAGE_PIXELS:,} "
                        "pixels per image are allowed")
    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    except cv2.error as exc:  # OpenCV's own limits and decoder failures: name the file, one line
        raise DataError(f"{path}: unreadable image ({str(exc).strip().splitlines()[-1][:160]})") from None
    if img is None:
        raise DataError(f"{path}: unreadable image (not a valid PNG or JPEG)")
    converted = False
    if img.dtype != np.uint8:
        # 16-bit PNGs: scale to 8 bits; anything else (float TIFF-like data) is clipped.
        img = (img // 257).astype(np.uint8) if img.dtype == np.uint16 else np.clip(img, 0, 255).astype(np.uint8)
        converted = True
    if img.ndim == 3:
        channels = img.shape[2]
        if channels == 1 or channels == 2:  # gray, or gray + alpha
            img = np.ascontiguousarray(img[:, :, 0])
        else:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY if channels == 4 else cv2.COLOR_BGR2GRAY)
        converted = converted or channels > 1
    if img.shape != (IMAGE_SIZE, IMAGE_SIZE):
        img = cv2.resize(img, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
        converted = True
    return img, converted
