"""Matplotlib figures (Agg backend, imported lazily): confusion matrix and learning curves."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from fer_experiments import EXPRESSIONS
from fer_experiments.evaluation.metrics import Evaluation

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(width: float, height: float) -> "Figure":
    import matplotlib

    matplotlib.use("Agg")  # never needs a display
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def confusion_figure(ev: Evaluation, normalize: bool = True) -> "Figure":
    """Confusion matrix heat map (rows true, columns predicted), row-normalised with counts in the cells."""
    cm = np.asarray(ev.confusion, dtype=float)
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    fig = _figure(7, 6)
    ax = fig.add_subplot()
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax)
    ax.set_xticks(range(len(EXPRESSIONS)), EXPRESSIONS, rotation=45, ha="right")
    ax.set_yticks(range(len(EXPRESSIONS)), EXPRESSIONS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{ev.split}: accuracy {ev.accuracy:.3f}, macro-F1 {ev.macro_f1:.3f}")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=8,
                    color="white" if shown[i, j] > 0.5 * (shown.max() or 1) else "black")
    fig.tight_layout()
    return fig


def learning_curves_figure(history: Mapping[str, Sequence[float]]) -> "Figure":
    """Loss and accuracy per epoch, training against PublicTest."""
    fig = _figure(10, 4)
    from matplotlib.ticker import MaxNLocator

    for k, metric in enumerate(("loss", "accuracy")):
        ax = fig.add_subplot(1, 2, k + 1)
        for key, label in ((metric, "train"), (f"val_{metric}", "PublicTest")):
            values = history.get(key)
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers: no 1.5 tick
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def save_figure(fig: "Figure", path: str) -> None:
    """Write ``fig`` as PNG atomically."""
    from fer_experiments.io import atomic_open

    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
