"""One self-contained HTML page about a study (``fer-exp report``, and ``summary/report.html`` on its parent run).

Everything comes from the study's MLflow runs, so every engine gets the same page: settings and outcome (the parent
run), optimization history, intermediate values with pruned trials marked (each trial's objective per epoch),
per-class F1 of the top trials beside the 2018 networks, the best trial's confusion matrix and learning curves (its
artifacts), and a sortable table of trials linking to their MLflow runs. Parameter importances need the Optuna
study (given its storage); other engines' pages say they are not available.

The page has no external URL: CSS and JavaScript are inline, images are base64 PNGs; it works offline from a file.
If the best trial's run holds images under ``explain/`` (saliency maps of ``fer-exp explain``), they are shown too.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import re
from dataclasses import dataclass, field
from typing import Any

from fer_experiments import EXPRESSIONS
from fer_experiments.errors import ConfigError
from fer_experiments.tracking import tags

#: Artifact folder on a trial's run whose PNGs the report shows as "explain" images of the best trial.
EXPLAIN_FOLDER = "explain"
REPORT_ARTIFACT = "summary/report.html"
#: The accuracy-cost front of a study whose trials measured their serving cost.
PARETO_FIGURE = "summary/pareto_front.png"
PARETO_TABLE = "summary/pareto_front.csv"


@dataclass
class TrialRow:
    """One trial as its MLflow run records it."""

    number: int
    state: str
    value: float | None
    run_id: str
    run_name: str
    experiment_id: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    seconds: float | None
    curve: list[tuple[int, float]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class CostView:
    """The accuracy-cost plane of a study whose trials measured their serving cost (``search.pareto``)."""

    cost_name: str
    runtime: str
    points: list[Any]
    note: str = ""


@dataclass
class StudyData:
    """What the report shows, gathered once."""

    study: str
    engine: str
    objective: str
    tracking_uri: str
    parent: Any
    trials: list[TrialRow]
    importances: dict[str, float] | None
    importance_note: str


def gather(study: str, tracking_uri: str, storage: str | None = None) -> StudyData:
    """Read the study's parent run and trial runs (and the Optuna study for importances, if ``storage`` holds it)."""
    from fer_experiments.tracking import find_runs, prepare_store
    from fer_experiments.tracking.runs import metric_history
    from fer_experiments.tracking.store import require_existing_store

    require_existing_store(tracking_uri)  # a reading command never creates a store (a mistyped path)
    prepare_store(tracking_uri)
    parents = find_runs(tracking_uri, None, filter_string=tags.study_filter(study, kind=tags.KIND_STUDY),
                        order_by=["attributes.start_time DESC"])
    if not parents:
        known = sorted({tags.study_of(r.tags) or "" for r in find_runs(
            tracking_uri, None, filter_string=f"tags.`{tags.KIND}` = '{tags.KIND_STUDY}'")} - {""})
        raise ConfigError(f"unknown study {study!r} in the tracking store {tracking_uri} "
                          f"(studies: {', '.join(known) or 'none'})")
    parent = parents[0]
    objective = parent.tags.get(tags.OBJECTIVE) or parent.params.get("objective") or "val_accuracy"
    engine = parent.tags.get(tags.ENGINE, "")
    rows: list[TrialRow] = []
    for run in find_runs(tracking_uri, None, filter_string=tags.study_filter(study, kind=tags.KIND_TRIAL)):
        number = tags.trial_number_of(run.tags)
        if number is None:
            continue
        value = tags.float_of(run.tags.get(tags.OBJECTIVE_VALUE))  # None for a hand-edited, non-numeric tag
        seconds = (run.end_time - run.start_time) / 1000 if run.end_time and run.start_time else None
        state = run.tags.get(tags.TRIAL_STATE) or ("RUNNING" if run.status == "RUNNING" else run.status)
        rows.append(TrialRow(number=number, state=state, value=value,
                             run_id=run.run_id, run_name=run.name, experiment_id=run.experiment_id,
                             status=run.status, params=run.params, metrics=run.metrics, seconds=seconds,
                             curve=metric_history(tracking_uri, run.run_id, objective), tags=run.tags))
    # A retried trial (a worker died) has two runs: keep the one that ended best (COMPLETE over others, then newest).
    by_number: dict[int, TrialRow] = {}
    for row in rows:
        old = by_number.get(row.number)
        if old is None or (row.state == "COMPLETE") > (old.state == "COMPLETE"):
            by_number[row.number] = row
    importances, note = _importances(study, storage if engine == "optuna" else None)
    return StudyData(study=study, engine=engine, objective=objective, tracking_uri=tracking_uri, parent=parent,
                     trials=sorted(by_number.values(), key=lambda r: r.number), importances=importances,
                     importance_note=note)


def cost_view(d: StudyData) -> CostView | None:
    """The COMPLETE trials with their serving cost (the study's cost objective, else ``latency_ms``) and the
    reference networks; None when no trial measured its cost (a space with neither ``constraints:`` nor a cost
    objective)."""
    from fer_experiments.search.pareto import CostPoint, reference_points

    cost_name = d.parent.tags.get(tags.COST_OBJECTIVE) or "latency_ms"
    done = [t for t in d.trials if t.state == "COMPLETE" and t.value is not None and cost_name in t.metrics]
    if not done:
        return None
    runtime = next((t.tags[tags.COST_RUNTIME] for t in done if t.tags.get(tags.COST_RUNTIME)), "exported")
    points = [CostPoint(label=f"trial-{t.number}", cost=float(t.metrics[cost_name]), accuracy=t.value,
                        run_id=t.run_id) for t in done]
    # A start point that ran as a trial is drawn where that trial is: the preset as this space runs it.
    by_start = {t.tags[tags.START_FROM]: (float(t.value or 0.0), float(t.metrics[cost_name])) for t in done
                if t.tags.get(tags.START_FROM)}
    note = ""
    try:
        from fer_experiments.data import default_cache_dir

        points += reference_points(cost_name, runtime, str(default_cache_dir() / "serving_cost.json"), by_start)
    except Exception as exc:  # noqa: BLE001 - references are context; the study's own front stands without them
        note = f"reference networks not measured: {type(exc).__name__}: {str(exc)[:200]}"
    return CostView(cost_name=cost_name, runtime=runtime, points=points, note=note)


def _importances(study: str, storage: str | None) -> tuple[dict[str, float] | None, str]:
    """fANOVA importances from the Optuna study, or (None, why not)."""
    if storage is None:
        return None, "parameter importances come from the Optuna study; this study's engine keeps none"
    import optuna

    from fer_experiments.search.summary import param_importances

    try:
        loaded = optuna.load_study(study_name=study, storage=storage)
    except Exception as exc:  # noqa: BLE001 - no such study in that storage: the page says so
        return None, f"the Optuna study could not be read ({type(exc).__name__})"
    return param_importances(loaded)


# ------------------------------------------------------------------------------------------------- figures
def _png(fig: Any) -> str:
    """A matplotlib figure as a base64 PNG ``data:`` URI (and closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _png_bytes(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def history_figure(d: StudyData) -> Any:
    """Each trial's objective by trial number, pruned ones marked, and the best so far."""
    from fer_experiments.evaluation.plots import _figure

    fig = _figure(9, 4)
    ax = fig.add_subplot()
    done = [t for t in d.trials if t.state == "COMPLETE" and t.value is not None]
    pruned = [t for t in d.trials if t.state == "PRUNED" and t.curve]
    ax.scatter([t.number for t in done], [t.value for t in done], color="tab:blue", label="complete", zorder=3)
    ax.scatter([t.number for t in pruned], [t.curve[-1][1] for t in pruned], color="tab:red", marker="x",
               label="pruned (last value)", zorder=3)
    best, xs, ys = None, [], []
    for t in d.trials:
        if t.state == "COMPLETE" and t.value is not None and (best is None or t.value > best):
            best = t.value
        if best is not None:
            xs.append(t.number)
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="tab:green", label="best so far")
    _integer_x(ax)
    ax.set_xlabel("trial")
    ax.set_ylabel(_plain(d.objective))
    ax.set_title("Optimization history")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def intermediate_figure(d: StudyData) -> Any:
    """Each trial's objective per epoch; pruned trials red and dashed, with an x where they were stopped."""
    from fer_experiments.evaluation.plots import _figure

    fig = _figure(9, 4)
    ax = fig.add_subplot()
    seen: set[str] = set()
    for t in d.trials:
        if not t.curve:
            continue
        xs, ys = [s for s, _ in t.curve], [v for _, v in t.curve]
        if t.state == "PRUNED":
            label = "pruned" if "pruned" not in seen else None
            ax.plot(xs, ys, color="tab:red", linestyle="--", alpha=0.7, label=label)
            ax.scatter([xs[-1]], [ys[-1]], color="tab:red", marker="x", zorder=3)
            seen.add("pruned")
        else:
            kind = "complete" if t.state == "COMPLETE" else "failed / other"
            ax.plot(xs, ys, color="tab:blue" if t.state == "COMPLETE" else "tab:gray", marker="o", markersize=3,
                    alpha=0.8, label=kind if kind not in seen else None)
            seen.add(kind)
    _integer_x(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel(_plain(f"{d.objective} (PublicTest)"))
    ax.set_title("Intermediate values")
    ax.grid(alpha=0.3)
    if seen:
        ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def importance_figure(importances: dict[str, float]) -> Any:
    from fer_experiments.evaluation.plots import _figure

    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig = _figure(8, max(2.5, 0.4 * len(items) + 1))
    ax = fig.add_subplot()
    ax.barh([_plain(k) for k, _ in items], [v for _, v in items], color="tab:blue")
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title("Parameter importances")
    fig.tight_layout()
    return fig


def _plain(text: Any) -> str:
    """Text for a matplotlib label drawn as written: ``$`` would start mathtext (an objective named ``$\\foo$``
    is a parse error that fails the whole report)."""
    return str(text).replace("$", r"\$")


def _integer_x(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def top_rows(d: StudyData, k: int = 5) -> list[dict[str, Any]]:
    """Per-class PublicTest precision/recall/F1 of the top ``k`` COMPLETE trials, then the 2018 networks' rows."""
    from fer_experiments.search.summary import reference_rows

    done = sorted((t for t in d.trials if t.state == "COMPLETE" and t.value is not None),
                  key=lambda t: (-(t.value or 0), t.number))[:k]
    rows: list[dict[str, Any]] = []
    for t in done:
        for name in EXPRESSIONS:
            key = name.lower()
            rows.append({"network": f"trial-{t.number}", "expression": name,
                         "precision": t.metrics.get(f"val_precision_{key}"),
                         "recall": t.metrics.get(f"val_recall_{key}"), "f1": t.metrics.get(f"val_f1_{key}")})
    return rows + reference_rows()


# ---------------------------------------------------------------------------------------------------- page
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#d0d7de}main{padding:16px 32px;max-width:1300px}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:16px 20px;margin:16px 0}
h2{font-size:17px;margin:0 0 10px}img{max-width:100%;height:auto}.grid{display:flex;flex-wrap:wrap;gap:16px}
.grid>figure{margin:0;flex:1 1 480px}figcaption{color:#57606a;font-size:13px}
table{border-collapse:collapse;font-size:13px;width:100%}th,td{border-bottom:1px solid #d0d7de;padding:4px 8px;
text-align:left;white-space:nowrap}th{background:#f6f8fa;cursor:pointer;user-select:none;position:sticky;top:0}
th.sorted-asc::after{content:" \\25B2"}th.sorted-desc::after{content:" \\25BC"}td.num{text-align:right}
.COMPLETE{color:#1a7f37}.PRUNED{color:#cf222e}.FAIL,.FAILED{color:#8250df}.kv td:first-child{color:#57606a}
.note{white-space:pre-wrap;background:#f6f8fa;border-radius:6px;padding:10px}.muted{color:#57606a}
.scroll{overflow-x:auto;max-height:640px;overflow-y:auto}
"""

_JS = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('th').forEach(function(th, col){
    th.addEventListener('click', function(){
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var asc = !th.classList.contains('sorted-asc');
      table.querySelectorAll('th').forEach(function(h){h.classList.remove('sorted-asc','sorted-desc');});
      th.classList.add(asc ? 'sorted-asc' : 'sorted-desc');
      rows.sort(function(a, b){
        var x = a.cells[col].getAttribute('data-v') || a.cells[col].textContent;
        var y = b.cells[col].getAttribute('data-v') || b.cells[col].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
});
"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _fmt(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _note_html(text: str) -> str:
    """MLflow's note is markdown; the few marks it uses (**bold**, `code`) as HTML, everything else escaped."""
    out = _e(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _figure_html(src: str, caption: str) -> str:
    return f'<figure><img alt="{_e(caption)}" src="{src}"><figcaption>{_e(caption)}</figcaption></figure>'


def build_report(d: StudyData, view: CostView | None = None) -> str:
    """The page's HTML (one string, no external URL); ``view``: the accuracy-cost section, if the study has one."""
    from fer_experiments.search.summary import per_class_figure
    from fer_experiments.tracking.runs import read_artifact, run_url

    p = d.parent
    done = [t for t in d.trials if t.state == "COMPLETE" and t.value is not None]
    best = max(done, key=lambda t: (t.value, -t.number)) if done else None
    counts = {s: sum(t.state == s for t in d.trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    local = not d.tracking_uri.startswith(("http://", "https://"))
    sections: list[str] = []

    # Settings and outcome.
    space_prefix = tags.PARAM_SPACE_PREFIX
    settings = {k: v for k, v in sorted(p.params.items()) if not k.startswith((tags.PARAM_BEST_PREFIX, space_prefix))}
    space_rows = {k[len(space_prefix):]: v for k, v in sorted(p.params.items()) if k.startswith(space_prefix)}
    outcome = (f"{len(d.trials)} trials: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, "
               f"{counts['FAIL']} failed. Best {d.objective}: "
               + (f"{best.value:.4f} (trial {best.number}, {best.run_name})" if best else "none yet"))  # escaped below
    kv = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in settings.items())
    space_kv = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in space_rows.items())
    note = p.tags.get(tags.MLFLOW_NOTE, "")
    open_hint = (f'Links open runs in <code>mlflow ui --backend-store-uri {_e(d.tracking_uri)}</code> at '
                 "http://127.0.0.1:5000 (start it first)." if local else
                 f"Links open runs on the tracking server {_e(d.tracking_uri)}.")
    sections.append(
        f'<section id="outcome"><h2>Outcome</h2><p><b>{_e(outcome)}</b></p>'
        + (f'<div class="note">{_note_html(note)}</div>' if note else "")
        + f'<p class="muted">{open_hint} Study run: <a href="{_e(run_url(d.tracking_uri, p.experiment_id, p.run_id))}">'
          f"{_e(p.name)}</a>.</p></section>")
    sections.append(
        '<section id="settings"><h2>Settings</h2><div class="grid"><figure><table class="kv">'
        f"{kv}</table></figure><figure><table class=\"kv\"><tr><th>parameter</th><th>searched over</th></tr>{space_kv}"
        "</table></figure></div></section>")

    # Optimization history, importances, intermediate values.
    figs = [_figure_html(_png(history_figure(d)), "Each trial's value; red x: pruned trials at their last epoch; "
                                                    "green: best so far.")]
    if d.importances:
        figs.append(_figure_html(_png(importance_figure(d.importances)), "How much each parameter explains the "
                                                                          "value (Optuna's fANOVA)."))
    sections.append('<section id="history"><h2>Optimization history and parameter importances</h2>'
                    f'<div class="grid">{"".join(figs)}</div>'
                    + ("" if d.importances else f'<p class="muted">{_e(d.importance_note)}</p>') + "</section>")
    sections.append('<section id="intermediate"><h2>Intermediate values</h2>'
                    + _figure_html(_png(intermediate_figure(d)), f"{d.objective} on PublicTest after each epoch; "
                                   "pruned trials dashed red, stopped at the x.") + "</section>")

    # Per-class F1 of the top trials beside the 2018 networks.
    rows = top_rows(d)
    networks = list(dict.fromkeys(r["network"] for r in rows))
    head = "".join(f"<th>{_e(e)}</th>" for e in EXPRESSIONS)
    body = "".join(
        f"<tr><td>{_e(n)}</td>" + "".join(
            f'<td class="num">{_fmt(next((r["f1"] for r in rows if r["network"] == n and r["expression"] == e), None), 3)}'
            "</td>" for e in EXPRESSIONS) + "</tr>" for n in networks)
    sections.append('<section id="per-class"><h2>Per-class F1 (PublicTest): top trials and the 2018 networks</h2>'
                    + _figure_html(_png(per_class_figure(rows)), "Hatched bars: the 2018 study's networks.")
                    + f'<table class="sortable"><thead><tr><th>network</th>{head}</tr></thead><tbody>{body}</tbody>'
                      "</table></section>")

    if view is not None:
        sections.append(_cost_section(d, view))

    # The best trial's confusion matrix, learning curves and (if any) explain images.
    if best is not None:
        imgs = []
        for path, caption in (("evaluation/val_confusion_matrix.png", "Confusion matrix on PublicTest"),
                              ("learning_curves.png", "Learning curves (training and PublicTest)")):
            data = read_artifact(d.tracking_uri, best.run_id, path)
            if data:
                imgs.append(_figure_html(_png_bytes(data), caption))
        sections.append(f'<section id="best"><h2>Best trial: {best.number} ({_e(best.run_name)}), {_e(d.objective)} '
                        f'{best.value:.4f}</h2><div class="grid">{"".join(imgs)}</div></section>')
        explained = explain_images_of(d, best)
        if explained:
            imgs = [_figure_html(_png_bytes(data), name) for name, data in explained[:12]]
            sections.append('<section id="explain"><h2>What the best trial looks at</h2>'
                            f'<div class="grid">{"".join(imgs)}</div></section>')

    # The sortable table of trials.
    names = sorted({k for t in d.trials for k in t.params} & _shown_params(d))
    head = "".join(f"<th>{_e(h)}</th>" for h in ("trial", "state", d.objective, "epochs", "seconds", "run", *names))
    body_rows = []
    for t in d.trials:
        link = run_url(d.tracking_uri, t.experiment_id, t.run_id)
        epochs = t.curve[-1][0] if t.curve else None
        cells = [f'<td class="num" data-v="{t.number}">{t.number}</td>', f'<td class="{_e(t.state)}">{_e(t.state)}</td>',
                 f'<td class="num" data-v="{"" if t.value is None else t.value}">{_fmt(t.value)}</td>',
                 f'<td class="num">{"-" if epochs is None else epochs}</td>',
                 f'<td class="num">{"-" if t.seconds is None else f"{t.seconds:.0f}"}</td>',
                 f'<td><a href="{_e(link)}">{_e(t.run_name)}</a></td>']
        cells += [f"<td>{_e(t.params.get(n, ''))}</td>" for n in names]
        body_rows.append(f"<tr>{''.join(cells)}</tr>")
    sections.append('<section id="trials"><h2>Trials</h2><p class="muted">Click a column to sort.</p>'
                    f'<div class="scroll"><table class="sortable" id="trials-table"><thead><tr>{head}</tr></thead>'
                    f"<tbody>{''.join(body_rows)}</tbody></table></div></section>")

    made = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cost_objective = p.tags.get(tags.COST_OBJECTIVE)
    minimising = f" and minimising {cost_objective}" if cost_objective else ""
    title = f"Study {d.study}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body><header><h1>{_e(title)}</h1><p>{_e(d.engine)} search, maximising "
            f"{_e(d.objective)} on PublicTest{_e(minimising)} &middot; report made {made} by fer-exp</p></header><main>"
            + "".join(sections) + f"</main><script>{_JS}</script></body></html>\n")


def _cost_section(d: StudyData, view: CostView) -> str:
    """Accuracy against serving cost: the front plot and the table of front members and references."""
    from fer_experiments.search.pareto import front_figure, front_rows

    rows = [r for r in front_rows(view.points, d.objective, view.cost_name) if r["on_front"] or r["reference"]]
    body = "".join(
        f"<tr><td>{_e(r['network'])}</td><td>{'reference' if r['reference'] else 'front'}</td>"
        f'<td class="num">{_fmt(r[d.objective])}</td><td class="num">{_e(f"{r[view.cost_name]:,.3g}")}</td>'
        f"<td>{_e(r['accuracy_from'])}</td></tr>" for r in rows)
    return ('<section id="pareto"><h2>Accuracy against serving cost</h2>'
            + _figure_html(_png(front_figure(view.points, d.objective, view.cost_name)),
                           f"{d.objective} on PublicTest against {view.cost_name} ({view.runtime} runtime, measured "
                           "on the machine that ran each trial); red: the Pareto front; black: reference networks.")
            + f'<table class="sortable"><thead><tr><th>network</th><th>kind</th><th>{_e(d.objective)}</th>'
              f"<th>{_e(view.cost_name)}</th><th>accuracy from</th></tr></thead><tbody>{body}</tbody></table>"
            + (f'<p class="muted">{_e(view.note)}</p>' if view.note else "") + "</section>")


def explain_images_of(d: StudyData, best: TrialRow) -> list[tuple[str, bytes]]:
    """(name, PNG) images of what the best trial's network looks at: the run's ``explain/`` artifacts if it has
    some, else feature maps and Grad-CAM (``fer-exp explain``'s renderer) of its model on the first PublicTest face
    of the data set logged with the run. [] when neither can be had (the report then has no such section)."""
    from pathlib import Path

    from fer_experiments.tracking.runs import list_artifacts, read_artifact

    logged = sorted(a for a in list_artifacts(d.tracking_uri, best.run_id, EXPLAIN_FOLDER) if a.endswith(".png"))
    if logged:
        return [(a.rsplit("/", 1)[-1], data) for a in logged if (data := read_artifact(d.tracking_uri, best.run_id, a))]
    source = best.tags.get(tags.DATA_SOURCE)
    if not source or not Path(source).is_file() or not tags.has_model(best.tags):
        return []
    try:
        from fer_experiments.data import load_dataset
        from fer_experiments.evaluation.explain import explain_images
        from fer_experiments.tracking.model_io import load_keras_model

        face = load_dataset(source).split("PublicTest").x[0]
        model = load_keras_model(f"runs:/{best.run_id}/model", d.tracking_uri)
        return sorted(explain_images(model, face).items())
    except Exception:  # noqa: BLE001 - an optional view: the report is complete without it
        return []


def _shown_params(d: StudyData) -> set[str]:
    """The params the space searched over (the table's columns): those that vary across trials."""
    prefix = tags.PARAM_SPACE_PREFIX
    searched = {k[len(prefix):] for k, v in d.parent.params.items() if k.startswith(prefix)
                and not v.startswith("fixed")}
    values: dict[str, set[str]] = {}
    for t in d.trials:
        for k, v in t.params.items():
            values.setdefault(k, set()).add(v)
    varying = {k for k, v in values.items() if len(v) > 1} - {tags.TRIAL_NUMBER, tags.PARAM_N_TRAIN, tags.PARAM_N_VAL}
    return searched & set(values) if searched else varying


def study_report(study: str, tracking_uri: str, storage: str | None = None) -> str:
    """The HTML report of ``study``."""
    import matplotlib.style

    # Matplotlib's own look, whatever style another plot set globally before (Optuna's plots set ggplot).
    with matplotlib.style.context("default"):
        d = gather(study, tracking_uri, storage)
        return build_report(d, cost_view(d))


def log_study_report(study: str, tracking_uri: str, storage: str | None, parent: Any) -> None:
    """Write the report on the study's parent run (``summary/report.html``) and, for a study whose trials measured
    their serving cost, the front (``summary/pareto_front.png`` and ``.csv``)."""
    import matplotlib.style

    from fer_experiments.search.pareto import front_figure, front_rows
    from fer_experiments.search.summary import rows_csv

    with matplotlib.style.context("default"):
        d = gather(study, tracking_uri, storage)
        view = cost_view(d)
        parent.log_text(build_report(d, view), REPORT_ARTIFACT)
        if view is not None:
            parent.log_figure(front_figure(view.points, d.objective, view.cost_name), PARETO_FIGURE)
            parent.log_text(rows_csv(front_rows(view.points, d.objective, view.cost_name)), PARETO_TABLE)

