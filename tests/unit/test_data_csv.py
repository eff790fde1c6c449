"""The Kaggle CSV reader: good files in every accepted shape, and one test per kind of bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from fer_experiments import SPLITS
from fer_experiments.data import fer2013, load_dataset
from fer_experiments.errors import DataError

N_PIXELS = 48 * 48
HEADER = "emotion,pixels,Usage"


def make_rows(per_split: tuple[int, int, int] = (14, 7, 7), seed: int = 0) -> list[tuple[int, np.ndarray, str]]:
    """(label, pixels, usage) rows; labels cycle 0-6 so every split holds every class."""
    rng = np.random.default_rng(seed)
    rows = []
    for usage, n in zip(SPLITS, per_split):
        for i in range(n):
            rows.append((i % 7, rng.integers(0, 256, N_PIXELS, dtype=np.uint8), usage))
    return rows


def csv_text(rows: list[tuple[int, np.ndarray, str]], header: str = HEADER, newline: str = "\n") -> str:
    body = [f"{label},{' '.join(map(str, px))},{usage}" for label, px, usage in rows]
    return newline.join([header, *body]) + newline


def write(path: Path, text: str | bytes) -> Path:
    data = text.encode() if isinstance(text, str) else text
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def corrupt(tmp_path: Path, edit, name: str = "bad.csv") -> Path:
    """Write a good CSV with ``edit(lines)`` applied (lines[0] is the header, lines[k] is CSV line k + 1)."""
    lines = csv_text(make_rows()).splitlines()
    edit(lines)
    return write(tmp_path / name, "\n".join(lines) + "\n")


def error_of(path: Path) -> str:
    with pytest.raises(DataError) as info:
        fer2013.read_csv(path)
    assert info.value.exit_code == 3
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def assert_matches(splits: dict, rows: list[tuple[int, np.ndarray, str]]) -> None:
    assert list(splits) == list(SPLITS)
    for name in SPLITS:
        mine = [(label, px) for label, px, usage in rows if usage == name]
        split = splits[name]
        assert split.x.shape == (len(mine), 48, 48) and split.x.dtype == np.uint8
        assert split.y.shape == (len(mine),) and split.y.dtype == np.int64
        assert split.y.tolist() == [label for label, _ in mine]
        np.testing.assert_array_equal(split.x.reshape(len(mine), -1), np.stack([px for _, px in mine]))


# -- good files ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fer.csv", "fer.csv.gz"])
def test_good_csv_loads(tmp_path: Path, name: str) -> None:
    rows = make_rows()
    ds = load_dataset(write(tmp_path / name, csv_text(rows)), use_cache=False)
    assert_matches(ds.splits, rows)
    assert ds.source == str(tmp_path / name)
    assert ds.counts() == {"Training": [2] * 7, "PublicTest": [1] * 7, "PrivateTest": [1] * 7}


def test_rows_in_any_usage_order_and_crlf_bom(tmp_path: Path) -> None:
    rows = make_rows()
    mixed = rows[::-1]  # PrivateTest first: splits are no longer contiguous blocks
    text = "\ufeff" + csv_text(mixed, newline="\r\n")
    splits = fer2013.read_csv(write(tmp_path / "crlf.csv", text))
    assert_matches(splits, mixed)


def test_quoted_fields_and_other_column_order(tmp_path: Path) -> None:
    rows = make_rows()
    body = [f'"{usage}",{label},"{" ".join(map(str, px))}"' for label, px, usage in rows]
    splits = fer2013.read_csv(write(tmp_path / "quoted.csv", "\n".join(["Usage,emotion,pixels", *body]) + "\n"))
    assert_matches(splits, rows)


def test_non_canonical_but_valid_pixels_are_accepted(tmp_path: Path) -> None:
    rows = make_rows()
    lines = csv_text(rows).splitlines()
    label, pixels, usage = lines[3].split(",")
    lines[3] = f"{label},  {'  '.join(v.zfill(3) for v in pixels.split())} ,{usage}"  # leading zeros, spaces
    lines.insert(5, "")  # a blank line is skipped
    splits = fer2013.read_csv(write(tmp_path / "odd.csv", "\n".join(lines)))  # no final newline either
    assert_matches(splits, rows)


def test_many_chunks_parse_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fer2013, "CHUNK_ROWS", 3)  # many small tasks in flight across the worker threads
    rows = make_rows((40, 21, 14), seed=3)
    assert_matches(fer2013.read_csv(write(tmp_path / "many.csv.gz", csv_text(rows))), rows)


# -- bad files: one test per kind -----------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv.gz"
    with pytest.raises(DataError, match="nope.csv.gz: no such file") as info:
        load_dataset(missing, use_cache=False)
    assert info.value.exit_code == 3
    assert "nope.csv.gz: no such file" in error_of(missing)


def test_missing_column(tmp_path: Path) -> None:
    rows = make_rows()
    path = write(tmp_path / "nousage.csv", "emotion,pixels\n" + "\n".join(f"{r[0]},{' '.join(map(str, r[1]))}" for r in rows))
    message = error_of(path)
    assert "missing column Usage" in message


def test_empty_file(tmp_path: Path) -> None:
    message = error_of(write(tmp_path / "empty.csv", ""))
    assert "missing columns emotion, pixels, Usage" in message and "empty" in message


def test_wrong_pixel_count(tmp_path: Path) -> None:
    def drop_one(lines: list[str]) -> None:
        label, pixels, usage = lines[4].split(",")
        lines[4] = f"{label},{pixels.rsplit(' ', 1)[0]},{usage}"

    message = error_of(corrupt(tmp_path, drop_one))
    assert "line 5" in message and "2303 values" in message and "2304" in message


def test_empty_pixels(tmp_path: Path) -> None:
    def empty(lines: list[str]) -> None:
        label, _, usage = lines[2].split(",")
        lines[2] = f"{label},,{usage}"

    assert "line 3: pixels has 0 values" in error_of(corrupt(tmp_path, empty))


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("abc", "pixel 10 is 'abc', not an integer 0-255"),
        ("12.5", "pixel 10 is '12.5', not an integer 0-255"),
        ("-1", "pixel 10 is '-1', not an integer 0-255"),
        ("256", "pixel 10 is 256, outside 0-255"),
        ("65636", "pixel 10 is 65636, outside 0-255"),  # wraps to 100 in int16: must still be caught
        ("99999999999999999999999", "pixel 10 is 99999999999999999999999, outside 0-255"),
    ],
)
def test_bad_pixel_value(tmp_path: Path, token: str, expected: str) -> None:
    def plant(lines: list[str]) -> None:
        label, pixels, usage = lines[6].split(",")
        values = pixels.split()
        values[9] = token
        lines[6] = f"{label},{' '.join(values)},{usage}"

    message = error_of(corrupt(tmp_path, plant))
    assert "line 7: " in message and expected in message


@pytest.mark.parametrize(("label", "shown"), [("7", "'7'"), ("-1", "'-1'"), ("3.0", "'3.0'"), ("", "''"), ("happy", "'happy'")])
def test_bad_label(tmp_path: Path, label: str, shown: str) -> None:
    def plant(lines: list[str]) -> None:
        lines[8] = label + lines[8][lines[8].index(",") :]

    message = error_of(corrupt(tmp_path, plant))
    assert f"line 9: emotion {shown} is not an integer label 0-6" in message


def test_unknown_usage(tmp_path: Path) -> None:
    def plant(lines: list[str]) -> None:
        lines[2] = lines[2].rsplit(",", 1)[0] + ",Validation"

    message = error_of(corrupt(tmp_path, plant))
    assert "line 3: Usage 'Validation' is not one of Training, PublicTest, PrivateTest" in message


def test_usage_is_case_insensitive(tmp_path: Path) -> None:
    rows = make_rows()
    text = csv_text(rows).replace(",PublicTest\n", ",publictest \n")
    assert_matches(fer2013.read_csv(write(tmp_path / "case.csv", text)), rows)


def test_empty_split(tmp_path: Path) -> None:
    rows = [r for r in make_rows() if r[2] != "PrivateTest"]
    message = error_of(write(tmp_path / "nopriv.csv", csv_text(rows)))
    assert "split PrivateTest has no rows" in message and "Training 14" in message


def test_wrong_field_count(tmp_path: Path) -> None:
    def plant(lines: list[str]) -> None:
        lines[3] = lines[3] + ",extra"

    assert "line 4: expected 3 fields (emotion,pixels,Usage), found 4" in error_of(corrupt(tmp_path, plant))


def test_earliest_bad_line_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fer2013, "CHUNK_ROWS", 2)
    rows = make_rows((30, 7, 7))
    lines = csv_text(rows).splitlines()
    lines[25] = "9" + lines[25][1:]  # a bad label late in the file...
    label, pixels, usage = lines[4].split(",")
    lines[4] = f"{label},{pixels} 1,{usage}"  # ...and a bad pixel count earlier, parsed in a worker thread
    message = error_of(write(tmp_path / "two.csv", "\n".join(lines)))
    assert "line 5: pixels has 2305 values" in message


def test_corrupt_gzip(tmp_path: Path) -> None:
    path = write(tmp_path / "garbage.csv.gz", b"")
    path.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4)
    assert "garbage.csv.gz: corrupt gzip file" in error_of(path)


def test_truncated_gzip(tmp_path: Path) -> None:
    whole = gzip.compress(csv_text(make_rows()).encode())
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(whole[: len(whole) // 2])
    assert "cut.csv.gz: truncated gzip file" in error_of(path)


def test_gz_name_without_gzip_content(tmp_path: Path) -> None:
    path = tmp_path / "plain.csv.gz"
    path.write_text(csv_text(make_rows()))
    assert "not a gzip file" in error_of(path)


def test_concatenated_gzip_members(tmp_path: Path) -> None:
    rows = make_rows()
    text = csv_text(rows).encode()
    cut = len(text) // 2
    path = tmp_path / "members.csv.gz"
    path.write_bytes(gzip.compress(text[:cut]) + gzip.compress(text[cut:]))
    assert_matches(fer2013.read_csv(path), rows)
