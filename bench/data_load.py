"""Benchmark: fer-exp's FER2013 loading against a plain pandas + numpy parse of the same file.

Prints the best and median of ``--repeat`` runs for
  * plain:  ``pandas.read_csv`` + numpy parse of the pixel strings (two idioms; the faster one is the reference),
  * cold:   ``load_dataset`` with an empty cache folder (parse + validate + digest + cache write),
  * cached: ``load_dataset`` again (digest + npz read),
and the targets: cold / plain <= 1.5, cached <= 0.5 s.

    python bench/data_load.py [--data PATH] [--repeat 3] [--strict]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from fer_experiments.data import load_dataset  # noqa: E402

COLD_TARGET = 1.5
CACHED_TARGET_S = 0.5


def plain_per_row(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The common idiom: read_csv, then one np.fromstring per row."""
    df = pd.read_csv(path)
    x = np.stack([np.fromstring(p, dtype=np.uint8, sep=" ") for p in df["pixels"]]).reshape(-1, 48, 48)
    return x, df["emotion"].to_numpy()


def plain_joined(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The vectorised idiom: read_csv, then one np.fromstring over all pixel strings joined."""
    df = pd.read_csv(path)
    x = np.fromstring(" ".join(df["pixels"].tolist()), dtype=np.uint8, sep=" ").reshape(-1, 48, 48)
    return x, df["emotion"].to_numpy()


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    default = os.environ.get("FER2013_CSV", str(REPO.parent / "shared" / "data" / "fer2013.csv.gz"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=default, help="FER2013 CSV (.csv or .csv.gz); default $FER2013_CSV or %(default)s")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement (default %(default)s)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args(argv)
    path = Path(args.data)
    if not path.is_file():
        print(f"no data file at {path} (use --data or FER2013_CSV)", file=sys.stderr)
        return 2

    path.read_bytes()  # warm the page cache so the first timed run does not pay for the disk
    times: dict[str, list[float]] = {"plain per-row": [], "plain joined": [], "cold": [], "cached": []}
    with tempfile.TemporaryDirectory(prefix="fer-bench-") as tmp:
        for i in range(args.repeat):
            # Interleaved, so that load on a shared machine hits every measurement alike.
            times["plain per-row"].append(timed(lambda: plain_per_row(path)))
            times["plain joined"].append(timed(lambda: plain_joined(path)))
            cache_dir = Path(tmp) / f"run{i}"  # empty: a cold load
            times["cold"].append(timed(lambda: load_dataset(path, cache_dir=cache_dir)))
            times["cached"].append(timed(lambda: load_dataset(path, cache_dir=cache_dir)))

    print(f"data: {path} ({path.stat().st_size / 1e6:.1f} MB), {args.repeat} runs each, cpus: {os.cpu_count()}")
    print(f"{'':16}{'best s':>9}{'median s':>10}")
    for name, values in times.items():
        print(f"{name:16}{min(values):9.3f}{statistics.median(values):10.3f}")
    plain = min(min(times["plain per-row"]), min(times["plain joined"]))
    cold, cached = min(times["cold"]), min(times["cached"])
    ratio = cold / plain
    ok_cold, ok_cached = ratio <= COLD_TARGET, cached <= CACHED_TARGET_S
    print(f"cold / plain (faster idiom): {ratio:.2f}  target <= {COLD_TARGET}  {'ok' if ok_cold else 'MISSED'}")
    print(f"cached load: {cached:.3f} s  target <= {CACHED_TARGET_S} s  {'ok' if ok_cached else 'MISSED'}")
    return 0 if (ok_cold and ok_cached) or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main())
