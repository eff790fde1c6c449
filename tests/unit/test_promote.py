"""The promote guard, ``move_alias`` and ``rollback`` in-process, against a real MLflow SQLite store and registry.

Candidate runs carry a tiny untrained logged model (registration needs one) and their PublicTest metrics; the data
is a tiny synthetic CSV, so that promote's PrivateTest evaluation really runs. Each test uses its own registered
model name, so the runs are made once per module.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fer_experiments.errors import ConfigError, DataError, Refused
from fer_experiments.registry.promote import PromoteConfig, best_of_study, move_alias, promote, rollback
from fer_experiments.tracking import create_run, end_run, get_run, start_run, tags
from fer_experiments.tracking.model_registry import (
    alias_version,
    get_model_tag,
    list_versions,
    register_run_model,
    set_alias,
)
from tests.conftest import copy_migrated_store, synthetic_split, write_kaggle_csv

#: PublicTest accuracy of each candidate run.
ACCURACIES = {"low": 0.30, "mid": 0.35, "high": 0.40, "high-too": 0.40}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, migrated_mlflow_db: Path) -> dict:
    from fer_experiments.data import file_digest
    from fer_experiments.models.builder import build_model
    from fer_experiments.params import ModelParams

    work = tmp_path_factory.mktemp("promote-unit")
    rng = np.random.default_rng(0)
    csv = write_kaggle_csv(work / "tiny.csv", {name: synthetic_split(21, rng)
                                                for name in ("Training", "PublicTest", "PrivateTest")})
    digest = file_digest(csv)
    uri = copy_migrated_store(migrated_mlflow_db, work / "mlruns")["tracking_uri"]
    model = build_model(ModelParams(conv_blocks=1, convs_per_block=1, filters=2, dense_layers=0))
    runs = {}
    for i, (name, acc) in enumerate(ACCURACIES.items()):
        with start_run(uri, "p", run_name=name, tags=tags.trial_tags(study="p", engine="optuna", number=i) | {
                tags.TRIAL_STATE: "COMPLETE", tags.OBJECTIVE_VALUE: acc, tags.DATA_DIGEST: digest}) as run:
            run.log_metrics({tags.PUBLIC_ACCURACY: acc, tags.PUBLIC_MACRO_F1: acc / 2})
            run.log_keras_model(model)
        runs[name] = run.run_id
    return {"uri": uri, "csv": str(csv), "digest": digest, "runs": runs, "work": work}


def _cfg(env: dict, name: str, run: str | None = None, **kw) -> PromoteConfig:
    return PromoteConfig(tracking_uri=env["uri"], data_path=env["csv"], run_id=env["runs"][run] if run else None,
                         model_name=name, **kw)


def _champion(env: dict, name: str, alias: str = "champion") -> str | None:
    v = alias_version(env["uri"], name, alias)
    return v.version if v else None


def _history(env: dict, name: str) -> list[str]:
    return json.loads(get_model_tag(env["uri"], name, tags.ALIAS_HISTORY.format(alias="champion")) or "[]")


def test_first_promotion_evaluates_registers_and_moves_the_alias(env: dict) -> None:
    moved = []
    res = promote(_cfg(env, "m-first", "mid"), on_alias_moved=lambda *a: moved.append(a))
    assert res.decision == "promote" and res.version == "1" and res.created_version
    assert res.champion_version is None and res.champion_public_accuracy is None
    assert moved == [(env["uri"], "m-first", "champion")]
    assert _champion(env, "m-first") == "1" and _champion(env, "m-first", "previous-champion") is None
    assert _history(env, "m-first") == ["1"]
    run = get_run(env["uri"], env["runs"]["mid"])
    # Evaluated once on PrivateTest (21 rows, 7 classes) and the split's digest recorded.
    assert 0 <= run.metrics[tags.PRIVATE_ACCURACY] <= 1 and "test_f1_disgust" in run.metrics
    assert run.tags[tags.TEST_DATA_DIGEST] == env["digest"]
    (version,) = list_versions(env["uri"], "m-first")
    assert version.run_id == env["runs"]["mid"] and version.aliases == ("champion",)
    assert version.tags[tags.VERSION_STUDY] == "p" and version.tags[tags.VERSION_TRIAL] == "1"
    assert float(version.tags[tags.VERSION_PUBLIC_ACCURACY]) == pytest.approx(0.35)
    assert float(version.tags[tags.VERSION_PRIVATE_ACCURACY]) == pytest.approx(run.metrics[tags.PRIVATE_ACCURACY])
    assert version.tags[tags.DATA_DIGEST] == env["digest"]


def test_not_better_is_refused_and_nothing_changes(env: dict) -> None:
    promote(_cfg(env, "m-guard", "high"))
    for worse in ("mid", "high-too"):  # lower, and equal: neither is better
        with pytest.raises(Refused, match="is not better than m-guard@champion version 1") as exc:
            promote(_cfg(env, "m-guard", worse))
        assert f"{ACCURACIES[worse]:.4f}" in str(exc.value) and "--force" in str(exc.value)
        assert exc.value.exit_code == 6
        with pytest.raises(Refused, match="not better"):  # a dry run says the same
            promote(_cfg(env, "m-guard", worse, dry_run=True))
    assert _champion(env, "m-guard") == "1" and [v.version for v in list_versions(env["uri"], "m-guard")] == ["1"]
    assert _history(env, "m-guard") == ["1"]


def test_min_accuracy_refuses_unless_forced(env: dict) -> None:
    with pytest.raises(Refused, match=r"0\.3000 is below --min-accuracy 0\.5000; nothing changed"):
        promote(_cfg(env, "m-min", "low", min_accuracy=0.5))
    assert _champion(env, "m-min") is None and list_versions(env["uri"], "m-min") == []
    ok = promote(_cfg(env, "m-min", "low", min_accuracy=0.3))  # at the threshold: allowed
    assert ok.decision == "promote" and _champion(env, "m-min") == "1"
    forced = promote(_cfg(env, "m-min", "high", min_accuracy=0.99, force=True))
    assert forced.decision == "promote" and _champion(env, "m-min") == "2"


def test_dry_run_changes_nothing(env: dict) -> None:
    promote(_cfg(env, "m-dry", "low"))
    res = promote(_cfg(env, "m-dry", "high", dry_run=True))
    assert res.decision == "dry-run" and res.version is None
    assert res.champion_version == "1" and res.champion_public_accuracy == pytest.approx(0.30)
    assert _champion(env, "m-dry") == "1" and [v.version for v in list_versions(env["uri"], "m-dry")] == ["1"]


def test_already_champion_changes_nothing_but_runs_the_hook(env: dict) -> None:
    first = promote(_cfg(env, "m-already", "high"))
    calls = []
    again = promote(_cfg(env, "m-already", "high"), on_alias_moved=lambda *a: calls.append(a))
    assert again.decision == "already" and again.version == first.version == "1"
    assert calls == [(env["uri"], "m-already", "champion")]  # a promotion that crashed before its hook is completed
    assert [v.version for v in list_versions(env["uri"], "m-already")] == ["1"]
    # --study picks the best COMPLETE trial ("high", trial 2; "high-too" ties and has the higher number).
    by_study = promote(PromoteConfig(tracking_uri=env["uri"], data_path=env["csv"], study="p", model_name="m-already"))
    assert by_study.decision == "already" and by_study.candidate.trial == 2


def test_hook_failure_is_a_note_after_the_move(env: dict) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("service wrapper unavailable")

    res = promote(_cfg(env, "m-hook", "low"), on_alias_moved=broken)
    assert _champion(env, "m-hook") == "1"
    assert res.notes == ["after moving m-hook@champion: RuntimeError: service wrapper unavailable"]


def test_force_records_previous_champion_then_rollback(env: dict) -> None:
    promote(_cfg(env, "m-roll", "high"))
    forced = promote(_cfg(env, "m-roll", "low", force=True))
    assert forced.decision == "promote" and forced.version == "2" and forced.champion_version == "1"
    assert _champion(env, "m-roll") == "2" and _champion(env, "m-roll", "previous-champion") == "1"
    assert _history(env, "m-roll") == ["1", "2"]
    moved = []
    assert rollback(env["uri"], "m-roll", on_alias_moved=lambda *a: moved.append(a)) == ("2", "1")
    assert moved == [(env["uri"], "m-roll", "champion")]
    assert _champion(env, "m-roll") == "1" and _champion(env, "m-roll", "previous-champion") is None
    assert _history(env, "m-roll") == ["1"]
    with pytest.raises(ConfigError, match=r"m-roll@champion \(version 1\) has no earlier version"):
        rollback(env["uri"], "m-roll")
    with pytest.raises(ConfigError, match="m-nothing@champion does not exist"):
        rollback(env["uri"], "m-nothing")


def test_move_alias_history_with_a_champion_set_by_hand(env: dict) -> None:
    uri, name = env["uri"], "m-hist"
    versions = [register_run_model(uri, name, env["runs"][r])[0].version for r in ("low", "mid", "high")]
    assert versions == ["1", "2", "3"]
    move_alias(uri, name, "champion", "1", previous=None)
    assert _history(env, name) == ["1"] and _champion(env, name, "previous-champion") is None
    move_alias(uri, name, "champion", "2", previous="1")
    assert _history(env, name) == ["1", "2"] and _champion(env, name, "previous-champion") == "1"
    set_alias(uri, name, "champion", "3")  # moved by hand, outside promote: history does not know it
    move_alias(uri, name, "champion", "1", previous="3")
    assert _history(env, name) == ["1", "2", "3", "1"]
    assert _champion(env, name) == "1" and _champion(env, name, "previous-champion") == "3"
    move_alias(uri, name, "champion", "1", previous="1")  # moving to where it is: no duplicate entry
    assert _history(env, name) == ["1", "2", "3", "1"]
    assert rollback(uri, name) == ("1", "3")
    assert _champion(env, name) == "3" and _champion(env, name, "previous-champion") == "2"
    assert rollback(uri, name) == ("3", "2")
    assert _champion(env, name, "previous-champion") == "1"


def test_candidate_errors(env: dict) -> None:
    uri = env["uri"]
    with pytest.raises(ConfigError, match="exactly one of --study and --run"):
        promote(PromoteConfig(tracking_uri=uri, data_path=env["csv"], study="p", run_id=env["runs"]["low"]))
    with pytest.raises(ConfigError, match="exactly one of --study and --run"):
        promote(PromoteConfig(tracking_uri=uri, data_path=env["csv"]))
    with pytest.raises(ConfigError, match="unknown study 'nope'"):
        promote(PromoteConfig(tracking_uri=uri, data_path=env["csv"], study="nope", model_name="m-err"))
    with pytest.raises(ConfigError, match="not found"):
        promote(PromoteConfig(tracking_uri=uri, data_path=env["csv"], run_id="0" * 32, model_name="m-err"))
    bare = create_run(uri, "p", "no-model")
    end_run(uri, bare, "FINISHED")
    with pytest.raises(ConfigError, match="has no logged model"):
        promote(PromoteConfig(tracking_uri=uri, data_path=env["csv"], run_id=bare, model_name="m-err"))
    assert list_versions(uri, "m-err") == []


def test_study_without_complete_trial(env: dict) -> None:
    uri = env["uri"]
    parent = create_run(uri, "q", "study-q", tags={tags.KIND: tags.KIND_STUDY, tags.STUDY: "q"})
    failed = create_run(uri, "q", "trial-0", tags=tags.trial_tags(study="q", engine="optuna", number=0)
                        | {tags.TRIAL_STATE: "FAIL"})
    for run_id in (failed, parent):
        end_run(uri, run_id, "FAILED")
    with pytest.raises(ConfigError, match="study 'q' has no COMPLETE trial"):
        best_of_study(uri, "q")
    assert best_of_study(uri, "p") == ("p", 2, env["runs"]["high"])


def test_other_data_is_refused_before_registering(env: dict, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    other = write_kaggle_csv(tmp_path / "other.csv", {n: synthetic_split(14, rng)
                                                      for n in ("Training", "PublicTest", "PrivateTest")})
    with pytest.raises(DataError, match="differs from the candidate's training data"):
        promote(PromoteConfig(tracking_uri=env["uri"], data_path=str(other), run_id=env["runs"]["high-too"],
                              model_name="m-data"))
    assert list_versions(env["uri"], "m-data") == [] and _champion(env, "m-data") is None
