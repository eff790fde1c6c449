"""Evaluate a logged, registered or local model on one split: load -> predict -> metrics (``fer-exp evaluate``
and the promote guard's PrivateTest report)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fer_experiments.evaluation.metrics import Evaluation, evaluate_probabilities

if TYPE_CHECKING:
    from fer_experiments.data import FerDataset


def evaluate_model(model_uri: str, dataset: "FerDataset", split: str, tracking_uri: str | None = None) -> Evaluation:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix of ``model_uri`` on ``split``."""
    from fer_experiments.models.predict import predict_proba
    from fer_experiments.tracking.model_io import load_keras_model

    part = dataset.split(split)
    model = load_keras_model(model_uri, tracking_uri)
    return evaluate_probabilities(part.y, predict_proba(model, part.x), split)
