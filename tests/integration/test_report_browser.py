"""`fer-exp report` opened in a real headless browser (Debian's chromium): the page renders offline from a file,
holds every section, embeds its images, and its trial table sorts when a header is clicked.

The study is written straight into real MLflow and Optuna stores (no training): a parent run, five trial runs
(three COMPLETE, two PRUNED) with per-epoch values, per-class metrics and the best trial's artifacts.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from fer_experiments import EXPRESSIONS
from tests.conftest import invoke_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        # Not a skip: CI installs it (.ci/run, README: apt-get install -y chromium); a missing browser must show.
        pytest.fail("chromium is not installed (apt-get install -y chromium): the report's browser check cannot run")
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           *args], capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import optuna

    from fer_experiments.evaluation.metrics import evaluate_probabilities
    from fer_experiments.evaluation.plots import confusion_figure, learning_curves_figure
    from fer_experiments.search.lifecycle import StudySettings, study_params
    from fer_experiments.spaces import SearchSpace
    from fer_experiments.tracking import TrackedRun, create_run, set_status, start_run, tags

    root = tmp_path_factory.mktemp("report")
    uri, storage = f"sqlite:///{root}/mlflow.db", f"sqlite:///{root}/optuna.db"
    space = SearchSpace.from_dict({"name": "r", "objective": "val_accuracy", "max_epochs": 3, "params": {
        "filters": {"type": "categorical", "choices": [8, 16]},
        "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}})
    settings = StudySettings(space=space, data_digest="d" * 64, limit=300, experiment="r")
    parent = create_run(uri, "r", "study-r", tags={tags.KIND: tags.KIND_STUDY, tags.STUDY: "r", tags.ENGINE: "optuna",
                                                   tags.OBJECTIVE: "val_accuracy"})
    TrackedRun(parent, uri).log_params(study_params("optuna", settings))
    TrackedRun(parent, uri).set_tags({tags.MLFLOW_NOTE: "**Study r**: a synthetic study"})
    set_status(uri, parent, "FINISHED")
    ostudy = optuna.create_study(study_name="r", storage=storage, direction="maximize")
    rng = np.random.default_rng(0)
    plan = [(0, "COMPLETE", [0.30, 0.40, 0.45]), (1, "PRUNED", [0.20]), (2, "COMPLETE", [0.35, 0.50, 0.55]),
            (3, "PRUNED", [0.25, 0.28]), (4, "COMPLETE", [0.33, 0.38, 0.42])]
    runs = {}
    for number, state, curve in plan:
        values = {"filters": [8, 16][number % 2], "learning_rate": 1e-3 * (1 + number)}
        ostudy.add_trial(optuna.trial.create_trial(
            params=values, distributions={"filters": optuna.distributions.CategoricalDistribution([8, 16]),
                                          "learning_rate": optuna.distributions.FloatDistribution(1e-3, 1e-2,
                                                                                                 log=True)},
            value=curve[-1] if state == "COMPLETE" else None, intermediate_values=dict(enumerate(curve, 1)),
            state=getattr(optuna.trial.TrialState, state)))
        with start_run(uri, "r", run_name=f"trial-{number} 1x1c{values['filters']}", parent_run_id=parent,
                       tags=tags.trial_tags(study="r", engine="optuna", number=number)) as run:
            run.log_params(values)
            for epoch, v in enumerate(curve, 1):
                run.log_metrics({"val_accuracy": v}, step=epoch)
            run.set_tags({tags.TRIAL_STATE: state} | ({tags.OBJECTIVE_VALUE: curve[-1]} if state == "COMPLETE" else {}))
            if state == "COMPLETE":
                run.log_metrics({f"val_f1_{e.lower()}": float(rng.uniform(0.1, 0.7)) for e in EXPRESSIONS})
            if number == 2:
                y = np.arange(70) % 7
                ev = evaluate_probabilities(y, np.eye(7)[(y + (np.arange(70) % 3 == 0)) % 7] * 0.9 + 0.01, "PublicTest")
                run.log_figure(confusion_figure(ev), "evaluation/val_confusion_matrix.png")
                run.log_figure(learning_curves_figure({"loss": [2, 1.5, 1.2], "val_accuracy": curve,
                                                       "accuracy": [0.3, 0.4, 0.5], "val_loss": [2, 1.6, 1.4]}),
                               "learning_curves.png")
                run.log_figure(confusion_figure(ev), "explain/saliency_happy.png")
        runs[number] = run.run_id
    out = root / "report.html"
    proc = invoke_cli("report", "--study", "r", "--out", str(out), "--tracking-uri", uri, "--storage", storage)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"root": root, "uri": uri, "out": out, "runs": runs, "stdout": proc.stdout}


def test_report_is_self_contained(study: dict) -> None:
    page = study["out"].read_text()
    assert f"wrote {study['out']}" in study["stdout"]
    # Nothing loads from elsewhere: no external script, style sheet, font or image; links to runs only.
    assert not re.search(r"""<(script|link|iframe)[^>]+(src|href)=""", page)
    assert "@import" not in page and "url(" not in page
    srcs = re.findall(r"""src="([^"]+)""", page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs), srcs[:3]
    hrefs = re.findall(r"""href="([^"]+)""", page)
    assert all(h.startswith("http://127.0.0.1:5000/#/experiments/") for h in hrefs), hrefs
    assert all(h.endswith("?workflowType=machine_learning") for h in hrefs), hrefs  # MLflow UI's training view
    for number, run_id in study["runs"].items():
        assert f"/runs/{run_id}" in page, number


def test_report_renders_in_chromium_with_every_section(study: dict) -> None:
    proc = _chromium("--virtual-time-budget=5000", "--dump-dom", study["out"].as_uri())
    dom = proc.stdout
    assert proc.returncode == 0 and "<html" in dom, proc.stderr[-2000:]
    for section in ("outcome", "settings", "history", "intermediate", "per-class", "best", "explain", "trials"):
        assert f'id="{section}"' in dom, section
    assert "Parameter importances" not in dom or "fANOVA" in dom
    assert "2018/deep-bn" in dom and "trial-2" in dom
    assert dom.count('class="PRUNED"') == 2 and dom.count('class="COMPLETE"') == 3
    shot = study["root"] / "report.png"
    proc = _chromium("--window-size=1400,3000", "--virtual-time-budget=5000", f"--screenshot={shot}",
                     study["out"].as_uri())
    assert shot.is_file() and shot.stat().st_size > 50_000, proc.stderr[-2000:]
    # Every image decoded: a broken one has naturalWidth 0 (checked by the page itself in the browser).
    probe = study["root"] / "probe.html"
    probe.write_text(study["out"].read_text().replace("</body>", "<script>document.body.setAttribute('data-broken', "
                     "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length);</script>"
                     "</body>"))
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", probe.as_uri()).stdout
    assert 'data-broken="0"' in dom, re.findall(r'data-broken="\d+"', dom)


def test_trial_table_sorts_in_the_browser(study: dict) -> None:
    # Click the objective's header twice (ascending, then descending) and read the first column back.
    click = ("<script>var th = document.querySelectorAll('#trials-table th')[2]; th.click(); th.click();"
             "document.body.setAttribute('data-order', Array.from(document.querySelectorAll('#trials-table tbody tr'))"
             ".map(r => r.cells[0].textContent).join(','));</script></body>")
    page = study["root"] / "sorted.html"
    page.write_text(study["out"].read_text().replace("</body>", click))
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", page.as_uri()).stdout
    order = re.search(r'data-order="([^"]*)"', dom)
    assert order, dom[-500:]
    assert order.group(1).split(",")[:3] == ["2", "0", "4"]  # COMPLETE by value, descending; pruned have none


def test_report_unknown_study_exits_2(study: dict) -> None:
    proc = invoke_cli("report", "--study", "nope", "--out", str(study["root"] / "x.html"),
                      "--tracking-uri", study["uri"])
    assert proc.returncode == 2 and "unknown study 'nope'" in proc.stderr and "r" in proc.stderr
    assert not (study["root"] / "x.html").exists()
