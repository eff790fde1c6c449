"""Evaluation metrics against scikit-learn on a hand-made case, report/CSV layouts, and PNG figures."""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import classification_report, confusion_matrix

from fer_experiments import EXPRESSIONS, NUM_CLASSES
from fer_experiments.evaluation.metrics import (
    confusion_csv,
    cross_entropy,
    evaluate_probabilities,
    format_report,
)
from fer_experiments.evaluation.plots import confusion_figure, learning_curves_figure, save_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABELS = list(range(NUM_CLASSES))

# Disgust (1) has no true example but is predicted once; Fear (2) is never predicted correctly.
Y_TRUE = np.array([0, 0, 0, 2, 2, 3, 3, 3, 3, 4, 4, 5, 6, 6, 6])
Y_PRED = np.array([0, 0, 3, 1, 0, 3, 3, 3, 6, 4, 3, 5, 6, 6, 4])


def _proba(y_pred: np.ndarray, top: float = 0.64) -> np.ndarray:
    p = np.full((len(y_pred), NUM_CLASSES), (1 - top) / (NUM_CLASSES - 1))
    p[np.arange(len(y_pred)), y_pred] = top
    return p


@pytest.fixture(scope="module")
def ev():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zero_division must be handled: no UndefinedMetricWarning
        return evaluate_probabilities(Y_TRUE, _proba(Y_PRED), "PublicTest")


@pytest.fixture(scope="module")
def sk() -> dict:
    return classification_report(Y_TRUE, Y_PRED, labels=LABELS, target_names=list(EXPRESSIONS), zero_division=0,
                                 output_dict=True)


def test_matches_sklearn(ev, sk) -> None:
    assert ev.split == "PublicTest"
    assert ev.n == len(Y_TRUE)
    assert ev.accuracy == pytest.approx(np.mean(Y_TRUE == Y_PRED)) == pytest.approx(sk["accuracy"])
    for i, name in enumerate(EXPRESSIONS):
        assert ev.precision[i] == pytest.approx(sk[name]["precision"]), name
        assert ev.recall[i] == pytest.approx(sk[name]["recall"]), name
        assert ev.f1[i] == pytest.approx(sk[name]["f1-score"]), name
        assert ev.support[i] == sk[name]["support"], name
    assert ev.macro_f1 == pytest.approx(sk["macro avg"]["f1-score"])
    assert ev.confusion == tuple(map(tuple, confusion_matrix(Y_TRUE, Y_PRED, labels=LABELS).tolist()))
    assert sum(map(sum, ev.confusion)) == ev.n


def test_class_without_support(ev) -> None:
    disgust = EXPRESSIONS.index("Disgust")
    assert ev.support[disgust] == 0
    assert ev.precision[disgust] == 0.0 and ev.recall[disgust] == 0.0 and ev.f1[disgust] == 0.0
    # the zero class still counts in the macro average, as scikit-learn does
    assert ev.macro_f1 == pytest.approx(sum(ev.f1) / NUM_CLASSES)
    assert all(math.isfinite(v) for v in (*ev.precision, *ev.recall, *ev.f1))


def test_to_dict_matches_sklearn_and_is_json(ev, sk) -> None:
    d = ev.to_dict()
    again = json.loads(json.dumps(d))
    assert again == d
    assert d["labels"] == list(EXPRESSIONS)
    assert d["n"] == len(Y_TRUE) and d["split"] == "PublicTest"
    assert d["confusion_matrix"] == confusion_matrix(Y_TRUE, Y_PRED, labels=LABELS).tolist()
    for key in ("macro avg", "weighted avg"):
        for metric in ("precision", "recall", "f1-score", "support"):
            assert d["report"][key][metric] == pytest.approx(sk[key][metric]), (key, metric)
    assert d["report"]["accuracy"] == pytest.approx(sk["accuracy"])


def test_per_class_metric_names(ev) -> None:
    m = ev.per_class_metrics("val")
    assert len(m) == 21
    expected = {f"val_{kind}_{name.lower()}" for kind in ("precision", "recall", "f1") for name in EXPRESSIONS}
    assert set(m) == expected
    assert "val_precision_angry" in m and "val_f1_neutral" in m
    assert m["val_recall_happy"] == ev.recall[EXPRESSIONS.index("Happy")]
    assert set(ev.per_class_metrics("test")) == {k.replace("val_", "test_", 1) for k in expected}
    assert ev.summary_metrics("val") == {"val_accuracy": ev.accuracy, "val_loss": ev.loss, "val_macro_f1": ev.macro_f1}


def test_format_report_layout(ev) -> None:
    text = format_report(ev, digits=4)
    lines = text.splitlines()
    assert lines[0].startswith("split: PublicTest") and f"n={len(Y_TRUE)}" in lines[0]
    header = next(line for line in lines if "precision" in line)
    assert header.split() == ["precision", "recall", "f1-score", "support"]
    body = [line for line in lines[lines.index(header) + 1:] if line.strip()]
    assert len(body) == NUM_CLASSES + 3
    assert [line.split()[0] for line in body[:NUM_CLASSES]] == list(EXPRESSIONS)
    assert body[NUM_CLASSES].split()[0] == "accuracy"
    assert body[NUM_CLASSES + 1].split()[:2] == ["macro", "avg"]
    assert body[NUM_CLASSES + 2].split()[:2] == ["weighted", "avg"]
    # Same numbers, row by row, as scikit-learn's text report.
    sk_text = classification_report(Y_TRUE, Y_PRED, labels=LABELS, target_names=list(EXPRESSIONS), digits=4,
                                     zero_division=0)
    sk_rows = [line.split() for line in sk_text.splitlines() if line.strip()][1:]
    assert [line.split() for line in body] == sk_rows
    # Right-aligned columns: every row ends where the header's "support" ends.
    assert {len(line.rstrip()) for line in body} == {len(header.rstrip())}


def test_confusion_csv(ev) -> None:
    rows = list(csv.reader(io.StringIO(confusion_csv(ev))))
    assert rows[0] == ["true\\pred", *EXPRESSIONS]
    assert len(rows) == 1 + NUM_CLASSES
    assert [r[0] for r in rows[1:]] == list(EXPRESSIONS)
    assert [[int(v) for v in r[1:]] for r in rows[1:]] == [list(r) for r in ev.confusion]


def test_cross_entropy() -> None:
    y = np.array([0, 1, 2])
    p = np.array([[0.5, 0.5, 0, 0, 0, 0, 0], [0.1, 0.9, 0, 0, 0, 0, 0], [1.0, 0, 0, 0, 0, 0, 0]])
    # the zero probability of the true class is clipped to 1e-7, not -log(0) = inf
    expected = -(math.log(0.5) + math.log(0.9) + math.log(1e-7)) / 3
    assert cross_entropy(y, p) == pytest.approx(expected)
    assert cross_entropy(np.array([3]), np.eye(NUM_CLASSES)[[3]]) == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(cross_entropy(np.array([], dtype=int), np.zeros((0, NUM_CLASSES))))
    ev = evaluate_probabilities(Y_TRUE, _proba(Y_PRED), "x")
    picked = np.where(Y_TRUE == Y_PRED, 0.64, 0.06)
    assert ev.loss == pytest.approx(-np.mean(np.log(picked)))


def test_wrong_shape_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        evaluate_probabilities(Y_TRUE, np.zeros((len(Y_TRUE), 5)), "x")
    with pytest.raises(ValueError, match="shape"):
        evaluate_probabilities(Y_TRUE[:3], np.zeros((4, NUM_CLASSES)), "x")


# --------------------------------------------------------------------------------------------------- plots
def test_figures_save_as_png(ev, tmp_path: Path) -> None:
    cm_path, curves_path = tmp_path / "sub" / "cm.png", tmp_path / "curves.png"
    save_figure(confusion_figure(ev), str(cm_path))
    save_figure(confusion_figure(ev, normalize=False), str(tmp_path / "cm_counts.png"))
    history = {"loss": [2.0, 1.5], "accuracy": [0.2, 0.3], "val_loss": [1.9, 1.7], "val_accuracy": [0.25, 0.28]}
    save_figure(learning_curves_figure(history), str(curves_path))
    for path in (cm_path, curves_path, tmp_path / "cm_counts.png"):
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC, path
        assert len(data) > 1000
    # atomic writes leave no temp files behind
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["cm.png", "cm_counts.png", "curves.png"]


@pytest.mark.filterwarnings("ignore:No artists with labels found")  # the empty accuracy panel's legend
def test_learning_curves_tolerate_missing_series(tmp_path: Path) -> None:
    fig = learning_curves_figure({"loss": [1.0]})
    save_figure(fig, str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG_MAGIC
    assert len(fig.axes) == 2
    assert len(fig.axes[0].lines) == 1 and len(fig.axes[1].lines) == 0


@pytest.mark.parametrize("epochs", [2, 3, 7])
def test_learning_curves_have_whole_epoch_ticks(epochs: int) -> None:
    """Epochs are whole numbers: a 2-epoch run must not show a 1.5 tick (issue 12, point 15)."""
    history = {"loss": list(np.linspace(2, 1, epochs)), "val_loss": list(np.linspace(2, 1.2, epochs)),
               "accuracy": list(np.linspace(0.2, 0.4, epochs)), "val_accuracy": list(np.linspace(0.2, 0.3, epochs))}
    fig = learning_curves_figure(history)
    fig.canvas.draw()
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        shown = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert shown and all(float(t).is_integer() for t in shown), shown
