"""The Docker files pass the validators this machine has: `docker-compose config`, `hadolint`, `bash -n`.

Building the images and running the stack is docker/smoke.sh (run by .ci/run after the tests; docs/how-to/workers-docker.md).
"""

from __future__ import annotations

import py_compile
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is not installed (.ci/run and the README install it)")
    return found


def _config(tmp_path: Path, env_text: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = tmp_path / ".env"
    env.write_text(env_text)
    return subprocess.run([_tool("docker-compose"), "-f", str(DOCKER / "compose.yaml"), "--env-file", str(env), *args,
                           "config"], capture_output=True, text=True)


def _services(tmp_path: Path, extra_env: str = "", *args: str) -> dict:
    proc = _config(tmp_path, (DOCKER / ".env.example").read_text() + extra_env, *args)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)["services"]


def test_compose_config_validates(tmp_path: Path) -> None:
    services = _services(tmp_path)
    assert {"postgres", "mlflow", "worker-cpu", "worker-gpu0", "worker-gpu1", "serve"} <= set(services)
    for name in ("worker-gpu0", "worker-gpu1"):
        assert services[name]["profiles"] == ["gpu"]
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "device_ids": [name[-1]], "capabilities": ["gpu"]}]
    assert services["worker-cpu"]["profiles"] == ["cpu"] and "deploy" not in services["worker-cpu"]
    for name in ("worker-cpu", "worker-gpu0", "worker-gpu1"):
        command = " ".join(services[name]["command"])
        assert "--storage=postgresql://" in command and "--tracking-uri=http://mlflow:5000" in command
        assert services[name]["volumes"][0].endswith(":/data:ro")
        assert services[name]["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                                "mlflow": {"condition": "service_healthy"}}


def test_mlflow_server_answers_its_service_name_and_uses_postgres(tmp_path: Path) -> None:
    mlflow = _services(tmp_path)["mlflow"]
    args = dict(a.lstrip("-").split("=", 1) for a in mlflow["command"])
    assert args["backend-store-uri"].startswith("postgresql://fer:") and args["backend-store-uri"].endswith("/mlflow")
    # MLflow 3.17 answers 403 to a Host header it does not list: workers send "mlflow:5000".
    assert {"mlflow", "mlflow:*", "localhost:*", "127.0.0.1:*"} <= set(args["allowed-hosts"].split(","))
    assert args["workers"] == "1"
    assert mlflow["healthcheck"]["test"][0] == "CMD"


def test_published_ports_bind_the_loopback_by_default(tmp_path: Path) -> None:
    services = _services(tmp_path)
    for name in ("postgres", "mlflow", "serve"):
        assert [p.split(":")[0] for p in services[name]["ports"]] == ["127.0.0.1"], services[name]["ports"]
    # The smoke test publishes on free ports (0), never on the host's 5432.
    moved = _services(tmp_path, "POSTGRES_PORT=0\nMLFLOW_PORT=0\nFER_SERVE_PORT=0\n")
    assert moved["postgres"]["ports"] == ["127.0.0.1:0:5432/tcp"]


def test_serve_profile_follows_the_champion_alias(tmp_path: Path) -> None:
    serve = _services(tmp_path, "", "--profile", "serve")["serve"]
    assert serve["profiles"] == ["serve"]
    assert serve["entrypoint"] == ["fer-exp", "serve"]
    assert "--model=models:/fer-cnn@champion" in serve["command"] and "--host=0.0.0.0" in serve["command"]
    assert any(a.startswith("--poll-seconds=") for a in serve["command"])
    assert serve["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_postgres_image_is_selectable(tmp_path: Path) -> None:
    assert _services(tmp_path)["postgres"]["image"] == "postgres:16"
    local = _services(tmp_path, "POSTGRES_IMAGE=fer-exp-postgres:local\n")["postgres"]
    assert local["image"] == "fer-exp-postgres:local"
    assert local["environment"] == {"POSTGRES_USER": "fer", "POSTGRES_PASSWORD": "change-me", "POSTGRES_DB": "optuna"}


def test_compose_refuses_missing_password(tmp_path: Path) -> None:
    proc = _config(tmp_path, "FER_DATA_DIR=/data\n")
    assert proc.returncode != 0 and "POSTGRES_PASSWORD" in proc.stderr


@pytest.mark.parametrize("dockerfile", sorted(DOCKER.rglob("Dockerfile")), ids=lambda p: str(p.relative_to(REPO)))
def test_dockerfiles_lint_clean(dockerfile: Path) -> None:
    proc = subprocess.run([_tool("hadolint"), str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_dockerfile_is_linted() -> None:
    assert {p.relative_to(REPO).as_posix() for p in DOCKER.rglob("Dockerfile")} >= {
        "docker/Dockerfile", "docker/postgres/Dockerfile"}


@pytest.mark.parametrize("script", sorted([*DOCKER.rglob("*.sh"), REPO / ".ci" / "run"]),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_scripts_parse(script: Path) -> None:
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert script.stat().st_mode & 0o111, f"{script} is not executable"


def test_smoke_check_compiles_and_the_smoke_space_loads(tmp_path: Path) -> None:
    from fer_experiments.spaces import load_space

    py_compile.compile(str(DOCKER / "smoke_check.py"), cfile=str(tmp_path / "c.pyc"), doraise=True)
    space = load_space(DOCKER / "smoke-space.yaml")
    assert space.max_epochs <= 2 and space.train_limit is not None and space.train_limit <= 600


def test_build_context_keeps_data_out() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "**/*.csv.gz", "**/*.npz", "mlruns"} <= set(ignored)
    certs = DOCKER / "certs"
    assert (certs / "README.md").exists()  # the COPY of docker/certs/ needs the folder, even without certificates
