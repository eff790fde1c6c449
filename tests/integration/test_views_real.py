"""What a user sees of a tiny real search (issue 12): the terminal output, what MLflow's UI reads (experiment kind,
run statuses, names, params, description, source, logged models and their metrics, tables), Optuna's metric name,
the report on the study's run, and `promote` finding the run's own data set and showing versions in a dry run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import invoke_cli, run_cli

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

# Trials of 2 epochs meet the threshold pruner at epoch 2 (nothing reaches 99%), trials of 1 epoch complete.
SPACE = """\
name: views
objective: val_accuracy
max_epochs: 2
train_limit: 200
sampler: {name: random, seed: 3}
pruner: {name: threshold, lower: 0.99, n_warmup_steps: 2}
params:
  conv_blocks: 1
  convs_per_block: 1
  filters: {type: categorical, choices: [4, 8]}
  batchnorm: {type: categorical, choices: [none, after_activation]}
  head: global_avg
  dense_layers: 0
  epochs: {type: categorical, choices: [1, 2]}
  batch_size: 64
  learning_rate: {type: float, low: 1.0e-3, high: 3.0e-3, log: true}
"""


@pytest.fixture(scope="module")
def work(tiny_real_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("views")
    csv = root / "fer-tiny.csv"
    shutil.copy(tiny_real_csv, csv)  # a copy this module may move away (promote without --data)
    (root / "space.yaml").write_text(SPACE)
    # A real process: its output is checked for TensorFlow's native start-up noise (file descriptor 2).
    proc = run_cli("search", "--data", str(csv), "--space", "space.yaml", "--study", "v", "--n-trials", "3", cwd=root,
                   timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    return {"root": root, "csv": csv, "uri": uri, "storage": f"sqlite:///{root}/mlruns/optuna.db", "search": proc}


def _client(work: dict):
    import mlflow

    return mlflow.MlflowClient(work["uri"], registry_uri=work["uri"])


def _runs(work: dict, kind: str) -> list:
    client = _client(work)
    exp = client.get_experiment_by_name("v")
    return client.search_runs([exp.experiment_id], f"tags.`fer.kind` = '{kind}'")


def test_terminal_header_steps_and_no_tensorflow_noise(work: dict) -> None:
    out, err = work["search"].stdout, work["search"].stderr
    for line in ("study:", "space:", "target:", "MLflow:", "storage:", "data:", "loading data", "starting TensorFlow"):
        assert line in out, line
    assert "hash " in out and "digest " in out and "200 Training rows (limit 200)" in out
    assert "E0000" not in err + out and "NodeDef" not in err + out and "absl::InitializeLog" not in err


def test_mlflow_ui_sees_training_runs_named_and_described(work: dict) -> None:
    client = _client(work)
    exp = client.get_experiment_by_name("v")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    trials = _runs(work, "trial")
    assert len(trials) == 3
    for run in trials:
        number = run.data.tags["trial_number"]
        assert run.info.run_name.startswith(f"trial-{number} 1x1c")
        # MLflow's UI shows a source after its last "/": paths are shown by their last part.
        assert run.data.tags["mlflow.source.name"] == "fer-exp search --data fer-tiny.csv --space space.yaml " \
                                                      "--study v --n-trials 3"
        # Pruned trials end FINISHED (trial_state says PRUNED); nothing here was interrupted.
        assert run.info.status == "FINISHED" and run.data.tags["trial_state"] in ("COMPLETE", "PRUNED")
    assert {r.data.tags["trial_state"] for r in trials} == {"COMPLETE", "PRUNED"}, "seed 3 samples both"
    (parent,) = _runs(work, "study")
    params, parent_tags = parent.data.params, parent.data.tags
    assert params["space.filters"] == "one of [4, 8]" and params["train_limit"] == "200"
    assert params["objective"] == "val_accuracy" and json.loads(params["pruner"])["name"] == "threshold"
    best = max((r for r in trials if r.data.tags["trial_state"] == "COMPLETE"),
               key=lambda r: (float(r.data.tags["objective_value"]), -int(r.data.tags["trial_number"])))
    assert params["best.trial"] == best.data.tags["trial_number"]
    assert params["best.filters"] == best.data.params["filters"]
    note = parent_tags["mlflow.note.content"]
    assert "3 finished" in note and f"trial {best.data.tags['trial_number']}" in note and best.info.run_id in note
    assert parent_tags["mlflow.source.name"].startswith("fer-exp search")
    assert parent_tags["best_trial"] == best.data.tags["trial_number"]


def test_logged_models_carry_metrics_classes_and_a_table(work: dict) -> None:
    import mlflow

    client = _client(work)
    for run in _runs(work, "trial"):
        if run.data.tags["trial_state"] != "COMPLETE":
            continue
        model = client.get_logged_model(run.data.tags["fer.model_id.model"])
        linked = {m.key: m.value for m in model.metrics or []}
        assert linked["best_val_accuracy"] == pytest.approx(run.data.metrics["best_val_accuracy"])
        assert "best_val_macro_f1" in linked
        assert model.tags["mlflow.runName"] == run.info.run_name
        mlflow.set_tracking_uri(work["uri"])
        info = mlflow.models.get_model_info(f"models:/{model.model_id}")
        assert info.metadata["class_names"] == ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]
        if run.info.run_id == _runs(work, "study")[0].data.tags.get("fer.challenger_run"):
            # The challenger's registered version is listed on its logged model (the Models tab's column).
            assert {"name": "fer-cnn", "version": "1"} in json.loads(model.tags["mlflow.modelVersions"])
        table = client.load_table(run.info.experiment_id, "evaluation/val_classification_table.json",
                                  run_ids=[run.info.run_id])
        assert list(table["class"])[:7] == info.metadata["class_names"] and "f1" in table.columns


def test_optuna_study_names_its_metric(work: dict) -> None:
    import optuna

    assert optuna.load_study(study_name="v", storage=work["storage"]).metric_names == ["val_accuracy"]


def test_report_is_logged_on_the_study_run(work: dict) -> None:
    client = _client(work)
    (parent,) = _runs(work, "study")
    page = Path(client.download_artifacts(parent.info.run_id, "summary/report.html", str(work["root"]))).read_text()
    assert "<title>Study v</title>" in page and 'id="trials-table"' in page and "data:image/png;base64," in page
    for run in _runs(work, "trial"):
        assert f"/runs/{run.info.run_id}" in page


#: These promotes are given no --data: FER2013_CSV (set in CI) would be taken as --data (click reads an empty
#: variable as unset).
NO_DATA = {"FER2013_CSV": ""}


def test_promote_finds_the_runs_data_and_dry_run_shows_versions(work: dict) -> None:
    # The best trial is registered as the challenger: a dry run names that version.
    dry = invoke_cli("promote", "--study", "v", "--dry-run", cwd=work["root"], env=NO_DATA)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "already registered as version 1" in dry.stdout
    # No --data: the data set logged with the run is here with the same digest, and promote says it uses it.
    done = invoke_cli("promote", "--study", "v", cwd=work["root"], env=NO_DATA)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "data set logged with the run" in done.stdout and str(work["csv"]) in done.stdout
    for noise in ("CloudPickle", "WARNING", "Warning"):
        assert noise not in done.stdout + done.stderr, noise
    # Once promoted, a dry run shows the champion's PrivateTest numbers too.
    again = invoke_cli("promote", "--study", "v", "--dry-run", cwd=work["root"], env=NO_DATA)
    champion_row = next(line for line in again.stdout.splitlines() if line.startswith("fer-cnn@champion"))
    assert champion_row.split()[1] == "1" and champion_row.split()[-1] != "-", again.stdout
    # A run whose data set moved away: promote asks for --data and says why.
    trained = invoke_cli("train", "--data", str(work["csv"]), "--preset", "seed-base", "--set", "conv_blocks=1",
                         "--set", "convs_per_block=1", "--set", "filters=4", "--set", "dense_layers=0", "--epochs", "1",
                         "--limit", "100", cwd=work["root"])
    assert trained.returncode == 0, trained.stdout + trained.stderr
    run_id = next(line.split()[1] for line in trained.stdout.splitlines() if line.startswith("run: "))
    moved = work["root"] / "elsewhere.csv"
    work["csv"].rename(moved)
    try:
        missing = invoke_cli("promote", "--run", run_id, "--model-name", "other", cwd=work["root"], env=NO_DATA)
        assert missing.returncode == 2 and "give --data" in missing.stderr and "not on this machine" in missing.stderr
    finally:
        moved.rename(work["csv"])
