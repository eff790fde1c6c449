"""The end-of-command summary on a study's parent run: trials table, history, importances, top-5 vs 2018."""

from __future__ import annotations

import csv
import io
import json
import warnings
from importlib import resources
from typing import Any

import optuna
from optuna.trial import TrialState

from fer_experiments import EXPRESSIONS


def param_importances(study: optuna.Study) -> tuple[dict[str, float] | None, str]:
    """fANOVA importances of the study's parameters, or (None, why not)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        # Checked here: Optuna would log a warning to the user's terminal and then fail or draw an empty chart.
        return None, f"parameter importances need at least 2 COMPLETE trials (this study has {len(complete)})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            target = _first_objective(study).get("target")
            return dict(optuna.importance.get_param_importances(study, target=target)), ""
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:
        return None, f"parameter importances need more COMPLETE trials with varied params ({exc})"


def _first_objective(study: optuna.Study) -> dict[str, Any]:
    """Keyword arguments that make Optuna's plots and importances read the PublicTest objective of a two-objective
    study (they refuse such a study without a target); none for a one-objective study."""
    if len(study.directions) == 1:
        return {}
    name = (study.metric_names or ["objective"])[0]
    return {"target": lambda t: t.values[0], "target_name": name}


def reference_rows() -> list[dict[str, Any]]:
    """The 2018 study's per-class PublicTest numbers (shipped as package data)."""
    text = resources.files("fer_experiments").joinpath("reference/seed-2018-per-class.csv").read_text()
    return [{"network": f"2018/{r['network']}", "expression": r["expression"], "precision": float(r["precision"]),
             "recall": float(r["recall"]), "f1": float(r["f1"])} for r in csv.DictReader(io.StringIO(text))]


def top_trials(study: optuna.Study, k: int = 5) -> list[optuna.trial.FrozenTrial]:
    """The ``k`` best COMPLETE trials (pruned ones carry a partial value and never qualify)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    return sorted(done, key=lambda t: t.values[0], reverse=True)[:k]


def per_class_rows(study: optuna.Study, tracking_uri: str, k: int = 5) -> list[dict[str, Any]]:
    """Per-class PublicTest precision/recall/F1 of the top ``k`` trials (from their MLflow runs) + the 2018 rows."""
    from fer_experiments.tracking import get_run, tags

    rows: list[dict[str, Any]] = []
    for t in top_trials(study, k):
        run_id = t.user_attrs.get(tags.ATTR_RUN_ID)
        if not run_id:
            continue
        metrics = get_run(tracking_uri, run_id).metrics
        for name in EXPRESSIONS:
            key = name.lower()
            rows.append({"network": f"trial-{t.number}", "expression": name,
                         "precision": metrics.get(f"val_precision_{key}"), "recall": metrics.get(f"val_recall_{key}"),
                         "f1": metrics.get(f"val_f1_{key}")})
    return rows + reference_rows()


def rows_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def per_class_figure(rows: list[dict[str, Any]]) -> Any:
    """Grouped bars: F1 per expression for each network (top trials and the 2018 networks)."""
    import numpy as np

    from fer_experiments.evaluation.plots import _figure

    networks = list(dict.fromkeys(r["network"] for r in rows))
    fig = _figure(12, 5)
    ax = fig.add_subplot()
    width = 0.8 / max(len(networks), 1)
    x = np.arange(len(EXPRESSIONS))
    for i, net in enumerate(networks):
        f1 = {r["expression"]: r["f1"] or 0.0 for r in rows if r["network"] == net}
        ax.bar(x + i * width, [f1.get(e, 0.0) for e in EXPRESSIONS], width, label=net,
               hatch="//" if net.startswith("2018/") else None)
    ax.set_xticks(x + 0.4 - width / 2, EXPRESSIONS)
    ax.set_ylabel("F1 on PublicTest")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("Per-class F1: top trials against the 2018 study's networks")
    fig.tight_layout()
    return fig


def write_summary(study: optuna.Study, parent: Any, tracking_uri: str) -> list[str]:
    """Log the summary artifacts to ``parent`` (a TrackedRun); returns notes on what could not be made."""
    notes: list[str] = []
    df = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs", "duration",
                                       "datetime_start", "datetime_complete"))
    parent.log_text(df.to_csv(index=False), "summary/trials.csv")
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's matplotlib backend is "experimental"
        if complete:
            ax = optuna.visualization.matplotlib.plot_optimization_history(study, **_first_objective(study))
            parent.log_figure(ax.figure, "summary/optimization_history.png")
            _close(ax.figure)
        importances, why_not = param_importances(study)
        if importances is None:
            notes.append(why_not)
        else:
            parent.log_text(json.dumps(importances, indent=2), "summary/param_importances.json")
            ax = optuna.visualization.matplotlib.plot_param_importances(study, **_first_objective(study))
            parent.log_figure(ax.figure, "summary/param_importances.png")
            _close(ax.figure)
    rows = per_class_rows(study, tracking_uri)
    parent.log_text(rows_csv(rows), "summary/per_class_top5_vs_2018.csv")
    parent.log_figure(per_class_figure(rows), "summary/per_class_top5_vs_2018.png")
    return notes


def _close(fig: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)
