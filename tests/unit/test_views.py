"""What users see of a search outside the code (issue 12): the progress display, run names, the study's metric name
in Optuna (optuna-dashboard's label), experiments tagged for MLflow's model-training view, and reconcile ending
the run of a pruned trial FINISHED."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from fer_experiments.models.labels import describe, run_name
from fer_experiments.search.progress import Progress, format_seconds


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_run_names_carry_the_key_choices() -> None:
    values = {"conv_blocks": 3, "convs_per_block": 2, "filters": 16, "batchnorm": "after_activation",
              "head": "global_avg", "dense_layers": 0, "learning_rate": 1e-3}
    assert run_name(3, values) == "trial-3 3x2c16 bn-after gap"
    assert describe({"conv_blocks": 2, "convs_per_block": 1, "filters": 8, "batchnorm": "none", "head": "flatten",
                     "dense_layers": 2, "dense_units": 64}) == "2x1c8 flat d64x2"
    assert run_name(0, {}) == "trial-0"


def test_progress_header_steps_and_eta_in_a_log() -> None:
    out = io.StringIO()
    p = Progress(4, out)
    p.header([("study", "s"), ("storage", "sqlite:///x.db")])
    with p.step("loading data"):
        pass
    assert out.getvalue().startswith("study:   s\nstorage: sqlite:///x.db\nloading data... ")
    assert p.eta() is None  # no trial finished yet: no guess
    p.trial_start(0)
    p._trial_started -= 60  # noqa: SLF001 - a trial that took a minute
    p.trial_end(0, "COMPLETE", 0.3)
    assert p.eta() == "3m00s" and "ETA 3m00s" in out.getvalue().splitlines()[-1]
    p.batch(1, 1, 2, 5, 10)  # not a terminal: no batch line
    assert "[" not in out.getvalue().splitlines()[-1].split("finished")[0].replace("[1/4", "")
    p.seed(4, 4, 0, 0, 0.3, 0)
    assert p.eta() is None  # nothing left


def test_progress_batches_redraw_one_line_on_a_terminal() -> None:
    out = _Tty()
    p = Progress(2, out)
    p.batch(0, 1, 2, 5, 10)
    p.batch(0, 1, 2, 10, 10)
    p.epoch(0, 1, 2, {"val_accuracy": 0.25}, "val_accuracy")
    text = out.getvalue()
    assert "\n" not in text and text.count("\r\x1b[2K") == 3
    assert "epoch 1/2 [==========          ] 5/10" in text and "epoch 1/2: val_accuracy 0.2500" in text


def test_format_seconds() -> None:
    assert [format_seconds(s) for s in (5, 90, 4000)] == ["5s", "1m30s", "1h06m"]


def test_study_sets_its_metric_name_for_dashboards(tmp_path: Path) -> None:
    import optuna

    from fer_experiments.search.study import create_or_resume, open_storage
    from fer_experiments.spaces import SearchSpace
    from fer_experiments.tracking import tags

    url = f"sqlite:///{tmp_path}/optuna.db"
    space = SearchSpace.from_dict({"name": "m", "objective": "val_macro_f1", "max_epochs": 1,
                                   "params": {"filters": {"type": "categorical", "choices": [4, 8]}}})
    storage = open_storage(url)
    study, _, created = create_or_resume(storage, url, "m", space, data_digest="d", limit=None, experiment=None)
    assert created and optuna.load_study(study_name="m", storage=url).metric_names == ["val_macro_f1"]
    # A study made before: no metric name until it is resumed.
    old = optuna.create_study(study_name="old", storage=url, direction="maximize")
    for key, value in ((tags.ATTR_SPACE, space.to_dict()), (tags.ATTR_SPACE_HASH, space.content_hash()),
                       (tags.ATTR_DATA_DIGEST, "d")):
        old.set_user_attr(key, value)
    assert optuna.load_study(study_name="old", storage=url).metric_names is None
    create_or_resume(storage, url, "old", None, data_digest="d", limit=None, experiment=None)
    assert optuna.load_study(study_name="old", storage=url).metric_names == ["val_macro_f1"]


def test_experiments_open_on_model_training_runs(tmp_path: Path) -> None:
    import mlflow

    from fer_experiments.tracking import tags
    from fer_experiments.tracking.store import ensure_experiment

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    new = ensure_experiment(uri, "fresh")
    assert client.get_experiment(new).tags[tags.EXPERIMENT_KIND] == "custom_model_development"
    old = client.create_experiment("made-before")  # by an older fer-exp: untagged
    assert tags.EXPERIMENT_KIND not in client.get_experiment(old).tags
    assert ensure_experiment(uri, "made-before") == old
    assert client.get_experiment(old).tags[tags.EXPERIMENT_KIND] == "custom_model_development"
    client.set_experiment_tag(old, tags.EXPERIMENT_KIND, "genai_development")  # a user's own choice is kept
    ensure_experiment(uri, "made-before")
    assert client.get_experiment(old).tags[tags.EXPERIMENT_KIND] == "genai_development"


@pytest.mark.parametrize("state, status", [("PRUNED", "FINISHED"), ("COMPLETE", "FINISHED"), ("FAIL", "KILLED")])
def test_reconcile_ends_an_orphaned_run_by_its_trials_state(tmp_path: Path, state: str, status: str) -> None:
    import optuna

    from fer_experiments.search.reconcile import reconcile
    from fer_experiments.tracking import create_run, get_run, tags

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    study = optuna.create_study(study_name="z", storage=f"sqlite:///{tmp_path}/optuna.db")
    trial = study.ask()
    study.tell(trial, 0.5 if state == "COMPLETE" else None, state=getattr(optuna.trial.TrialState, state))
    run_id = create_run(uri, "z", "trial-0", tags=tags.trial_tags(study="z", engine="optuna", number=0))
    notes = reconcile(study, uri, "z")
    info = get_run(uri, run_id)
    assert info.status == status, notes
    if status == "FINISHED":
        assert info.tags[tags.TRIAL_STATE] == state


def test_run_names_from_mlflow_params_strings() -> None:
    assert describe({"conv_blocks": "2", "convs_per_block": "1", "filters": "8", "head": "global_avg",
                     "dense_layers": "0", "dense_units": "256"}) == "2x1c8 gap"
