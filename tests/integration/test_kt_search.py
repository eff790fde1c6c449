"""keras-tuner as a second engine: same MLflow layout as Optuna, failures reported, promote works, comparison."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import copy_migrated_store, invoke_cli

pytestmark = [pytest.mark.slow]

SPACE = """\
name: kt-tiny
max_epochs: 2
train_limit: 200
sampler: {name: random, seed: 2}
pruner: none
params:
  conv_blocks: 1
  convs_per_block: 1
  filters: {type: categorical, choices: [4, 8]}
  dense_layers: {type: int, low: 0, high: 1}
  dense_units: {type: categorical, choices: [8, 16], when: {dense_layers: 1}}
  batch_size: 64
  learning_rate: {type: float, low: 1.0e-3, high: 3.0e-3, log: true}
"""

# SGD at 1e39, which float32 holds as inf, with several batches per epoch: the first step makes every weight inf or
# NaN (inf * 0), so every trial's loss is NaN in its first epoch whatever the architecture. (At 1e30 a trial whose
# ReLUs all died kept a finite, clipped loss on some CPUs: CI once completed one.)
FAILING = SPACE.replace("batch_size: 64", "batch_size: 16\n  optimizer: sgd").replace(
    "learning_rate: {type: float, low: 1.0e-3, high: 3.0e-3, log: true}", "learning_rate: 1.0e39")


def _client(uri: str):
    import mlflow

    return mlflow.MlflowClient(uri, registry_uri=uri)


@pytest.fixture(scope="module")
def kt(synthetic_csv: Path, tmp_path_factory: pytest.TempPathFactory, migrated_mlflow_db: Path) -> dict:
    work = tmp_path_factory.mktemp("kt")
    # The MLflow store exists already (copied): this test is not about creating one.
    copy_migrated_store(migrated_mlflow_db, work / "mlruns")
    (work / "space.yaml").write_text(SPACE)
    proc = invoke_cli("search", "--engine", "keras-tuner", "--tuner", "random", "--data", str(synthetic_csv),
                      "--space", "space.yaml", "--study", "kt-demo", "--n-trials", "3", cwd=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"work": work, "csv": str(synthetic_csv), "uri": f"sqlite:///{work}/mlruns/mlflow.db", "out": proc.stdout}


def test_keras_tuner_writes_the_optuna_layout(kt: dict) -> None:
    client = _client(kt["uri"])
    exp = client.get_experiment_by_name("kt-demo")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("fer.kind") == "study"]
    children = [r for r in runs if r.data.tags.get("fer.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["fer.engine"] == "keras-tuner"
    assert parent.data.metrics["complete_trials"] == 3
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(int(c.data.params["trial_number"]) for c in children) == [0, 1, 2]
    for c in children:
        assert c.info.status == "FINISHED" and c.data.tags["trial_state"] == "COMPLETE"
        assert c.data.tags["fer.engine"] == "keras-tuner" and c.data.tags["study"] == "kt-demo"
        assert len([k for k in c.data.metrics if k.startswith(("val_precision_", "val_recall_", "val_f1_"))]) == 21
        assert len(client.get_metric_history(c.info.run_id, "val_accuracy")) == int(c.data.params["epochs"])
        assert "fer.model_id.model" in c.data.tags
        files = {a.path for a in client.list_artifacts(c.info.run_id, "evaluation")}
        assert "evaluation/val_confusion_matrix.png" in files
    assert (kt["work"] / "mlruns" / "keras-tuner" / "kt-demo").is_dir()
    mv = client.get_model_version_by_alias("fer-cnn", "challenger")
    best = max(children, key=lambda c: float(c.data.tags["objective_value"]))
    assert mv.run_id == best.info.run_id


def test_promote_works_on_a_keras_tuner_study(kt: dict) -> None:
    proc = invoke_cli("promote", "--study", "kt-demo", "--data", kt["csv"], cwd=kt["work"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    client = _client(kt["uri"])
    champion = client.get_model_version_by_alias("fer-cnn", "champion")
    assert champion.tags["study"] == "kt-demo"
    assert "test_accuracy" in client.get_run(champion.run_id).data.metrics


def test_all_failing_keras_tuner_search_exits_nonzero(synthetic_csv: Path, tmp_path: Path,
                                                      migrated_mlflow_db: Path) -> None:
    # The MLflow store exists already (copied): this test is not about creating one.
    copy_migrated_store(migrated_mlflow_db, tmp_path / "mlruns")
    (tmp_path / "bad.yaml").write_text(FAILING)
    proc = invoke_cli("search", "--engine", "keras-tuner", "--tuner", "random", "--data", str(synthetic_csv),
                      "--space", "bad.yaml", "--study", "kt-bad", "--n-trials", "3", "--max-consecutive-failures", "3",
                      cwd=tmp_path)
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert "loss became nan" in proc.stderr and "Traceback" not in proc.stderr
    client = _client(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        client.get_registered_model("fer-cnn")
    runs = client.search_runs([client.get_experiment_by_name("kt-bad").experiment_id],
                              "tags.`fer.kind` = 'trial'")
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FAILED"}


def test_compare_engines_writes_table_and_plot(synthetic_csv: Path, tmp_path: Path, migrated_mlflow_db: Path) -> None:
    # The MLflow store exists already (copied): this test is not about creating one.
    copy_migrated_store(migrated_mlflow_db, tmp_path / "mlruns")
    (tmp_path / "space.yaml").write_text(SPACE)
    proc = invoke_cli("compare-engines", "--data", str(synthetic_csv), "--space", "space.yaml", "--budget-epochs", "3",
                      "--seeds", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "optuna" in proc.stdout and "keras-tuner" in proc.stdout and "mean best over 1 seed(s)" in proc.stdout
    client = _client(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    parent = client.search_runs([client.get_experiment_by_name("compare-engines").experiment_id])[0]
    assert parent.info.status == "FINISHED"
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "compare")}
    assert files == {"compare/engines.txt", "compare/engines.csv", "compare/best_vs_epochs.png"}
    rows = Path(client.download_artifacts(parent.info.run_id, "compare/engines.csv", str(tmp_path))).read_text()
    engines = [line.split(",")[0] for line in rows.splitlines()[1:]]
    assert engines == ["optuna", "keras-tuner"]
    for line in rows.splitlines()[1:]:
        assert int(line.split(",")[4]) >= 3  # each engine spent at least its budget
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        client.get_registered_model("fer-cnn")  # comparisons register nothing
