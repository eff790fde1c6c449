"""The Kaggle FER2013 CSV (``emotion,pixels,Usage``), plain or gzipped, parsed fast and validated row by row.

Speed: the file is ~300 MB of text once decompressed. It is gunzipped a step at a time, lines are cut with
``bytes.find`` (C speed, no pandas tokenizer), and the pixel strings are parsed by ``np.fromstring`` in a
thread pool. Both zlib and ``np.fromstring`` release the GIL, so decompression and parsing overlap and use
every core. A vectorised check per chunk (range + exact text length) flags the rare row that needs a strict
second look; only that row is rescanned token by token, to name the problem.

Errors name the file, the CSV line (header = line 1, as an editor counts) and the reason, in one line.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import os
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np

from fer_experiments import IMAGE_SIZE, NUM_CLASSES, SPLITS
from fer_experiments.data.dataset import Split, check_splits
from fer_experiments.errors import DataError

N_PIXELS = IMAGE_SIZE * IMAGE_SIZE
REQUIRED_COLUMNS = ("emotion", "pixels", "Usage")
#: Rows per parse task: big enough to amortise the per-task overhead, small enough to bound memory in flight.
CHUNK_ROWS = 1024
_WORKERS = max(1, min(8, os.cpu_count() or 1))

_LABELS = {str(i).encode(): i for i in range(NUM_CLASSES)}
_USAGE_EXACT = {name.encode(): i for i, name in enumerate(SPLITS)}
_USAGE_LOWER = {name.lower(): i for i, name in enumerate(SPLITS)}
# Length of a canonical row ("0 12 255 ..."): one char per pixel + one space between pixels, plus extra digits.
_BASE_LEN = 2 * N_PIXELS - 1
_GZIP_MAGIC = b"\x1f\x8b"
#: Compressed bytes per decompress call (~3 MB of text): small steps let parsing overlap decompression.
_GZIP_STEP = 1 << 20

Row = tuple[int, bytes, bytes, bytes]  # (line number, emotion, pixels, Usage) as raw bytes


def read_csv(path: str | os.PathLike[str]) -> dict[str, Split]:
    """Parse a FER2013 CSV file (``.csv`` or ``.csv.gz``) into the three splits."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"{source}: no such file") from exc
    except OSError as exc:
        raise DataError(f"{source}: cannot read file ({exc.strerror or exc})") from exc
    return parse_csv_bytes(data, source)


def parse_csv_bytes(data: bytes, source: str) -> dict[str, Split]:
    """Parse the bytes of a FER2013 CSV (gzip detected by its magic number); ``source`` names it in errors."""
    segments = _line_segments(_text_blocks(data, source))
    first = next(segments, (b"", 0, 0))
    columns, body_start = _read_header(first[0], source)
    standard = [c.lower() for c in columns] == [c.lower() for c in REQUIRED_COLUMNS]
    try:
        if not standard:
            raise _NeedsCsvModule
        # Decompression (zlib releases the GIL) runs in this thread while the pool parses earlier rows.
        x, y, usage = _parse_rows(_rows_fast((first[0], body_start, first[2]), segments, source), source)
    except _NeedsCsvModule:
        # Quotes, another column order or extra columns: the csv module handles them, on the whole text.
        x, y, usage = _parse_rows(_rows_csv(_decompress(data, source), source), source)

    splits: dict[str, Split] = {}
    for code, name in enumerate(SPLITS):
        idx = np.flatnonzero(usage == code)
        # FER2013 is ordered by Usage, so each split is usually one contiguous block: a view, not a copy.
        sel = slice(int(idx[0]), int(idx[-1]) + 1) if len(idx) and idx[-1] - idx[0] + 1 == len(idx) else idx
        splits[name] = Split(x[sel].reshape(-1, IMAGE_SIZE, IMAGE_SIZE), y[sel])
    return check_splits(splits, source, what="rows")


class _NeedsCsvModule(Exception):
    """The fast splitter met something it does not handle (a quote); start over with the csv module."""


# -- bytes in, text out ---------------------------------------------------------------------------------------


def _text_blocks(data: bytes, source: str) -> Iterator[bytes]:
    """The CSV text in blocks: ``data`` itself if plain, else gunzipped a step at a time (all members, CRC checked)."""
    if data[:2] != _GZIP_MAGIC:
        _refuse_archives(data, source)
        if data:
            yield data
        return
    view, n, pos = memoryview(data), len(data), 0
    d = zlib.decompressobj(wbits=31)  # 31 = gzip wrapper; zlib checks each member's CRC and length trailer
    first = True
    try:
        while pos < n:
            out = d.decompress(view[pos : pos + _GZIP_STEP])
            pos = min(pos + _GZIP_STEP, n)
            if d.eof:
                # A member ended within this step: what follows is another member or zero padding (both legal).
                pos -= len(d.unused_data)
                while pos < n and data[pos] == 0:
                    pos += 1
                if pos < n:
                    d = zlib.decompressobj(wbits=31)
            if out:
                if first:
                    _refuse_tar(out, source)
                    first = False
                yield out
    except zlib.error as exc:
        raise DataError(f"{source}: corrupt gzip file ({exc})") from exc
    if not d.eof:
        raise DataError(f"{source}: truncated gzip file (the compressed stream ends early)")


def _decompress(data: bytes, source: str) -> bytes:
    """The whole CSV text (for the csv-module path)."""
    return b"".join(_text_blocks(data, source))


def check_container(data: bytes, source: str) -> None:
    """Refuse what the name and the bytes disagree on (a plain file named .gz, a zip or tar archive) before anything
    else, so that the answer never depends on whether a cache holds the same bytes under another name."""
    if data[:2] != b"\x1f\x8b":
        _refuse_archives(data, source)


def _refuse_archives(data: bytes, source: str) -> None:
    if source.lower().endswith(".gz"):
        raise DataError(f"{source}: not a gzip file (no gzip header) although its name ends in .gz")
    if data[:4] == b"PK\x03\x04":
        raise DataError(f"{source}: is a zip archive; extract the CSV from it first")
    _refuse_tar(data, source)


def _refuse_tar(text: bytes, source: str) -> None:
    if text[257:262] == b"ustar":
        raise DataError(f"{source}: is a tar archive (like Kaggle's fer2013.tar.gz); extract fer2013.csv from it first")


def _line_segments(blocks: Iterator[bytes]) -> Iterator[tuple[bytes, int, int]]:
    """Regroup text blocks into (buffer, start, end) spans holding whole lines (the last may lack its newline)."""
    tail = b""
    for block in blocks:
        buf = tail + block if tail else block
        cut = buf.rfind(b"\n") + 1
        if cut:
            yield buf, 0, cut
        tail = buf[cut:]  # the partial last line: a few KB
    if tail:
        yield tail, 0, len(tail)


def _read_header(text: bytes, source: str) -> tuple[list[str], int]:
    """The header's column names and the offset where the data rows start; DataError naming missing columns."""
    start = len(codecs.BOM_UTF8) if text.startswith(codecs.BOM_UTF8) else 0
    nl = text.find(b"\n", start)
    end = len(text) if nl < 0 else nl
    line = text[start:end].rstrip(b"\r").decode("utf-8", "replace")
    columns = [c.strip().strip('"').strip() for c in line.split(",")] if line.strip() else []
    have = {c.lower() for c in columns}
    missing = [c for c in REQUIRED_COLUMNS if c.lower() not in have]
    if missing:
        found = f"line 1 reads {_short(line, 60)!r}" if line.strip() else "the file is empty"
        plural = "s" if len(missing) > 1 else ""
        raise DataError(
            f"{source}: missing column{plural} {', '.join(missing)} ({found}; expected the header emotion,pixels,Usage)"
        )
    return columns, end + 1


def _rows_fast(first: tuple[bytes, int, int], rest: Iterator[tuple[bytes, int, int]], source: str) -> Iterator[Row]:
    """Cut unquoted ``emotion,pixels,Usage`` lines with ``bytes.find``; blank lines are skipped, as pandas does."""
    line_no = 2
    for buf, pos, end in itertools.chain([first], rest):
        if buf.find(b'"', pos, end) >= 0:
            raise _NeedsCsvModule
        find = buf.find
        while pos < end:
            nl = find(b"\n", pos, end)
            if nl < 0:
                nl = end
            c1 = find(b",", pos, nl)
            c2 = find(b",", c1 + 1, nl) if c1 >= 0 else -1
            if c2 >= 0 and find(b",", c2 + 1, nl) < 0:
                yield line_no, buf[pos:c1], buf[c1 + 1 : c2], buf[c2 + 1 : nl]
            elif buf[pos:nl].strip():
                n = buf.count(b",", pos, nl) + 1
                raise DataError(f"{source}: line {line_no}: expected 3 fields (emotion,pixels,Usage), found {n}")
            pos, line_no = nl + 1, line_no + 1


def _rows_csv(text: bytes, source: str) -> Iterator[Row]:
    """The general path (quotes, other column orders, extra columns) through the csv module."""
    try:
        decoded = text.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line_no = text.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{source}: line {line_no}: not UTF-8 text ({exc.reason})") from exc
    reader = csv.reader(io.StringIO(decoded, newline=""))
    try:
        header = [c.strip().lower() for c in next(reader)]
        ie, ip, iu = (header.index(c.lower()) for c in REQUIRED_COLUMNS)
        prev = reader.line_num
        for record in reader:
            line_no, prev = prev + 1, reader.line_num  # a quoted field may span lines: report where the row starts
            if not any(f.strip() for f in record):
                continue
            if len(record) != len(header):
                raise DataError(
                    f"{source}: line {line_no}: expected {len(header)} fields ({','.join(header)}), found {len(record)}"
                )
            yield line_no, record[ie].encode(), record[ip].strip().encode(), record[iu].encode()
    except csv.Error as exc:
        raise DataError(f"{source}: line {reader.line_num}: unreadable CSV ({exc})") from exc


# -- rows to arrays -------------------------------------------------------------------------------------------


def _parse_rows(rows: Iterator[Row], source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate labels and Usage here, parse pixels in worker threads; raise the error of the earliest bad line."""
    labels: list[int] = []
    usage: list[int] = []
    lines: list[int] = []
    outs: list[np.ndarray] = []
    in_flight: deque[tuple[int, np.ndarray, Future[list[tuple[int, bytes]]]]] = deque()
    pending: DataError | None = None

    def settle(start: int, out: np.ndarray, fut: Future[list[tuple[int, bytes]]]) -> None:
        for j, text in fut.result():
            _recheck_row(text, out[j], lines[start + j], source)

    def submit(chunk: list[bytes]) -> None:
        out = np.empty((len(chunk), N_PIXELS), dtype=np.uint8)
        outs.append(out)
        in_flight.append((len(lines) - len(chunk), out, pool.submit(_parse_chunk, chunk, out)))

    pool = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="fer2013-parse")
    try:
        chunk: list[bytes] = []
        row_iter = iter(rows)
        while True:
            try:
                line_no, label, pixels, use = next(row_iter)
                lab = _LABELS.get(label)
                if lab is None:
                    lab = _parse_label(label, line_no, source)
                code = _USAGE_EXACT.get(use)
                if code is None:
                    code = _parse_usage(use, line_no, source)
            except StopIteration:
                break
            except DataError as exc:
                pending = exc  # rows before this one may hold an earlier pixel error: settle those first
                break
            labels.append(lab)
            usage.append(code)
            lines.append(line_no)
            chunk.append(pixels)
            if len(chunk) == CHUNK_ROWS:
                submit(chunk)
                chunk = []
                # Bound the text held in flight; chunks settle in file order, so the first error raised is the
                # earliest bad line.
                while len(in_flight) > 2 * _WORKERS:
                    settle(*in_flight.popleft())
        if chunk:
            submit(chunk)
        while in_flight:
            settle(*in_flight.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if pending is not None:
        raise pending
    x = np.concatenate(outs) if outs else np.empty((0, N_PIXELS), dtype=np.uint8)
    return x, np.asarray(labels, dtype=np.int64), np.asarray(usage, dtype=np.int8)


def _parse_chunk(chunk: list[bytes], out: np.ndarray) -> list[tuple[int, bytes]]:
    """Parse pixel strings into ``out`` (a uint8 view); return (index, text) of rows that need a strict recheck."""
    n = len(chunk)
    block = np.zeros((n, N_PIXELS), dtype=np.int16)
    lengths = np.zeros(n, dtype=np.int64)
    for j, text in enumerate(chunk):
        try:
            # Text-mode fromstring (not deprecated, unlike binary mode) releases the GIL while it parses.
            values = np.fromstring(text, dtype=np.int16, sep=" ")
        except ValueError:
            continue  # length stays 0, so the row is flagged below
        if values.size == N_PIXELS:
            block[j] = values
            lengths[j] = len(text)
    # int16 wraps tokens >= 32768 silently (e.g. 65636 -> 100) and accepts '+5' or '007'. A canonical row is
    # exactly as long as its digits plus single spaces, so any wrapped or unusual token changes the length.
    expected = _BASE_LEN + np.count_nonzero(block >= 10, axis=1) + np.count_nonzero(block >= 100, axis=1)
    flagged = (lengths != expected) | (block.min(axis=1) < 0) | (block.max(axis=1) > 255)
    np.copyto(out, block, casting="unsafe")  # unflagged rows are all 0-255
    return [(int(j), chunk[j]) for j in np.flatnonzero(flagged)]


def _recheck_row(text: bytes, out: np.ndarray, line_no: int, source: str) -> None:
    """Accept a non-canonical but valid row (leading zeros, extra spaces) into ``out``, else raise naming the fault."""
    try:
        values = np.fromstring(text, dtype=np.int64, sep=" ")  # int64 saturates rather than wraps
    except ValueError:
        values = None
    if values is not None and values.size == N_PIXELS and values.min() >= 0 and values.max() <= 255:
        out[:] = values
        return
    raise DataError(f"{source}: line {line_no}: {_pixel_problem(text)}")


def _pixel_problem(text: bytes) -> str:
    """Why a pixel string is not 2304 integers 0-255, naming the first offending value."""
    tokens = text.decode("utf-8", "replace").split()
    for k, tok in enumerate(tokens, 1):
        digits = tok[1:] if tok.startswith("+") else tok
        if not (digits.isascii() and digits.isdigit()):
            return f"pixel {k} is {_short(tok)!r}, not an integer 0-255"
        if int(digits) > 255:
            return f"pixel {k} is {int(digits)}, outside 0-255"
    if len(tokens) != N_PIXELS:
        return f"pixels has {len(tokens)} values, expected {N_PIXELS} ({IMAGE_SIZE}x{IMAGE_SIZE})"
    return f"pixels could not be read as {N_PIXELS} integers 0-255"


def _parse_label(raw: bytes, line_no: int, source: str) -> int:
    text = raw.strip()
    if text.isdigit() and int(text) < NUM_CLASSES:  # bytes.isdigit: ASCII digits only
        return int(text)
    shown = _short(raw.decode("utf-8", "replace").strip())
    raise DataError(f"{source}: line {line_no}: emotion {shown!r} is not an integer label 0-{NUM_CLASSES - 1}")


def _parse_usage(raw: bytes, line_no: int, source: str) -> int:
    text = raw.decode("utf-8", "replace").strip()  # tolerates CRLF line ends and stray spaces
    code = _USAGE_LOWER.get(text.lower())
    if code is None:
        raise DataError(f"{source}: line {line_no}: Usage {_short(text)!r} is not one of {', '.join(SPLITS)}")
    return code


def _short(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
