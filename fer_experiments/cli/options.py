"""Options several commands share, declared once, and small parsers of option values.

Defaults come from ``fer_experiments.config``; environment variables that set an option are shown in ``--help``.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Callable

import click

from fer_experiments.config import DEFAULT_ALIAS, DEFAULT_MODEL_NAME, DEFAULT_STORAGE, DEFAULT_TRACKING_URI

DATA_ENV = "FER2013_CSV"
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange that also refuses NaN and infinities: every comparison with NaN is False, so a plain
    FloatRange lets ``nan`` through its bounds (and ``inf`` through an open upper one). Every float option uses this."""

    name = "finite float range"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


class Duration(click.ParamType):
    """A duration option: '90', '90s', '15m', '6h', '1d' -> seconds (float), finite and within [min, max]."""

    name = "duration"

    def __init__(self, min_seconds: float = 1.0, max_seconds: float = 30 * 86400.0) -> None:
        self.min_seconds = min_seconds
        self.max_seconds = max_seconds

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (int, float)):
            seconds = float(value)
        else:
            units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
            t = str(value).strip().lower()
            try:
                seconds = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
            except ValueError:
                self.fail(f"{value!r}: expected seconds or a number with s, m, h or d (e.g. 6h)", param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a finite duration.", param, ctx)
        if not self.min_seconds <= seconds <= self.max_seconds:
            self.fail(f"{value!r} is not between {self.min_seconds:g} s and {self.max_seconds / 86400:g} days.",
                      param, ctx)
        return seconds


#: MLflow's alias rules (letters, digits, _ and -; not 'latest', not v<digits>), checked before anything is written.
#: 246 characters: fer-exp also sets ``previous-<alias>`` (MLflow allows 255).
_ALIAS = re.compile(r"^[\w\-]{1,246}$")


class AliasName(click.ParamType):
    """A registered-model alias MLflow accepts, refused at parse time (MLflow itself refuses it only on the write)."""

    name = "alias"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        if not _ALIAS.match(text):
            self.fail(f"{text!r}: an alias is 1-246 letters, digits, '_' or '-'.", param, ctx)
        if text.lower() == "latest" or re.match(r"^[vV]\d+$", text):
            self.fail(f"{text!r} is reserved by MLflow ('latest' and v<number> name versions).", param, ctx)
        return text


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


alias_option = click.option("--alias", type=AliasName(), default=DEFAULT_ALIAS, show_default=True,
                            help="Alias to move.")


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


def parse_overrides(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``--set NAME=VALUE`` pairs -> a dict of typed values."""
    from fer_experiments.errors import ConfigError

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected NAME=VALUE")
        value = scalar(raw)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--set {pair!r}: {raw!r} is not a finite number")
        out[key.strip()] = value
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
