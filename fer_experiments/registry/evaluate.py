"""Evaluate a logged, registered or local model on one split: load -> predict -> metrics (``fer-exp evaluate``
and the promote guard's PrivateTest report)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fer_experiments.evaluation.metrics import Evaluation, evaluate_probabilities

if TYPE_CHECKING:
    from fer_experiments.data import FerDataset, Split


@dataclass(frozen=True, eq=False)
class SplitPredictions:
    """A model's metrics on a split together with what they came from: the split and the (N, 7) probabilities."""

    evaluation: Evaluation
    split: "Split"
    probabilities: np.ndarray


def predict_split(model_uri: str, dataset: "FerDataset", split: str,
                  tracking_uri: str | None = None) -> SplitPredictions:
    """Load ``model_uri``, predict every face of ``split`` and compute the metrics (one pass over the data)."""
    from fer_experiments.models.predict import predict_proba
    from fer_experiments.tracking.model_io import load_keras_model

    part = dataset.split(split)
    model = load_keras_model(model_uri, tracking_uri)
    probs = predict_proba(model, part.x)
    return SplitPredictions(evaluate_probabilities(part.y, probs, split), part, probs)


def evaluate_model(model_uri: str, dataset: "FerDataset", split: str, tracking_uri: str | None = None) -> Evaluation:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix of ``model_uri`` on ``split``."""
    return predict_split(model_uri, dataset, split, tracking_uri).evaluation
