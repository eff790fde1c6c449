"""Classification metrics as plain numpy / scikit-learn functions of labels and probabilities."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fer_experiments import EXPRESSIONS, NUM_CLASSES


@dataclass(frozen=True)
class Evaluation:
    """Everything measured on one split: accuracy, loss, macro-F1, per-class P/R/F1/support, confusion matrix."""

    split: str
    accuracy: float
    loss: float
    macro_f1: float
    precision: tuple[float, ...]
    recall: tuple[float, ...]
    f1: tuple[float, ...]
    support: tuple[int, ...]
    #: rows = true label, columns = predicted label
    confusion: tuple[tuple[int, ...], ...] = field(repr=False)

    @property
    def n(self) -> int:
        return int(sum(self.support))

    def per_class_metrics(self, prefix: str = "val") -> dict[str, float]:
        """MLflow metric names such as ``val_precision_angry``, ``val_recall_disgust``, ``val_f1_fear``."""
        out: dict[str, float] = {}
        for i, name in enumerate(EXPRESSIONS):
            key = name.lower()
            out[f"{prefix}_precision_{key}"] = self.precision[i]
            out[f"{prefix}_recall_{key}"] = self.recall[i]
            out[f"{prefix}_f1_{key}"] = self.f1[i]
        return out

    def summary_metrics(self, prefix: str = "val") -> dict[str, float]:
        """``{prefix}_accuracy``, ``{prefix}_loss`` and ``{prefix}_macro_f1``."""
        return {f"{prefix}_accuracy": self.accuracy, f"{prefix}_loss": self.loss, f"{prefix}_macro_f1": self.macro_f1}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, keyed like scikit-learn's ``classification_report(output_dict=True)`` plus extras."""
        report: dict[str, Any] = {
            name: {"precision": self.precision[i], "recall": self.recall[i], "f1-score": self.f1[i],
                   "support": self.support[i]}
            for i, name in enumerate(EXPRESSIONS)
        }
        n = self.n
        weights = np.asarray(self.support, dtype=float) / max(n, 1)
        report["accuracy"] = self.accuracy
        report["macro avg"] = {"precision": float(np.mean(self.precision)), "recall": float(np.mean(self.recall)),
                               "f1-score": self.macro_f1, "support": n}
        report["weighted avg"] = {"precision": float(weights @ np.asarray(self.precision)),
                                  "recall": float(weights @ np.asarray(self.recall)),
                                  "f1-score": float(weights @ np.asarray(self.f1)), "support": n}
        return {"split": self.split, "n": n, "accuracy": self.accuracy, "loss": self.loss, "macro_f1": self.macro_f1,
                "labels": list(EXPRESSIONS), "report": report, "confusion_matrix": [list(r) for r in self.confusion]}


def evaluate_probabilities(y_true: np.ndarray, proba: np.ndarray, split: str) -> Evaluation:
    """Measure predicted class probabilities ``proba`` (N, 7) against integer labels ``y_true`` (N,)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape != (len(y_true), NUM_CLASSES):
        raise ValueError(f"expected probabilities of shape ({len(y_true)}, {NUM_CLASSES}), got {proba.shape}")
    y_pred = proba.argmax(axis=1)
    labels = list(range(NUM_CLASSES))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    return Evaluation(
        split=split,
        accuracy=float(np.mean(y_pred == y_true)) if len(y_true) else math.nan,
        loss=cross_entropy(y_true, proba),
        macro_f1=float(np.mean(f)),
        precision=tuple(float(v) for v in p),
        recall=tuple(float(v) for v in r),
        f1=tuple(float(v) for v in f),
        support=tuple(int(v) for v in s),
        confusion=tuple(tuple(int(v) for v in row) for row in cm),
    )


def cross_entropy(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (NaN if any probability is NaN)."""
    if len(y_true) == 0:
        return math.nan
    picked = proba[np.arange(len(y_true)), y_true]
    return float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0))))


def format_report(ev: Evaluation, digits: int = 4) -> str:
    """The per-class table in the layout of scikit-learn's ``classification_report``, headed by the split."""
    d = ev.to_dict()["report"]
    width = max(len(n) for n in (*EXPRESSIONS, "weighted avg"))
    head = f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}"
    lines = [f"split: {ev.split}  n={ev.n}  accuracy={ev.accuracy:.{digits}f}  macro-F1={ev.macro_f1:.{digits}f}  "
             f"loss={ev.loss:.{digits}f}", "", head, ""]
    for name in EXPRESSIONS:
        row = d[name]
        lines.append(f"{name:>{width}} {row['precision']:>9.{digits}f} {row['recall']:>9.{digits}f} "
                     f"{row['f1-score']:>9.{digits}f} {row['support']:>9}")
    lines.append("")
    lines.append(f"{'accuracy':>{width}} {'':>9} {'':>9} {ev.accuracy:>9.{digits}f} {ev.n:>9}")
    for avg in ("macro avg", "weighted avg"):
        row = d[avg]
        lines.append(f"{avg:>{width}} {row['precision']:>9.{digits}f} {row['recall']:>9.{digits}f} "
                     f"{row['f1-score']:>9.{digits}f} {row['support']:>9}")
    return "\n".join(lines) + "\n"


def confusion_csv(ev: Evaluation) -> str:
    """The confusion matrix as CSV: a header of predicted labels, one row per true label."""
    rows = ["true\\pred," + ",".join(EXPRESSIONS)]
    rows += [f"{EXPRESSIONS[i]}," + ",".join(str(v) for v in row) for i, row in enumerate(ev.confusion)]
    return "\n".join(rows) + "\n"
