"""One tracked training: a model trained inside an open MLflow run, with params, the data set as an input,
per-epoch curves, the selected epoch's PublicTest evaluation and artifacts, and the model. Used by ``fer-exp train``
and by every search trial (``fer_experiments.search.lifecycle``).
"""

from __future__ import annotations

import csv
import io
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from fer_experiments.config import TrainConfig
from fer_experiments.evaluation.metrics import Evaluation, confusion_csv, format_report
from fer_experiments.params import ModelParams, TrainParams, flat_params
from fer_experiments.tracking import tags
from fer_experiments.tracking.exported import log_exported_model
from fer_experiments.tracking.runs import TrackedRun, command_source, git_commit, start_run

if TYPE_CHECKING:
    from fer_experiments.data import TrainingData
    from fer_experiments.training.trainer import BatchObserver, EpochObserver, TrainResult


def base_tags(data: "TrainingData") -> dict[str, str | None]:
    """Tags every run gets: code version (None outside a git checkout: not set), backend, data digest, split roles."""
    from fer_experiments.training.backend import backend_name

    commit = git_commit()
    return {
        tags.MLFLOW_GIT_COMMIT: commit, tags.GIT_COMMIT: commit, tags.KERAS_BACKEND: backend_name(),
        tags.DATA_DIGEST: data.dataset.digest, tags.DATA_SOURCE: _absolute(str(data.dataset.source)),
        tags.SELECTION_SPLIT: "PublicTest", tags.REPORT_SPLIT: "PrivateTest",
        tags.MLFLOW_SOURCE_NAME: command_source(), tags.MLFLOW_SOURCE_TYPE: "LOCAL",
    }


def _absolute(path: str) -> str:
    """A data set's path as an absolute one (``promote`` finds it from any folder), URIs unchanged."""
    from pathlib import Path

    return path if "://" in path else str(Path(path).resolve())


def tracked_training(run: TrackedRun, model_params: ModelParams, train_params: TrainParams, data: "TrainingData", *,
                     objective: str = "val_accuracy", extra_params: dict[str, Any] | None = None,
                     observers: Sequence["EpochObserver"] = (), on_batch: "BatchObserver | None" = None,
                     fit: Callable[..., "TrainResult"] | None = None,
                     initial_weights: Sequence[Any] | None = None) -> "TrainResult":
    """Train inside an open run: log params, data input, per-epoch curves, then the full evaluation and the model.

    ``fit`` replaces ``trainer.train_model`` (same signature), e.g. a distillation (``training.distill``).
    ``initial_weights`` continue an earlier training (``trainer.train_model``'s argument).
    """
    from fer_experiments.training.trainer import train_model

    run.log_params(flat_params(model_params, train_params) | {
        tags.PARAM_LIMIT: data.limit, tags.PARAM_N_TRAIN: len(data.train.y), tags.PARAM_N_VAL: len(data.val.y),
        tags.OBJECTIVE: objective,
    } | (extra_params or {}))
    run.log_dataset(name="fer2013", digest=data.dataset.digest, source=str(data.dataset.source), context="training",
                    tags={"splits": "Training (train), PublicTest (selection)"})

    def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
        run.log_metrics(metrics, step=epoch)

    warm = {} if initial_weights is None else {"initial_weights": initial_weights}
    result = (fit or train_model)(model_params, train_params, data.train, data.val, objective=objective,
                                  observers=[log_epoch, *observers], on_batch=on_batch, **warm)
    log_result(run, result)
    return result


def log_result(run: TrackedRun, result: "TrainResult") -> None:
    """Log the selected (best-epoch) evaluation, its artifacts and the model."""
    from fer_experiments.evaluation.plots import learning_curves_figure

    best = log_selection_evaluation(run, result.evaluation, {
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        tags.TRAIN_IMAGES_PER_SECOND: result.images_per_second, tags.TRAIN_SECONDS: result.train_seconds,
        tags.TRAIN_IMAGES_SEEN: result.images_seen}, step=result.best_epoch)
    run.log_figure(learning_curves_figure(result.history), "learning_curves.png")
    run.log_text(history_csv(result.history), "history.csv")
    run.log_keras_model(result.model, metrics=best, step=result.best_epoch)
    log_exported_model(run, result.model)  # the ONNX graph serving runs, beside the Keras model


def log_selection_evaluation(run: TrackedRun, ev: Evaluation, extra: dict[str, float] | None = None,
                             step: int = 0) -> dict[str, float]:
    """The logged model's PublicTest evaluation: per-class ``val_*`` metrics, ``best_val_accuracy`` (what the
    promote guard compares), ``best_val_macro_f1``, ``best_val_loss``, and its artifacts under ``evaluation/val``.
    Returns the ``best_*`` metrics (to link to the logged model)."""
    best = {f"best_{k}": v for k, v in ev.summary_metrics("val").items()}
    run.log_metrics({**ev.per_class_metrics("val"), **best, **(extra or {})}, step=step)
    log_evaluation_artifacts(run, ev, prefix="evaluation/val")
    return best


def log_evaluation_artifacts(run: TrackedRun, ev: Evaluation, prefix: str) -> None:
    """Confusion matrix (PNG, CSV) and classification report (text, JSON) under ``prefix``."""
    from fer_experiments.evaluation.plots import confusion_figure

    run.log_figure(confusion_figure(ev), f"{prefix}_confusion_matrix.png")
    run.log_text(confusion_csv(ev), f"{prefix}_confusion_matrix.csv")
    run.log_text(format_report(ev), f"{prefix}_classification_report.txt")
    run.log_dict(ev.to_dict(), f"{prefix}_classification_report.json")
    # The same report as an MLflow table: the run's artifact view shows it as a sortable table.
    run.log_table(classification_rows(ev), f"{prefix}_classification_table.json")


def classification_rows(ev: Evaluation) -> list[dict[str, Any]]:
    """The classification report as table rows: one per class (precision, recall, F1, support), then the averages."""
    report = ev.to_dict()["report"]
    rows = [{"class": name, "precision": float(c["precision"]), "recall": float(c["recall"]),
             "f1": float(c["f1-score"]), "support": int(c["support"])}
            for name, c in report.items() if isinstance(c, dict)]
    rows.append({"class": "accuracy", "precision": None, "recall": None, "f1": float(ev.accuracy), "support": ev.n})
    return rows


def history_csv(history: dict[str, list[float]]) -> str:
    """Per-epoch history as CSV (epoch column first)."""
    buf = io.StringIO()
    keys = list(history)
    writer = csv.writer(buf)
    writer.writerow(["epoch", *keys])
    for i in range(len(history[keys[0]]) if keys else 0):
        writer.writerow([i + 1, *(history[k][i] for k in keys)])
    return buf.getvalue()


def run_training(cfg: TrainConfig, data: "TrainingData | None" = None,
                 on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> tuple[str, "TrainResult"]:
    """``fer-exp train``: one MLflow run around one training; returns (run_id, result)."""
    from fer_experiments.data import load_training_data

    data = data or load_training_data(cfg.data)
    run_tags = base_tags(data) | {tags.PRESET: cfg.preset or "custom", tags.KIND: tags.KIND_TRAIN}
    started = time.time()
    with start_run(cfg.tracking.tracking_uri, cfg.tracking.experiment, run_name=cfg.run_name, tags=run_tags) as run:
        result = tracked_training(run, cfg.model, cfg.train, data, objective=cfg.objective,
                                  extra_params={tags.PRESET: cfg.preset}, observers=[on_epoch] if on_epoch else [])
        run.set_tags({tags.WALL_SECONDS: f"{time.time() - started:.1f}"})
    return run.run_id, result
