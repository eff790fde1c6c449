"""`fer-exp promote / models / rollback` on a small synthetic study with real MLflow and Optuna stores."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import copy_migrated_store, invoke_cli, tiny_space

pytestmark = [pytest.mark.slow]

SPACE = tiny_space("promote-tiny")


@pytest.fixture(scope="module")
def env(synthetic_csv: Path, tmp_path_factory: pytest.TempPathFactory, migrated_mlflow_db: Path) -> dict:
    """A 3-trial study `p` (every trial COMPLETE) in a fresh folder."""
    work = tmp_path_factory.mktemp("promote")
    # The MLflow store exists already (copied): this test is not about creating one.
    copy_migrated_store(migrated_mlflow_db, work / "mlruns")
    (work / "space.yaml").write_text(SPACE)
    proc = invoke_cli("search", "--data", str(synthetic_csv), "--space", "space.yaml", "--study", "p",
                      "--n-trials", "3", cwd=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"work": work, "csv": str(synthetic_csv), "uri": f"sqlite:///{work}/mlruns/mlflow.db",
            "storage": f"sqlite:///{work}/mlruns/optuna.db"}


def _client(env: dict):
    import mlflow

    return mlflow.MlflowClient(env["uri"], registry_uri=env["uri"])


def _trial_runs(env: dict) -> list:
    client = _client(env)
    exp = client.get_experiment_by_name("p")
    runs = client.search_runs([exp.experiment_id], "tags.`fer.kind` = 'trial'")
    return sorted(runs, key=lambda r: r.data.metrics["best_val_accuracy"])


def test_promote_best_of_study_and_load_champion(env: dict, synthetic_dataset) -> None:
    import mlflow.keras
    import optuna

    proc = invoke_cli("promote", "--study", "p", "--data", env["csv"], cwd=env["work"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fer-cnn@champion -> version" in proc.stdout
    study = optuna.load_study(study_name="p", storage=env["storage"])
    best_run = study.best_trial.user_attrs["mlflow_run_id"]
    client = _client(env)
    mv = client.get_model_version_by_alias("fer-cnn", "champion")
    assert mv.run_id == best_run
    assert mv.tags["study"] == "p" and mv.tags["trial"] == str(study.best_trial.number)
    assert float(mv.tags["public_accuracy"]) == pytest.approx(study.best_value)
    run = client.get_run(best_run)
    assert 0 <= run.data.metrics["test_accuracy"] <= 1 and "test_f1_disgust" in run.data.metrics
    arts = {a.path for a in client.list_artifacts(best_run, "evaluation")}
    assert "evaluation/test_classification_report.json" in arts
    mlflow.set_tracking_uri(env["uri"])
    mlflow.set_registry_uri(env["uri"])
    x = synthetic_dataset.split("PrivateTest").x[:16, ..., None].astype("float32")
    champion = mlflow.keras.load_model("models:/fer-cnn@champion").predict(x, verbose=0)
    direct = mlflow.keras.load_model(f"runs:/{best_run}/model").predict(x, verbose=0)
    np.testing.assert_allclose(champion, direct, rtol=1e-6)
    listed = invoke_cli("models", cwd=env["work"])
    assert listed.returncode == 0
    line = next(l for l in listed.stdout.splitlines() if "champion" in l)
    assert f"{run.data.metrics['test_accuracy']:.4f}" in line and " p " in line
    # Promoting the same study again changes nothing and makes no second version.
    again = invoke_cli("promote", "--study", "p", "--data", env["csv"], cwd=env["work"])
    assert again.returncode == 0 and "already" in again.stdout
    assert len(client.search_model_versions(f"run_id = '{best_run}'")) == 1


def test_worse_candidate_refused_then_forced_then_rolled_back(env: dict) -> None:
    client = _client(env)
    champion_before = client.get_model_version_by_alias("fer-cnn", "champion")
    worst = _trial_runs(env)[0]
    assert worst.info.run_id != champion_before.run_id
    dry = invoke_cli("promote", "--run", worst.info.run_id, "--data", env["csv"], "--dry-run", cwd=env["work"])
    assert dry.returncode == 6 and "not better" in dry.stderr
    refused = invoke_cli("promote", "--run", worst.info.run_id, "--data", env["csv"], cwd=env["work"])
    assert refused.returncode == 6
    assert f"{worst.data.metrics['best_val_accuracy']:.4f}" in refused.stderr and "--force" in refused.stderr
    assert client.get_model_version_by_alias("fer-cnn", "champion").version == champion_before.version
    forced = invoke_cli("promote", "--run", worst.info.run_id, "--data", env["csv"], "--force", cwd=env["work"])
    assert forced.returncode == 0, forced.stderr
    now = client.get_model_version_by_alias("fer-cnn", "champion")
    assert now.run_id == worst.info.run_id
    assert client.get_model_version_by_alias("fer-cnn", "previous-champion").version == champion_before.version
    back = invoke_cli("rollback", cwd=env["work"])
    assert back.returncode == 0 and f"version {now.version} -> version {champion_before.version}" in back.stdout
    assert client.get_model_version_by_alias("fer-cnn", "champion").version == champion_before.version


def test_crash_after_register_is_completed_by_rerun(env: dict) -> None:
    from fer_experiments.tracking.model_registry import register_run_model

    client = _client(env)
    middle = _trial_runs(env)[1]
    # The first half of a promotion that crashed before moving the alias: the version exists, the alias did not move.
    version, created = register_run_model(env["uri"], "fer-cnn-crash", middle.info.run_id)
    assert created
    proc = invoke_cli("promote", "--run", middle.info.run_id, "--data", env["csv"], "--model-name", "fer-cnn-crash",
                      cwd=env["work"])
    assert proc.returncode == 0, proc.stderr
    assert "reused fer-cnn-crash version 1" in proc.stdout
    assert len(client.search_model_versions("name = 'fer-cnn-crash'")) == 1
    assert str(client.get_model_version_by_alias("fer-cnn-crash", "champion").version) == version.version


@pytest.mark.parametrize("args, code, text", [
    (["--study", "nope"], 2, "unknown study 'nope'"),
    (["--run", "0123456789abcdef0123456789abcdef"], 2, "not found"),
    (["--study", "p", "--run", "x"], 2, "exactly one of --study and --run"),
    (["--study", "p", "--min-accuracy", "0.99"], 6, "below --min-accuracy"),
])
def test_errors(env: dict, args: list[str], code: int, text: str) -> None:
    proc = invoke_cli("promote", *args, "--data", env["csv"], "--model-name", "fer-cnn-errors", cwd=env["work"])
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert text in proc.stderr and "Traceback" not in proc.stderr
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        _client(env).get_registered_model("fer-cnn-errors")


def test_study_without_complete_trial_and_run_without_model(env: dict, synthetic_csv: Path) -> None:
    from fer_experiments.tracking import create_run, end_run, tags

    # A study is found through its runs (any engine): a parent run and one FAILED trial run.
    parent = create_run(env["uri"], "empty", "study-empty", tags={tags.KIND: tags.KIND_STUDY, tags.STUDY: "empty"})
    failed = create_run(env["uri"], "empty", "trial-0", tags=tags.trial_tags(
        study="empty", engine="optuna", number=0) | {tags.TRIAL_STATE: "FAIL"})
    for run_id in (failed, parent):
        end_run(env["uri"], run_id, "FAILED")
    proc = invoke_cli("promote", "--study", "empty", "--data", env["csv"], cwd=env["work"])
    assert proc.returncode == 2 and "no COMPLETE trial" in proc.stderr
    bare = create_run(env["uri"], "p", "no-model")
    end_run(env["uri"], bare, "FINISHED")
    proc = invoke_cli("promote", "--run", bare, "--data", env["csv"], cwd=env["work"])
    assert proc.returncode == 2 and "has no logged model" in proc.stderr


def test_unreachable_tracking_store(env: dict) -> None:
    proc = invoke_cli("promote", "--study", "p", "--data", env["csv"], "--tracking-uri", "http://127.0.0.1:9",
                      cwd=env["work"], env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"})
    assert proc.returncode == 5 and "cannot open the MLflow tracking store" in proc.stderr


def test_reader_sees_old_or_new_while_alias_moves(env: dict) -> None:
    """A reader resolving models:/...@champion in a loop never fails while promote moves the alias."""
    from mlflow.exceptions import MlflowException

    client = _client(env)
    runs = _trial_runs(env)
    from fer_experiments.tracking.model_registry import register_run_model, set_alias

    v_old, _ = register_run_model(env["uri"], "fer-cnn-race", runs[0].info.run_id)
    set_alias(env["uri"], "fer-cnn-race", "champion", v_old.version)
    seen: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        import mlflow

        c = mlflow.MlflowClient(env["uri"], registry_uri=env["uri"])
        while not stop.is_set():
            try:
                seen.append(c.get_model_version_by_alias("fer-cnn-race", "champion").version)
            except MlflowException as exc:  # pragma: no cover - the failure this test looks for
                errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    try:
        proc = invoke_cli("promote", "--run", runs[-1].info.run_id, "--data", env["csv"],
                          "--model-name", "fer-cnn-race", cwd=env["work"])
    finally:
        stop.set()
        t.join()
    assert proc.returncode == 0, proc.stderr
    v_new = client.get_model_version_by_alias("fer-cnn-race", "champion").version
    assert not errors
    assert set(map(str, seen)) <= {v_old.version, str(v_new)} and str(seen[-1]) == str(v_new)
    assert str(seen[0]) == v_old.version
