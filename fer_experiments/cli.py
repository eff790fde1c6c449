"""``fer-exp``: a thin click shell. Parse options -> build one typed config -> call the library -> exit code.

Heavy libraries (TensorFlow, MLflow, Optuna) are imported inside the commands so that ``--help`` is instant.
Exit codes: 0 ok, 2 bad config/usage, 3 bad data, 4 failed training, 5 fatal, 6 refused, 130 Ctrl-C, 143 SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

import click

from fer_experiments.errors import EXIT_SIGINT, EXIT_SIGTERM, FatalError, FerError, Terminated

DATA_ENV = "FER2013_CSV"


def _data_option(required: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--data", "data_path", envvar=DATA_ENV, required=required, show_envvar=True,
                        type=click.Path(dir_okay=True, file_okay=True, path_type=str),
                        help="FER2013 CSV (.csv/.csv.gz, Kaggle format) or an image-folder tree.")


_tracking_option = click.option(
    "--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None, show_envvar=True,
    help="MLflow tracking URI [default: sqlite:///mlruns/mlflow.db].")
_limit_option = click.option("--limit", type=click.IntRange(min=1), default=None,
                             help="Train on a stratified subset of this many Training rows.")


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def _quiet() -> None:
    # Keep TensorFlow / MLflow start-up noise out of the user's terminal and home folder.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the click group and map errors to exit codes with a one-line message."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        cli.main(args=argv, standalone_mode=False, prog_name="fer-exp")
    except click.exceptions.Abort as exc:
        # click turns KeyboardInterrupt (and so our SIGTERM exception) into Abort; the cause tells them apart.
        if isinstance(exc.__cause__, Terminated):
            click.echo("terminated (SIGTERM)", err=True)
            sys.exit(EXIT_SIGTERM)
        click.echo("interrupted", err=True)
        sys.exit(EXIT_SIGINT)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except FerError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Terminated:
        click.echo("terminated (SIGTERM)", err=True)
        sys.exit(EXIT_SIGTERM)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_SIGINT)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except OSError as exc:
        # A path that cannot be written or read (chart, --out folder, model file): one line, not a traceback.
        click.echo(f"error: {exc.filename or ''}: {exc.strerror or exc}".replace(": : ", ": "), err=True)
        sys.exit(FatalError.exit_code)
    except Exception as exc:  # noqa: BLE001 - the last resort: say what broke in one line; FER_EXP_DEBUG=1 shows it all
        if os.environ.get("FER_EXP_DEBUG") == "1":
            raise
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        click.echo(f"error: unexpected {type(exc).__name__}: {first} (set FER_EXP_DEBUG=1 for the traceback)", err=True)
        sys.exit(FatalError.exit_code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="fer-experiments")
def cli() -> None:
    """fer-exp: search, track, promote and serve facial-expression CNNs (FER2013)."""
    _quiet()


# ----------------------------------------------------------------------------------------------------- data
@cli.group()
def data() -> None:
    """Inspect and validate a data set."""


@data.command("check")
@_data_option()
@click.option("--chart", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Where to write the class-balance bar chart [default: <data name>-class-balance.png].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Decoded-array cache folder.")
def data_check(data_path: str, chart: str | None, as_json: bool, cache_dir: str | None) -> None:
    """Rows per split and class, duplicate images (within and across splits), constant images, balance chart."""
    from fer_experiments.data import check_dataset, format_report, load_dataset, plot_class_balance, report_to_dict

    ds = load_dataset(data_path, cache_dir=cache_dir)
    report = check_dataset(ds)
    stem = Path(data_path.rstrip("/")).name.split(".")[0] or "data"
    chart_path = plot_class_balance(report, chart or f"{stem}-class-balance.png")
    if as_json:
        click.echo(json.dumps(report_to_dict(report) | {"chart": str(chart_path), "digest": ds.digest}, indent=2))
        return
    for note in ds.notes:
        click.echo(f"note: {note}")
    click.echo(f"source: {ds.source}\ndigest: {ds.digest}")
    click.echo(format_report(report))
    click.echo(f"class-balance chart: {chart_path}")


# ------------------------------------------------------------------------------------------------- presets
@cli.command()
def presets() -> None:
    """List the preset networks (the 2018 study's) with their parameter counts."""
    from fer_experiments.models.builder import build_model
    from fer_experiments.models.presets import PRESETS

    click.echo(f"{'preset':<14} {'params':>10}  description")
    for p in PRESETS.values():
        click.echo(f"{p.name:<14} {build_model(p.model).count_params():>10,}  {p.description}")


# --------------------------------------------------------------------------------------------------- train
def _parse_overrides(pairs: tuple[str, ...]) -> dict[str, Any]:
    from fer_experiments.errors import ConfigError

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected NAME=VALUE")
        out[key.strip()] = _scalar(raw)
    return out


def _scalar(raw: str) -> Any:
    """'3' -> 3, '1e-3' -> 0.001 (YAML 1.1 would keep that a string), 'true' -> True, else YAML's reading."""
    import yaml

    for convert in (int, float):
        try:
            return convert(raw)
        except ValueError:
            pass
    return yaml.safe_load(raw)


@cli.command()
@_data_option()
@click.option("--preset", default="seed-base", show_default=True, help="Network to train (see `fer-exp presets`).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override the preset's epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE",
              help="Override any model/training parameter, e.g. --set batchnorm=none --set augment_flip=true.")
@_limit_option
@click.option("--seed", type=int, default=None, help="Training seed (same seed, same metrics on CPU).")
@click.option("--objective", type=click.Choice(["val_accuracy", "val_macro_f1"]), default="val_accuracy",
              show_default=True, help="PublicTest metric that selects the best epoch.")
@click.option("--experiment", default="fer-exp", show_default=True, help="MLflow experiment name.")
@click.option("--run-name", default=None)
@_tracking_option
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None)
def train(data_path: str, preset: str, epochs: int | None, batch_size: int | None, learning_rate: float | None,
          overrides: tuple[str, ...], limit: int | None, seed: int | None, objective: str, experiment: str,
          run_name: str | None, tracking_uri: str | None, cache_dir: str | None) -> None:
    """Train one network as one MLflow run and print its PublicTest report."""

    from fer_experiments.config import DataConfig, TrackingConfig, TrainConfig
    from fer_experiments.models.presets import get_preset
    from fer_experiments.params import split_params
    from fer_experiments.tracking import default_tracking_uri, ui_command

    p = get_preset(preset)
    values = _parse_overrides(overrides)
    values |= {k: v for k, v in (("epochs", epochs), ("batch_size", batch_size), ("learning_rate", learning_rate),
                                 ("seed", seed)) if v is not None}
    model_params, train_params = split_params(values, p.model, p.train)
    uri = tracking_uri or default_tracking_uri()
    cfg = TrainConfig(data=DataConfig(path=data_path, limit=limit, cache_dir=cache_dir),
                      tracking=TrackingConfig(tracking_uri=uri, experiment=experiment),
                      model=model_params, train=train_params, preset=preset,
                      objective=objective, run_name=run_name)
    from fer_experiments.evaluation.metrics import format_report
    from fer_experiments.experiment import load_training_data, run_training

    data = load_training_data(cfg.data)
    for note in data.dataset.notes:
        click.echo(f"note: {note}")
    click.echo(f"training {preset} on {len(data.train.y)} Training rows, selecting on {len(data.val.y)} PublicTest "
               f"rows, {train_params.epochs} epoch(s)")

    def on_epoch(epoch: int, m: dict[str, float]) -> None:
        click.echo(f"epoch {epoch}/{train_params.epochs}: loss {m['loss']:.4f} acc {m['accuracy']:.4f} | "
                   f"PublicTest loss {m['val_loss']:.4f} acc {m['val_accuracy']:.4f} macro-F1 {m['val_macro_f1']:.4f}")

    run_id, result = run_training(cfg, data, on_epoch)
    click.echo(f"\nbest epoch {result.best_epoch} of {result.epochs_run} "
               f"({result.images_per_second:.0f} train images/s)")
    click.echo(format_report(result.evaluation))
    click.echo(f"run: {run_id}\nmodel: runs:/{run_id}/model")
    click.echo(f"see it with: {ui_command(uri)}")


# ------------------------------------------------------------------------------------------------ evaluate
@cli.command()
@click.argument("model_uri")
@_data_option()
@click.option("--split", type=click.Choice(["Training", "PublicTest", "PrivateTest"]), default="PrivateTest",
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_tracking_option
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None)
def evaluate(model_uri: str, data_path: str, split: str, as_json: bool, tracking_uri: str | None,
             cache_dir: str | None) -> None:
    """Accuracy, macro-F1 and per-class precision/recall/F1 of MODEL_URI on a split.

    MODEL_URI: runs:/<run_id>/model, models:/<name>/<version>, models:/<name>@<alias> or a local path.
    """
    from fer_experiments.data import load_dataset
    from fer_experiments.evaluation.metrics import evaluate_probabilities, format_report
    from fer_experiments.tracking.models import load_keras_model
    from fer_experiments.training.trainer import predict_proba

    ds = load_dataset(data_path, cache_dir=cache_dir)
    part = ds.split(split)
    model = load_keras_model(model_uri, tracking_uri)
    ev = evaluate_probabilities(part.y, predict_proba(model, part.x), split)
    if as_json:
        click.echo(json.dumps({"model": model_uri, "data_digest": ds.digest} | ev.to_dict(), indent=2))
    else:
        click.echo(f"model: {model_uri}")
        click.echo(format_report(ev))


# -------------------------------------------------------------------------------------------------- search
_storage_option = click.option("--storage", envvar="FER_EXP_STORAGE", default="sqlite:///mlruns/optuna.db",
                               show_default=True, show_envvar=True,
                               help="Optuna storage URL (PostgreSQL for many workers).")


def _worker_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options every process that runs trials shares: GPU pinning and Optuna heartbeats."""
    f = click.option("--grace-period", type=click.IntRange(min=1), default=180, show_default=True,
                     help="Seconds without a heartbeat before a trial's worker counts as dead (its trial is retried).")(f)
    f = click.option("--heartbeat-interval", type=click.IntRange(min=1), default=60, show_default=True,
                     help="Seconds between a running trial's heartbeats in the Optuna storage.")(f)
    return click.option("--gpu", type=click.IntRange(min=0), default=None,
                        help="Pin this process to one GPU (sets CUDA_VISIBLE_DEVICES); tagged on each trial.")(f)


def _pin_gpu(gpu: int | None) -> None:
    # Must happen before the backend (TensorFlow/JAX/torch) is imported, which the commands do lazily.
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)


def _parse_duration(text: str | None) -> float | None:
    """'90', '90s', '15m', '6h' -> seconds."""
    from fer_experiments.errors import ConfigError

    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        return float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise ConfigError(f"--timeout {text!r}: expected seconds or a number with s, m, h or d (e.g. 6h)") from None


@cli.command()
@_data_option()
@click.option("--space", "space_path", type=click.Path(dir_okay=False, path_type=str), required=True,
              help="Search space YAML (see search_spaces/).")
@click.option("--study", required=True, help="Study name; the same name resumes it.")
@click.option("--n-trials", type=click.IntRange(min=1), required=True,
              help="Finished (complete + pruned) trials the study should hold; a rerun adds the missing ones.")
@click.option("--timeout", default=None, help="Stop starting new trials after this long (e.g. 90m, 6h).")
@click.option("--enqueue", multiple=True, metavar="PRESET", help="Start the study from a preset (repeatable).")
@_limit_option
@click.option("--max-consecutive-failures", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--model-name", default="fer-cnn", show_default=True, help="Registered model for the challenger.")
@click.option("--experiment", default=None, help="MLflow experiment [default: the study name].")
@_storage_option
@_tracking_option
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None)
@click.option("--engine", type=click.Choice(["optuna", "keras-tuner"]), default="optuna", show_default=True,
              help="Search engine; both log the same MLflow layout.")
@click.option("--tuner", type=click.Choice(["hyperband", "bayesian", "random"]), default="hyperband",
              show_default=True, help="keras-tuner's tuner (with --engine keras-tuner).")
@_worker_options
def search(data_path: str, space_path: str, study: str, n_trials: int, timeout: str | None, enqueue: tuple[str, ...],
           limit: int | None, max_consecutive_failures: int, model_name: str, experiment: str | None, storage: str,
           tracking_uri: str | None, cache_dir: str | None, engine: str, tuner: str, gpu: int | None,
           heartbeat_interval: int, grace_period: int) -> None:
    """Search the CNN family (Optuna or keras-tuner); every trial is an MLflow child run of the study's parent run."""
    from fer_experiments.config import DataConfig, SearchConfig
    from fer_experiments.tracking import default_tracking_uri, ui_command

    _pin_gpu(gpu)
    uri = tracking_uri or default_tracking_uri()
    cfg = SearchConfig(data=DataConfig(path=data_path, limit=limit, cache_dir=cache_dir), tracking_uri=uri,
                       study=study, storage=storage, space_path=space_path, n_trials=n_trials,
                       experiment=experiment, timeout_seconds=_parse_duration(timeout), enqueue=enqueue,
                       max_consecutive_failures=max_consecutive_failures, model_name=model_name, gpu=gpu,
                       heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    if engine == "keras-tuner":
        _run_kt_search(cfg, tuner)
        click.echo(f"see it with: {ui_command(uri)}")
        return
    _run_search(cfg, resume_hint=_resume_hint(["search", "--data", data_path, "--space", space_path, "--study", study,
                                               "--n-trials", str(n_trials)], cfg, tracking_uri))
    click.echo(f"see it with: {ui_command(uri)}")


def _run_kt_search(cfg: Any, tuner: str) -> None:
    from fer_experiments.errors import ConfigError
    from fer_experiments.ktsearch.engine import run_kt_search
    from fer_experiments.search.progress import Progress

    if cfg.enqueue:
        raise ConfigError("--enqueue works with the Optuna engine only")
    progress = Progress(cfg.n_trials)

    def on_trial(o: Any) -> None:
        progress.seed(o.complete + o.failed, o.complete, 0, o.failed, o.best_value, o.best_trial)
        click.echo(f"trial done [{progress.finished}/{progress.total}] epochs spent {o.epochs_spent} | "
                   f"{progress.status()}")

    def on_epoch(trial: int, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        progress.epoch(trial, epoch, epochs, metrics, "val_accuracy" if "val_accuracy" in metrics else "val_loss")

    out = run_kt_search(cfg, tuner, on_epoch=on_epoch, on_trial=on_trial)
    for note in out.notes:
        click.echo(f"note: {note}")
    best = "none" if out.best_value is None else f"{out.best_value:.4f} (trial {out.best_trial})"
    click.echo(f"keras-tuner study {cfg.study}: {out.complete} complete, {out.failed} failed; best {best}")
    if out.registered_version:
        click.echo(f"registered {cfg.model_name} version {out.registered_version} (alias challenger) "
                   f"from trial {out.best_trial}")


@cli.command()
@_data_option()
@click.option("--study", required=True, help="The study to join (created by `fer-exp search`).")
@click.option("--n-trials", type=click.IntRange(min=1), default=None,
              help="Override the study's total of finished trials [default: the study's].")
@click.option("--timeout", default=None, help="Stop starting new trials after this long (e.g. 6h).")
@click.option("--max-consecutive-failures", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--model-name", default="fer-cnn", show_default=True)
@_storage_option
@_tracking_option
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None)
@_worker_options
def worker(data_path: str, study: str, n_trials: int | None, timeout: str | None, max_consecutive_failures: int,
           model_name: str, storage: str, tracking_uri: str | None, cache_dir: str | None, gpu: int | None,
           heartbeat_interval: int, grace_period: int) -> None:
    """Join an existing study: its space, Training subset, epochs and objective come from the study itself."""
    from fer_experiments.config import DataConfig, SearchConfig
    from fer_experiments.tracking import default_tracking_uri

    _pin_gpu(gpu)
    cfg = SearchConfig(data=DataConfig(path=data_path, cache_dir=cache_dir),
                       tracking_uri=tracking_uri or default_tracking_uri(), study=study, storage=storage,
                       space_path=None, n_trials=n_trials, timeout_seconds=_parse_duration(timeout),
                       max_consecutive_failures=max_consecutive_failures, model_name=model_name, gpu=gpu,
                       heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    _run_search(cfg, resume_hint=_resume_hint(["worker", "--data", data_path, "--study", study], cfg, tracking_uri))


@cli.command()
@click.option("--study", required=True)
@_storage_option
@_tracking_option
@click.option("--grace-period", type=click.IntRange(min=1), default=180, show_default=True,
              help="Seconds without a heartbeat after which a RUNNING trial's worker counts as dead.")
def reconcile(study: str, storage: str, tracking_uri: str | None, grace_period: int) -> None:
    """Fail trials whose worker died and mark their orphaned MLflow runs KILLED (workers also do this at start)."""
    from fer_experiments.search.runner import reconcile_study
    from fer_experiments.tracking import default_tracking_uri

    notes = reconcile_study(storage, study, tracking_uri or default_tracking_uri(), grace_period)
    for note in notes:
        click.echo(note)
    click.echo(f"reconciled study {study}: {len(notes)} change(s)")


def _resume_hint(args: list[str], cfg: Any, tracking_uri: str | None) -> str:
    """The command that resumes this search with the same stores and Training subset."""
    import shlex

    from fer_experiments.search.study import DEFAULT_STORAGE

    extra = [("--storage", cfg.storage if cfg.storage != DEFAULT_STORAGE else None), ("--tracking-uri", tracking_uri),
             ("--limit", cfg.data.limit), ("--experiment", cfg.experiment), ("--cache-dir", cfg.data.cache_dir)]
    args += [str(part) for opt, value in extra if value is not None for part in (opt, value)]
    return "fer-exp " + " ".join(shlex.quote(a) for a in args)


def _run_search(cfg: Any, resume_hint: str) -> None:
    from fer_experiments.search.runner import format_outcome, run_search

    try:
        outcome = run_search(cfg)
    except KeyboardInterrupt:
        click.echo(f"\nstopped; the running trial was marked FAIL (MLflow run KILLED). Resume with:\n  {resume_hint}",
                   err=True)
        raise
    for note in outcome.notes:
        click.echo(f"note: {note}")
    click.echo(format_outcome(outcome))
    if outcome.registered_version:
        click.echo(f"registered {cfg.model_name} version {outcome.registered_version} (alias challenger) "
                   f"from trial {outcome.best_trial}")


@cli.command()
@_storage_option
@click.option("--json", "as_json", is_flag=True)
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


@cli.command("compare-engines")
@_data_option()
@click.option("--space", "space_path", type=click.Path(dir_okay=False, path_type=str), required=True)
@click.option("--budget-epochs", type=click.IntRange(min=1), required=True,
              help="Total epochs each engine may train per seed.")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True)
@_limit_option
@_storage_option
@_tracking_option
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None)
def compare_engines_command(data_path: str, space_path: str, budget_epochs: int, seeds: int, limit: int | None,
                            storage: str, tracking_uri: str | None, cache_dir: str | None) -> None:
    """Optuna (TPE + Hyperband pruner) vs keras-tuner (Hyperband): best PublicTest accuracy per epochs spent."""
    from fer_experiments.compare import compare_engines
    from fer_experiments.config import DataConfig, SearchConfig
    from fer_experiments.tracking import default_tracking_uri

    base = SearchConfig(data=DataConfig(path=data_path, limit=limit, cache_dir=cache_dir),
                        tracking_uri=tracking_uri or default_tracking_uri(), study="compare", storage=storage,
                        space_path=space_path, n_trials=None)
    result = compare_engines(base, budget_epochs, seeds, echo=click.echo)
    click.echo(result.table())
    click.echo(f"table and plot: compare/ artifacts of MLflow run {result.parent_run_id} (experiment compare-engines)")


# ---------------------------------------------------------------------------------------------- registry
_model_name_option = click.option("--model-name", default="fer-cnn", show_default=True, help="Registered model.")
_alias_option = click.option("--alias", default="champion", show_default=True, help="Alias to move.")


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


@cli.command()
@click.option("--study", default=None, help="Promote the best COMPLETE trial of this study.")
@click.option("--run", "run_id", default=None, help="Promote this MLflow run instead.")
@_data_option(required=False)
@_model_name_option
@_alias_option
@click.option("--force", is_flag=True, help="Move the alias even if the candidate is worse.")
@click.option("--dry-run", is_flag=True, help="Show the comparison, change nothing.")
@click.option("--min-accuracy", type=click.FloatRange(0, 1), default=None, help="Refuse candidates below this "
              "PublicTest accuracy.")
@_storage_option
@_tracking_option
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None)
def promote(study: str | None, run_id: str | None, data_path: str | None, model_name: str, alias: str, force: bool,
            dry_run: bool, min_accuracy: float | None, storage: str, tracking_uri: str | None,
            cache_dir: str | None) -> None:
    """Register the best model and move the champion alias to it, refusing a worse one unless --force."""
    from fer_experiments.registry.promote import PromoteConfig
    from fer_experiments.registry.promote import promote as do_promote
    from fer_experiments.tracking import default_tracking_uri

    cfg = PromoteConfig(tracking_uri=tracking_uri or default_tracking_uri(), data_path=data_path, study=study,
                        run_id=run_id, storage=storage, model_name=model_name, alias=alias, force=force,
                        dry_run=dry_run, min_accuracy=min_accuracy, cache_dir=cache_dir)
    r = do_promote(cfg)
    c = r.candidate
    source = f"study {c.study} trial {c.trial}" if c.study else "run"
    click.echo(f"{'':<20} {'version':>8} {'PublicTest acc':>15} {'PrivateTest acc':>16}  source")
    click.echo(f"{'candidate':<20} {r.version or '-':>8} {_fmt(c.public_accuracy):>15} {_fmt(c.private_accuracy):>16}  "
               f"{source} (run {c.run_id})")
    click.echo(f"{model_name + '@' + alias:<20} {r.champion_version or '-':>8} "
               f"{_fmt(r.champion_public_accuracy):>15} {'':>16}")
    if r.decision == "already":
        click.echo(f"run {c.run_id} is already {model_name}@{alias} (version {r.version}); nothing changed")
    elif r.decision == "dry-run":
        click.echo("dry run: the candidate would be promoted; nothing changed")
    else:
        made = "registered" if r.created_version else "reused"
        click.echo(f"{made} {model_name} version {r.version}; {model_name}@{alias} -> version {r.version}"
                   + (f" (was {r.champion_version})" if r.champion_version else ""))
        click.echo(f"load it as models:/{model_name}@{alias}")
    for note in r.notes:
        click.echo(f"note: {note}")


@cli.command()
@_model_name_option
@_alias_option
@_tracking_option
def rollback(model_name: str, alias: str, tracking_uri: str | None) -> None:
    """Point the champion alias back at the version it pointed at before."""
    from fer_experiments.registry.promote import rollback as do_rollback
    from fer_experiments.tracking import default_tracking_uri

    old, new = do_rollback(tracking_uri or default_tracking_uri(), model_name, alias)
    click.echo(f"{model_name}@{alias}: version {old} -> version {new}")


@cli.command()
@click.option("--model-name", default=None, help="Only this registered model.")
@click.option("--json", "as_json", is_flag=True)
@_tracking_option
def models(model_name: str | None, as_json: bool, tracking_uri: str | None) -> None:
    """Registered models: versions, aliases, source study/trial, PublicTest and PrivateTest numbers."""
    import dataclasses

    from fer_experiments.registry.promote import list_models
    from fer_experiments.tracking import default_tracking_uri, prepare_store

    uri = tracking_uri or default_tracking_uri()
    prepare_store(uri)
    rows = list_models(uri, model_name)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        return
    if not rows:
        click.echo("no registered models")
        return
    click.echo(f"{'model':<10} {'version':>7} {'aliases':<28} {'study':<12} {'trial':>5} {'pub acc':>8} "
               f"{'pub F1':>8} {'priv acc':>8} {'priv F1':>8}")
    for r in rows:
        click.echo(f"{r.name:<10} {r.version:>7} {','.join(r.aliases) or '-':<28} {r.study or '-':<12} "
                   f"{r.trial or '-':>5} {_fmt(r.public_accuracy):>8} {_fmt(r.public_macro_f1):>8} "
                   f"{_fmt(r.private_accuracy):>8} {_fmt(r.private_macro_f1):>8}")


from fer_experiments.serving.commands import predict as _predict, serve as _serve  # noqa: E402 (click only)
cli.add_command(_predict); cli.add_command(_serve)  # noqa: E702

if __name__ == "__main__":  # pragma: no cover
    main()
