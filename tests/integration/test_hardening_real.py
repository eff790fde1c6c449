"""Issue 11 (hardening) on a tiny real study: concurrent promotes, Ctrl-C between trials, unfit models, read-only
stores, deleted artifacts, SIGKILLed `train` runs. Real `fer-exp` processes, real SQLite stores."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import invoke_cli, run_cli, tiny_space

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

SPACE = tiny_space("hard-tiny", lr=("1.0e-3", "3.0e-2"))


def _popen(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    return subprocess.Popen([sys.executable, "-m", "fer_experiments.cli", *args], cwd=cwd, env=full | (env or {}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _client(work: Path):
    import mlflow

    uri = f"sqlite:///{work}/mlruns/mlflow.db"
    return mlflow.MlflowClient(uri, registry_uri=uri)


@pytest.fixture(scope="module")
def env(tiny_real_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 4-trial study `h` (every trial COMPLETE) and its trial runs, worst first."""
    work = tmp_path_factory.mktemp("hard")
    (work / "space.yaml").write_text(SPACE)
    proc = invoke_cli("search", "--data", str(tiny_real_csv), "--space", "space.yaml", "--study", "h",
                      "--n-trials", "4", cwd=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    client = _client(work)
    exp = client.get_experiment_by_name("h")
    runs = client.search_runs([exp.experiment_id], "tags.`fer.kind` = 'trial'")
    by_acc: dict[float, str] = {}
    for r in sorted(runs, key=lambda r: r.data.metrics["best_val_accuracy"]):
        by_acc.setdefault(r.data.metrics["best_val_accuracy"], r.info.run_id)
    ranked = [by_acc[a] for a in sorted(by_acc)]
    assert len(ranked) >= 2, "the tiny study needs two trials with different PublicTest accuracy"
    return {"work": work, "csv": str(tiny_real_csv), "ranked": ranked}


def _promote_at_once(env: dict, *runs_and_flags: tuple[str, list[str]], model: str) -> list[subprocess.CompletedProcess]:
    procs = [_popen("promote", "--run", run, "--data", env["csv"], "--model-name", model, *flags, cwd=env["work"])
             for run, flags in runs_and_flags]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def _alias_run(env: dict, model: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return _client(env["work"]).get_model_version_by_alias(model, alias).run_id
    except MlflowException:
        return None


# ---------------------------------------------------------------------------------- 1: concurrent promotes
def test_concurrent_promotes_end_as_a_serial_order(env: dict) -> None:
    worse, better = env["ranked"][0], env["ranked"][-1]
    # Without --force: whichever order, the better one ends as champion and the worse is refused or replaced.
    done = _promote_at_once(env, (worse, []), (better, []), model="c1")
    assert {p.returncode for p in done} <= {0, 6}, [p.stderr for p in done]
    assert _alias_run(env, "c1", "champion") == better
    # The same run twice at once: one version of the model, one of its serving wrapper.
    done = _promote_at_once(env, (better, []), (better, []), model="c2")
    assert [p.returncode for p in done] == [0, 0], [p.stderr for p in done]
    client = _client(env["work"])
    assert len(client.search_model_versions("name = 'c2'")) == 1
    assert len(client.search_model_versions("name = 'c2-service'")) == 1
    # With --force, from a champion: the last one wins and previous-champion is the one it replaced.
    assert invoke_cli("promote", "--run", better, "--data", env["csv"], "--model-name", "c3",
                      cwd=env["work"]).returncode == 0
    other = env["ranked"][1] if len(env["ranked"]) > 2 else better
    done = _promote_at_once(env, (worse, ["--force"]), (other, ["--force"]), model="c3")
    assert [p.returncode for p in done] == [0, 0], [p.stderr for p in done]
    champion, previous = _alias_run(env, "c3", "champion"), _alias_run(env, "c3", "previous-champion")
    assert champion in (worse, other) and previous is not None
    if worse != other:
        assert {champion, previous} == {worse, other}


# ----------------------------------------------------------------- 3 + issue 12.2: Ctrl-C between trials
def test_ctrl_c_after_a_complete_trial_says_so_and_registers_the_best(env: dict, tmp_path: Path) -> None:
    from optuna.trial import TrialState

    import optuna

    (tmp_path / "space.yaml").write_text(SPACE)
    proc = _popen("search", "--data", env["csv"], "--space", "space.yaml", "--study", "i", "--n-trials", "5",
                  cwd=tmp_path)
    seen = ""
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen += line
            if "trial 0 COMPLETE" in line or not line:
                break
        assert "trial 0 COMPLETE" in seen, seen
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    trials = optuna.load_study(study_name="i", storage=f"sqlite:///{tmp_path}/mlruns/optuna.db").get_trials()
    failed = [t.number for t in trials if t.state == TrialState.FAIL]
    if failed:
        assert f"trial {failed[0]} was running" in err, err
    else:
        assert "no trial was running" in err and "marked FAIL" not in err, err
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert "registered fer-cnn version" in err and "alias challenger" in err, err
    client = _client(tmp_path)
    assert client.get_model_version_by_alias("fer-cnn", "challenger").run_id == best.user_attrs["mlflow_run_id"]
    assert not [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
                if r.info.status == "RUNNING"]


# -------------------------------------------------------------------------- 5: a model that cannot fit
def test_unfit_model_fails_its_trial_with_the_reason_and_leaves_nothing_running(env: dict, tmp_path: Path) -> None:
    import optuna
    from optuna.trial import TrialState

    (tmp_path / "big.yaml").write_text(SPACE.replace("name: hard-tiny", "name: big")
                                       .replace("conv_blocks: 1", "conv_blocks: 5").replace("convs_per_block: 1", "convs_per_block: 3")
                                       .replace("{type: categorical, choices: [4, 8]}", "1024")
                                       .replace("batch_size: 64", "batch_size: 4096\n  filter_growth: 1.0"))
    proc = invoke_cli("search", "--data", env["csv"], "--space", "big.yaml", "--study", "big", "--n-trials", "1",
                      "--max-consecutive-failures", "2", cwd=tmp_path, env={"FER_EXP_MEMORY_LIMIT": "4G"})
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert "does not fit in memory" in proc.stdout + proc.stderr
    # Optuna's "Trial 0 failed with parameters" line stays, without a traceback of this package's frames.
    assert "Trial 0 failed with parameters" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    trials = optuna.load_study(study_name="big", storage=f"sqlite:///{tmp_path}/mlruns/optuna.db").get_trials()
    assert trials and all(t.state == TrialState.FAIL for t in trials)
    assert "does not fit in memory" in trials[0].user_attrs["fail_reason"]
    client = _client(tmp_path)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and not [r for r in runs if r.info.status == "RUNNING"]


# ------------------------------------------------------------------------------------ 7: read-only stores
def _read_only(folder: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run fer-exp with ``folder`` mounted read-only in a private mount namespace (nothing leaks outside)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private read-only bind mount")
    cmd = " ".join([f"mount --bind -o ro {folder} {folder} && exec", sys.executable, "-m", "fer_experiments.cli",
                    *[f"'{a}'" for a in args]])
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", cmd], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("command", [["search", "--space", "space.yaml", "--study", "h", "--n-trials", "5"],
                                     ["promote", "--study", "h"]])
def test_read_only_store_is_named_before_any_work(env: dict, tmp_path: Path, command: list[str]) -> None:
    work = tmp_path / "copy"
    shutil.copytree(env["work"], work)
    before = _snapshot(work / "mlruns")
    proc = _read_only(work / "mlruns", *command, "--data", env["csv"], cwd=work)
    assert proc.returncode == 5, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith(("E0000", "W0000"))]
    assert len(lines) == 1 and "cannot be written" in lines[0] and "read-only" in lines[0], proc.stderr
    assert "mlruns" in lines[0] and "Traceback" not in proc.stderr
    assert _snapshot(work / "mlruns") == before


# ---------------------------------------------------------------------------------- 8: artifacts gone
def test_version_whose_artifacts_are_gone(env: dict, tmp_path: Path) -> None:
    import cv2
    import numpy as np

    worse, better = env["ranked"][0], env["ranked"][-1]
    uri = f"sqlite:///{env['work']}/mlruns/mlflow.db"
    assert invoke_cli("promote", "--run", worse, "--data", env["csv"], "--model-name", "gone",
                      cwd=env["work"]).returncode == 0
    assert invoke_cli("promote", "--run", better, "--data", env["csv"], "--model-name", "gone",
                      cwd=env["work"]).returncode == 0
    client = _client(env["work"])
    v1 = client.get_model_version_by_alias("gone", "previous-champion")
    location = Path(client.get_model_version_download_uri("gone", v1.version).removeprefix("file://"))
    hidden = tmp_path / "hidden"
    shutil.move(str(location), hidden)  # the artifacts of version 1 (run `worse`) vanish
    try:
        listed = invoke_cli("models", "--model-name", "gone", cwd=env["work"])
        assert listed.returncode == 0 and "ARTIFACTS MISSING" in listed.stdout, listed.stdout + listed.stderr
        assert f"gone version {v1.version}" in listed.stdout and str(location) in listed.stdout
        back = invoke_cli("rollback", "--model-name", "gone", cwd=env["work"])
        assert back.returncode == 6 and f"version {v1.version}" in back.stderr and str(location) in back.stderr
        assert client.get_model_version_by_alias("gone", "champion").run_id == better  # unchanged
        again = invoke_cli("promote", "--run", worse, "--data", env["csv"], "--model-name", "gone2", "--force",
                           cwd=env["work"])
        assert again.returncode == 6 and "cannot be loaded" in again.stderr, again.stderr
        image = tmp_path / "face.png"
        cv2.imwrite(str(image), np.full((48, 48), 128, np.uint8))
        pred = invoke_cli("predict", "--model", "models:/gone@previous-champion", "--tracking-uri", uri, "--no-detect",
                          str(image), cwd=env["work"])
        assert pred.returncode != 0
        assert "gone@previous-champion" in pred.stderr and f"version {v1.version}" in pred.stderr
        assert str(location) in pred.stderr and "Traceback" not in pred.stderr
    finally:
        shutil.move(str(hidden), location)


# ------------------------------------------------------------------------ 9: SIGKILLed `train` reconciled
def test_sigkilled_train_run_is_reconciled_without_study(tiny_real_csv: Path, tmp_path: Path) -> None:
    proc = _popen("train", "--data", str(tiny_real_csv), "--preset", "seed-base", "--set", "filters=4",
                  "--set", "dense_units=8", "--epochs", "50", "--limit", "200", "--experiment", "t", cwd=tmp_path)
    try:
        assert proc.stdout is not None
        seen = ""
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and "epoch 1/50" not in seen:  # the run exists once epochs are reported
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
        assert "epoch 1/50" in seen, seen
        client = _client(tmp_path)
        running = client.search_runs([client.get_experiment_by_name("t").experiment_id],
                                     "attributes.status = 'RUNNING'")
        assert len(running) == 1 and running[0].data.tags["fer.pid"] == str(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = run_cli("reconcile", cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert running[0].info.run_id in out.stdout and "KILLED" in out.stdout
    assert client.get_run(running[0].info.run_id).info.status == "KILLED"
