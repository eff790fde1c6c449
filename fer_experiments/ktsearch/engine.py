"""``fer-exp search --engine keras-tuner``: keras-tuner's tuners drive the search, fer-exp trains and tracks.

Each keras-tuner trial runs the same tracked training as an Optuna trial (a child MLflow run with params, per-epoch
curves, per-class metrics, artifacts and the model) under one parent run per study, so both engines' trials sit
side by side in ``mlflow ui`` and ``fer-exp promote --study`` works for either. keras-tuner's own project folder
lives under the MLflow store folder (``mlruns/keras-tuner/<study>``); running the command again resumes it.

keras-tuner marks a trial whose ``run_trial`` raised as FAILED/INVALID and still reports a "best" when every trial
failed: this engine counts COMPLETED trials itself and fails loudly when there are none.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import keras_tuner

from fer_experiments.config import DataConfig, SearchConfig
from fer_experiments.errors import ConfigError, DataError, FatalError

if TYPE_CHECKING:
    from fer_experiments.experiment import TrainingData
    from fer_experiments.spaces import SearchSpace

TUNERS: tuple[str, ...] = ("hyperband", "bayesian", "random")

# keras-tuner prints every failed trial's traceback while this is on (its default); fer-exp reports failures
# itself, one line each, in MLflow and in the summary.
from keras_tuner.src import config as _kt_config  # noqa: E402 - no public switch for it

_kt_config.DEBUG = False
ENGINE = "keras-tuner"


class BudgetSpent(keras_tuner.errors.FatalError):
    """Raised from run_trial to end ``tuner.search`` once the trial or epoch budget is used up."""


@dataclass
class KtOutcome:
    """What a keras-tuner search did; mirrors the Optuna runner's outcome."""

    study: str
    parent_run_id: str
    complete: int = 0
    failed: int = 0
    best_value: float | None = None
    best_trial: int | None = None
    best_run_id: str | None = None
    registered_version: str | None = None
    epochs_spent: int = 0
    #: (cumulative epochs, best value so far) after each trial, for engine comparisons
    curve: list[tuple[int, float | None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def project_dir(tracking_uri: str) -> Path:
    """keras-tuner's folder: beside the MLflow SQLite store, else ``mlruns/keras-tuner``."""
    from fer_experiments.locks import sqlite_file
    from fer_experiments.tracking.store import DEFAULT_STORE_DIR

    db = sqlite_file(tracking_uri)
    return (db.parent if db is not None else Path(DEFAULT_STORE_DIR)) / "keras-tuner"


class _SpaceHyperModel(keras_tuner.HyperModel):
    """Declares the YAML space on keras-tuner's ``hp``; the model itself is built by fer-exp's trainer."""

    def __init__(self, space: "SearchSpace") -> None:
        super().__init__(name=space.name)
        self.space = space

    def build(self, hp: keras_tuner.HyperParameters) -> None:
        from fer_experiments.spaces import define_kt

        define_kt(self.space, hp)


def _tuner_class(name: str) -> type:
    base = {"hyperband": keras_tuner.Hyperband, "bayesian": keras_tuner.BayesianOptimization,
            "random": keras_tuner.RandomSearch}[name]

    class FerTuner(base):  # type: ignore[misc, valid-type]
        """``run_trial`` trains with fer-exp's trainer inside a child MLflow run and returns the objective."""

        def __init__(self, runner: "_Runner", **kwargs: Any) -> None:
            self.fer_runner = runner
            super().__init__(**kwargs)

        def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> dict[str, float]:
            return self.fer_runner(trial)

    return FerTuner


@dataclass
class _Runner:
    space: "SearchSpace"
    data: "TrainingData"
    cfg: SearchConfig
    experiment: str
    parent_run_id: str
    n_trials: int
    epoch_budget: int | None
    on_epoch: Callable[[int, int, int, dict[str, float]], None] | None
    outcome: KtOutcome
    on_trial: Callable[[KtOutcome], None] | None = None
    started_trials: int = 0
    #: time.monotonic() after which no new trial starts (--timeout)
    deadline: float | None = None

    def __call__(self, trial: Any) -> dict[str, float]:
        from fer_experiments.experiment import tracked_trial
        from fer_experiments.spaces import define_kt, epochs_for

        if self.started_trials >= self.n_trials or (
                self.epoch_budget is not None and self.outcome.epochs_spent >= self.epoch_budget) or (
                self.deadline is not None and time.monotonic() >= self.deadline):
            raise BudgetSpent("budget spent")
        self.started_trials += 1
        number = int(trial.trial_id)
        hp = trial.hyperparameters
        values = define_kt(self.space, hp)
        # Hyperband hands each trial its epochs; fer-exp trains from scratch rather than from a checkpoint.
        epochs = int(hp.values.get("tuner/epochs", epochs_for(self.space, values)))
        tags = {
            "fer.kind": "trial", "fer.engine": ENGINE, "study": self.cfg.study, "trial_number": number,
            "keras_tuner_trial_id": trial.trial_id, "host": socket.gethostname(),
            "gpu": str(self.cfg.gpu) if self.cfg.gpu is not None else os.environ.get("FER_EXP_GPU_LABEL")}

        def observe(epoch: int, metrics: dict[str, float]) -> None:
            if self.on_epoch is not None:
                self.on_epoch(number, epoch, epochs, metrics)

        done = tracked_trial(
            tracking_uri=self.cfg.tracking_uri, experiment=self.experiment, parent_run_id=self.parent_run_id,
            number=number, tags=tags, data=self.data, values=values, epochs=epochs, objective=self.space.objective,
            extra_params={"space": self.space.name, "engine": ENGINE}, observers=[observe])
        result, failure = done.result, done.failure
        out = self.outcome
        out.epochs_spent += done.epochs_reached
        if result is not None:
            out.complete += 1
            if out.best_value is None or result.objective_value > out.best_value:
                out.best_value, out.best_trial, out.best_run_id = result.objective_value, number, done.run_id
        else:
            out.failed += 1
        out.curve.append((out.epochs_spent, out.best_value))
        if self.on_trial is not None:
            self.on_trial(out)
        if result is None:
            raise keras_tuner.errors.FailedTrialError(f"trial {number}: {failure}")
        return {self.space.objective: result.objective_value}


def _parent_run(cfg: SearchConfig, experiment: str, space: "SearchSpace", digest: str, tuner: str,
                limit: int | None) -> str:
    """The study's parent run: found by its tags (a resumed study), else created."""
    from fer_experiments.tracking import create_run, find_runs
    from fer_experiments.tracking.runs import git_commit

    found = find_runs(cfg.tracking_uri, experiment, filter_string=(
        f"tags.`fer.kind` = 'study' and tags.study = '{cfg.study}' and tags.`fer.engine` = '{ENGINE}'"))
    if found:
        if found[0].tags.get("space_hash") != space.content_hash():
            raise ConfigError(f"{space.source}: this search space differs from the one keras-tuner study "
                              f"{cfg.study!r} was created with; start a new study with another --study name")
        if found[0].tags.get("data_digest") != digest:
            raise DataError(f"study {cfg.study!r} was created on other data (digest "
                            f"{found[0].tags.get('data_digest', '')[:12]}); point --data at the same data set")
        if found[0].tags.get("train_limit") != str(limit):
            raise ConfigError(f"--limit {limit}: keras-tuner study {cfg.study!r} trains on limit "
                              f"{found[0].tags.get('train_limit')}; use the same, or start a new study")
        return found[0].run_id
    return create_run(cfg.tracking_uri, experiment, f"study-{cfg.study}", tags={
        "fer.kind": "study", "fer.engine": ENGINE, "keras_tuner": tuner, "study": cfg.study,
        "space_file": str(space.source), "space_hash": space.content_hash(), "space_name": space.name,
        "data_digest": digest, "train_limit": str(limit), "git_commit": git_commit(), "objective": space.objective})


def run_kt_search(cfg: SearchConfig, tuner: str = "hyperband", *, space: "SearchSpace | None" = None,
                  epoch_budget: int | None = None, seed: int | None = None, overwrite: bool = False,
                  on_epoch: Callable[[int, int, int, dict[str, float]], None] | None = None,
                  on_trial: Callable[[KtOutcome], None] | None = None, register: bool = True) -> KtOutcome:
    """Run a keras-tuner search of ``cfg.n_trials`` trials (or until ``epoch_budget`` epochs) over the space."""
    from fer_experiments.data import load_dataset
    from fer_experiments.experiment import load_training_data
    from fer_experiments.spaces import load_space, resolve_space_path
    from fer_experiments.tracking import TrackedRun, prepare_store, set_status

    if tuner not in TUNERS:
        raise ConfigError(f"--tuner must be one of {', '.join(TUNERS)}; got {tuner!r}")
    if space is None:
        if cfg.space_path is None:
            raise ConfigError("--space is required with --engine keras-tuner")
        space = load_space(resolve_space_path(cfg.space_path))
    prepare_store(cfg.tracking_uri)
    dataset = load_dataset(cfg.data.path, cache_dir=cfg.data.cache_dir)
    limit = cfg.data.limit if cfg.data.limit is not None else space.train_limit
    data = load_training_data(DataConfig(path=cfg.data.path, limit=limit, subset_seed=cfg.data.subset_seed,
                                         cache_dir=cfg.data.cache_dir), dataset)
    experiment = cfg.experiment or cfg.study
    parent_id = _parent_run(cfg, experiment, space, dataset.digest, tuner, limit)
    n_trials = cfg.n_trials or 10**9
    outcome = KtOutcome(study=cfg.study, parent_run_id=parent_id)
    runner = _Runner(space=space, data=data, cfg=cfg, experiment=experiment, parent_run_id=parent_id,
                     n_trials=n_trials, epoch_budget=epoch_budget, on_epoch=on_epoch, outcome=outcome,
                     on_trial=on_trial)
    if seed is None:
        seed = space.sampler.get("seed")
        seed = 42 if seed is None else int(seed)
    runner.deadline = None if cfg.timeout_seconds is None else time.monotonic() + cfg.timeout_seconds
    final = "FAILED"
    # From here on the parent run is RUNNING; every way out below gives it a terminal status.
    set_status(cfg.tracking_uri, parent_id, "RUNNING")
    try:
        common: dict[str, Any] = dict(
            hypermodel=_SpaceHyperModel(space), objective=keras_tuner.Objective(space.objective, direction="max"),
            seed=seed, directory=str(project_dir(cfg.tracking_uri)), project_name=cfg.study, overwrite=overwrite,
            max_consecutive_failed_trials=cfg.max_consecutive_failures)
        if tuner == "hyperband":
            # Many Hyperband iterations: the trial or epoch budget, not the bracket schedule, ends the search.
            kt = _tuner_class(tuner)(runner, max_epochs=space.max_epochs, factor=3, hyperband_iterations=1000,
                                     **common)
        else:
            kt = _tuner_class(tuner)(runner, max_trials=n_trials if cfg.n_trials else 100, **common)
        before = _count(kt)
        runner.started_trials = before["COMPLETED"] + before["FAILED"] + before["INVALID"]
        try:
            kt.search(verbose=0)
        except BudgetSpent:
            pass
        except keras_tuner.errors.FatalError as exc:
            outcome.notes.append(f"keras-tuner stopped: {str(exc).splitlines()[0][:300]}")
        except RuntimeError as exc:
            if "consecutive failures" not in str(exc):
                raise
            # keras-tuner's own consecutive-failure limit: report it as ours (a fatal stop with the reason).
            raise FatalError(f"keras-tuner search {cfg.study!r} stopped after {cfg.max_consecutive_failures} "
                             f"consecutive failed trials (last reason: {_last_failure(kt)})") from None
        final = "FINISHED"
    except KeyboardInterrupt:
        final = "KILLED"
        raise
    finally:
        set_status(cfg.tracking_uri, parent_id, final)
    counts = _count(kt)
    outcome.complete, outcome.failed = counts["COMPLETED"], counts["FAILED"] + counts["INVALID"]
    _best_from_oracle(kt, outcome, cfg, experiment)
    parent = TrackedRun(parent_id, cfg.tracking_uri)
    parent.log_metrics({"complete_trials": outcome.complete, "failed_trials": outcome.failed,
                        "epochs_spent": outcome.epochs_spent} | (
                           {"best_value": outcome.best_value} if outcome.best_value is not None else {}))
    if outcome.complete == 0:
        # keras-tuner would still name a "best" trial here; an all-failed search is a failure.
        set_status(cfg.tracking_uri, parent_id, "FAILED")
        raise FatalError(f"keras-tuner search {cfg.study!r}: no trial completed ({outcome.failed} failed; "
                         f"last reason: {_last_failure(kt)})")
    if register:
        outcome.registered_version = _register_challenger(cfg, outcome, parent)
    return outcome


def _count(kt: Any) -> dict[str, int]:
    counts = {"COMPLETED": 0, "FAILED": 0, "INVALID": 0, "RUNNING": 0, "IDLE": 0, "STOPPED": 0}
    for t in kt.oracle.trials.values():
        counts[str(t.status)] = counts.get(str(t.status), 0) + 1
    return counts


def _last_failure(kt: Any) -> str:
    failed = [t for t in kt.oracle.trials.values() if str(t.status) in ("FAILED", "INVALID")]
    if not failed:
        return "none"
    # keras-tuner keeps the traceback; its last line is "FailedTrialError: trial N: <reason>".
    message = (failed[-1].message or "").strip().splitlines()
    return message[-1].split("FailedTrialError: ", 1)[-1][:300] if message else "unknown"


def _best_from_oracle(kt: Any, outcome: KtOutcome, cfg: SearchConfig, experiment: str) -> None:
    """The best COMPLETED trial over the whole study (this command's trials and earlier ones)."""
    from fer_experiments.tracking import find_runs

    runs = find_runs(cfg.tracking_uri, experiment, filter_string=(
        f"tags.study = '{cfg.study}' and tags.`fer.engine` = '{ENGINE}' and tags.trial_state = 'COMPLETE'"))
    best = None
    for r in runs:
        value = float(r.tags.get("objective_value", "nan"))
        if best is None or value > best[0]:
            best = (value, int(r.tags["trial_number"]), r.run_id)
    if best is not None:
        outcome.best_value, outcome.best_trial, outcome.best_run_id = best


def _register_challenger(cfg: SearchConfig, outcome: KtOutcome, parent: Any) -> str | None:
    """Register the best COMPLETE trial's model as ``challenger`` when it is a new best of the study."""
    from fer_experiments.tracking import get_run
    from fer_experiments.tracking.registry import register_run_model, set_alias

    if outcome.best_run_id is None:
        return None
    if get_run(cfg.tracking_uri, parent.run_id).tags.get("fer.challenger_run") == outcome.best_run_id:
        return None
    version, _ = register_run_model(cfg.tracking_uri, cfg.model_name, outcome.best_run_id, tags={
        "study": cfg.study, "trial": outcome.best_trial, "engine": ENGINE, "objective_value": outcome.best_value})
    set_alias(cfg.tracking_uri, cfg.model_name, "challenger", version.version)
    parent.set_tags({"fer.challenger_run": outcome.best_run_id})
    return version.version
