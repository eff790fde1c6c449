"""``fer-exp search``, ``worker``, ``reconcile``, ``studies`` and ``compare-engines``."""

from __future__ import annotations

import json
import shlex
from typing import TYPE_CHECKING, Callable

import click

from fer_experiments.cli.options import (
    Duration,
    cache_dir_option,
    data_option,
    search_limit_option,
    model_name_option,
    pin_gpu,
    storage_option,
    tracking_option,
    tracking_uri_or_default,
    worker_options,
)
from fer_experiments.config import DEFAULT_STORAGE
from fer_experiments.errors import ConfigError

if TYPE_CHECKING:
    from fer_experiments.search.lifecycle import SearchOutcome

_max_failures_option = click.option(
    "--max-consecutive-failures", type=click.IntRange(min=1), default=5, show_default=True,
    help="Stop the search (exit 5) after this many failed trials in a row.")


@click.command()
@data_option()
@click.option("--space", "space_path", required=True,
              help="Search space: a YAML file, or the name of a shipped space (cpu-quick, seed-family, gpu-full).")
@click.option("--study", required=True, help="Study name; the same name resumes it.")
@click.option("--n-trials", type=click.IntRange(min=1), default=None,
              help="Finished (complete + pruned) trials the study should hold; a rerun adds the missing ones "
                   "[required unless --budget is given; with --budget, as many as fit].")
@click.option("--timeout", type=Duration(), default=None,
              help="Stop starting new trials after this long (e.g. 90m, 6h).")
@click.option("--budget", type=Duration(), default=None, metavar="DURATION",
              help="Wall-clock budget of the whole command, refit included (e.g. 60m): trials stop starting when "
                   "the rest is what the refit needs, and every training is bounded by time.")
@click.option("--refit/--no-refit", default=None,
              help="Retrain the best trials on all of Training after the search and register the best refit as "
                   "challenger [default: when the space has a refit: section].")
@click.option("--enqueue", multiple=True, metavar="PRESET", help="Start the study from a preset (repeatable).")
@search_limit_option
@_max_failures_option
@model_name_option("Registered model for the challenger.")
@click.option("--experiment", default=None, help="MLflow experiment [default: the study name].")
@storage_option
@tracking_option
@cache_dir_option
@click.option("--engine", type=click.Choice(["optuna", "keras-tuner"]), default="optuna", show_default=True,
              help="Search engine; both log the same MLflow layout.")
@click.option("--tuner", type=click.Choice(["hyperband", "bayesian", "random"]), default="hyperband",
              show_default=True, help="keras-tuner's tuner (with --engine keras-tuner).")
@worker_options
def search(data_path: str, space_path: str, study: str, n_trials: int | None, timeout: float | None,
           budget: float | None,
           refit: bool | None, enqueue: tuple[str, ...],
           limit: int | None, max_consecutive_failures: int, model_name: str, experiment: str | None, storage: str,
           tracking_uri: str | None, cache_dir: str | None, engine: str, tuner: str, gpu: int | None,
           heartbeat_interval: int, grace_period: int) -> None:
    """Search the CNN family (Optuna or keras-tuner); every trial is an MLflow child run of the study's parent run."""
    import sys

    from fer_experiments import api

    budget_seconds = budget  # a finite positive duration in seconds (Duration) or None
    if n_trials is None and budget_seconds is None:
        raise ConfigError("give --n-trials, --budget or both")
    timeout_seconds = timeout
    uri = tracking_uri_or_default(tracking_uri)
    hint = ["search", "--data", data_path, "--space", space_path, "--study", study]
    hint += ["--n-trials", str(n_trials)] if n_trials is not None else []
    hint += ["--budget", f"{budget:g}s"] if budget is not None else []
    hint += [] if refit is None else ["--refit" if refit else "--no-refit"]
    if engine != "optuna":
        hint += ["--engine", engine, "--tuner", tuner]
    hint_text = _resume_hint(hint, storage, tracking_uri, limit, experiment, cache_dir)
    run_search_command(
        lambda: api.search(data_path, space_path, study, n_trials=n_trials, timeout=timeout_seconds,
                           budget=budget_seconds, refit=refit, enqueue=enqueue, limit=limit,
                           max_consecutive_failures=max_consecutive_failures, model_name=model_name,
                           experiment=experiment, storage=storage, tracking_uri=uri, cache_dir=cache_dir,
                           engine=engine, tuner=tuner, gpu=gpu, heartbeat_interval=heartbeat_interval,
                           grace_period=grace_period, progress=sys.stdout).outcome,
        study, model_name, uri, hint_text)


@click.command()
@data_option()
@click.option("--study", required=True, help="The study to join (created by `fer-exp search`).")
@click.option("--n-trials", type=click.IntRange(min=1), default=None,
              help="Override the study's total of finished trials [default: the study's].")
@click.option("--timeout", type=Duration(), default=None, help="Stop starting new trials after this long (e.g. 6h).")
@_max_failures_option
@model_name_option("Registered model that gets the challenger alias when this worker ends with a new best.")
@storage_option
@tracking_option
@cache_dir_option
@worker_options
def worker(data_path: str, study: str, n_trials: int | None, timeout: float | None, max_consecutive_failures: int,
           model_name: str, storage: str, tracking_uri: str | None, cache_dir: str | None, gpu: int | None,
           heartbeat_interval: int, grace_period: int) -> None:
    """Join an existing study: its space, Training subset, epochs and objective come from the study itself."""
    from fer_experiments.config import DataConfig, SearchConfig
    from fer_experiments.search.engines import make_engine
    from fer_experiments.search.lifecycle import run_search

    pin_gpu(gpu)
    cfg = SearchConfig(data=DataConfig(path=data_path, cache_dir=cache_dir),
                       tracking_uri=tracking_uri_or_default(tracking_uri), study=study, storage=storage,
                       space_path=None, n_trials=n_trials, timeout_seconds=timeout,
                       max_consecutive_failures=max_consecutive_failures, model_name=model_name, gpu=gpu,
                       heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    run_search_command(lambda: run_search(cfg, make_engine("optuna")), study, model_name, cfg.tracking_uri,
                       _resume_hint(["worker", "--data", data_path, "--study", study], storage, tracking_uri, None,
                                    None, cache_dir))


def _resume_hint(args: list[str], storage: str, tracking_uri: str | None, limit: int | None,
                 experiment: str | None, cache_dir: str | None) -> str:
    """The command that resumes this search with the same stores and Training subset."""
    extra = [("--storage", storage if storage != DEFAULT_STORAGE else None), ("--tracking-uri", tracking_uri),
             ("--limit", limit), ("--experiment", experiment), ("--cache-dir", cache_dir)]
    args += [str(part) for opt, value in extra if value is not None for part in (opt, value)]
    return "fer-exp " + " ".join(shlex.quote(a) for a in args)


def run_search_command(run: Callable[[], "SearchOutcome"], study: str, model_name: str, tracking_uri: str,
                       resume_hint: str) -> None:
    """Run the search, print its outcome, and on Ctrl-C say how to resume."""
    from fer_experiments.search.lifecycle import format_outcome
    from fer_experiments.tracking import ui_command

    try:
        outcome = run()
    except KeyboardInterrupt as exc:
        info = getattr(exc, "search_interruption", None)
        lines = ["", "stopped; " + (
            "the running trial was marked FAIL (MLflow run KILLED)" if info is None else
            "no trial was running (every trial so far had ended)" if info.running_trial is None else
            f"trial {info.running_trial} was running: marked FAIL (its MLflow run KILLED)")]
        if info is not None and info.registered_version:
            lines.append(f"registered {model_name} version {info.registered_version} (alias challenger) from "
                         f"trial {info.best_trial}, the study's best ({info.best_value:.4f})")
        if info is not None and info.note:
            lines.append(f"note: {info.note}")
        click.echo("\n".join(lines + [f"Resume with:\n  {resume_hint}"]), err=True)
        raise
    for note in outcome.notes:
        click.echo(f"note: {note}")
    click.echo(format_outcome(outcome))
    for number, run_id, state, value in outcome.refits:
        shown = "" if value is None else f" {value:.4f}"
        click.echo(f"refit of trial {number}: {state}{shown} (run {run_id})")
    if outcome.registered_version:
        source = (f"the refit of trial {outcome.challenger_trial}" if outcome.challenger_run_id
                  and outcome.challenger_run_id != outcome.best_run_id else f"trial {outcome.best_trial}")
        click.echo(f"registered {model_name} version {outcome.registered_version} (alias challenger) "
                   f"from {source}")
    from fer_experiments.tracking import get_run

    experiment_id = get_run(tracking_uri, outcome.parent_run_id).experiment_id if outcome.parent_run_id else None
    click.echo(f"see it with: {ui_command(tracking_uri, experiment_id)}")
    click.echo(f"report: fer-exp report --study {shlex.quote(study)} (also summary/report.html on the study's run)")


@click.command()
@click.option("--study", default=None,
              help="Only this Optuna study [default: the whole store: every study of --storage and every RUNNING "
                   "MLflow run, `train` runs included].")
@storage_option
@tracking_option
@click.option("--grace-period", type=click.IntRange(min=1), default=180, show_default=True,
              help="Seconds without a heartbeat after which a RUNNING trial or run of another host counts as dead "
                   "(runs of this host whose process is gone are ended at once).")
def reconcile(study: str | None, storage: str, tracking_uri: str | None, grace_period: int) -> None:
    """End what dead processes left RUNNING: fail their Optuna trials and mark their MLflow runs KILLED."""
    from fer_experiments.search.engines.optuna import reconcile_study
    from fer_experiments.search.reconcile import reconcile_runs
    from fer_experiments.search.study import list_studies
    from fer_experiments.tracking.store import require_existing_store

    uri = tracking_uri_or_default(tracking_uri)
    if study is not None:
        notes = reconcile_study(storage, study, uri, grace_period)
    else:
        require_existing_store(uri)
        notes = []
        try:
            names = [row.name for row in list_studies(storage)]
        except ConfigError:
            names = []  # no Optuna storage here: MLflow runs only
        for name in names:
            notes += reconcile_study(storage, name, uri, grace_period)
        notes += reconcile_runs(uri, grace_period)
    for note in notes:
        click.echo(note)
    click.echo(f"reconciled {'study ' + study if study else 'the whole store'}: {len(notes)} change(s)")


@click.command()
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Print the studies as JSON.")
def studies(storage: str, as_json: bool) -> None:
    """Every study: trials complete/pruned/failed/running, best value and best trial."""
    import dataclasses

    from fer_experiments.search.study import list_studies

    rows = list_studies(storage)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        return
    if not rows:
        click.echo(f"no studies in {storage}")
        return
    click.echo(f"{'study':<20} {'complete':>8} {'pruned':>6} {'failed':>6} {'running':>7} {'best':>8} {'trial':>5}  "
               f"{'objective':<13} space")
    for r in rows:
        best = "-" if r.best_value is None else f"{r.best_value:.4f}"
        trial = "-" if r.best_trial is None else str(r.best_trial)
        click.echo(f"{r.name:<20} {r.complete:>8} {r.pruned:>6} {r.failed:>6} {r.running:>7} {best:>8} {trial:>5}  "
                   f"{r.objective:<13} {r.space_file}")


@click.command("compare-engines")
@data_option()
@click.option("--space", "space_path", required=True,
              help="Search space both engines search: a YAML file or a shipped space's name.")
@click.option("--budget-epochs", type=click.IntRange(min=1), required=True,
              help="Total epochs each engine may train per seed.")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="How many seeds (0, 1, ...) each engine runs with; the table gives the mean and spread.")
@search_limit_option
@storage_option
@tracking_option
@cache_dir_option
def compare_engines_command(data_path: str, space_path: str, budget_epochs: int, seeds: int, limit: int | None,
                            storage: str, tracking_uri: str | None, cache_dir: str | None) -> None:
    """Optuna (TPE + Hyperband pruner) vs keras-tuner (Hyperband): best PublicTest accuracy per epochs spent."""
    from fer_experiments.config import DataConfig, SearchConfig
    from fer_experiments.search.compare import compare_engines

    base = SearchConfig(data=DataConfig(path=data_path, limit=limit, cache_dir=cache_dir),
                        tracking_uri=tracking_uri_or_default(tracking_uri), study="compare", storage=storage,
                        space_path=space_path, n_trials=None)
    result = compare_engines(base, budget_epochs, seeds, echo=click.echo)
    click.echo(result.table())
    click.echo(f"table and plot: compare/ artifacts of MLflow run {result.parent_run_id} (experiment compare-engines)")
