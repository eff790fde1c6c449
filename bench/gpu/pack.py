"""Pack what a GPU search needs for the lent GPU machine (Python 3.12, torch + JAX with CUDA, numpy, pandas,
scikit-learn, opencv, matplotlib, pyyaml, click; no TensorFlow, Keras, Optuna, MLflow, SQLAlchemy, Alembic; no
network; at most 64 MiB carried per call) into ``bench/gpu/pack/`` (git-ignored), as bundles of at most 60 MiB:

- wheels of keras, optuna, mlflow-skinny, sqlalchemy, alembic and every dependency of theirs that the machine lacks
  (resolved from each wheel's ``Requires-Dist``, markers evaluated for CPython 3.12 on Linux x86_64), downloaded with
  ``pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux...``,
  at the versions installed here where they are installed here (the versions the tests ran with);
- FER2013 as compressed uint8 arrays (``np.savez_compressed``, ~79 MB in all), cut into shards that fit the bundles;
  each shard records the source CSV's sha256, so a study on the GPU has the same data digest as one here.

Then carry ``bench/gpu/pack/bundle1`` in one call and ``bench/gpu/pack/bundle2`` in the next (``bench/gpu/run.sh``
keeps what each brings; once everything is there it installs all the wheels in one go and runs the search).

    python bench/gpu/pack.py [--data PATH] [--python-version 3.12] [--out bench/gpu/pack]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
#: What fer-exp needs beyond the GPU machine's stack.
ROOTS = ("keras", "optuna", "mlflow-skinny", "sqlalchemy", "alembic")
#: On the GPU machine already (its stack and what those packages require): never packed, so nothing there is shadowed.
PRESENT = {canonicalize_name(n) for n in (
    "numpy", "scipy", "pandas", "scikit-learn", "joblib", "threadpoolctl", "opencv-python-headless", "matplotlib",
    "contourpy", "cycler", "fonttools", "kiwisolver", "pillow", "pyparsing", "python-dateutil", "six", "pytz",
    "tzdata", "pyyaml", "click", "torch", "triton", "sympy", "mpmath", "networkx", "jinja2", "markupsafe", "filelock",
    "fsspec", "setuptools", "typing-extensions", "jax", "jaxlib", "ml-dtypes", "opt-einsum", "packaging",
)}
BUNDLE_BYTES = 60 * 2**20
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64")


def _environment(python_version: str) -> dict[str, str]:
    return {"python_version": python_version, "python_full_version": f"{python_version}.0", "os_name": "posix",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
            "platform_python_implementation": "CPython", "implementation_name": "cpython", "extra": ""}


def _pin(name: str) -> str:
    """``name==<the version installed here>`` when installed here, else ``name`` (pip takes the newest)."""
    try:
        return f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return name


def _download(spec: str, dest: Path, python_version: str) -> Path:
    name = canonicalize_name(re.split(r"[=<>!~ ]", spec)[0])
    version = spec.split("==")[1] if "==" in spec else None
    for have in dest.glob("*.whl"):  # downloaded by an earlier pack: reuse it
        parts = have.name.split("-")
        if canonicalize_name(parts[0]) == name and (version is None or parts[1] == version):
            return have
    before = set(dest.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
           python_version, "--implementation", "cp", "--abi", f"cp{python_version.replace('.', '')}", "--abi", "abi3",
           "--abi", "none", *(a for p in PLATFORMS for a in ("--platform", p)), "--platform", "any", "-d", str(dest),
           "-q", spec]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 and "==" in spec:  # this host's version may have no 3.12 wheel: take the newest one
        proc = subprocess.run(cmd[:-1] + [spec.split("==")[0]], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"pip download {spec} failed:\n{proc.stderr[-2000:]}")
    new = set(dest.glob("*.whl")) - before
    found = [w for w in (new or dest.glob("*.whl")) if canonicalize_name(w.name.split("-")[0]) == name]
    if not found:
        raise SystemExit(f"pip download {spec}: no wheel appeared in {dest}")
    return found[0]


def _requires(wheel: Path, env: dict[str, str]) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8", "replace")
    out = []
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or req.marker.evaluate(env):
                out.append(canonicalize_name(req.name))
    return out


def pack_wheels(dest: Path, python_version: str) -> list[Path]:
    """Download the roots and the closure of their missing dependencies; returns the wheels."""
    dest.mkdir(parents=True, exist_ok=True)
    env = _environment(python_version)
    todo, seen, wheels = [canonicalize_name(r) for r in ROOTS], set(), []
    while todo:
        name = todo.pop(0)
        if name in seen or name in PRESENT:
            continue
        seen.add(name)
        wheel = _download(_pin(name), dest, python_version)
        wheels.append(wheel)
        todo += [r for r in _requires(wheel, env) if r not in seen]
    return wheels


def pack_data(csv: str, dest: Path, max_shard: int) -> list[Path]:
    """FER2013 as compressed uint8 shards (row ranges of each split) of at most ~``max_shard`` bytes each."""
    sys.path.insert(0, str(REPO))
    import numpy as np

    from fer_experiments.data import load_dataset

    ds = load_dataset(csv)
    dest.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    # ~0.95 of the raw bytes compress away: rows per shard from the raw size.
    rows_per_shard = max(1, int(max_shard / (48 * 48 * 0.96)))
    index = 0
    for split, part in ds.splits.items():
        for start in range(0, len(part.y), rows_per_shard):
            stop = min(len(part.y), start + rows_per_shard)
            path = dest / f"fer2013-{index:02d}-{split}.npz"
            np.savez_compressed(path, split=np.array(split), x=part.x[start:stop], y=part.y[start:stop].astype(np.uint8),
                                source_digest=np.array(ds.digest))
            shards.append(path)
            index += 1
    return shards


def bundle(files: list[Path], out: Path) -> list[list[Path]]:
    """Greedy first-fit of the files (largest first) into bundles of at most BUNDLE_BYTES; moves them there."""
    bins: list[tuple[int, list[Path]]] = []
    for f in sorted(files, key=lambda p: -p.stat().st_size):
        size = f.stat().st_size
        for i, (used, items) in enumerate(bins):
            if used + size <= BUNDLE_BYTES:
                bins[i] = (used + size, items + [f])
                break
        else:
            bins.append((size, [f]))
    result = []
    for i, (_, items) in enumerate(bins, start=1):
        target = out / f"bundle{i}"
        for f in items:
            kind = "wheels" if f.suffix == ".whl" else "data"
            (target / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target / kind / f.name)
        result.append(sorted((target).rglob("*.*")))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("FER2013_CSV", str(REPO.parent / "shared/data/fer2013.csv.gz")))
    ap.add_argument("--python-version", default="3.12")
    ap.add_argument("--out", default=str(REPO / "bench" / "gpu" / "pack"))
    ap.add_argument("--no-data", action="store_true", help="wheels only")
    ap.add_argument("--shard-mb", type=float, default=20.0, help="target size of one data shard")
    args = ap.parse_args(argv)
    out = Path(args.out)
    for old in out.glob("bundle*"):
        shutil.rmtree(old)
    # Kept between packs (inside the ignored folder, never carried): wheels are downloaded once.
    staging = out / "staging"
    if (staging / "data").exists():
        shutil.rmtree(staging / "data")
    wheels = pack_wheels(staging / f"wheels-{args.python_version}", args.python_version)
    shards = [] if args.no_data else pack_data(args.data, staging / "data", int(args.shard_mb * 2**20))
    manifest = {"python_version": args.python_version, "wheels": sorted(w.name for w in wheels),
                "shards": sorted(s.name for s in shards),
                "sha256": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in [*wheels, *shards]}}
    bins = bundle([*wheels, *shards], out)
    for i in range(1, len(bins) + 1):
        (out / f"bundle{i}" / "manifest.json").write_text(json.dumps(manifest, indent=1))
    total = sum(p.stat().st_size for b in out.glob("bundle*") for p in b.rglob("*") if p.is_file())
    print(f"{len(wheels)} wheels, {len(shards)} data shards, {total / 2**20:.1f} MiB in {len(bins)} bundle(s) under "
          f"{out}:")
    for i in range(1, len(bins) + 1):
        size = sum(p.stat().st_size for p in (out / f"bundle{i}").rglob("*") if p.is_file())
        print(f"  bundle{i}: {size / 2**20:.1f} MiB")
    print("carry one bundle per call: run(command='bash bench/gpu/run.sh', carry=['bench/gpu/pack/bundle1']), then "
          "bundle2, ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
