"""Typed, frozen configuration objects: built once by the CLI from its options, passed down unchanged."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from fer_experiments.errors import ConfigError
from fer_experiments.params import ModelParams, TrainParams

#: The embedded defaults: MLflow's and Optuna's SQLite files and MLflow's artifacts live in this folder.
DEFAULT_STORE_DIR = "mlruns"
DEFAULT_TRACKING_URI = f"sqlite:///{DEFAULT_STORE_DIR}/mlflow.db"
DEFAULT_STORAGE = f"sqlite:///{DEFAULT_STORE_DIR}/optuna.db"
DEFAULT_MODEL_NAME = "fer-cnn"
DEFAULT_ALIAS = "champion"
#: The alias a search moves to its study's best model.
DEFAULT_CHALLENGER_ALIAS = "challenger"
DEFAULT_EXPERIMENT = "fer-exp"
DEFAULT_MODEL_URI = f"models:/{DEFAULT_MODEL_NAME}@{DEFAULT_ALIAS}"
#: Study names become MLflow experiment names, run names, registry tags and file names (keras-tuner's folders):
#: letters, digits, '_', '.', '-', starting with a letter or digit, at most this long.
MAX_STUDY_NAME = 100
_STUDY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_study_name(name: str) -> str:
    """``name`` if it is a valid study name, else ConfigError (checked before any store or study is created)."""
    shown = repr(name[:40] + "...") if len(name) > 40 else repr(name)
    if not name:
        raise ConfigError("--study: the study name is empty")
    if len(name) > MAX_STUDY_NAME:
        raise ConfigError(f"--study {shown}: the study name has {len(name)} characters; at most {MAX_STUDY_NAME}")
    if not _STUDY_NAME_RE.match(name):
        raise ConfigError(f"--study {shown}: a study name takes letters, digits, '_', '.' and '-', "
                          "and starts with a letter or digit")
    return name


@dataclass(frozen=True)
class DataConfig:
    """Which data to load and how much of Training to use."""

    path: str
    #: Stratified subset of this many Training rows (None = all).
    limit: int | None = None
    #: Seed of the subset (independent of the training seed so both can vary alone).
    subset_seed: int = 42
    cache_dir: str | None = None


@dataclass(frozen=True)
class TrackingConfig:
    """Where runs (and registered models) go."""

    tracking_uri: str
    experiment: str = DEFAULT_EXPERIMENT


@dataclass(frozen=True)
class TrainConfig:
    """One tracked training run (``fer-exp train``)."""

    data: DataConfig
    tracking: TrackingConfig
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    preset: str | None = None
    objective: str = "val_accuracy"
    run_name: str | None = None


@dataclass(frozen=True)
class SearchConfig:
    """One ``fer-exp search`` (or ``worker``) command."""

    data: DataConfig
    tracking_uri: str
    study: str
    storage: str
    #: The YAML space; None to join an existing study and use the space it stores.
    space_path: str | None
    #: The study's total of finished (COMPLETE + PRUNED) trials to reach; None = the study's own (workers).
    n_trials: int | None
    #: MLflow experiment; None = the study's (its name when it is created).
    experiment: str | None = None
    timeout_seconds: float | None = None
    enqueue: tuple[str, ...] = ()
    max_consecutive_failures: int = 5
    model_name: str = DEFAULT_MODEL_NAME
    #: Optuna heartbeat (seconds) and grace period: a dead worker's trial is failed and retried after the grace.
    heartbeat_interval: int = 60
    grace_period: int = 180
    #: GPU index this worker is pinned to (tagged on its runs), or None.
    gpu: int | None = None
    #: ``--budget``: the wall-clock time (``time.time()``) by which the whole command, refit included, must end.
    budget_deadline: float | None = None
    #: ``--budget``'s length in seconds (a space's ``trial_budget: "6%"`` is a share of it).
    budget_seconds: float | None = None
    #: ``--refit/--no-refit``: retrain the best trials after the search; None = when the space has ``refit:``.
    refit: bool | None = None

    def __post_init__(self) -> None:
        check_study_name(self.study)
