"""Data checks (duplicates, leakage, constant images, chart), the dataset types, and stratified subsets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fer_experiments.data import (
    FerDataset,
    Split,
    check_dataset,
    format_report,
    plot_class_balance,
    report_to_dict,
    stratified_subset,
)
from fer_experiments.data.subset import allocate, stratified_split
from fer_experiments.errors import DataError


def random_split(n: int, seed: int, labels: np.ndarray | None = None) -> Split:
    rng = np.random.default_rng(seed)
    y = labels if labels is not None else np.arange(n) % 7
    return Split(rng.integers(1, 255, (n, 48, 48), dtype=np.uint8), np.asarray(y, dtype=np.int64))


def planted() -> FerDataset:
    """A dataset with known duplicates, leakage and constant images."""
    train, public, private = random_split(70, 1), random_split(21, 2), random_split(21, 3)
    train.x[10] = train.x[3]  # within Training: one group of 3 (rows 3, 10, 40), one with another label
    train.x[40] = train.x[3]
    train.y[40] = (train.y[3] + 1) % 7
    public.x[5] = train.x[7]  # leakage Training -> PublicTest, same label...
    public.y[5] = train.y[7]
    private.x[9] = train.x[8]  # ...and Training -> PrivateTest with another label
    private.y[9] = (train.y[8] + 2) % 7
    train.x[20] = 0  # constant images
    private.x[0] = 17
    splits = {"Training": train, "PublicTest": public, "PrivateTest": private}
    return FerDataset(splits=splits, source="synthetic.csv", digest="ab" * 32, notes=("a note",))


def test_check_finds_planted_problems() -> None:
    ds = planted()
    report = check_dataset(ds)
    assert report.counts == ds.counts() and sum(report.counts["Training"]) == 70
    w = report.within["Training"]
    assert (w.extra_copies, w.groups, w.conflicting_groups) == (2, 1, 1)
    assert w.examples == ((3, 10, 40),)
    assert report.within["PublicTest"].extra_copies == 0 and report.within["PublicTest"].examples == ()
    cross = {(c.first, c.second): c for c in report.cross}
    assert set(cross) == {("Training", "PublicTest"), ("Training", "PrivateTest"), ("PublicTest", "PrivateTest")}
    assert (cross["Training", "PublicTest"].count, cross["Training", "PublicTest"].conflicting) == (1, 0)
    assert cross["Training", "PublicTest"].examples == ((7, 5),)
    assert (cross["Training", "PrivateTest"].count, cross["Training", "PrivateTest"].conflicting) == (1, 1)
    assert cross["Training", "PrivateTest"].examples == ((8, 9),)
    assert cross["PublicTest", "PrivateTest"].count == 0
    assert report.leakage == 2
    assert report.repeated_rows == 4  # 2 within Training + 2 leaked rows
    assert report.constant["Training"].count == 1 and report.constant["Training"].examples == ((20, 0),)
    assert report.constant["PrivateTest"].examples == ((0, 17),)
    assert report.constant["PublicTest"].count == 0


def test_format_report_and_dict() -> None:
    report = check_dataset(planted())
    text = format_report(report)
    assert "synthetic.csv" in text and "Rows per split and class" in text
    assert "Angry" in text and "Neutral" in text and "Total" in text
    assert "e.g. rows [3, 10, 40]" in text
    assert "Training[7]=PublicTest[5]" in text and "Training[8]=PrivateTest[9]" in text
    assert "Constant images" in text and "20 (value 0)" in text
    assert "0-based" in text and "a note" in text
    data = report_to_dict(report)
    again = json.loads(json.dumps(data))
    assert again["rows"] == {"Training": 70, "PublicTest": 21, "PrivateTest": 21}
    assert again["leakage"] == 2 and again["duplicates_within"]["Training"]["examples"] == [[3, 10, 40]]
    assert again["constant"]["PrivateTest"] == {"count": 1, "examples": [[0, 17]]}


@pytest.mark.parametrize("given", ["report", "dataset"])
def test_class_balance_chart(tmp_path: Path, given: str) -> None:
    ds = planted()
    source = check_dataset(ds) if given == "report" else ds
    out = plot_class_balance(source, tmp_path / "charts" / "balance.png")
    assert out == tmp_path / "charts" / "balance.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert [p.name for p in out.parent.iterdir()] == ["balance.png"]  # no temp file left


# -- the dataset types ----------------------------------------------------------------------------------------------


def test_split_lookup_and_counts() -> None:
    ds = planted()
    assert ds.split("Training") is ds.splits["Training"]
    assert ds.counts()["PrivateTest"] == np.bincount(ds.splits["PrivateTest"].y, minlength=7).tolist()
    assert sum(ds.counts()["PublicTest"]) == 21
    with pytest.raises(DataError, match="synthetic.csv: split 'Validation' is missing") as info:
        ds.split("Validation")
    assert info.value.exit_code == 3
    empty = Split(np.zeros((0, 48, 48), np.uint8), np.zeros(0, np.int64))
    ds2 = FerDataset({**ds.splits, "PublicTest": empty}, "x.csv", "00")
    with pytest.raises(DataError, match="split 'PublicTest' is empty"):
        ds2.split("PublicTest")


def test_split_validates_shapes() -> None:
    with pytest.raises(ValueError):
        Split(np.zeros((2, 48, 48), np.float32), np.zeros(2, np.int64))
    with pytest.raises(ValueError):
        Split(np.zeros((2, 48, 48), np.uint8), np.zeros(3, np.int64))
    assert Split(np.zeros((2, 48, 48), np.uint8), np.zeros(2, np.uint8)).y.dtype == np.int64


# -- stratified subsets ---------------------------------------------------------------------------------------------


def imbalanced(seed: int = 0) -> Split:
    counts = [400, 40, 300, 700, 500, 300, 500]  # FER2013-like, Disgust rare
    return random_split(sum(counts), seed, labels=np.repeat(np.arange(7), counts))


def test_subset_size_and_proportions() -> None:
    split = imbalanced()
    sub = stratified_subset(split, 270)
    assert len(sub) == 270 and sub.x.shape == (270, 48, 48)
    expected = np.array(split.counts()) * 270 / len(split)
    assert np.all(np.abs(np.array(sub.counts()) - expected) <= 1)
    # Rows are real rows of the source, in source order.
    rows = {img.tobytes(): i for i, img in enumerate(split.x)}
    idx = [rows[img.tobytes()] for img in sub.x]
    assert idx == sorted(idx) and np.array_equal(split.y[idx], sub.y)


def test_subset_keeps_every_class_when_it_can() -> None:
    sub = stratified_subset(imbalanced(), 10)
    assert len(sub) == 10 and min(sub.counts()) >= 1
    tiny = stratified_subset(imbalanced(), 3)
    assert len(tiny) == 3


def test_subset_is_deterministic_per_seed() -> None:
    split = imbalanced()
    a, b, c = (stratified_subset(split, 100, seed=s) for s in (7, 7, 8))
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, c.x)
    assert stratified_subset(split, 100).y.tolist() == stratified_subset(split, 100, seed=42).y.tolist()


def test_subset_edges() -> None:
    split = imbalanced()
    assert stratified_subset(split, len(split)) is split
    assert stratified_subset(split, len(split) + 5) is split
    for bad in (0, -3):
        with pytest.raises(DataError, match="at least 1") as info:
            stratified_subset(split, bad)
        assert info.value.exit_code == 3


def test_allocate_sums_to_n() -> None:
    counts = np.array([400, 40, 300, 700, 500, 300, 500])
    for n in range(1, 200):
        take = allocate(counts, n)
        assert take.sum() == n and np.all(take <= counts)
        if n >= 7:
            assert np.all(take >= 1)


def test_stratified_split_partitions() -> None:
    split = imbalanced()
    rest, taken = stratified_split(split, 0.1, seed=42)
    assert len(rest) + len(taken) == len(split) and len(taken) == round(len(split) * 0.1)
    assert not {img.tobytes() for img in rest.x} & {img.tobytes() for img in taken.x}
