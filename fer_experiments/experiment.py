"""One tracked training: data -> model -> trainer -> metrics -> tracking. Used by ``train`` and by every trial."""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from fer_experiments.config import DataConfig, TrainConfig
from fer_experiments.evaluation.metrics import Evaluation, confusion_csv, format_report
from fer_experiments.params import ModelParams, TrainParams, flat_params

if TYPE_CHECKING:
    from fer_experiments.data import FerDataset, Split
    from fer_experiments.tracking import TrackedRun
    from fer_experiments.training.trainer import EpochObserver, TrainResult


@dataclass(frozen=True)
class TrainingData:
    """The loaded data set and the two splits a training uses (Training possibly subset, PublicTest)."""

    dataset: "FerDataset"
    train: "Split"
    val: "Split"
    limit: int | None


def load_training_data(cfg: DataConfig, dataset: "FerDataset | None" = None) -> TrainingData:
    """Load the data set (cached) and take the stratified Training subset that ``cfg.limit`` asks for."""
    from fer_experiments.data import load_dataset, stratified_subset

    ds = dataset if dataset is not None else load_dataset(cfg.path, cache_dir=cfg.cache_dir)
    train = ds.split("Training")
    if cfg.limit is not None:
        train = stratified_subset(train, cfg.limit, seed=cfg.subset_seed)
    return TrainingData(dataset=ds, train=train, val=ds.split("PublicTest"), limit=cfg.limit)


def base_tags(data: TrainingData) -> dict[str, str | None]:
    """Tags every run gets: code version (None outside a git checkout: not set), backend, data digest, split roles."""
    from fer_experiments.tracking.runs import git_commit
    from fer_experiments.training.backend import backend_name

    commit = git_commit()
    return {
        "mlflow.source.git.commit": commit, "git_commit": commit, "keras_backend": backend_name(),
        "data_digest": data.dataset.digest, "data_source": str(data.dataset.source),
        "selection_split": "PublicTest", "report_split": "PrivateTest",
    }


def tracked_training(run: "TrackedRun", model_params: ModelParams, train_params: TrainParams, data: TrainingData, *,
                     objective: str = "val_accuracy", extra_params: dict[str, Any] | None = None,
                     observers: Sequence["EpochObserver"] = ()) -> "TrainResult":
    """Train inside an open run: log params, data input, per-epoch curves, then the full evaluation and the model."""
    from fer_experiments.training.trainer import train_model

    run.log_params(flat_params(model_params, train_params) | {
        "limit": data.limit, "n_train": len(data.train.y), "n_val": len(data.val.y), "objective": objective,
    } | (extra_params or {}))
    run.log_dataset(name="fer2013", digest=data.dataset.digest, source=str(data.dataset.source), context="training",
                    tags={"splits": "Training (train), PublicTest (selection)"})

    def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
        run.log_metrics(metrics, step=epoch)

    result = train_model(model_params, train_params, data.train, data.val, objective=objective,
                         observers=[log_epoch, *observers])
    log_result(run, result)
    return result


@dataclass
class TrialRun:
    """How one search trial's training ended, engine-neutral: COMPLETE (``result``), FAIL (``failure``) or stopped
    on purpose by the engine (``stopped``, e.g. Optuna's pruning exception)."""

    run_id: str
    epochs_reached: int
    result: "TrainResult | None" = None
    failure: str | None = None
    stopped: BaseException | None = None


def tracked_trial(*, tracking_uri: str, experiment: str, parent_run_id: str, number: int, tags: dict[str, Any],
                  data: TrainingData, values: dict[str, Any], epochs: int, objective: str,
                  extra_params: dict[str, Any], observers: Sequence["EpochObserver"] = (),
                  stop_exceptions: tuple[type[BaseException], ...] = (),
                  on_run: Callable[[str], None] | None = None) -> TrialRun:
    """One search trial as a child MLflow run of the study's parent run, for either engine.

    The run ends FINISHED (trial_state COMPLETE), FAILED (FAIL, with ``fail_reason``: NaN loss, out of memory, an
    invalid combination or any other error of this trial alone) or KILLED (PRUNED, tagged with the epoch reached,
    when an observer raises one of ``stop_exceptions``). Ctrl-C/SIGTERM propagate after tagging the run FAIL.
    """
    from fer_experiments.errors import ConfigError, TrialFailed
    from fer_experiments.params import split_params
    from fer_experiments.tracking import start_run

    reached = {"epoch": 0}

    def count(epoch: int, metrics: dict[str, float]) -> None:
        reached["epoch"] = epoch

    with start_run(tracking_uri, experiment, run_name=f"trial-{number}", tags=base_tags(data) | tags,
                   parent_run_id=parent_run_id) as run:
        if on_run is not None:
            on_run(run.run_id)
        outcome = TrialRun(run_id=run.run_id, epochs_reached=0)
        try:
            model_params, train_params = split_params(values | {"epochs": epochs})
            outcome.result = tracked_training(run, model_params, train_params, data, objective=objective,
                                              extra_params={"trial_number": number} | extra_params,
                                              observers=[count, *observers])
        except stop_exceptions as exc:
            run.set_tags({"trial_state": "PRUNED", "pruned": "true", "pruned_at_epoch": reached["epoch"]})
            # Pruned = stopped on purpose before its last epoch: KILLED, for every pruned trial alike.
            run.final_status = "KILLED"
            outcome.stopped = exc
        except KeyboardInterrupt:
            run.set_tags({"trial_state": "FAIL", "fail_reason": "interrupted"})
            raise
        except (TrialFailed, ConfigError) as exc:
            outcome.failure = str(exc)
        except Exception as exc:  # noqa: BLE001 - an unexpected error fails this trial, not the search
            outcome.failure = f"{type(exc).__name__}: {exc}"
        if outcome.failure is not None:
            outcome.failure = outcome.failure.splitlines()[0][:1000] if outcome.failure else "unknown error"
            run.set_tags({"trial_state": "FAIL", "fail_reason": outcome.failure})
            run.final_status = "FAILED"
        elif outcome.result is not None:
            run.set_tags({"trial_state": "COMPLETE", "objective_value": outcome.result.objective_value})
    outcome.epochs_reached = reached["epoch"]
    return outcome


def log_result(run: "TrackedRun", result: "TrainResult") -> None:
    """Log the selected (best-epoch) evaluation, its artifacts and the model."""
    from fer_experiments.evaluation.plots import learning_curves_figure

    ev = result.evaluation
    run.log_metrics({**ev.per_class_metrics("val"), **{f"best_{k}": v for k, v in ev.summary_metrics("val").items()},
                     "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                     "train_images_per_second": result.images_per_second, "train_seconds": result.train_seconds},
                    step=result.best_epoch)
    log_evaluation_artifacts(run, ev, prefix="evaluation/val")
    run.log_figure(learning_curves_figure(result.history), "learning_curves.png")
    run.log_text(history_csv(result.history), "history.csv")
    run.log_keras_model(result.model)


def log_evaluation_artifacts(run: "TrackedRun", ev: Evaluation, prefix: str) -> None:
    """Confusion matrix (PNG, CSV) and classification report (text, JSON) under ``prefix``."""
    from fer_experiments.evaluation.plots import confusion_figure

    run.log_figure(confusion_figure(ev), f"{prefix}_confusion_matrix.png")
    run.log_text(confusion_csv(ev), f"{prefix}_confusion_matrix.csv")
    run.log_text(format_report(ev), f"{prefix}_classification_report.txt")
    run.log_dict(ev.to_dict(), f"{prefix}_classification_report.json")


def history_csv(history: dict[str, list[float]]) -> str:
    """Per-epoch history as CSV (epoch column first)."""
    buf = io.StringIO()
    keys = list(history)
    writer = csv.writer(buf)
    writer.writerow(["epoch", *keys])
    for i in range(len(history[keys[0]]) if keys else 0):
        writer.writerow([i + 1, *(history[k][i] for k in keys)])
    return buf.getvalue()


def run_training(cfg: TrainConfig, data: TrainingData | None = None,
                 on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> tuple[str, "TrainResult"]:
    """``fer-exp train``: one MLflow run around one training; returns (run_id, result)."""
    from fer_experiments.tracking import start_run

    data = data or load_training_data(cfg.data)
    tags = base_tags(data) | {"preset": cfg.preset or "custom", "fer.kind": "train"}
    started = time.time()
    with start_run(cfg.tracking.tracking_uri, cfg.tracking.experiment, run_name=cfg.run_name, tags=tags) as run:
        result = tracked_training(run, cfg.model, cfg.train, data, objective=cfg.objective,
                                  extra_params={"preset": cfg.preset}, observers=[on_epoch] if on_epoch else [])
        run.set_tags({"wall_seconds": f"{time.time() - started:.1f}"})
    return run.run_id, result
