"""Face grids (the 2018 study's figures): sample faces per class, test predictions with their labels, and the most
confident mistakes. Pure numpy + matplotlib (Agg, through ``Figure``: no pyplot state, no display).

Each function returns a matplotlib ``Figure``; ``figure_png`` turns it into PNG bytes and ``evaluation.plots.
save_figure`` writes it atomically, so the CLI, MLflow (``TrackedRun.log_figure``) and the study report can share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from fer_experiments import EXPRESSIONS, NUM_CLASSES

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Inches per face cell; 48-pixel faces read well at ~1 inch and keep a 7x8 grid PNG small.
CELL = 1.05
DPI = 80
RIGHT = "#1a9641"
WRONG = "#d7191c"


def _figure(width: float, height: float) -> "Figure":
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: "Figure") -> bytes:
    """The figure as PNG bytes."""
    from io import BytesIO

    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


def _face(ax: "Axes", img: np.ndarray, frame: str | None = None) -> None:
    ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(frame is not None)
        if frame is not None:
            spine.set_edgecolor(frame)
            spine.set_linewidth(3)


def pick_per_class(y: np.ndarray, per_class: int, seed: int = 0) -> list[np.ndarray]:
    """For each class 0-6, up to ``per_class`` row indices drawn at random (seeded), in ascending order."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    rng = np.random.default_rng(seed)
    picked = []
    for c in range(NUM_CLASSES):
        rows = np.flatnonzero(y == c)
        take = rng.choice(rows, size=min(per_class, len(rows)), replace=False) if len(rows) else rows
        picked.append(np.sort(take))
    return picked


def sample_grid(x: np.ndarray, y: np.ndarray, per_class: int = 8, seed: int = 0, title: str = "") -> "Figure":
    """One row per class: ``per_class`` random faces of it (seeded), the class name and its count on the left."""
    picked = pick_per_class(y, per_class, seed)
    cols = max(per_class, 1)
    fig = _figure(CELL * cols + 1.3, CELL * NUM_CLASSES + 0.5)
    axes = fig.subplots(NUM_CLASSES, cols, squeeze=False)
    counts = np.bincount(y, minlength=NUM_CLASSES)
    for c, rows in enumerate(picked):
        for j in range(cols):
            ax = axes[c, j]
            if j < len(rows):
                _face(ax, x[rows[j]])
            else:
                ax.set_axis_off()
        axes[c, 0].set_ylabel(f"{EXPRESSIONS[c]}\n{counts[c]:,}", rotation=0, ha="right", va="center", fontsize=9)
        if not len(rows):
            axes[c, 0].set_axis_on()
            axes[c, 0].set_xticks([])
            axes[c, 0].set_yticks([])
    fig.suptitle(title or f"{per_class} random faces per class (seed {seed})", fontsize=11)
    fig.subplots_adjust(left=1.2 / (CELL * cols + 1.3), right=0.99, bottom=0.01, top=1 - 0.45 / (CELL * NUM_CLASSES + 0.5),
                        wspace=0.05, hspace=0.08)
    return fig


@dataclass(frozen=True)
class GridCell:
    """One face of a prediction grid: its row in the split, true and predicted class, predicted probability."""

    row: int
    true: int
    pred: int
    prob: float

    @property
    def right(self) -> bool:
        return self.true == self.pred


def prediction_cells(y: np.ndarray, probs: np.ndarray, per_class: int = 3, seed: int = 0) -> list[GridCell]:
    """``per_class`` random faces of each true class (seeded) with the model's top class and its probability."""
    pred = probs.argmax(axis=1)
    return [GridCell(int(r), int(y[r]), int(pred[r]), float(probs[r, pred[r]]))
            for rows in pick_per_class(y, per_class, seed) for r in rows]


def mistake_cells(y: np.ndarray, probs: np.ndarray, n: int = 24) -> list[GridCell]:
    """The ``n`` most confident mistakes: wrong top class, highest probability first (ties: lower row first)."""
    pred = probs.argmax(axis=1)
    conf = probs[np.arange(len(y)), pred]
    wrong = np.flatnonzero(pred != y)
    order = wrong[np.lexsort((wrong, -conf[wrong]))][:n]
    return [GridCell(int(r), int(y[r]), int(pred[r]), float(conf[r])) for r in order]


def cells_figure(x: np.ndarray, cells: Sequence[GridCell | None], columns: int, title: str) -> "Figure":
    """Faces in rows of ``columns``, each titled with its true and predicted label and probability; mistakes framed
    in red, right answers in green. ``None`` leaves a cell empty (keeps a class's row aligned)."""
    n = max(len(cells), 1)
    cols = max(1, min(columns, n))
    rows = -(-n // cols)
    fig = _figure(max(CELL * 1.25 * cols, 4.5), CELL * 1.6 * rows + 0.8)
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        cell = cells[k] if k < len(cells) else None
        if cell is None:
            ax.set_axis_off()
            continue
        colour = RIGHT if cell.right else WRONG
        _face(ax, x[cell.row], frame=colour)
        ax.set_title(f"true {EXPRESSIONS[cell.true]}\npred {EXPRESSIONS[cell.pred]} {cell.prob:.2f}",
                     fontsize=8, color=colour, pad=2)
    if not any(cells):
        axes[0, 0].text(0.5, 0.5, "none", ha="center", va="center", fontsize=12)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.75 / (CELL * 1.6 * rows + 0.8),
                        wspace=0.08, hspace=0.45)
    return fig


def prediction_grid(x: np.ndarray, y: np.ndarray, probs: np.ndarray, per_class: int = 3, seed: int = 0,
                    label: str = "") -> tuple["Figure", list[GridCell]]:
    """The study's grid of test predictions: ``per_class`` faces per true class, one column per class."""
    cells = prediction_cells(y, probs, per_class, seed)
    right = sum(c.right for c in cells)
    title = f"{label + ': ' if label else ''}{right} of {len(cells)} right ({per_class} random faces per true class)"
    by_class = [[cell for cell in cells if cell.true == c] for c in range(NUM_CLASSES)]
    # One column per true class (row-major cells), empty where a class has fewer faces.
    laid_out: list[GridCell | None] = [by_class[c][r] if r < len(by_class[c]) else None
                                       for r in range(per_class) for c in range(NUM_CLASSES)]
    return cells_figure(x, laid_out, NUM_CLASSES, title), cells


def mistakes_grid(x: np.ndarray, y: np.ndarray, probs: np.ndarray, n: int = 24, columns: int = 8,
                  label: str = "") -> tuple["Figure", list[GridCell]]:
    """The ``n`` most confident mistakes of the split."""
    cells = mistake_cells(y, probs, n)
    wrong = int((probs.argmax(axis=1) != y).sum())
    title = f"{label + ': ' if label else ''}the {len(cells)} most confident of {wrong:,} mistakes"
    return cells_figure(x, cells, columns, title), cells
