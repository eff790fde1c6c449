"""Benchmark: a study's best single model vs its mean ensemble vs its greedy ensemble vs a distilled student.

For each: PublicTest and PrivateTest accuracy and macro-F1, parameters, faces/s one at a time (predict_on_batch, as
serving calls it). PublicTest chose everything (epochs, trials, greedy weights); PrivateTest is only reported.

By default it makes its own small study in a temporary store (``--trials`` trials of narrow CNNs on a stratified
``--limit``-image Training subset, ``--epochs`` epochs, random sampler, no pruning); ``--study NAME --tracking-uri
URI`` uses an existing study instead. Figures are noisy on a shared CPU: run it on a quiet machine for speeds.

    python bench/ensemble.py [--trials 4] [--limit 4000] [--epochs 3] [--top 3] [--student-epochs N]
                             [--study NAME --tracking-uri URI] [--data PATH]
"""

from __future__ import annotations

import _common  # noqa: F401  (environment first)

import argparse
import os
import subprocess
import sys
import time

from _common import REPO, TMP, default_cache_dir, default_data_path, machine_line, quiet_libraries, sqlite_url

SPACE = """\
name: bench-ensemble
objective: val_accuracy
max_epochs: {epochs}
train_limit: {limit}
sampler: {{name: random, seed: 11}}
pruner: none
params:
  conv_blocks: {{type: int, low: 2, high: 3}}
  convs_per_block: 1
  filters: {{type: categorical, choices: [8, 16]}}
  filter_growth: 2.0
  batchnorm: after_activation
  conv_dropout: {{type: float, low: 0.0, high: 0.3}}
  head: global_avg
  dense_layers: {{type: int, low: 0, high: 1}}
  dense_units: 64
  batch_size: 64
  learning_rate: {{type: float, low: 1.0e-3, high: 4.0e-3, log: true}}
"""


def make_study(data: str, trials: int, limit: int, epochs: int) -> tuple[str, str]:
    """Run a small search in the scratch store with the real CLI; returns (study, tracking URI)."""
    space = TMP / "space.yaml"
    space.write_text(SPACE.format(epochs=epochs, limit=limit))
    uri = sqlite_url("mlflow.db")
    cmd = [sys.executable, "-m", "fer_experiments.cli", "search", "--data", data, "--space", str(space), "--study",
           "bench-ens", "--n-trials", str(trials), "--tracking-uri", uri, "--storage", sqlite_url("optuna.db"),
           "--cache-dir", default_cache_dir()]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=TMP, capture_output=True, text=True, env=_env())
    if proc.returncode != 0:
        sys.exit(f"the search failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    print(f"study bench-ens: {trials} trials in {time.perf_counter() - t0:.0f} s "
          f"({limit} Training images, {epochs} epochs each)")
    return "bench-ens", uri


def _env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(REPO)}


def row(name: str, model, ds, extra: str = "") -> dict:
    from fer_experiments.evaluation.metrics import evaluate_probabilities
    from fer_experiments.models.predict import faces_per_second, predict_proba

    out = {"name": name, "params": int(model.count_params()), "fps": faces_per_second(model, 300), "extra": extra}
    for split in ("PublicTest", "PrivateTest"):
        part = ds.split(split)
        ev = evaluate_probabilities(part.y, predict_proba(model, part.x), split)
        out[split] = (ev.accuracy, ev.macro_f1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=default_data_path())
    parser.add_argument("--study", default=None)
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--limit", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--top", type=int, default=3)
    parser.add_argument("--student-epochs", type=int, default=None, help="[default: the best member's epochs]")
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.3)
    args = parser.parse_args()
    quiet_libraries()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    print(machine_line())
    if args.study is None:
        study, uri = make_study(args.data, args.trials, args.limit, args.epochs)
    else:
        if not args.tracking_uri:
            parser.error("--study needs --tracking-uri")
        study, uri = args.study, args.tracking_uri

    from fer_experiments.data import load_dataset
    from fer_experiments.ensembles import DistillConfig, EnsembleConfig, distill_ensemble, make_ensemble
    from fer_experiments.tracking import get_run
    from fer_experiments.tracking.model_io import load_keras_model

    ds = load_dataset(args.data, cache_dir=default_cache_dir())
    rows = []
    outcomes = {}
    for method in ("mean", "greedy"):
        t0 = time.perf_counter()
        outcomes[method] = make_ensemble(EnsembleConfig(
            tracking_uri=uri, study=study, data_path=args.data, top=args.top, method=method,
            cache_dir=default_cache_dir(), model_name="bench-ens", speed_faces=0))
        print(f"{method} ensemble built, evaluated and logged in {time.perf_counter() - t0:.0f} s; weights "
              + ", ".join(f"{c.weight:.2f}" for c in outcomes[method].candidates))
    best = outcomes["mean"].best
    rows.append(row(f"best single ({best.member.label()})", load_keras_model(best.member.model_uri, uri), ds))
    for method, out in outcomes.items():
        rows.append(row(f"{method} ensemble ({len(out.members)} members)",
                        load_keras_model(f"runs:/{out.run_id}/model", uri), ds))
    limit = get_run(uri, best.member.run_id).params.get("limit")
    t0 = time.perf_counter()
    student = distill_ensemble(DistillConfig(
        tracking_uri=uri, teacher_run_id=outcomes["mean"].run_id, data_path=args.data, temperature=args.temperature,
        alpha=args.alpha, epochs=args.student_epochs, limit=None if limit in (None, "None") else int(limit),
        cache_dir=default_cache_dir(), model_name="bench-ens", speed_faces=0))
    print(f"student distilled from the mean ensemble in {time.perf_counter() - t0:.0f} s "
          f"(T={args.temperature}, alpha={args.alpha}, {student.result.epochs_run} epochs, {student.student})")
    rows.append(row("distilled student", load_keras_model(f"runs:/{student.run_id}/model", uri), ds))

    print(f"\n| model | PublicTest acc | PublicTest macro-F1 | PrivateTest acc | PrivateTest macro-F1 | params "
          f"| faces/s (1 at a time) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['PublicTest'][0]:.4f} | {r['PublicTest'][1]:.4f} | {r['PrivateTest'][0]:.4f} | "
              f"{r['PrivateTest'][1]:.4f} | {r['params']:,} | {r['fps']:.0f} |")


if __name__ == "__main__":
    main()
