"""Shipped search spaces are package data: a bare ``--space`` name works from any folder, also from a wheel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_install_finds_shipped_spaces_by_name(tmp_path: Path) -> None:
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                            str(wheels), str(REPO)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                              *map(str, wheels.glob("*.whl"))], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    code = ("import fer_experiments; from fer_experiments.spaces import load_space, resolve_space_path; "
            "p = resolve_space_path('cpu-quick'); print(fer_experiments.__file__); print(p); "
            "print(load_space(p).name)")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True,
                          env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    package_file, space_path, name = proc.stdout.split()
    assert package_file.startswith(str(site)) and space_path.startswith(str(site))
    assert name == "cpu-quick"
    # The demo page of `fer-exp serve` (serving/demo.py reads these at start) ships in the wheel too.
    static = site / "fer_experiments" / "serving" / "static"
    assert sorted(p.name for p in static.iterdir()) == ["demo.css", "demo.html", "demo.js"]
