"""Benchmark: what tracking, pruning and the end-of-command work add to a trial; `fer-exp studies` with 200 trials.

Part 1 - the same fixed configurations trained bare and as trials of a real study.
  A space YAML (written to a temp folder) fixes every parameter except ``filters``, a categorical with the N
  configurations' values; a study is created on it and each value is enqueued (``study.enqueue_trial``). Each trial
  then runs through ``fer_experiments.search.lifecycle.run_search`` with the Optuna engine (one resumed command per
  trial, --n-trials 1, 2, ...)
  against a temporary Optuna SQLite storage and a temporary MLflow SQLite store: params, per-epoch and per-class
  metrics, artifacts, the model, the median pruner's per-epoch report/should_prune, reconcile, the study summary and
  the challenger registration. "Bare" is ``train_model(...)`` alone on the same params and the same data (the
  study's Training subset and PublicTest), no MLflow and no Optuna, run right before and right after its trial
  (the mean is the reference), so that load from other processes hits both sides alike. An uncounted warm-up
  trial (its own command, on the fresh stores) absorbs the process's one-off costs first.
  Where the time goes is read from the lifecycle's supported timing hook (``SearchOutcome.timings``: set-up, each
  trial's run start / training / end-of-trial tracking, summary, registration); the bench exits with an error when
  the hook is missing, so that a refactoring cannot silently stop the measurement.
  Printed: per trial, bare vs trial seconds (Optuna's datetime_start -> datetime_complete), the overhead in seconds
  and as a fraction of the trial, the trial's phases, the tracking overhead extrapolated to a 60-second trial
  (target <= 3%), and per command the fixed part (set-up, summary, registration, the engine's own time).
Part 2 - `fer-exp studies` with a 200-trial study in the store.
  A study with 200 finished trials (COMPLETE/PRUNED/FAIL, intermediate values, user attrs, the fer.* study
  attrs) is made with ask/tell; then `python -m fer_experiments.cli studies --storage URL` is timed as a
  subprocess (median of 3) and ``list_studies(URL)`` in-process.

    python bench/search_overhead.py [--data PATH] [--filters 8,12,16] [--train-limit 1500] [--epochs 2]
                                    [--studies-trials 200] [--skip-part1] [--skip-part2] [--strict]
"""

from __future__ import annotations

import _common  # noqa: I001 - first: sets the environment before TensorFlow/MLflow/Optuna are imported

import argparse
import dataclasses
import datetime as dt
import io
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

TARGET_FRACTION_60S = 0.03
TRIAL_SECONDS_REF = 60.0

SPACE_TEMPLATE = """\
# Written by bench/search_overhead.py: every parameter fixed except `filters`, whose choices are the
# configurations under test (each enqueued once).
name: bench-overhead
objective: val_accuracy
max_epochs: {epochs}
train_limit: {train_limit}
sampler: {{name: tpe, seed: 42}}
# The median pruner is consulted after every epoch, as in a real search; with n_startup_trials = the number
# of configurations it never prunes one of them, so every trial runs all its epochs like the bare training.
pruner: {{name: median, n_startup_trials: {n}, n_warmup_steps: 0}}
params:
  conv_blocks: {conv_blocks}
  convs_per_block: {convs_per_block}
  filters: {{type: categorical, choices: [{choices}]}}
  filter_growth: 2.0
  kernel_size: 3
  batchnorm: {batchnorm}
  conv_dropout: 0.25
  head: {head}
  dense_layers: {dense_layers}
  dense_units: {dense_units}
  dense_dropout: 0.25
  batch_size: {batch_size}
  learning_rate: 1.0e-3
"""


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


# ------------------------------------------------------------------------------------------------- part 1
#: The phases the lifecycle must report for this bench to mean anything (``SearchOutcome.timings``).
TRIAL_PHASES = ("trial_setup", "training", "tracking")
COMMAND_PHASES = ("setup", "summary")


def require_timing_hook() -> None:
    """Fail loudly when the search lifecycle no longer offers the timing hook this bench reads."""
    import dataclasses as dc

    from fer_experiments.search import lifecycle

    phases = getattr(lifecycle, "TIMED_PHASES", None)
    fields = {f.name for f in dc.fields(lifecycle.SearchOutcome)}
    wanted = (*TRIAL_PHASES, *COMMAND_PHASES, "registration")
    missing = [p for p in wanted if phases is None or p not in phases]
    if "timings" not in fields or not hasattr(lifecycle.SearchOutcome, "add_time") or missing:
        raise SystemExit("bench/search_overhead.py: fer_experiments.search.lifecycle has no timing hook "
                         f"(SearchOutcome.timings / add_time, TIMED_PHASES with {', '.join(wanted)}); missing: "
                         f"{', '.join(missing) or 'SearchOutcome.timings'}. Update the bench with the lifecycle.")


def part1(args: argparse.Namespace) -> bool:
    import optuna
    from optuna.trial import TrialState

    from fer_experiments.config import DataConfig, SearchConfig
    from fer_experiments.data import load_dataset, load_training_data, stratified_subset
    from fer_experiments.params import split_params
    from fer_experiments.search.engines.optuna import OptunaEngine
    from fer_experiments.search.lifecycle import format_outcome, run_search
    from fer_experiments.search.study import create_or_resume, open_storage
    from fer_experiments.spaces import epochs_for, load_space, suggest
    from fer_experiments.tracking import tags
    from fer_experiments.training.trainer import train_model

    require_timing_hook()
    filters = [int(f) for f in args.filters.split(",") if f.strip()]
    if len(set(filters)) != len(filters) or not filters:
        raise SystemExit("--filters: give distinct values, e.g. 8,12,16")
    n = len(filters)
    space_file = _common.TMP / "bench-overhead.yaml"
    space_file.write_text(SPACE_TEMPLATE.format(
        epochs=args.epochs, train_limit=args.train_limit, n=n + 1, choices=", ".join(map(str, filters)),
        conv_blocks=args.conv_blocks, convs_per_block=args.convs_per_block, batchnorm=args.batchnorm, head=args.head,
        dense_layers=args.dense_layers, dense_units=args.dense_units, batch_size=args.batch_size))
    space = load_space(space_file)
    tracking_uri = _common.sqlite_url("mlflow.db")
    storage_url = _common.sqlite_url("optuna.db")
    study_name = "bench-overhead"

    dataset = load_dataset(args.data, cache_dir=args.cache_dir)
    data = load_training_data(DataConfig(path=args.data, limit=space.train_limit, cache_dir=args.cache_dir), dataset)
    configs = {}
    for f in filters:
        values = suggest(space, optuna.trial.FixedTrial({"filters": f}))
        configs[f] = split_params(values | {"epochs": epochs_for(space, values)})
    print(f"\n== part 1: {n} fixed configurations, bare train_model vs trials of run_search ==")
    mp0, tp0 = configs[filters[0]]
    print(f"space: {space_file.name}: conv_blocks {mp0.conv_blocks} x {mp0.convs_per_block} convs, batchnorm "
          f"{mp0.batchnorm}, head {mp0.head}, dense {mp0.dense_layers}x{mp0.dense_units}, batch {tp0.batch_size}, "
          f"lr schedule {tp0.lr_schedule}, filters {filters}; {tp0.epochs} epochs; pruner median (never prunes here)")
    print(f"data: Training subset {len(data.train):,} rows (train_limit), PublicTest {len(data.val):,} rows "
          f"(evaluated after every epoch on both sides)")
    print(f"stores: MLflow {tracking_uri}, Optuna {storage_url}")
    print("order: warm-up trial (own command), then per configuration: bare, trial (one resumed run_search "
          "command each), bare")
    print("phases timed by the lifecycle's hook (SearchOutcome.timings), not by replacing library functions")

    def bare(f: int) -> float:
        mp, tp = configs[f]
        seconds, result = _timed(lambda: train_model(mp, tp, data.train, data.val, objective=space.objective))
        assert result.epochs_run == tp.epochs
        return seconds

    # Warm-up, not counted: the process's first fit pays one-off TensorFlow start-up costs.
    mp, tp = configs[filters[0]]
    warm, _ = _timed(lambda: train_model(mp, dataclasses.replace(tp, epochs=1), stratified_subset(data.train, 256),
                                         stratified_subset(data.val, 256)))
    print(f"warm-up fit (not counted): {warm:.1f} s")

    # The study is created on the same space (exactly as run_search would create it) so that the
    # configurations can be enqueued in order; each run_search command then resumes it and runs the next one.
    storage = open_storage(storage_url)
    study, _, _ = create_or_resume(storage, storage_url, study_name, space, data_digest=dataset.digest, limit=None,
                                   experiment=None)
    for f in [filters[0], *filters]:  # the first is the warm-up trial
        study.enqueue_trial({"filters": f})

    def command(n_trials: int) -> dict[str, Any]:
        """One `fer-exp search` (resumed) that runs one more trial; its timeline and phases."""
        cfg = SearchConfig(data=DataConfig(path=args.data, limit=None, cache_dir=args.cache_dir),
                           tracking_uri=tracking_uri, study=study_name, storage=storage_url,
                           space_path=str(space_file), n_trials=n_trials)
        progress = io.StringIO()
        total, outcome = _timed(lambda: run_search(cfg, OptunaEngine(), progress_stream=progress))
        if args.show_progress:
            print(progress.getvalue(), end="")
        trial = optuna.load_study(study_name=study_name, storage=storage_url).get_trials(deepcopy=False)[n_trials - 1]
        if trial.state != TrialState.COMPLETE or outcome.ran != 1:
            raise RuntimeError(f"trial {trial.number} is {trial.state.name} (ran {outcome.ran}); progress:\n"
                               f"{progress.getvalue()}")
        t = dict(outcome.timings)
        missing = [p for p in (*TRIAL_PHASES, *COMMAND_PHASES) if p not in t]
        if missing:
            raise RuntimeError(f"the lifecycle's timing hook reported no {', '.join(missing)} for trial "
                               f"{trial.number} (got {t}); the bench cannot measure without it")
        trial_s = (trial.datetime_complete - trial.datetime_start).total_seconds()
        return {"trial": trial, "trial_s": trial_s, "total": total, "outcome": outcome, "t": t,
                "setup": t["setup"], "summary": t["summary"], "register": t.get("registration", 0.0),
                "engine": total - sum(t.values())}

    warm_cmd = command(1)
    print(f"warm-up trial (not counted; own command on fresh stores, first tracking in the process): trial "
          f"{warm_cmd['trial_s']:.1f} s, set-up {warm_cmd['setup']:.1f} s, command {warm_cmd['total']:.1f} s")

    rows = []
    print(f"\n{'trial':>5} {'filters':>7} {'bare s':>8} {'trial s':>8} {'overhead s':>11} {'of trial':>9}  "
          f"{'bare before, after':>18}  {'run start s':>11} {'training s':>10} {'tracking s':>10}", flush=True)
    for i, f in enumerate(filters):
        before = bare(f)
        cmd = command(i + 2)
        after = bare(f)
        bare_s = (before + after) / 2
        over = cmd["trial_s"] - bare_s
        rows.append((f, bare_s, over, cmd))
        t = cmd["t"]
        print(f"{cmd['trial'].number:>5} {f:>7} {bare_s:8.2f} {cmd['trial_s']:8.2f} {over:11.2f} "
              f"{over / cmd['trial_s']:9.1%}  {before:8.2f}, {after:8.2f}  {t['trial_setup']:11.2f} "
              f"{t['training']:10.2f} {t['tracking']:10.2f}", flush=True)

    trial_secs = [c["trial_s"] for _, _, _, c in rows]
    overs = [o for _, _, o, _ in rows]
    mean_trial = statistics.fmean(trial_secs)
    over_mean = statistics.fmean(overs)
    print(f"overhead inside the trial (trial - mean of its two bare runs): mean {over_mean:.2f} s "
          f"({over_mean / mean_trial:.1%} of a {mean_trial:.1f} s trial), median {statistics.median(overs):.2f} s")
    # Timed directly by the hook, free of the noise of two trainings: the run's start and the end-of-trial logging.
    direct = statistics.fmean(c["t"]["trial_setup"] + c["t"]["tracking"] for _, _, _, c in rows)
    train_extra = statistics.fmean(c["t"]["training"] - b for _, b, _, c in rows)
    fraction = direct / TRIAL_SECONDS_REF
    ok = fraction <= TARGET_FRACTION_60S
    print(f"per-trial tracking overhead timed by the hook (run start + end-of-trial logging, model included): "
          f"{direct:.2f} s -> on a {TRIAL_SECONDS_REF:.0f} s trial {fraction:.1%}  target <= "
          f"{TARGET_FRACTION_60S:.0%}  {'ok' if ok else 'MISSED'}")
    print(f"training phase minus the bare training (params and per-epoch metrics logged, pruning reports, noise): "
          f"mean {train_extra:.2f} s")

    print("\nper command (resumed run_search, one trial each; engine = the rest: asking, pruning, reconcile, gc):")
    print(f"{'command':>7} {'total s':>8} {'set-up s':>9} {'trial s':>8} {'summary s':>10} {'register s':>11} "
          f"{'engine s':>9}")
    for label, c in [("warm-up", warm_cmd)] + [(str(c["trial"].number), c) for _, _, _, c in rows]:
        in_trial = sum(c["t"][p] for p in TRIAL_PHASES)
        print(f"{label:>7} {c['total']:8.2f} {c['setup']:9.2f} {in_trial:8.2f} {c['summary']:10.2f} "
              f"{c['register']:11.2f} {c['engine']:9.2f}")
    cmds = [c for _, _, _, c in rows]
    print(f"median of the counted commands: set-up {statistics.median(c['setup'] for c in cmds):.2f} s (store, data "
          f"digest + cache, study resume, parent run), summary {statistics.median(c['summary'] for c in cmds):.2f} s, "
          f"challenger registration {statistics.median(c['register'] for c in cmds):.2f} s (a new version only "
          f"when a new best), engine {statistics.median(c['engine'] for c in cmds):.2f} s")
    last = cmds[-1]
    print(f"outcome: {format_outcome(last['outcome'])}; registered versions "
          f"{[c['outcome'].registered_version for c in [warm_cmd, *cmds]]}")
    _check_tracking(tracking_uri, [c["trial"].user_attrs.get(tags.ATTR_RUN_ID) for c in cmds],
                    last["outcome"].parent_run_id)
    return ok


def _check_tracking(tracking_uri: str, run_ids: list[str | None], parent_id: str) -> None:
    """One line showing that the trials really were tracked (so the overhead measured is the real one)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(run_ids[0])
    per_class = [k for k in run.data.metrics if k.startswith(("val_precision_", "val_recall_", "val_f1_"))]
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    arts = [a.path for a in client.list_artifacts(run.info.run_id)]
    summary = [a.path for a in client.list_artifacts(parent_id, "summary")]
    print(f"tracked (first trial's run): {len(run.data.params)} params, {len(run.data.metrics)} metrics "
          f"({len(per_class)} per-class), val_accuracy at {len(history)} epochs, status {run.info.status}, "
          f"artifacts {sorted(arts)}, model tag {'fer.model_id.model' in run.data.tags}; "
          f"parent summary: {len(summary)} files")


# ------------------------------------------------------------------------------------------------- part 2
def make_big_study(storage_url: str, name: str, n_trials: int) -> dict[str, int]:
    """A study with ``n_trials`` finished trials, made like a real one as far as `fer-exp studies` can tell."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.trial import TrialState

    from fer_experiments.spaces import load_space
    from fer_experiments.tracking import tags

    space = load_space(_common.REPO / "search_spaces" / "cpu-quick.yaml")
    study = optuna.create_study(study_name=name, storage=storage_url, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for key, value in {tags.ATTR_SPACE: space.to_dict(), tags.ATTR_SPACE_HASH: space.content_hash(),
                       tags.ATTR_SPACE_FILE: str(space.source), tags.ATTR_DATA_DIGEST: "0" * 64,
                       tags.ATTR_LIMIT: space.train_limit, tags.ATTR_EXPERIMENT: name,
                       tags.ATTR_PARENT_RUN: "f" * 32,
                       tags.ATTR_CREATED: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}.items():
        study.set_user_attr(key, value)
    dists = {"conv_blocks": IntDistribution(2, 3), "filters": CategoricalDistribution([8, 16]),
             "batchnorm": CategoricalDistribution(["none", "after_activation"]),
             "learning_rate": FloatDistribution(3e-4, 3e-3, log=True),
             "batch_size": CategoricalDistribution([64, 128])}
    counts = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}
    for i in range(n_trials):
        trial = study.ask(dists)
        trial.set_user_attr(tags.ATTR_RUN_ID, f"{i:032x}")
        if i % 11 == 10:                                   # ~9% failed
            trial.set_user_attr(tags.ATTR_FAIL_REASON, "loss became nan at epoch 1")
            study.tell(trial, state=TrialState.FAIL)
            counts["FAIL"] += 1
            continue
        pruned = i % 4 == 3                                # ~23% pruned after one epoch
        epochs = 1 if pruned else 3
        acc = 0.25 + 0.1 * ((i * 37) % 100) / 100
        for epoch in range(1, epochs + 1):
            trial.report(acc * (0.8 + 0.1 * epoch), step=epoch)
        if pruned:
            study.tell(trial, state=TrialState.PRUNED)
            counts["PRUNED"] += 1
        else:
            study.tell(trial, acc * 1.1)
            counts["COMPLETE"] += 1
    return counts


def part2(args: argparse.Namespace) -> None:
    from fer_experiments.search.study import list_studies

    url = _common.sqlite_url("studies.db")
    name = "bench-200"
    print(f"\n== part 2: `fer-exp studies` with {args.studies_trials} trials in the store ==")
    made, counts = _timed(lambda: make_big_study(url, name, args.studies_trials))
    print(f"made study {name!r} in {url}: {counts} in {made:.1f} s (ask/tell)")

    cmd = [sys.executable, "-m", "fer_experiments.cli", "studies", "--storage", url]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_common.REPO), env.get("PYTHONPATH")]))

    def cli(*extra: str) -> tuple[float, subprocess.CompletedProcess[str]]:
        full = cmd[:3] + list(extra) if extra else cmd
        return _timed(lambda: subprocess.run(full, cwd=_common.TMP, env=env, capture_output=True, text=True,
                                             timeout=300))

    runs = [cli() for _ in range(args.repeat)]
    for _, proc in runs:
        if proc.returncode != 0:
            print(f"UNEXPECTED: `{' '.join(cmd)}` exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
            return
    helps = [cli("--help")[0] for _ in range(args.repeat)]
    import_floor = [_timed(lambda: subprocess.run([sys.executable, "-c", "import fer_experiments.search.study"],
                                                  cwd=_common.TMP, env=env, check=True))[0] for _ in range(args.repeat)]
    print("its output:\n  " + "\n  ".join(runs[0][1].stdout.rstrip().splitlines()))
    cli_times = [t for t, _ in runs]
    print(f"`python -m fer_experiments.cli studies --storage {url}`: median {statistics.median(cli_times):.2f} s "
          f"({', '.join(f'{t:.2f}' for t in cli_times)}); `fer-exp --help` (start-up floor) median "
          f"{statistics.median(helps):.2f} s, `python -c 'import fer_experiments.search.study'` (import floor) "
          f"median {statistics.median(import_floor):.2f} s")

    first, rows = _timed(lambda: list_studies(url))
    again = [_timed(lambda: list_studies(url))[0] for _ in range(args.repeat)]
    row = next(r for r in rows if r.name == name)
    print(f"list_studies(url) in-process: first call {first * 1000:.0f} ms, then median "
          f"{statistics.median(again) * 1000:.0f} ms ({', '.join(f'{t * 1000:.0f}' for t in again)} ms); "
          f"row: complete {row.complete}, pruned {row.pruned}, failed {row.failed}, best {row.best_value:.4f} "
          f"(trial {row.best_trial}), objective {row.objective}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=_common.default_data_path(),
                    help="FER2013 CSV (.csv/.csv.gz) or image tree; default $FER2013_CSV or %(default)s")
    ap.add_argument("--cache-dir", default=_common.default_cache_dir(),
                    help="decoded-data cache (default $FER_EXP_CACHE or %(default)s)")
    g = ap.add_argument_group("part 1 (trial overhead)")
    g.add_argument("--filters", default="8,12,16",
                   help="the configurations: one trial per base-filters value (default %(default)s)")
    g.add_argument("--train-limit", type=int, default=1500, help="Training subset rows (default %(default)s)")
    g.add_argument("--epochs", type=int, default=2, help="epochs per trial (default %(default)s)")
    g.add_argument("--conv-blocks", type=int, default=3)
    g.add_argument("--convs-per-block", type=int, default=2)
    g.add_argument("--batchnorm", default="after_activation")
    g.add_argument("--head", default="flatten")
    g.add_argument("--dense-layers", type=int, default=1)
    g.add_argument("--dense-units", type=int, default=64)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--show-progress", action="store_true", help="print run_search's progress lines")
    g = ap.add_argument_group("part 2 (`fer-exp studies`)")
    g.add_argument("--studies-trials", type=int, default=200, help="trials in the big study (default %(default)s)")
    g.add_argument("--repeat", type=int, default=3, help="timed runs of the CLI and of list_studies (default %(default)s)")
    ap.add_argument("--skip-part1", action="store_true")
    ap.add_argument("--skip-part2", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary stores and print where")
    ap.add_argument("--strict", action="store_true", help="exit 1 when the 60-second-trial target is missed")
    args = ap.parse_args(argv)
    if not args.skip_part1 and not Path(args.data).exists():
        print(f"no data at {args.data} (use --data or FER2013_CSV)", file=sys.stderr)
        return 2
    if args.keep:
        _common.keep_tmp()

    _common.quiet_libraries()
    print(_common.machine_line())
    imports, _ = _timed(lambda: (__import__("keras"), __import__("mlflow"), __import__("optuna")))
    _common.quiet_libraries()
    print(f"imports (keras, mlflow, optuna): {imports:.1f} s")
    ok = True
    if not args.skip_part1:
        ok = part1(args)
    if not args.skip_part2:
        part2(args)
    print("\n(figures from a shared 2-core machine: other work on the same cores makes them noisy)")
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main())
