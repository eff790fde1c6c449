"""Many workers, one study: real PostgreSQL (127.0.0.1:5432, trust auth) and a real MLflow tracking server.

The module shares one pair of databases (Optuna's and MLflow's apart: both keep an alembic_version table) and one
`mlflow server` on a free port; each test runs its own study (and so its own MLflow experiment) and looks only at
that. The test of a fresh database's migrations gets databases of its own.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

PG = "postgresql://postgres@127.0.0.1:5432"

SPACE = """\
name: pg-tiny
max_epochs: {epochs}
train_limit: 150
sampler: {{name: random, seed: 5}}
pruner: none
params:
  conv_blocks: 1
  convs_per_block: 1
  filters: {{type: categorical, choices: [4, 8]}}
  dense_layers: 0
  batch_size: 64
  learning_rate: {{type: float, low: 1.0e-3, high: 3.0e-3, log: true}}
"""


def _admin(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(f"{PG}/postgres")
    conn.autocommit = True
    try:
        conn.cursor().execute(sql)
    finally:
        conn.close()


def _new_databases() -> Iterator[dict[str, str]]:
    names = {k: f"ferexp_{k}_{uuid.uuid4().hex[:10]}" for k in ("optuna", "mlflow")}
    for name in names.values():
        _admin(f"CREATE DATABASE {name}")
    yield {k: f"{PG}/{v}" for k, v in names.items()}
    for name in names.values():
        _admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        _admin(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture(scope="module")
def databases() -> Iterator[dict[str, str]]:
    """An Optuna and an MLflow database for the module's tracking server: each test runs its own study (its own
    MLflow experiment, named after it) and looks only at that experiment's runs."""
    yield from _new_databases()


@pytest.fixture
def fresh_databases() -> Iterator[dict[str, str]]:
    """Databases nothing has touched yet (no MLflow tables)."""
    yield from _new_databases()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """`mlflow server` with a PostgreSQL backend and proxied artifacts, on a free localhost port."""

    def __init__(self, backend: str, artifacts: Path) -> None:
        self.backend, self.artifacts, self.port = backend, artifacts, _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend,
             "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            # MLflow's job runner (GenAI jobs: a consumer process per CPU) is not what these tests use.
            env=os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise AssertionError("mlflow server did not come up")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="module")
def server(databases: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One tracking server for the module (its start and MLflow's migrations of a fresh database take seconds)."""
    srv = MlflowServer(databases["mlflow"], tmp_path_factory.mktemp("artifacts"))
    srv.start()
    yield srv
    srv.stop()


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fer_experiments.cli", *args]


def _search_args(csv: Path, space: Path, databases: dict, server: MlflowServer, study: str, n: int) -> list[str]:
    return _cmd("search", "--data", str(csv), "--space", str(space), "--study", study, "--n-trials", str(n),
                "--storage", databases["optuna"], "--tracking-uri", server.uri)


def _client(server: MlflowServer):
    import mlflow

    return mlflow.MlflowClient(server.uri, registry_uri=server.uri)


def _runs(server: MlflowServer, study: str) -> list:
    """The runs of ``study``'s experiment (the module's other tests log to the same server)."""
    client = _client(server)
    return client.search_runs([client.get_experiment_by_name(study).experiment_id], max_results=1000)


def _study(databases: dict, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=databases["optuna"])


def _wait_line(proc: subprocess.Popen, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if text in line:
            return
    raise AssertionError(f"{text!r} not seen; output:\n{''.join(seen)}")


def test_three_workers_share_one_study(synthetic_csv: Path, databases: dict, server: MlflowServer,
                                       tmp_path: Path) -> None:
    from optuna.trial import TrialState

    space = tmp_path / "space.yaml"
    space.write_text(SPACE.format(epochs=1))
    # All three start at the same moment on a study that does not exist yet.
    procs = [subprocess.Popen(_search_args(synthetic_csv, space, databases, server, "big", 9), cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out + err
    trials = _study(databases, "big").get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 9 and len(trials) == 9
    assert sorted(t.number for t in trials) == list(range(9))
    runs = _runs(server, "big")
    parents = [r for r in runs if r.data.tags.get("fer.kind") == "study"]
    children = [r for r in runs if r.data.tags.get("fer.kind") == "trial"]
    assert len(parents) == 1
    assert sorted(int(c.data.tags["trial_number"]) for c in children) == list(range(9))
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert all(c.data.tags["host"] == socket.gethostname() for c in children)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    listed = subprocess.run(_cmd("studies", "--storage", databases["optuna"]), capture_output=True, text=True)
    assert listed.returncode == 0 and "big" in listed.stdout


def test_sigkilled_worker_is_failed_retried_and_reconciled(synthetic_csv: Path, databases: dict,
                                                           server: MlflowServer, tmp_path: Path) -> None:
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    space = tmp_path / "space.yaml"
    space.write_text(SPACE.format(epochs=3))
    beat = ["--heartbeat-interval", "1", "--grace-period", "3"]
    first = subprocess.Popen(_search_args(synthetic_csv, space, databases, server, "k", 1) + beat + ["--gpu", "0"],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_line(first, "epoch 1/3", timeout=300)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    time.sleep(4)  # past the grace period
    second = subprocess.run(_cmd("worker", "--data", str(synthetic_csv), "--study", "k", "--storage",
                                 databases["optuna"], "--tracking-uri", server.uri, *beat), cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    study = _study(databases, "k")
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL
    retry = trials[1]
    assert retry.state == TrialState.COMPLETE and retry.params == trials[0].params
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 0
    runs = {r.data.tags.get("trial_number"): r for r in _runs(server, "k") if r.data.tags.get("fer.kind") == "trial"}
    assert runs["0"].info.status == "KILLED" and runs["0"].data.tags["gpu"] == "0"
    assert runs["1"].info.status == "FINISHED"
    assert not [r for r in _runs(server, "k") if r.info.status == "RUNNING"]
    assert "KILLED" in second.stdout


def test_sigterm_exits_143_and_leaves_nothing_running(synthetic_csv: Path, databases: dict, server: MlflowServer,
                                                      tmp_path: Path) -> None:
    from optuna.trial import TrialState

    space = tmp_path / "space.yaml"
    space.write_text(SPACE.format(epochs=3))
    proc = subprocess.Popen(_search_args(synthetic_csv, space, databases, server, "term", 3), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_line(proc, "epoch 1/3", timeout=300)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143
    trials = _study(databases, "term").get_trials()
    # The interrupted trial's params are queued again for the next worker (WAITING, a retry of trial 0).
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].params == trials[0].params and trials[1].system_attrs["failed_trial"] == 0
    runs = _runs(server, "term")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert [r.info.status for r in runs if r.data.tags.get("fer.kind") == "trial"] == ["KILLED"]


def test_worker_survives_tracking_server_restart(synthetic_csv: Path, databases: dict, server: MlflowServer,
                                                 tmp_path: Path) -> None:
    from optuna.trial import TrialState

    space = tmp_path / "space.yaml"
    space.write_text(SPACE.format(epochs=3))
    proc = subprocess.Popen(_search_args(synthetic_csv, space, databases, server, "restart", 1), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_line(proc, "epoch 1/3", timeout=300)
        server.stop()
        time.sleep(3)
        server.start()
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    trials = _study(databases, "restart").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE]
    runs = [r for r in _runs(server, "restart") if r.data.tags.get("fer.kind") == "trial"]
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert len(_client(server).get_metric_history(runs[0].info.run_id, "val_accuracy")) == 3


def test_worker_with_other_data_is_refused(synthetic_csv: Path, databases: dict, server: MlflowServer,
                                           tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.format(epochs=1))
    made = subprocess.run(_search_args(synthetic_csv, space, databases, server, "d", 1), cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr
    other = tmp_path / "other.csv"
    other.write_text(synthetic_csv.read_text().replace("\n0,", "\n1,", 1))
    proc = subprocess.run(_cmd("worker", "--data", str(other), "--study", "d", "--storage", databases["optuna"],
                               "--tracking-uri", server.uri), cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 3 and "digest" in proc.stderr and "Traceback" not in proc.stderr
    missing = subprocess.run(_cmd("worker", "--data", str(synthetic_csv), "--study", "nope", "--storage",
                                  databases["optuna"], "--tracking-uri", server.uri), cwd=tmp_path,
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_workers_initialise_a_fresh_mlflow_database_once(fresh_databases: dict) -> None:
    """Workers logging straight to PostgreSQL (no tracking server) start together on a fresh database: one of them
    runs MLflow's migrations under the set-up lock, none fails."""
    code = "from fer_experiments.tracking import prepare_store; import sys; prepare_store(sys.argv[1]); print('ok')"
    databases = fresh_databases
    procs = [subprocess.Popen([sys.executable, "-c", code, databases["mlflow"]], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-500:] for _, err in results]
    import mlflow

    assert mlflow.MlflowClient(databases["mlflow"], registry_uri=databases["mlflow"]).search_experiments()
