"""Benchmark: 1 vs 2 worker processes on one PostgreSQL study with fixed small trials.

Prints, for each worker count, the study's trials per minute (wall time from the first command's start to the last
one's end) and the mean trial duration; then the storage's share of trial time: the Optuna storage calls one trial
makes here (ask, the suggests, one report + should_prune per epoch, user attrs, heartbeats, tell), replayed N times
against the same PostgreSQL server and divided by the mean trial duration. MLflow's share is measured separately by
bench/search_overhead.py. Needs PostgreSQL at 127.0.0.1:5432 with trust auth (as on the project's machines).

    python bench/workers_scaling.py [--data PATH] [--trials 8] [--epochs 2] [--train-limit 600]
"""

from __future__ import annotations

import _common  # noqa: I001 - first: sets the environment before heavy imports

import argparse
import statistics
import subprocess
import sys
import time
import uuid

PG = "postgresql://postgres@127.0.0.1:5432"

SPACE = """\
name: scaling
max_epochs: {epochs}
train_limit: {limit}
sampler: {{name: random, seed: 11}}
pruner: {{name: median, n_startup_trials: 100}}
params:
  conv_blocks: 2
  convs_per_block: 1
  filters: 8
  dense_layers: 0
  batch_size: 64
  learning_rate: {{type: float, low: 1.0e-3, high: 2.0e-3, log: true}}
"""


def _admin(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(f"{PG}/postgres")
    conn.autocommit = True
    try:
        conn.cursor().execute(sql)
    finally:
        conn.close()


def _fresh_db(tag: str) -> tuple[str, str]:
    name = f"ferbench_{tag}_{uuid.uuid4().hex[:8]}"
    _admin(f"CREATE DATABASE {name}")
    return name, f"{PG}/{name}"


def _drop(name: str) -> None:
    _admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
    _admin(f"DROP DATABASE IF EXISTS {name}")


def run_workers(n_workers: int, args: argparse.Namespace) -> dict[str, float]:
    """Run one study of ``args.trials`` trials with ``n_workers`` `fer-exp search` processes; return figures."""
    import optuna
    from optuna.trial import TrialState

    names = []
    try:
        opt_name, optuna_url = _fresh_db("optuna")
        ml_name, mlflow_url = _fresh_db("mlflow")
        names = [opt_name, ml_name]
        space = _common.TMP / f"scaling-{n_workers}.yaml"
        space.write_text(SPACE.format(epochs=args.epochs, limit=args.train_limit))
        cmd = [sys.executable, "-m", "fer_experiments.cli", "search", "--data", args.data, "--space", str(space),
               "--study", "scaling", "--n-trials", str(args.trials), "--storage", optuna_url,
               "--tracking-uri", mlflow_url]
        started = time.perf_counter()
        procs = [subprocess.Popen(cmd, cwd=_common.TMP, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for _ in range(n_workers)]
        for p in procs:
            _, err = p.communicate()
            if p.returncode != 0:
                raise SystemExit(f"worker failed ({p.returncode}): {err[-2000:]}")
        wall = time.perf_counter() - started
        study = optuna.load_study(study_name="scaling", storage=optuna_url)
        done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
        durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]
        first_start = min(t.datetime_start for t in done)
        last_end = max(t.datetime_complete for t in done)
        trial_span = (last_end - first_start).total_seconds()
        return {"workers": n_workers, "trials": len(done), "wall_s": wall, "trial_span_s": trial_span,
                "trials_per_min_wall": 60 * len(done) / wall, "trials_per_min_span": 60 * len(done) / trial_span,
                "mean_trial_s": statistics.mean(durations), "optuna_url": optuna_url}
    finally:
        for name in names:
            _drop(name)


def storage_ms_per_trial(epochs: int, repeat: int = 30) -> float:
    """Milliseconds of Optuna PostgreSQL storage work for one trial like the benchmark's (median of ``repeat``)."""
    import optuna

    name, url = _fresh_db("replay")
    try:
        storage = optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
        study = optuna.create_study(study_name="replay", storage=storage, direction="maximize",
                                    pruner=optuna.pruners.MedianPruner(n_startup_trials=100))
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            trial = study.ask()
            trial.suggest_float("learning_rate", 1e-3, 2e-3, log=True)
            trial.set_user_attr("mlflow_run_id", uuid.uuid4().hex)
            for epoch in range(1, epochs + 1):
                trial.report(0.3, epoch)
                trial.should_prune()
            storage.record_heartbeat(trial._trial_id)  # noqa: SLF001 - what the heartbeat thread does
            study.tell(trial, 0.3)
            times.append(time.perf_counter() - t0)
        return 1000 * statistics.median(times)
    finally:
        _drop(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=_common.default_data_path())
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-limit", type=int, default=600)
    args = parser.parse_args()

    print(f"fixed trials: 2 conv blocks of 8 filters, {args.train_limit} Training rows, {args.epochs} epochs; "
          f"{args.trials} trials per study; PostgreSQL for Optuna and MLflow (no tracking server)")
    results = [run_workers(n, args) for n in (1, 2)]
    print(f"{'workers':>7} {'trials':>6} {'wall s':>8} {'trials/min (wall)':>18} {'trials/min (trials)':>20} "
          f"{'mean trial s':>13}")
    for r in results:
        print(f"{r['workers']:>7} {r['trials']:>6} {r['wall_s']:>8.1f} {r['trials_per_min_wall']:>18.2f} "
              f"{r['trials_per_min_span']:>20.2f} {r['mean_trial_s']:>13.1f}")
    print(f"speed-up 2 vs 1 workers (trials/min, wall): {results[1]['trials_per_min_wall'] / results[0]['trials_per_min_wall']:.2f}x"
          " on 2 CPU cores (both workers share them)")
    ms = storage_ms_per_trial(args.epochs)
    for r in results:
        print(f"Optuna storage per trial: {ms:.1f} ms = {100 * ms / 1000 / r['mean_trial_s']:.2f}% of a "
              f"{r['mean_trial_s']:.1f} s trial ({r['workers']} worker(s))")


if __name__ == "__main__":
    main()
