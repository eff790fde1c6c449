"""Issue 24 end to end on tiny real data: a space's serving limits are checked before a trial trains (a
configuration past them never trains: PRUNED, tagged with the measured figure, and Optuna's sampler gets the
amounts), every trial's run carries its cost, and ``promote --max-latency-ms`` picks within the budget or refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli

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
    proc = run_cli("search", "--data", str(tiny_real_csv), "--space", "space.yaml", "--study", "edge",
                   "--n-trials", "2", "--cache-dir", str(work / "cache"), cwd=work, timeout=1800)
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


def test_promote_picks_within_the_latency_budget_or_refuses(study: dict) -> None:
    from fer_experiments.tracking import find_runs, tags

    refused = run_cli("promote", "--study", "edge", "--data", study["csv"], "--max-latency-ms", "0.000001",
                      "--cache-dir", str(study["work"] / "cache"), cwd=study["work"])
    assert refused.returncode == 6, refused.stderr
    assert "no COMPLETE trial or refit serves a face within --max-latency-ms 1e-06" in refused.stderr
    assert "the fastest is trial 1" in refused.stderr
    ok = run_cli("promote", "--study", "edge", "--data", study["csv"], "--max-latency-ms", "10000", "--dry-run",
                 "--cache-dir", str(study["work"] / "cache"), cwd=study["work"])
    assert ok.returncode == 0, ok.stderr
    small = [r for r in find_runs(study["uri"], None, filter_string=tags.study_filter("edge", kind=tags.KIND_TRIAL))
             if r.tags[tags.TRIAL_STATE] == "COMPLETE"][0]
    assert f"run {small.run_id}" in ok.stdout
    usage = run_cli("promote", "--run", small.run_id, "--max-latency-ms", "5", "--dry-run", cwd=study["work"])
    assert usage.returncode == 2 and "--max-latency-ms picks within a study: give --study" in usage.stderr
