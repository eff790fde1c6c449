"""Issue 24 end to end on tiny real data: a space's serving limits are checked before a trial trains (a
configuration past them never trains: PRUNED, tagged with the measured figure, and Optuna's sampler gets the
amounts), every trial's run carries its cost, and ``promote --max-latency-ms`` picks within the budget or refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import invoke_cli

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


@pytest.fixture(scope="module")
def study(tiny_real_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("constraints")
    # 4 filters: ~1k parameters; 32 filters in a residual block: well over 5,000.
    space = {"name": "tiny-edge", "max_epochs": 1, "train_limit": 200, "sampler": {"name": "tpe", "seed": 1},
             "pruner": "none", "constraints": {"max_params": 5000, "runtime": "exported"},
             "start_from": [{"name": "too-big", "params": {"filters": 32}}, {"name": "small", "params": {"filters": 4}}],
             "params": {"conv_blocks": 1, "filters": {"type": "categorical", "choices": [4, 32]},
                        "head": "global_avg", "dense_layers": 0, "batch_size": 64, "block": "residual"}}
    (work / "space.yaml").write_text(yaml.safe_dump(space))
    proc = invoke_cli("search", "--data", str(tiny_real_csv), "--space", "space.yaml", "--study", "edge",
                      "--n-trials", "2", "--cache-dir", str(work / "cache"), cwd=work)
    assert proc.returncode == 0, proc.stderr
    return {"work": work, "csv": str(tiny_real_csv), "uri": f"sqlite:///{work}/mlruns/mlflow.db",
            "stdout": proc.stdout}


def test_a_configuration_past_the_limits_never_trains(study: dict) -> None:
    import optuna

    from fer_experiments.tracking import find_runs, tags

    trials = sorted(find_runs(study["uri"], None, filter_string=tags.study_filter("edge", kind=tags.KIND_TRIAL)),
                    key=lambda r: int(r.tags[tags.TRIAL_NUMBER]))
    big, small = trials
    assert big.tags[tags.START_FROM] == "too-big" and big.params["filters"] == "32"
    assert big.tags[tags.TRIAL_STATE] == "PRUNED" and big.status == "FINISHED"
    assert big.tags[tags.CONSTRAINT_VIOLATION].startswith("params ") and "> max_params 5000" in big.tags[
        tags.CONSTRAINT_VIOLATION]
    assert big.metrics["params"] > 5000 and "val_accuracy" not in big.metrics  # measured, never trained
    assert small.tags[tags.TRIAL_STATE] == "COMPLETE" and small.metrics["params"] <= 5000
    for run in trials:  # every run carries its measured cost
        assert run.tags[tags.COST_RUNTIME] == "exported"
        assert run.metrics["latency_ms"] > 0 and run.metrics["model_bytes"] > 0
        assert run.metrics["faces_per_second"] == pytest.approx(1000 / run.metrics["latency_ms"], rel=1e-6)
    assert "not trained (params" in study["stdout"]
    storage = optuna.load_study(study_name="edge", storage=f"sqlite:///{study['work']}/mlruns/optuna.db")
    frozen = sorted(storage.trials, key=lambda t: t.number)
    assert frozen[0].state == optuna.trial.TrialState.PRUNED and frozen[0].user_attrs[tags.ATTR_CONSTRAINTS][0] > 0
    assert frozen[1].state == optuna.trial.TrialState.COMPLETE
    assert frozen[1].user_attrs[tags.ATTR_CONSTRAINTS][0] <= 0
    # What TPE and GP read (Optuna's trial constraints): the amount past each limit, by name.
    assert frozen[0].constraints == {"max_params": frozen[0].user_attrs[tags.ATTR_CONSTRAINTS][0]}
    assert frozen[1].constraints["max_params"] <= 0


def test_promote_picks_within_the_latency_budget_or_refuses(study: dict) -> None:
    from fer_experiments.tracking import find_runs, tags

    refused = invoke_cli("promote", "--study", "edge", "--data", study["csv"], "--max-latency-ms", "0.000001",
                      "--cache-dir", str(study["work"] / "cache"), cwd=study["work"])
    assert refused.returncode == 6, refused.stderr
    assert "no COMPLETE trial or refit serves a face within --max-latency-ms 1e-06" in refused.stderr
    assert "the fastest is trial 1" in refused.stderr
    ok = invoke_cli("promote", "--study", "edge", "--data", study["csv"], "--max-latency-ms", "10000", "--dry-run",
                 "--cache-dir", str(study["work"] / "cache"), cwd=study["work"])
    assert ok.returncode == 0, ok.stderr
    small = [r for r in find_runs(study["uri"], None, filter_string=tags.study_filter("edge", kind=tags.KIND_TRIAL))
             if r.tags[tags.TRIAL_STATE] == "COMPLETE"][0]
    assert f"run {small.run_id}" in ok.stdout
    usage = invoke_cli("promote", "--run", small.run_id, "--max-latency-ms", "5", "--dry-run", cwd=study["work"])
    assert usage.returncode == 2 and "--max-latency-ms picks within a study: give --study" in usage.stderr


@pytest.fixture(scope="module")
def two_objectives(tiny_real_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A two-objective study (accuracy up, parameters down): three widths, so three costs on the front's axis."""
    work = tmp_path_factory.mktemp("pareto")
    space = {"name": "tiny-front", "objective": ["val_accuracy", "params"], "max_epochs": 1, "train_limit": 200,
             "sampler": {"name": "tpe", "seed": 1}, "pruner": {"name": "median", "n_startup_trials": 1},
             "start_from": [{"name": f"w{f}", "params": {"filters": f}} for f in (4, 8, 16)],
             "params": {"conv_blocks": 1, "filters": {"type": "categorical", "choices": [4, 8, 16]},
                        "head": "global_avg", "dense_layers": 0, "batch_size": 64, "block": "plain"}}
    (work / "space.yaml").write_text(yaml.safe_dump(space))
    proc = invoke_cli("search", "--data", str(tiny_real_csv), "--space", "space.yaml", "--study", "front",
                      "--n-trials", "3", "--cache-dir", str(work / "cache"), cwd=work, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    return {"work": work, "csv": str(tiny_real_csv), "uri": f"sqlite:///{work}/mlruns/mlflow.db",
            "storage": f"sqlite:///{work}/mlruns/optuna.db", "stdout": proc.stdout}


def test_a_two_objective_study_optimises_accuracy_and_cost(two_objectives: dict) -> None:
    import optuna

    from fer_experiments.tracking import find_runs, tags

    study = optuna.load_study(study_name="front", storage=two_objectives["storage"])
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert study.metric_names == ["val_accuracy", "params"]
    runs = {int(r.tags[tags.TRIAL_NUMBER]): r for r in find_runs(
        two_objectives["uri"], None, filter_string=tags.study_filter("front", kind=tags.KIND_TRIAL))}
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE  # nothing of its cost ran before it
    for t in study.trials:
        run = runs[t.number]
        if t.state == optuna.trial.TrialState.COMPLETE:
            # The two values are the run's PublicTest accuracy and its parameter count, measured before training.
            assert t.values == [pytest.approx(run.metrics["val_accuracy"]), run.metrics["params"]]
        else:  # pruned only against a trial of similar cost (within 2x: 4 vs 8 filters may be; 16 is not)
            assert t.state == optuna.trial.TrialState.PRUNED and t.values is None
            assert "trials of similar cost (within 2x) at epoch 1" in run.tags[tags.PRUNE_REASON]
        # The similar-cost pruner's record: each epoch's value, and the cost it compares by.
        assert t.user_attrs[tags.ATTR_COST] == run.metrics["params"]
        assert set(t.user_attrs[tags.ATTR_CURVE]) == {"1"}
    params = sorted(r.metrics["params"] for r in runs.values())
    assert params[0] < params[1] < params[2]  # three widths, three costs
    parent = find_runs(two_objectives["uri"], None, filter_string=tags.study_filter("front", kind=tags.KIND_STUDY))[0]
    assert parent.tags[tags.COST_OBJECTIVE] == "params"


def test_the_front_is_in_the_study_artifacts_and_report(two_objectives: dict) -> None:
    import csv
    import io

    from fer_experiments.tracking import find_runs, tags
    from fer_experiments.tracking.runs import read_artifact

    uri = two_objectives["uri"]
    parent = find_runs(uri, None, filter_string=tags.study_filter("front", kind=tags.KIND_STUDY))[0]
    png = read_artifact(uri, parent.run_id, "summary/pareto_front.png")
    assert png and png.startswith(b"\x89PNG")
    rows = list(csv.DictReader(io.StringIO(read_artifact(uri, parent.run_id, "summary/pareto_front.csv").decode())))
    trials = [r for r in rows if r["reference"] == "False"]
    refs = {r["network"]: r for r in rows if r["reference"] == "True"}
    assert len(trials) == len(study_complete(two_objectives)) and any(r["on_front"] == "True" for r in trials)
    cheapest = min(trials, key=lambda r: float(r["params"]))
    assert cheapest["on_front"] == "True"  # nothing is cheaper, so nothing dominates it
    assert set(refs) == {"seed-base", "seed-deep", "seed-deep-bn", "mini-xception"}
    assert refs["seed-deep-bn"]["accuracy_from"] == "the 2018 study's PublicTest table"
    assert refs["mini-xception"]["accuracy_from"] == "not trained in this study"
    assert float(refs["seed-deep"]["params"]) > float(refs["mini-xception"]["params"])
    report = invoke_cli("report", "--study", "front", "--tracking-uri", uri, "--storage", two_objectives["storage"],
                        "--out", str(two_objectives["work"] / "report.html"), cwd=two_objectives["work"])
    assert report.returncode == 0, report.stderr
    page = (two_objectives["work"] / "report.html").read_text()
    assert '<section id="pareto">' in page and "Accuracy against serving cost" in page
    studies = invoke_cli("studies", "--storage", two_objectives["storage"], cwd=two_objectives["work"])
    assert studies.returncode == 0 and "val_accuracy + params" in studies.stdout, studies.stdout + studies.stderr


def study_complete(two_objectives: dict) -> list:
    import optuna

    study = optuna.load_study(study_name="front", storage=two_objectives["storage"])
    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def test_keras_tuner_refuses_a_two_objective_space(two_objectives: dict) -> None:
    proc = invoke_cli("search", "--engine", "keras-tuner", "--data", two_objectives["csv"], "--space", "space.yaml",
                      "--study", "kt-front", "--n-trials", "1", cwd=two_objectives["work"])
    assert proc.returncode == 2
    assert "a two-objective study (val_accuracy, params) needs --engine optuna" in proc.stderr
