"""Image trees: both split naming schemes, case-insensitive classes, the PublicTest carve-out, conversions, errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_experiments import EXPRESSIONS
from fer_experiments.data import file_digest, load_dataset
from fer_experiments.data import folders
from fer_experiments.errors import DataError

SCHEMES = {
    "short": ("train", "val", "test"),
    "long": ("Training", "PublicTest", "PrivateTest"),
}


def make_tree(
    root: Path,
    split_names: tuple[str, ...] = ("train", "val", "test"),
    per_class: tuple[int, ...] = (3, 1, 1),
    class_case: str = "lower",
    seed: int = 0,
) -> dict[str, list[tuple[int, np.ndarray]]]:
    """Write 48x48 grayscale PNGs; return, per split folder, (label, image) in the loader's (sorted path) order."""
    rng = np.random.default_rng(seed)
    written: dict[str, list[tuple[str, int, np.ndarray]]] = {}
    for split, n in zip(split_names, per_class):
        for label, name in enumerate(EXPRESSIONS):
            folder = root / split / getattr(name, class_case)()
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 256, (48, 48), dtype=np.uint8)
                rel = f"{split}/{folder.name}/{i:03d}.png"
                assert cv2.imwrite(str(root / rel), img)
                written.setdefault(split, []).append((rel, label, img))
    return {s: [(label, img) for _, label, img in sorted(items, key=lambda t: t[0])] for s, items in written.items()}


def assert_split(split, expected: list[tuple[int, np.ndarray]]) -> None:
    assert split.x.shape == (len(expected), 48, 48) and split.x.dtype == np.uint8
    assert split.y.dtype == np.int64 and split.y.tolist() == [label for label, _ in expected]
    np.testing.assert_array_equal(split.x, np.stack([img for _, img in expected]))


def error_of(root: Path) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(root, use_cache=False)
    assert info.value.exit_code == 3
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("class_case", ["lower", "upper", "title"])
def test_both_naming_schemes_and_any_class_case(tmp_path: Path, scheme: str, class_case: str) -> None:
    names = SCHEMES[scheme]
    expected = make_tree(tmp_path, names, class_case=class_case)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to convert: no warning
        ds = load_dataset(tmp_path, use_cache=False)
    assert list(ds.splits) == ["Training", "PublicTest", "PrivateTest"]
    for folder, split in zip(names, ds.splits.values()):
        assert_split(split, expected[folder])
    assert ds.counts()["Training"] == [3] * 7
    assert ds.notes == ()
    assert ds.source == str(tmp_path)


def test_split_folder_names_are_case_insensitive(tmp_path: Path) -> None:
    make_tree(tmp_path, ("TRAIN", "Val", "privatetest"))
    ds = load_dataset(tmp_path, use_cache=False)
    assert [len(s) for s in ds.splits.values()] == [21, 7, 7]


def test_train_and_test_only_carves_public_test(tmp_path: Path) -> None:
    make_tree(tmp_path, ("train", "test"), per_class=(10, 2))
    ds = load_dataset(tmp_path, use_cache=False)
    assert [len(s) for s in ds.splits.values()] == [63, 7, 14]
    assert ds.split("PublicTest").counts() == [1] * 7  # stratified: every class kept
    assert any("PublicTest taken from train: 10% stratified, seed 42" in n for n in ds.notes)
    # No image is in both halves, and the carve-out is the same every time.
    train = {img.tobytes() for img in ds.split("Training").x}
    assert not train & {img.tobytes() for img in ds.split("PublicTest").x}
    again = load_dataset(tmp_path, use_cache=False)
    np.testing.assert_array_equal(again.split("PublicTest").x, ds.split("PublicTest").x)


def test_colour_and_odd_size_images_are_converted_and_counted(tmp_path: Path) -> None:
    make_tree(tmp_path)
    folder = tmp_path / "train" / "happy"
    colour = np.zeros((48, 48, 3), dtype=np.uint8)
    colour[..., 2] = 200  # pure red in BGR
    cv2.imwrite(str(folder / "colour.png"), colour)
    cv2.imwrite(str(folder / "big.jpg"), np.full((96, 64), 90, dtype=np.uint8))
    cv2.imwrite(str(folder / "rgba.PNG"), np.full((20, 30, 4), 255, dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="converted 3 images to 48x48 grayscale"):
        ds = load_dataset(tmp_path, use_cache=False)
    assert "converted 3 images to 48x48 grayscale" in ds.notes
    assert any("ignored 1 files" in n for n in ds.notes)
    train = ds.split("Training")
    assert len(train) == 24 and train.counts()[3] == 6
    happy = train.x[train.y == 3]
    # Sorted file order in happy/: 000 001 002 big colour rgba
    assert np.all(np.abs(happy[3].astype(int) - 90) <= 2)  # JPEG is lossy
    assert np.all(happy[4] == cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY)[0, 0])
    assert np.all(happy[5] == 255)


def test_unknown_class_folder(tmp_path: Path) -> None:
    make_tree(tmp_path)
    (tmp_path / "val" / "happpy").mkdir()
    message = error_of(tmp_path)
    assert str(tmp_path / "val" / "happpy") in message and "unknown class folder 'happpy'" in message
    assert "angry, disgust, fear, happy, sad, surprise, neutral" in message


def test_unknown_split_folder(tmp_path: Path) -> None:
    make_tree(tmp_path)
    (tmp_path / "validation" / "happy").mkdir(parents=True)
    message = error_of(tmp_path)
    assert str(tmp_path / "validation") in message and "unknown split folder 'validation'" in message


def test_empty_split(tmp_path: Path) -> None:
    make_tree(tmp_path, per_class=(2, 0, 1))  # val/<class>/ folders exist but hold no images
    message = error_of(tmp_path)
    assert str(tmp_path / "val") in message and "split PublicTest has no images" in message


def test_missing_test_split(tmp_path: Path) -> None:
    make_tree(tmp_path, ("train", "val"))
    message = error_of(tmp_path)
    assert str(tmp_path) in message and "no test folder" in message


def test_unreadable_image(tmp_path: Path) -> None:
    make_tree(tmp_path)
    bad = tmp_path / "test" / "sad" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    message = error_of(tmp_path)
    assert str(bad) in message and "unreadable image" in message


def test_same_split_twice(tmp_path: Path) -> None:
    make_tree(tmp_path)
    (tmp_path / "Training" / "happy").mkdir(parents=True)
    assert "both name split Training" in error_of(tmp_path)


def test_tree_digest_tracks_content_and_names(tmp_path: Path) -> None:
    make_tree(tmp_path)
    first = file_digest(tmp_path)
    assert first == folders.tree_digest(tmp_path, folders.scan_tree(tmp_path)) and len(first) == 64
    target = tmp_path / "train" / "fear" / "000.png"
    target.rename(target.with_name("zzz.png"))
    renamed = file_digest(tmp_path)
    assert renamed != first
    cv2.imwrite(str(target.with_name("zzz.png")), np.zeros((48, 48), dtype=np.uint8))
    assert file_digest(tmp_path) not in (first, renamed)
