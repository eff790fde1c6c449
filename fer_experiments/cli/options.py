"""Options several commands share, declared once, and small parsers of option values.

Defaults come from ``fer_experiments.config``; environment variables that set an option are shown in ``--help``.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import click

from fer_experiments.config import DEFAULT_ALIAS, DEFAULT_MODEL_NAME, DEFAULT_STORAGE, DEFAULT_TRACKING_URI

DATA_ENV = "FER2013_CSV"
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def data_option(required: bool = True, help_text: str = "") -> Decorator:
    """``--data``: the data set (CSV or image tree)."""
    return click.option("--data", "data_path", envvar=DATA_ENV, required=required, show_envvar=True,
                        type=click.Path(dir_okay=True, file_okay=True, path_type=str),
                        help="FER2013 CSV (.csv/.csv.gz, Kaggle format) or an image-folder tree." +
                             (f" {help_text}" if help_text else ""))


cache_dir_option = click.option(
    "--cache-dir", envvar="FER_EXP_CACHE", show_envvar=True, type=click.Path(file_okay=False), default=None,
    help="Folder of the decoded-array cache [default: ~/.cache/fer-exp].")
tracking_option = click.option(
    "--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None, show_envvar=True,
    help=f"MLflow tracking URI [default: {DEFAULT_TRACKING_URI}].")
storage_option = click.option(
    "--storage", envvar="FER_EXP_STORAGE", default=DEFAULT_STORAGE, show_default=True, show_envvar=True,
    help="Optuna storage URL (PostgreSQL for many workers).")
limit_option = click.option(
    "--limit", type=click.IntRange(min=1), default=None,
    help="Train on a stratified subset of this many Training rows [default: all of Training].")
search_limit_option = click.option(
    "--limit", type=click.IntRange(min=1), default=None,
    help="Train every trial on a stratified subset of this many Training rows. Replaces the space's train_limit "
         "[default: the space's train_limit; all of Training when it has none]. Fixed when the study is created: "
         "a resumed study keeps its own and refuses another value.")


def model_name_option(help_text: str = "Registered model.", default: str | None = DEFAULT_MODEL_NAME) -> Decorator:
    """``--model-name``."""
    return click.option("--model-name", default=default, show_default=default is not None, help=help_text)


alias_option = click.option("--alias", default=DEFAULT_ALIAS, show_default=True, help="Alias to move.")


def tracking_uri_or_default(tracking_uri: str | None) -> str:
    """The --tracking-uri given, else MLFLOW_TRACKING_URI, else the embedded SQLite store."""
    from fer_experiments.tracking import default_tracking_uri

    return tracking_uri or default_tracking_uri()


def worker_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options every process that runs trials shares: GPU pinning and Optuna heartbeats."""
    f = click.option("--grace-period", type=click.IntRange(min=1), default=180, show_default=True,
                     help="Seconds without a heartbeat before a trial's worker counts as dead (its trial is retried).")(f)
    f = click.option("--heartbeat-interval", type=click.IntRange(min=1), default=60, show_default=True,
                     help="Seconds between a running trial's heartbeats in the Optuna storage.")(f)
    return click.option("--gpu", type=click.IntRange(min=0), default=None,
                        help="Pin this process to one GPU (sets CUDA_VISIBLE_DEVICES); tagged on each trial.")(f)


def pin_gpu(gpu: int | None) -> None:
    """Must happen before the backend (TensorFlow/JAX/torch) is imported, which the commands do lazily."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)


def parse_duration(text: str | None, option: str = "--timeout") -> float | None:
    """'90', '90s', '15m', '6h' -> seconds."""
    from fer_experiments.errors import ConfigError

    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        return float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected seconds or a number with s, m, h or d (e.g. 6h)") from None


def parse_overrides(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``--set NAME=VALUE`` pairs -> a dict of typed values."""
    from fer_experiments.errors import ConfigError

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected NAME=VALUE")
        out[key.strip()] = scalar(raw)
    return out


def scalar(raw: str) -> Any:
    """'3' -> 3, '1e-3' -> 0.001 (YAML 1.1 would keep that a string), 'true' -> True, else YAML's reading."""
    import yaml

    for convert in (int, float):
        try:
            return convert(raw)
        except ValueError:
            pass
    return yaml.safe_load(raw)


def fmt(v: float | None) -> str:
    """A metric for a table: 4 decimals, '-' when missing."""
    return "-" if v is None else f"{v:.4f}"
