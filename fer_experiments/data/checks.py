"""``fer-exp data check``: class balance, exact duplicates within and across splits (leakage), constant images.

Images are compared by a 64-bit blake2b digest of their bytes: 36k images hash in ~0.1 s, and the chance of
two different images colliding among 36k is ~1e-10, far below anything a report could show.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np

from fer_experiments import EXPRESSIONS, NUM_CLASSES
from fer_experiments.data.dataset import FerDataset, Split
from fer_experiments.io import atomic_write_bytes

#: How many example indices a report keeps per finding.
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class WithinSplit:
    """Exact duplicates inside one split."""

    extra_copies: int  # images that repeat an earlier image of the split (rows - distinct images)
    groups: int  # distinct images that occur more than once
    conflicting_groups: int  # of those, groups whose copies carry different labels
    examples: tuple[tuple[int, ...], ...]  # row indices (0-based, within the split) of a few groups


@dataclass(frozen=True)
class CrossSplit:
    """Images of split ``second`` whose exact pixels also occur in split ``first`` (leakage)."""

    first: str
    second: str
    count: int  # rows of ``second`` that also occur in ``first``
    conflicting: int  # of those, rows whose label differs from every copy in ``first``
    examples: tuple[tuple[int, int], ...]  # (row in first, row in second), 0-based within each split


@dataclass(frozen=True)
class ConstantImages:
    """Images whose pixels are all equal (blank frames, failed crops)."""

    count: int
    examples: tuple[tuple[int, int], ...]  # (row, grey value), 0-based within the split


@dataclass(frozen=True)
class CheckReport:
    """Everything ``fer-exp data check`` reports about a dataset."""

    source: str
    digest: str
    counts: dict[str, list[int]]  # per split, rows per class 0-6
    within: dict[str, WithinSplit]
    cross: tuple[CrossSplit, ...]  # every ordered pair of splits (Training, PublicTest), ...
    constant: dict[str, ConstantImages]
    repeated_rows: int  # rows anywhere that repeat an earlier row's pixels (all splits together)
    notes: tuple[str, ...] = ()

    @property
    def leakage(self) -> int:
        """Rows of a later split that also occur in an earlier one."""
        return sum(c.count for c in self.cross)


def image_keys(x: np.ndarray) -> np.ndarray:
    """A uint64 key per image: the first 8 bytes of blake2b over its pixels."""
    flat = np.ascontiguousarray(x).reshape(len(x), -1)
    digests = b"".join(hashlib.blake2b(row, digest_size=8).digest() for row in flat)
    return np.frombuffer(digests, dtype=np.uint64)


def _within(keys: np.ndarray, y: np.ndarray) -> WithinSplit:
    _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    dup_groups = np.flatnonzero(counts > 1)
    # A group conflicts when its labels differ: compare each row's label with the label of the group's first row.
    differs = y != y[first[inverse]]
    conflicting = np.unique(inverse[differs]).size
    # Examples in file order of their first occurrence, so a reader finds them quickly.
    shown = dup_groups[np.argsort(first[dup_groups], kind="stable")][:MAX_EXAMPLES]
    examples = tuple(tuple(int(i) for i in np.flatnonzero(inverse == g)) for g in shown)
    return WithinSplit(
        extra_copies=int(len(keys) - len(counts)),
        groups=int(len(dup_groups)),
        conflicting_groups=int(conflicting),
        examples=examples,
    )


def _cross(first: str, second: str, ka: np.ndarray, ya: np.ndarray, kb: np.ndarray, yb: np.ndarray) -> CrossSplit:
    hit = np.isin(kb, ka)
    rows_b = np.flatnonzero(hit)
    # A leaked row "conflicts" when no copy in ``first`` has its label (pairs of key and label do not match).
    pair_a = np.unique(np.stack([ka, ya.astype(np.uint64)], axis=1), axis=0)
    pair_b = np.stack([kb[rows_b], yb[rows_b].astype(np.uint64)], axis=1)
    same_label = _rows_in(pair_b, pair_a)
    first_row_of = {}
    for i, k in enumerate(ka.tolist()):
        first_row_of.setdefault(k, i)
    examples = tuple((first_row_of[int(kb[j])], int(j)) for j in rows_b[:MAX_EXAMPLES])
    return CrossSplit(first, second, int(len(rows_b)), int((~same_label).sum()), examples)


def _rows_in(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each row of 2-column uint64 ``a``, whether it occurs among the rows of ``b``."""
    if len(a) == 0:
        return np.zeros(0, dtype=bool)
    view = np.dtype((np.void, 16))
    return np.isin(np.ascontiguousarray(a).view(view).ravel(), np.ascontiguousarray(b).view(view).ravel())


def _constant(split: Split) -> ConstantImages:
    flat = split.x.reshape(len(split), -1)
    lo = flat.min(axis=1)
    rows = np.flatnonzero(lo == flat.max(axis=1))
    return ConstantImages(int(len(rows)), tuple((int(i), int(lo[i])) for i in rows[:MAX_EXAMPLES]))


def check_dataset(ds: FerDataset) -> CheckReport:
    """Count rows per split and class, find exact duplicates within and across splits, and constant images."""
    names = list(ds.splits)
    keys = {name: image_keys(ds.splits[name].x) for name in names}
    within = {name: _within(keys[name], ds.splits[name].y) for name in names}
    cross = tuple(
        _cross(a, b, keys[a], ds.splits[a].y, keys[b], ds.splits[b].y)
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    )
    all_keys = np.concatenate([keys[n] for n in names]) if names else np.zeros(0, dtype=np.uint64)
    return CheckReport(
        source=ds.source,
        digest=ds.digest,
        counts=ds.counts(),
        within=within,
        cross=cross,
        constant={name: _constant(ds.splits[name]) for name in names},
        repeated_rows=int(len(all_keys) - len(np.unique(all_keys))),
        notes=tuple(ds.notes),
    )


def format_report(report: CheckReport) -> str:
    """The text ``fer-exp data check`` prints."""
    names = list(report.counts)
    width = max([len(n) for n in names] + [len("Total")]) + 2
    cols = [e[:8] for e in EXPRESSIONS] + ["Total"]
    lines = [f"Data check: {report.source} (sha256 {report.digest[:12]})", ""]
    lines.append("Rows per split and class")
    lines.append(" " * width + "".join(f"{c:>9}" for c in cols))
    totals = np.zeros(NUM_CLASSES, dtype=np.int64)
    for name in names:
        row = np.asarray(report.counts[name], dtype=np.int64)
        totals += row
        lines.append(f"{name:<{width}}" + "".join(f"{v:>9,}" for v in row) + f"{int(row.sum()):>9,}")
    lines.append(f"{'Total':<{width}}" + "".join(f"{v:>9,}" for v in totals) + f"{int(totals.sum()):>9,}")
    share = totals / max(int(totals.sum()), 1)
    lines.append(f"{'Share':<{width}}" + "".join(f"{v:>9.1%}" for v in share))

    lines += ["", "Exact duplicates within a split (extra copies, groups, groups with conflicting labels)"]
    for name in names:
        w = report.within[name]
        ex = "; ".join("[" + ", ".join(map(str, g)) + "]" for g in w.examples)
        lines.append(
            f"  {name:<{width}}{w.extra_copies:>7,} copies {w.groups:>7,} groups {w.conflicting_groups:>6,} conflicting"
            + (f"   e.g. rows {ex}" if ex else "")
        )

    lines += ["", "Exact duplicates across splits (leakage: rows of the second split also in the first)"]
    for c in report.cross:
        ex = ", ".join(f"{c.first}[{a}]={c.second}[{b}]" for a, b in c.examples)
        pair = f"{c.first} -> {c.second}"
        lines.append(
            f"  {pair:<28}{c.count:>7,} rows {c.conflicting:>6,} with another label" + (f"   e.g. {ex}" if ex else "")
        )
    lines.append(f"  Rows repeating an earlier row anywhere: {report.repeated_rows:,}")

    lines += ["", "Constant images (all pixels equal)"]
    for name in names:
        k = report.constant[name]
        ex = ", ".join(f"{i} (value {v})" for i, v in k.examples)
        lines.append(f"  {name:<{width}}{k.count:>7,}" + (f"   e.g. rows {ex}" if ex else ""))

    lines += ["", "Row indices are 0-based within each split."]
    if report.notes:
        lines += ["Notes:"] + [f"  - {n}" for n in report.notes]
    return "\n".join(lines)


def report_to_dict(report: CheckReport) -> dict[str, Any]:
    """The report as plain JSON-able types."""
    return {
        "source": report.source,
        "digest": report.digest,
        "classes": list(EXPRESSIONS),
        "counts": {k: [int(v) for v in vs] for k, vs in report.counts.items()},
        "rows": {k: int(sum(vs)) for k, vs in report.counts.items()},
        "duplicates_within": {
            k: {
                "extra_copies": w.extra_copies,
                "groups": w.groups,
                "conflicting_groups": w.conflicting_groups,
                "examples": [list(g) for g in w.examples],
            }
            for k, w in report.within.items()
        },
        "duplicates_across": [
            {
                "first": c.first,
                "second": c.second,
                "count": c.count,
                "conflicting": c.conflicting,
                "examples": [list(p) for p in c.examples],
            }
            for c in report.cross
        ],
        "leakage": report.leakage,
        "repeated_rows": report.repeated_rows,
        "constant": {k: {"count": v.count, "examples": [list(p) for p in v.examples]} for k, v in report.constant.items()},
        "notes": list(report.notes),
        "index_base": 0,
    }


def plot_class_balance(report_or_ds: CheckReport | FerDataset, path: str | os.PathLike[str]) -> Path:
    """A bar chart of rows per class, one panel per split, written atomically as PNG; returns the path."""
    # Lazy, and through Figure rather than pyplot: no global state, no GUI backend, no slow import for the CLI.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = report_or_ds.counts() if isinstance(report_or_ds, FerDataset) else report_or_ds.counts
    source = report_or_ds.source
    fig = Figure(figsize=(4.2 * max(len(counts), 1), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(len(counts), 1), squeeze=False)[0]
    for ax, (name, values) in zip(axes, counts.items()):
        bars = ax.bar(range(NUM_CLASSES), values, color="tab:blue")
        ax.bar_label(bars, labels=[f"{v:,}" for v in values], fontsize=7)
        ax.set_xticks(range(NUM_CLASSES), EXPRESSIONS, rotation=45, ha="right")
        ax.set_title(f"{name} ({sum(values):,} rows)")
        ax.set_ylabel("images")
    fig.suptitle(f"Class balance: {Path(source).name}")
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    target = Path(path)
    atomic_write_bytes(target, buf.getvalue())
    return target
