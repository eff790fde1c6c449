"""Real FER2013 faces end to end: a 2-trial search on a tiny real subset, then its best trial promoted and served
as ``models:/fer-cnn@champion``. (The real-data training is test_train_real.py; the other search and promote
tests run on synthetic data, since they need no real pixels.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import invoke_cli, tiny_space

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

SPACE = tiny_space("real-e2e")


def test_search_then_promote_on_real_faces(tiny_real_csv: Path, real_dataset, tmp_path: Path) -> None:
    import mlflow
    import mlflow.keras
    import optuna
    from optuna.trial import TrialState

    from fer_experiments.data import file_digest

    (tmp_path / "space.yaml").write_text(SPACE)
    search = invoke_cli("search", "--data", str(tiny_real_csv), "--space", "space.yaml", "--study", "r",
                        "--n-trials", "2", cwd=tmp_path)
    assert search.returncode == 0, search.stdout + search.stderr
    assert "study r: 2 finished (2 complete, 0 pruned), 0 failed" in search.stdout
    study = optuna.load_study(study_name="r", storage=f"sqlite:///{tmp_path}/mlruns/optuna.db")
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2
    best_run = study.best_trial.user_attrs["mlflow_run_id"]
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    assert client.get_model_version_by_alias("fer-cnn", "challenger").run_id == best_run

    promoted = invoke_cli("promote", "--study", "r", "--data", str(tiny_real_csv), cwd=tmp_path)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    assert "fer-cnn@champion -> version" in promoted.stdout
    champion = client.get_model_version_by_alias("fer-cnn", "champion")
    assert champion.run_id == best_run
    run = client.get_run(best_run)
    assert 0 <= run.data.metrics["test_accuracy"] <= 1
    assert run.data.tags["test_data_digest"] == run.data.tags["data_digest"] == file_digest(tiny_real_csv)

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    faces = real_dataset.split("PrivateTest").x[:16, ..., None].astype("float32")
    probs = mlflow.keras.load_model("models:/fer-cnn@champion").predict(faces, verbose=0)
    assert probs.shape == (16, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
