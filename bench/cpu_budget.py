"""Benchmark: what a wall-clock budget buys. ``fer-exp search --space cpu-hour --budget Mm`` against a fixed
hand-tuned baseline trained for the same wall time, both judged on PrivateTest, at one or several budgets.

Arm 1 runs the real command in a subprocess, in its own temporary folder (its own MLflow and Optuna stores), and
evaluates the model it registers as ``challenger`` (the best refit). Arm 2 runs ``fer-exp train`` on the best single
configuration known here (``--preset mini-xception-wide``: the 190k mini-Xception-style net of DESIGN.md, flip + crop,
a cosine schedule sized from the first epoch's time to the budget, flip TTA, best PublicTest epoch kept), also in a
subprocess with its own store, bounded by the same wall time (``time_budget_s`` = the budget less the process's
start-up and logging allowance). The arms run one after the other, never together (they would share the cores).
Both models are evaluated with ``registry.evaluate.evaluate_model`` on PrivateTest; the script prints both
accuracies, their ratio, wall times, epochs and images seen.

    python bench/cpu_budget.py --minutes 60 [--data PATH] [--space cpu-hour] [--baseline mini-xception-wide]
    python bench/cpu_budget.py --minutes 10 --space edge --only search   # the edge space's model and its speed
    python bench/cpu_budget.py --minutes 10,20 --engine keras-tuner --only search   # the same lifecycle, kt's tuner
    python bench/cpu_budget.py --replot     # redraw docs/img/cpu-budget.png from the record, run nothing

Every budget measured with both arms is kept in a JSON record (``--record``, default ``docs/img/cpu-budget.json``;
a budget measured again replaces its entry) with its date and machine, and the plot draws the whole record: budgets
of one long run, or of several runs, on one figure.

Each arm's model is also timed as serving runs it (``models.cost``: the float exported graph, one face at a time):
faces/s and parameters.
"""

from __future__ import annotations

import _common  # noqa: I001 - first: sets the environment before TensorFlow/Keras are imported

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Seconds of a `fer-exp train` process that are not training (imports, data load, model logging, exit).
TRAIN_OVERHEAD_S = 40.0


@dataclass
class Arm:
    name: str
    wall_s: float
    model_uri: str
    tracking_uri: str
    public: float | None = None
    private: float | None = None
    private_f1: float | None = None
    epochs: int = 0
    images: int = 0
    detail: str = ""
    #: The MLflow params of the run whose model is judged (its architecture gives the serving cost).
    run_params: dict[str, str] | None = None
    faces_per_second: float | None = None
    params: int | None = None


def _cli(args: list[str], cwd: Path, log: Path) -> tuple[int, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "FER_EXP_STORAGE")}
    env["PYTHONPATH"] = str(_common.REPO) + os.pathsep + env.get("PYTHONPATH", "")
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, "-m", "fer_experiments.cli", *args], cwd=cwd, env=env, stdout=out,
                              stderr=subprocess.STDOUT)
    return proc.returncode, time.monotonic() - started


def search_arm(data: str, cache: str, space: str, minutes: float, engine: list[str]) -> Arm:
    work = _common.TMP / f"search-{minutes:g}m{'-'.join(['', *engine[1::2]])}"
    work.mkdir()
    log = work / "search.log"
    rc, wall = _cli(["search", *engine, "--data", data, "--cache-dir", cache, "--space", space, "--study",
                     "cpu-budget", "--budget", f"{minutes:g}m"], work, log)
    print(log.read_text()[-3000:])
    if rc != 0:
        raise SystemExit(f"fer-exp search exited {rc} (log: {log})")
    uri = f"sqlite:///{work}/mlruns/mlflow.db"
    arm = Arm(" ".join(["fer-exp search --budget", *engine]), wall, "models:/fer-cnn@challenger", uri)
    from fer_experiments.tracking import find_runs, tags

    trials = refits = 0
    for kind in tags.STUDY_MODEL_KINDS:
        for run in find_runs(uri, None, filter_string=tags.study_filter("cpu-budget", kind=kind)):
            seen = run.metrics.get(tags.TRAIN_IMAGES_SEEN)
            epochs = run.metrics.get("epochs_run")
            if epochs is None:  # a pruned trial logs no summary: count the epochs it reached
                epochs = float(run.tags.get(tags.PRUNED_AT_EPOCH, 0) or 0)
            if seen is None:
                seen = epochs * float(run.params.get(tags.PARAM_N_TRAIN, 0) or 0)
            arm.epochs += int(epochs)
            arm.images += int(seen)
            trials += kind == tags.KIND_TRIAL
            refits += kind == tags.KIND_REFIT
    arm.detail = f"{trials} trials + {refits} refit(s)"
    trial_runs = [r for r in find_runs(uri, None, filter_string=tags.study_filter("cpu-budget", kind=tags.KIND_TRIAL))
                  if tags.float_of(r.tags.get(tags.OBJECTIVE_VALUE)) is not None]
    refit_runs = find_runs(uri, None, filter_string=tags.study_filter("cpu-budget", kind=tags.KIND_REFIT))
    # The challenger: the refit when there is one, else the best trial (what the search registers).
    judged = refit_runs or sorted(trial_runs, key=lambda r: -float(tags.float_of(r.tags[tags.OBJECTIVE_VALUE])))
    arm.run_params = dict(judged[0].params) if judged else None
    for run in refit_runs:
        if run.tags.get(tags.WARM_START_OF):
            arm.detail += (f"; refit continued trial {run.tags.get(tags.WARM_START_TRIAL)} "
                           f"({run.params.get('block')} f{run.params.get('filters')}) at epoch "
                           f"{run.tags.get(tags.WARM_START_EPOCH)}")
    return arm


def baseline_arm(data: str, cache: str, preset: str, minutes: float) -> Arm:
    work = _common.TMP / f"baseline-{minutes:g}m"
    work.mkdir()
    log = work / "train.log"
    budget = max(10.0, minutes * 60 - TRAIN_OVERHEAD_S)
    rc, wall = _cli(["train", "--data", data, "--cache-dir", cache, "--preset", preset, "--epochs", "500",
                     "--set", f"time_budget_s={budget:.0f}"], work, log)
    text = log.read_text()
    print(text[-1500:])
    if rc != 0:
        raise SystemExit(f"fer-exp train exited {rc} (log: {log})")
    run_id = next(line.split()[1] for line in text.splitlines() if line.startswith("run: "))
    uri = f"sqlite:///{work}/mlruns/mlflow.db"
    from fer_experiments.tracking import get_run, tags

    run = get_run(uri, run_id)
    arm = Arm(f"baseline {preset}", wall, f"runs:/{run_id}/model", uri, run_params=dict(run.params))
    arm.epochs = int(run.metrics.get("epochs_run", 0))
    arm.images = int(run.metrics.get(tags.TRAIN_IMAGES_SEEN, 0))
    arm.detail = f"time_budget_s={budget:.0f}, best epoch {int(run.metrics.get('best_epoch', 0))}"
    return arm


def evaluate(arm: Arm, data: str, cache: str) -> None:
    from fer_experiments.data import load_dataset
    from fer_experiments.registry.evaluate import evaluate_model

    ds = load_dataset(data, cache_dir=cache)
    private = evaluate_model(arm.model_uri, ds, "PrivateTest", arm.tracking_uri)
    public = evaluate_model(arm.model_uri, ds, "PublicTest", arm.tracking_uri)
    arm.private, arm.private_f1, arm.public = private.accuracy, private.macro_f1, public.accuracy
    if arm.run_params:
        # What the model costs to serve (the float exported graph, one face at a time, as `serve` runs it).
        from fer_experiments.models.cost import serving_cost
        from fer_experiments.params import MODEL_FIELDS, split_params

        model, _ = split_params({k: v for k, v in arm.run_params.items() if k in MODEL_FIELDS})
        cost = serving_cost(model, "exported", cache_file=f"{cache}/serving_cost.json")
        arm.faces_per_second, arm.params = cost.faces_per_second, cost.params


def _minutes(text: str) -> list[float]:
    try:
        values = [float(m) for m in text.split(",") if m.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--minutes: a comma-separated list of numbers, got {text!r}") from None
    if not values or any(not (0 < m < 24 * 60) for m in values):
        raise argparse.ArgumentTypeError(f"--minutes: each budget must be in (0, 1440), got {text!r}")
    return values


def record(path: Path, minutes: float, arms: list[Arm], machine: str) -> dict[str, dict[str, Any]]:
    """Adds this budget's two arms to the JSON record at ``path`` (one entry per budget, replaced when measured again;
    written atomically) and returns the whole record: the plot shows every budget measured so far, each with the
    date and machine of its run (both arms of a budget always ran back to back on one machine)."""
    from fer_experiments.io import atomic_write_text

    entries: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.exists() else {}
    entries[f"{minutes:g}"] = {
        "minutes": minutes, "date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine,
        "arms": [{"name": a.name, "private": a.private, "public": a.public, "wall_s": round(a.wall_s),
                  "epochs": a.epochs, "images": a.images, "detail": a.detail} for a in arms]}
    atomic_write_text(path, json.dumps(dict(sorted(entries.items(), key=lambda kv: float(kv[0]))), indent=1) + "\n")
    return entries


def plot(entries: dict[str, dict[str, Any]], path: Path) -> None:
    """PrivateTest against the budget, one line per arm, each budget's ratio and machine speed on it; written
    atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    runs = sorted((e for e in entries.values() if len(e["arms"]) == 2), key=lambda e: e["minutes"])
    for i in (0, 1):
        label = runs[0]["arms"][i]["name"] if runs else ""
        points = [(e["minutes"], e["arms"][i]["private"]) for e in runs if e["arms"][i]["private"] is not None]
        if points:
            ax.plot([p[0] for p in points], [100 * p[1] for p in points], marker="o", label=label)
    for e in runs:
        search, base = (a["private"] for a in e["arms"])
        if search and base:
            # The baseline's training speed says how fast that run's machine was (heights differ between machines).
            speed = e["arms"][1]["images"] / max(e["arms"][1]["wall_s"], 1)
            ax.annotate(f"ratio {search / base:.3f}\nbaseline {speed:.0f} img/s",
                        (e["minutes"], 100 * min(search, base)), textcoords="offset points", xytext=(0, -26),
                        ha="center", fontsize=7, color="0.35")
    ax.set_xlabel("wall-clock budget per arm (minutes, 2 CPU cores)")
    ax.set_ylabel("PrivateTest accuracy (%)")
    ax.set_title("What a CPU budget buys on FER2013")
    ax.margins(x=0.12, y=0.2)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    from fer_experiments.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=_minutes, default=None,
                    help="wall-clock budget of each arm, or several: 10,20,60")
    ap.add_argument("--data", default=_common.default_data_path(), help="FER2013 CSV (default %(default)s)")
    ap.add_argument("--cache-dir", default=_common.default_cache_dir(), help="decoded-data cache")
    ap.add_argument("--space", default="cpu-hour", help="search space of arm 1 (default %(default)s)")
    ap.add_argument("--baseline", default="mini-xception-wide", help="preset of arm 2 (default %(default)s)")
    ap.add_argument("--engine", choices=["optuna", "keras-tuner"], default="optuna",
                    help="engine of arm 1 (default %(default)s; keras-tuner's budgets are not recorded for the plot)")
    ap.add_argument("--tuner", default="bayesian", help="keras-tuner's tuner with --engine keras-tuner (default "
                                                        "%(default)s: it runs the start points first, Hyperband does not)")
    ap.add_argument("--only", choices=["search", "baseline"], default=None, help="run one arm only")
    ap.add_argument("--plot", type=Path, default=_common.REPO / "docs" / "img" / "cpu-budget.png",
                    help="the plot of PrivateTest against the budget (with both arms; default %(default)s)")
    ap.add_argument("--record", type=Path, default=_common.REPO / "docs" / "img" / "cpu-budget.json",
                    help="the JSON record of every budget measured (both arms), which the plot draws "
                         "(default %(default)s)")
    ap.add_argument("--replot", action="store_true", help="redraw the plot from the record; run nothing")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (stores, logs)")
    args = ap.parse_args(argv)
    if args.replot:
        plot(json.loads(args.record.read_text()), args.plot)
        print(f"plot: {args.plot}")
        return 0
    if args.minutes is None:
        ap.error("--minutes is required (or --replot)")
    if args.keep:
        _common.keep_tmp()
    machine = (f"{platform.machine()} {_cpu_model()}, {os.cpu_count()} CPUs; python {platform.python_version()}")
    print(f"machine: {platform.node()} {machine}, load {os.getloadavg()[0]:.1f}; "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}")
    entries: dict[str, dict[str, Any]] = {}
    results: dict[float, list[Arm]] = {}
    for minutes in args.minutes:
        arms: list[Arm] = []
        if args.only in (None, "search"):
            engine = ["--engine", "keras-tuner", "--tuner", args.tuner] if args.engine == "keras-tuner" else []
            arms.append(search_arm(args.data, args.cache_dir, args.space, minutes, engine))
        if args.only in (None, "baseline"):
            arms.append(baseline_arm(args.data, args.cache_dir, args.baseline, minutes))
        for arm in arms:
            evaluate(arm, args.data, args.cache_dir)
        results[minutes] = arms
        report(minutes, arms)
        if args.only is None and args.engine == "optuna":
            entries = record(args.record, minutes, arms, machine)
        print(f"load average now {os.getloadavg()[0]:.1f}", flush=True)
    print("\n| budget | arm | wall s | epochs | images seen | PublicTest | PrivateTest | PrivateTest macro-F1 | ratio | "
          "faces/s | params | detail |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for minutes, arms in results.items():
        ratio = (f"{arms[0].private / arms[1].private:.3f}" if len(arms) == 2 and arms[1].private else "")
        for i, a in enumerate(arms):
            print(f"| {minutes:g} min | {a.name} | {a.wall_s:.0f} | {a.epochs} | {a.images:,} | {a.public:.4f} | "
                  f"{a.private:.4f} | {a.private_f1:.4f} | {ratio if i == 0 else ''} | {_num(a.faces_per_second)} | "
                  f"{_num(a.params)} | {a.detail} |")
    if entries:
        plot(entries, args.plot)
        print(f"plot: {args.plot} (record: {args.record})")
    return 0


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


def report(minutes: float, arms: list[Arm]) -> None:
    print(f"\nbudget {minutes:g} min per arm; PrivateTest is reported only, never used to choose")
    print(f"{'arm':<34} {'wall s':>7} {'epochs':>6} {'images':>9} {'PublicTest':>10} {'PrivateTest':>11} "
          f"{'macro-F1':>8}  detail")
    for a in arms:
        print(f"{a.name:<34} {a.wall_s:>7.0f} {a.epochs:>6} {a.images:>9,} {a.public:>10.4f} {a.private:>11.4f} "
              f"{a.private_f1:>8.4f}  {a.detail}; serves {_num(a.faces_per_second)} faces/s, {_num(a.params)} params")
    if len(arms) == 2 and arms[1].private:
        print(f"ratio PrivateTest fer-exp / baseline: {arms[0].private / arms[1].private:.3f}")
        over = arms[0].wall_s - minutes * 60
        print(f"search wall time vs budget: {arms[0].wall_s:.0f}s for {minutes * 60:.0f}s ({over:+.0f}s)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
