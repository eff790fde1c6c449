"""`fer-exp search` on a small synthetic data set with real Optuna and MLflow stores in a temporary folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import copy_migrated_store, invoke_cli

pytestmark = [pytest.mark.slow]

# Trials with epochs=2 are pruned at epoch 2 by the threshold pruner (nothing reaches 99% accuracy);
# trials with epochs=1 never reach the pruning step and complete. So the sampled params decide each trial's fate.
TINY_SPACE = """\
name: tiny
objective: val_accuracy
max_epochs: 2
train_limit: 200
sampler: {name: random, seed: 3}
pruner: {name: threshold, lower: 0.99, n_warmup_steps: 2}
params:
  conv_blocks: 1
  convs_per_block: 1
  filters: {type: categorical, choices: [4, 8]}
  dense_layers: {type: int, low: 0, high: 1}
  dense_units: {type: categorical, choices: [8, 16], when: {dense_layers: 1}}
  epochs: {type: categorical, choices: [1, 2]}
  batch_size: 64
  learning_rate: {type: float, low: 1.0e-3, high: 3.0e-3, log: true}
"""


def _search(work: Path, csv: Path, space: Path, n: int, study: str = "t", *extra: str) -> subprocess.CompletedProcess[str]:
    return invoke_cli("search", "--data", str(csv), "--space", str(space), "--study", study, "--n-trials", str(n),
                      *extra, cwd=work)


def _mlflow_runs(work: Path) -> list:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db", registry_uri=f"sqlite:///{work}/mlruns/mlflow.db")
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, max_results=1000)


def _study(work: Path, name: str = "t"):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{work}/mlruns/optuna.db")


@pytest.fixture(scope="module")
def searched(synthetic_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("search")
    space = work / "tiny.yaml"
    space.write_text(TINY_SPACE)
    first = _search(work, synthetic_csv, space, 3)
    assert first.returncode == 0, first.stdout + first.stderr
    return {"work": work, "space": space, "csv": synthetic_csv, "first": first}


def test_three_trials_one_parent_three_children(searched: dict) -> None:
    from optuna.trial import TrialState

    study = _study(searched["work"])
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    runs = _mlflow_runs(searched["work"])
    parents = [r for r in runs if r.data.tags.get("fer.kind") == "study"]
    children = [r for r in runs if r.data.tags.get("fer.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["study"] == "t" and len(parent.data.tags["space_hash"]) == 64
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(int(c.data.params["trial_number"]) for c in children) == [0, 1, 2]
    by_number = {int(c.data.tags["trial_number"]): c for c in children}
    for t in trials:
        assert t.user_attrs["mlflow_run_id"] == by_number[t.number].info.run_id
    out = searched["first"].stdout
    assert "trial 0 (1/3) epoch 1/" in out and "study t: 3 finished" in out


def test_every_epoch_reported_and_threshold_pruning(searched: dict) -> None:
    from optuna.trial import TrialState

    trials = _study(searched["work"]).get_trials()
    states = {t.params["epochs"]: set() for t in trials}
    for t in trials:
        states[t.params["epochs"]].add(t.state)
        assert sorted(t.intermediate_values) == list(range(1, t.params["epochs"] + 1))
    assert states == {1: {TrialState.COMPLETE}, 2: {TrialState.PRUNED}}, "seed 3 samples both epoch values"
    runs = {r.data.tags.get("trial_number"): r for r in _mlflow_runs(searched["work"])}
    for t in trials:
        run = runs[str(t.number)]
        if t.state == TrialState.PRUNED:
            # Pruned is a normal end (FINISHED, like Optuna's and Ray Tune's MLflow integrations); KILLED = interrupted.
            assert run.info.status == "FINISHED"
            assert run.data.tags["trial_state"] == "PRUNED" and run.data.tags["pruned_at_epoch"] == "2"
            assert run.data.tags["trial_state"] == "PRUNED"
        else:
            assert run.info.status == "FINISHED" and run.data.tags["trial_state"] == "COMPLETE"
            assert "val_f1_disgust" in run.data.metrics


def test_summary_artifacts_and_challenger(searched: dict) -> None:
    import mlflow

    work = searched["work"]
    client = mlflow.MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db", registry_uri=f"sqlite:///{work}/mlruns/mlflow.db")
    parent = next(r for r in _mlflow_runs(work) if r.data.tags.get("fer.kind") == "study")
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}
    assert {"summary/trials.csv", "summary/optimization_history.png", "summary/per_class_top5_vs_2018.csv",
            "summary/per_class_top5_vs_2018.png"} <= files
    table = Path(client.download_artifacts(parent.info.run_id, "summary/per_class_top5_vs_2018.csv", str(work)))
    text = table.read_text()
    assert "2018/deep-bn,Disgust,0.6304,0.5179,0.5686" in text and "trial-" in text
    assert client.get_metric_history(parent.info.run_id, "best_value")
    study = _study(work)
    mv = client.get_model_version_by_alias("fer-cnn", "challenger")
    assert mv.tags["study"] == "t" and int(mv.tags["trial"]) == study.best_trial.number
    assert mv.run_id == study.best_trial.user_attrs["mlflow_run_id"]


def test_studies_lists_counts(searched: dict) -> None:
    proc = invoke_cli("studies", cwd=searched["work"])
    assert proc.returncode == 0, proc.stderr
    line = next(l for l in proc.stdout.splitlines() if l.startswith("t "))
    study = _study(searched["work"])
    assert f"{study.best_value:.4f}" in line


def test_rerun_adds_exactly_the_missing_trials(searched: dict) -> None:
    from optuna.trial import TrialState

    before = {r.info.run_id for r in _mlflow_runs(searched["work"])}
    proc = _search(searched["work"], searched["csv"], searched["space"], 5)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = _study(searched["work"]).get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    new = [r for r in _mlflow_runs(searched["work"]) if r.info.run_id not in before]
    assert len(new) == 2 and all(r.data.tags["fer.kind"] == "trial" for r in new)
    again = _search(searched["work"], searched["csv"], searched["space"], 5)
    assert again.returncode == 0 and "already holds 5 finished trials" in again.stdout
    assert len(_study(searched["work"]).get_trials()) == 5


def test_changed_space_is_refused(searched: dict) -> None:
    changed = searched["work"] / "tiny-changed.yaml"
    changed.write_text(TINY_SPACE.replace("high: 3.0e-3", "high: 5.0e-3"))
    proc = _search(searched["work"], searched["csv"], changed, 6)
    assert proc.returncode == 2
    assert "tiny-changed.yaml" in proc.stderr and "differs" in proc.stderr and "--study" in proc.stderr
    assert "Traceback" not in proc.stderr


def _wait_for(proc: subprocess.Popen, text: str, timeout: float) -> str:
    """Read proc's stdout until ``text`` appears."""
    seen = ""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"{text!r} not seen in time; output so far:\n{seen}")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_leaves_nothing_running(synthetic_csv: Path, tmp_path: Path, sig: int, code: int,
                                       migrated_mlflow_db: Path) -> None:
    # The MLflow store exists already (copied): this test is not about creating one.
    copy_migrated_store(migrated_mlflow_db, tmp_path / "mlruns")
    from optuna.trial import TrialState

    space = tmp_path / "slow.yaml"
    space.write_text(TINY_SPACE.replace("choices: [1, 2]", "choices: [3]").replace("max_epochs: 2", "max_epochs: 3")
                     .replace("name: threshold, lower: 0.99, n_warmup_steps: 2", "name: none"))
    proc = subprocess.Popen([sys.executable, "-m", "fer_experiments.cli", "search", "--data", str(synthetic_csv),
                             "--space", str(space), "--study", "s", "--n-trials", "3"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        _wait_for(proc, "epoch 1/3", timeout=300)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert "Resume with" in err and "--study s" in err
    trials = _study(tmp_path, "s").get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and failed[-1].user_attrs.get("fail_reason") == "interrupted"
    # Its params are queued again: the resumed search runs them first.
    assert [(t.state, t.params) for t in trials if t.system_attrs.get("failed_trial") == failed[-1].number] == [
        (TrialState.WAITING, failed[-1].params)]
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    runs = _mlflow_runs(tmp_path)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    killed = [r for r in runs if r.data.tags.get("fer.kind") == "trial"]
    assert killed[0].info.status == "KILLED"
