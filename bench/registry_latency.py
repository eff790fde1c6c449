"""How long `fer-exp models` and `fer-exp promote` take for a tiny model, against the time of their parts.

    python bench/registry_latency.py [--data FER2013.csv.gz] [--rows 600]

Trains two tiny models (`fer-exp train`, 1 epoch) on a stratified subset of the real file, then times, as a user
runs them (subprocesses): `fer-exp models`, `fer-exp promote --dry-run` and `fer-exp promote` (PrivateTest
evaluation, registration, the serving wrapper). Then, in this process, the parts one by one: importing MLflow and
opening the store, importing TensorFlow/Keras, the PrivateTest evaluation, the registration and the wrapper logging.
Wall seconds depend on how busy the machine is; CPU seconds (user + system) are the steadier figure.
"""

from __future__ import annotations

import _common  # noqa: F401 - must come first: quiet, home-free environment

import argparse
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from _common import REPO, TMP, default_data_path

# As the CLI does (cli._quiet): no MLflow advice or progress bars between the figures.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

TINY = ("--set", "conv_blocks=1", "--set", "convs_per_block=1", "--set", "filters=8", "--set", "dense_layers=0",
        "--epochs", "1", "--preset", "seed-base")


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cli(*args: str) -> tuple[float, float, str]:
    """Run ``fer-exp ARGS`` in TMP; (wall s, CPU s, output)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=f"sqlite:///{TMP}/mlruns/mlflow.db")
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fer_experiments.cli", *args], cwd=TMP, env=env,
                          capture_output=True, text=True, timeout=1800)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if proc.returncode != 0:
        raise SystemExit(f"fer-exp {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return wall, cpu, proc.stdout + proc.stderr


def part(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    cpu0, t0 = _self_cpu(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, _self_cpu() - cpu0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=default_data_path())
    ap.add_argument("--rows", type=int, default=600, help="Training rows of the subset (PublicTest/PrivateTest: 40%%)")
    args = ap.parse_args()

    from fer_experiments.data import load_dataset, stratified_subset

    full = load_dataset(args.data)
    parts = {}
    for split, n in (("Training", args.rows), ("PublicTest", int(args.rows * 0.4)),
                     ("PrivateTest", int(args.rows * 0.4))):
        sub = stratified_subset(full.split(split), n, seed=7)
        parts[split] = (sub.x, sub.y)
    csv = TMP / "subset.csv"
    lines = ["emotion,pixels,Usage"] + [f"{int(label)},{' '.join(map(str, img.reshape(-1).tolist()))},{usage}"
                                        for usage, (x, y) in parts.items() for img, label in zip(x, y)]
    csv.write_text("\n".join(lines) + "\n")
    (TMP / "mlruns").mkdir(exist_ok=True)
    run_ids = []
    for i in range(2):
        _, _, out = cli("train", "--data", str(csv), *TINY, "--experiment", "bench", "--seed", str(i))
        run_ids.append(re.search(r"run: (\w+)", out).group(1))  # type: ignore[union-attr]

    rows: list[tuple[str, float, float]] = []
    for label, cmd in (("fer-exp models (empty registry)", ("models",)),
                       ("fer-exp promote --dry-run", ("promote", "--run", run_ids[0], "--dry-run")),
                       ("fer-exp promote (evaluate, register, wrapper)", ("promote", "--run", run_ids[0], "--data",
                                                                           str(csv))),
                       ("fer-exp models (2 models, 2 versions)", ("models",)),
                       ("fer-exp promote again (already champion)", ("promote", "--run", run_ids[0]))):
        wall, cpu, _ = cli(*cmd)
        rows.append((label, wall, cpu))

    uri = f"sqlite:///{TMP}/mlruns/mlflow.db"

    def open_store() -> None:
        from fer_experiments.tracking import prepare_store

        prepare_store(uri)

    def import_keras() -> None:
        import keras  # noqa: F401

    def evaluate() -> Any:
        from fer_experiments.registry.evaluate import evaluate_model

        return evaluate_model(f"runs:/{run_ids[1]}/model", load_dataset(str(csv)), "PrivateTest", uri)

    def register() -> Any:
        from fer_experiments.tracking.model_registry import register_run_model

        return register_run_model(uri, "bench-parts", run_ids[1])

    def wrapper() -> Any:
        from fer_experiments.serving.mlflow_service import log_service_model

        return log_service_model(uri, "bench-parts", "1")

    print("parts, in one process in order (a fresh process pays the imports once):")
    part_rows = []
    for label, fn in (("import MLflow + open the SQLite store", open_store),
                      ("import TensorFlow/Keras", import_keras),
                      (f"PrivateTest evaluation ({len(parts['PrivateTest'][1])} images: load, predict, metrics)",
                       evaluate),
                      ("registration (one version + tags)", register),
                      ("serving wrapper (log pyfunc + register)", wrapper)):
        wall, cpu, _ = part(fn)
        part_rows.append((label, wall, cpu))
    print(f"{'':<62} {'wall s':>8} {'CPU s':>8}")
    for label, wall, cpu in part_rows:
        print(f"{label:<62} {wall:>8.1f} {cpu:>8.1f}")
    print("\ncommands, as a user runs them (subprocesses):")
    print(f"{'':<62} {'wall s':>8} {'CPU s':>8}")
    for label, wall, cpu in rows:
        print(f"{label:<62} {wall:>8.1f} {cpu:>8.1f}")
    print(f"\nload average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (wall times scale with it)")


if __name__ == "__main__":
    main()
