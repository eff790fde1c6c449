"""Issue 21 end to end on tiny real data: a space's ``start_from`` points are the study's first trials (tagged in
MLflow), trials get equal wall-clock slices (``trial_budget``), and the refit continues the winning trial's weights
(``refit.warm_start``), never ending below it on PublicTest; ``--budget`` still bounds the whole command."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import invoke_cli, run_cli

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def _space(path: Path, **extra: object) -> Path:
    space = {"name": "tiny-warm", "max_epochs": 50, "train_limit": None, "sampler": {"name": "random", "seed": 3},
             "pruner": "none", "trial_budget": 4,
             "start_from": ["mini-xception", {"name": "narrow-plain", "params": {"block": "plain", "filters": 4}}],
             "refit": {"top_k": 1, "epochs": 2, "warm_start": True},
             "params": {
                 "conv_blocks": 1, "filters": {"type": "categorical", "choices": [4, 16]}, "head": "global_avg",
                 "dense_layers": 0, "batch_size": 64, "tta": "flip", "lr_schedule": "cosine", "stem_filters": 0,
                 "learning_rate": {"type": "float", "low": 1.0e-3, "high": 5.0e-3, "log": True},
                 "block": {"type": "categorical", "choices": ["plain", "separable"]}}} | extra
    path.write_text(yaml.safe_dump(space))
    return path


def test_start_points_first_equal_slices_and_a_warm_refit(tiny_real_csv: Path, tmp_path: Path) -> None:
    from fer_experiments.tracking import find_runs, tags

    space = _space(tmp_path / "space.yaml")
    proc = invoke_cli("search", "--data", str(tiny_real_csv), "--space", str(space), "--study", "w", "--n-trials",
                      "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    trials = sorted(find_runs(uri, None, filter_string=tags.study_filter("w", kind=tags.KIND_TRIAL)),
                    key=lambda r: int(r.tags[tags.TRIAL_NUMBER]))
    assert len(trials) == 3
    # The space's start points are trials 0 and 1, in its order, tagged as such; trial 2 is the sampler's own.
    assert [t.tags.get(tags.START_FROM) for t in trials] == ["mini-xception", "narrow-plain", None]
    assert (trials[0].params["block"], trials[0].params["filters"]) == ("separable", "16")
    assert float(trials[0].params["learning_rate"]) == pytest.approx(2e-3)  # the preset's, inside the space's range
    assert (trials[1].params["block"], trials[1].params["filters"]) == ("plain", "4")
    # Equal cost: every trial trained for the same slice of wall time, on all 600 Training rows.
    assert {float(t.params["time_budget_s"]) for t in trials} == {4.0}
    assert {t.params["n_train"] for t in trials} == {"600"}
    refits = find_runs(uri, None, filter_string=tags.study_filter("w", kind=tags.KIND_REFIT))
    assert len(refits) == 1
    refit = refits[0]
    # A challenger that passed trial 0's images without beating it stops there, PRUNED (no refit could take it).
    complete = [t for t in trials if t.tags[tags.TRIAL_STATE] == "COMPLETE"]
    for t in trials:
        assert t.tags[tags.TRIAL_STATE] in {"COMPLETE", "PRUNED"}
        if t.tags[tags.TRIAL_STATE] == "PRUNED":
            assert t.tags[tags.PRUNE_REASON].startswith(f"out of the running at epoch {t.tags[tags.PRUNED_AT_EPOCH]} (")
            assert "not above trial 0's" in t.tags[tags.PRUNE_REASON] and t.tags[tags.TRIAL_NUMBER] != "0"
    best = max(complete, key=lambda r: (float(r.tags[tags.OBJECTIVE_VALUE]), -int(r.tags[tags.TRIAL_NUMBER])))
    if tags.REFIT_CHOICE in refit.tags:
        # The best value came from a trial that led the first start point at equal time only: that start point
        # is refit instead, and the refit run and the terminal say why (search.ranking; tests/unit/test_ranking.py).
        assert refit.tags[tags.REFIT_CHOICE].startswith(f"trial {best.tags[tags.TRIAL_NUMBER]} led trial 0 (start "
                                                        "point mini-xception) at equal time")
        assert refit.tags[tags.REFIT_CHOICE] in proc.stdout
        best = trials[0]
    # The refit says which trial and which epoch it continues ...
    assert refit.tags[tags.WARM_START_OF] == best.run_id == refit.tags[tags.REFIT_OF]
    assert refit.tags[tags.WARM_START_TRIAL] == best.tags[tags.TRIAL_NUMBER]
    assert refit.tags[tags.WARM_START_EPOCH] == str(int(best.metrics["best_epoch"]))
    assert "continuing trial" in proc.stdout
    # ... and, its start counted as epoch 0, never ends below that trial on PublicTest.
    assert float(refit.tags[tags.OBJECTIVE_VALUE]) >= float(best.tags[tags.OBJECTIVE_VALUE])


@pytest.mark.parametrize("engine", [[], ["--engine", "keras-tuner", "--tuner", "random"]], ids=["optuna", "kt"])
def test_a_challenger_out_of_the_running_stops_and_the_incumbent_is_refit(tiny_real_csv: Path, tmp_path: Path,
                                                                          engine: list[str]) -> None:
    import optuna

    from fer_experiments.tracking import find_runs, tags

    # The same network twice, two whole epochs each (the slice is long enough): on the CPU the second start point
    # repeats the first one's curve, so by the first's selected pass it has seen as many images without beating it.
    same = {"block": "separable", "filters": 16, "learning_rate": 2.0e-3}
    space = _space(tmp_path / "space.yaml", max_epochs=2, trial_budget=600,
                   start_from=[{"name": "first", "params": same}, {"name": "again", "params": same}],
                   refit={"top_k": 1, "epochs": 1, "warm_start": True})
    proc = invoke_cli("search", *engine, "--data", str(tiny_real_csv), "--space", str(space), "--study", "o",
                      "--n-trials", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    first, again = sorted(find_runs(uri, None, filter_string=tags.study_filter("o", kind=tags.KIND_TRIAL)),
                          key=lambda r: int(r.tags[tags.TRIAL_NUMBER]))
    assert first.tags[tags.TRIAL_STATE] == "COMPLETE"
    best_epoch = int(first.metrics["best_epoch"])
    assert again.tags[tags.TRIAL_STATE] == "PRUNED" and again.tags[tags.PRUNED_AT_EPOCH] == str(best_epoch)
    value = float(first.tags[tags.OBJECTIVE_VALUE])
    assert again.tags[tags.PRUNE_REASON] == (
        f"out of the running at epoch {best_epoch} ({600 * best_epoch:,} images): its best val_accuracy by "
        f"{600 * best_epoch:,} images, {value:.4f}, is not above trial 0's {value:.4f} (start point first), so no "
        "refit can take it")
    # Optuna records it PRUNED too (keras-tuner has no such state: it scores the value reached); the refit
    # continues the incumbent.
    if not engine:
        study = optuna.load_study(study_name="o", storage=f"sqlite:///{tmp_path}/mlruns/optuna.db")
        assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED"]
    [refit] = find_runs(uri, None, filter_string=tags.study_filter("o", kind=tags.KIND_REFIT))
    assert refit.tags[tags.WARM_START_OF] == first.run_id


def test_a_wrong_start_point_is_refused_with_the_valid_names(tiny_real_csv: Path, tmp_path: Path) -> None:
    space = _space(tmp_path / "space.yaml", start_from=["mini-xceptoin"])
    proc = invoke_cli("search", "--data", str(tiny_real_csv), "--space", str(space), "--study", "x", "--n-trials",
                      "1", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr  # a bad config: exit 2, before any store is written
    assert "start_from[0]: unknown preset 'mini-xceptoin'" in proc.stderr
    assert "mini-xception-wide" in proc.stderr and "did you mean 'mini-xception'" in proc.stderr
    assert not (tmp_path / "mlruns").exists() or not any((tmp_path / "mlruns").iterdir())


def test_budget_with_slices_and_a_warm_refit_ends_within_it(tiny_real_csv: Path, tmp_path: Path) -> None:
    from fer_experiments.tracking import find_runs, tags

    # A real process under --budget (its start counts): 60 s, so the first trial (the one the refit needs) gets
    # less than the 75 s floor of a share; a fifth is kept for the refit (the least that still leaves a first trial
    # room after a slow machine's set-up: the command refuses a budget that cannot run one).
    budget = 60
    space = _space(tmp_path / "space.yaml", trial_budget="8%", max_epochs=1000,
                   refit={"top_k": 1, "epochs": 1000, "budget_share": 0.2, "warm_start": True})
    started = time.monotonic()
    proc = run_cli("search", "--data", str(tiny_real_csv), "--space", str(space), "--study", "b",
                   "--budget", f"{budget}s", cwd=tmp_path, timeout=budget * 4)
    wall = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert wall <= budget + 40, (wall, proc.stdout[-4000:])
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    trials = find_runs(uri, None, filter_string=tags.study_filter("b", kind=tags.KIND_TRIAL))
    refits = find_runs(uri, None, filter_string=tags.study_filter("b", kind=tags.KIND_REFIT))
    assert trials and len(refits) == 1 and refits[0].status == "FINISHED"
    # The same slice each (8% of the budget, but at least 75 s of which the first trial may get less: it is the
    # one the refit needs): trials compare at equal cost.
    slices = sorted(float(t.params["time_budget_s"]) for t in trials)
    assert slices[-1] <= 75.0 and all(s == slices[-1] for s in slices[1:])
    assert refits[0].tags[tags.WARM_START_OF] in {t.run_id for t in trials}
    print(f"--budget {budget}s: wall {wall:.0f}s, {len(trials)} trials")


def test_keras_tuner_runs_the_start_points_first(tiny_real_csv: Path, tmp_path: Path) -> None:
    from fer_experiments.tracking import find_runs, tags

    space = _space(tmp_path / "space.yaml", refit=None)
    proc = invoke_cli("search", "--engine", "keras-tuner", "--tuner", "random", "--data", str(tiny_real_csv),
                      "--space", str(space), "--study", "kt", "--n-trials", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    trials = sorted(find_runs(uri, None, filter_string=tags.study_filter("kt", kind=tags.KIND_TRIAL)),
                    key=lambda r: int(r.tags[tags.TRIAL_NUMBER]))
    assert [t.tags.get(tags.START_FROM) for t in trials] == ["mini-xception", "narrow-plain", None]
    assert (trials[0].params["block"], trials[0].params["filters"]) == ("separable", "16")
    assert (trials[1].params["block"], trials[1].params["filters"]) == ("plain", "4")


def test_a_share_of_the_budget_needs_a_budget(tiny_real_csv: Path, tmp_path: Path) -> None:
    proc = invoke_cli("search", "--data", str(tiny_real_csv), "--space", "cpu-hour", "--study", "nb", "--n-trials",
                      "1", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "cpu-hour.yaml: trial_budget '6%' is a share of --budget: give --budget" in proc.stderr
    assert not (tmp_path / "mlruns").exists() or not any((tmp_path / "mlruns").iterdir())
