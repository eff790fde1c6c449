"""The compose file and the Dockerfile pass the validators this machine has (no Docker engine runs here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is not installed (.ci/run and the README install it)")
    return found


def test_compose_config_validates(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text((REPO / "docker" / ".env.example").read_text())
    proc = subprocess.run([_tool("docker-compose"), "-f", str(REPO / "docker" / "compose.yaml"), "--env-file",
                           str(env), "config"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    services = resolved["services"]
    assert {"postgres", "mlflow", "worker-gpu0", "worker-gpu1"} <= set(services)
    for name in ("worker-gpu0", "worker-gpu1"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "device_ids": [name[-1]], "capabilities": ["gpu"]}]
        command = " ".join(services[name]["command"])
        assert "--storage=postgresql://" in command and "--tracking-uri=http://mlflow:5000" in command


def test_compose_refuses_missing_password(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("FER_DATA_DIR=/data\n")
    proc = subprocess.run([_tool("docker-compose"), "-f", str(REPO / "docker" / "compose.yaml"), "--env-file",
                           str(env), "config"], capture_output=True, text=True)
    assert proc.returncode != 0 and "POSTGRES_PASSWORD" in proc.stderr


def test_dockerfile_lints_clean() -> None:
    proc = subprocess.run([_tool("hadolint"), str(REPO / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
