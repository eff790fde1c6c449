"""``fer-exp`` as a user runs it: subprocesses, exit codes, one-line errors (trainings: tests/integration/test_train_tracked.py)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fer_experiments import IMAGE_SIZE, NUM_CLASSES
from tests.conftest import invoke_cli, run_cli, write_kaggle_csv


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    errors = _errors(proc.stderr)
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """70 / 35 / 35 random images, every class in every split."""
    rng = np.random.default_rng(0)
    parts = {}
    for name, n in (("Training", 70), ("PublicTest", 35), ("PrivateTest", 35)):
        parts[name] = (rng.integers(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8), np.arange(n) % NUM_CLASSES)
    return write_kaggle_csv(tmp_path_factory.mktemp("cli-data") / "tiny.csv", parts)


def test_help_is_fast() -> None:
    exe = Path(sys.executable).parent / "fer-exp"
    assert exe.is_file(), f"console script not installed next to {sys.executable}"
    t0 = time.monotonic()
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert "Usage: fer-exp" in proc.stdout
    for command in ("train", "evaluate", "presets", "search"):
        assert command in proc.stdout
    assert elapsed < 2.0, f"fer-exp --help took {elapsed:.2f}s (heavy imports at start-up?)"


def test_presets_lists_three_with_param_counts() -> None:
    from fer_experiments.models.builder import build_model
    from fer_experiments.models.presets import PRESETS

    proc = invoke_cli("presets")  # in this process: counting parameters imports TensorFlow
    assert proc.returncode == 0, proc.stderr
    rows = {m.group(1): int(m.group(2).replace(",", ""))
            for m in re.finditer(r"^(seed-[\w-]+)\s+([\d,]+)\s+\S", proc.stdout, re.MULTILINE)}
    assert set(rows) == {"seed-base", "seed-deep", "seed-deep-bn"}
    for name, count in rows.items():
        assert count == build_model(PRESETS[name].model).count_params(), name


def test_train_missing_data_exits_3(tmp_path: Path) -> None:
    proc = run_cli("train", "--data", "missing.csv", cwd=tmp_path, timeout=120)
    assert proc.returncode == 3, proc.stderr
    _assert_one_line_error(proc, "missing.csv")


def test_train_unknown_preset_exits_2(tiny_csv: Path, tmp_path: Path) -> None:
    proc = run_cli("train", "--preset", "nope", "--data", str(tiny_csv), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    _assert_one_line_error(proc, "nope", "seed-base")
    assert not (tmp_path / "mlruns").exists()  # rejected before anything was written


def test_train_unknown_set_exits_2(tiny_csv: Path, tmp_path: Path) -> None:
    proc = run_cli("train", "--data", str(tiny_csv), "--set", "foo=1", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    _assert_one_line_error(proc, "foo")


def test_train_bad_set_value_exits_2(tmp_path: Path) -> None:
    proc = run_cli("train", "--data", "missing.csv", "--set", "dense_layers=9", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    _assert_one_line_error(proc, "dense_layers")


@pytest.mark.parametrize("value", ["1e-3", "3e-4"])
def test_set_accepts_exponent_floats(tmp_path: Path, value: str) -> None:
    """``--set learning_rate=1e-3`` is a float, as ``--learning-rate 1e-3`` is (the data error comes after parsing)."""
    proc = run_cli("train", "--data", "missing.csv", "--set", f"learning_rate={value}", cwd=tmp_path, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 3, proc.stderr
    _assert_one_line_error(proc, "missing.csv")


def test_evaluate_missing_model_exits_2(tiny_csv: Path, tmp_path: Path) -> None:
    proc = run_cli("evaluate", str(tmp_path / "no-such-model.keras"), "--data", str(tiny_csv), cwd=tmp_path,
                   timeout=180)
    assert proc.returncode == 2, proc.stderr
    _assert_one_line_error(proc, "no-such-model.keras")


def _commands() -> list[tuple[str, "object"]]:
    import click

    from fer_experiments.cli import cli

    def walk(cmd: click.Command, path: str) -> list[tuple[str, click.Command]]:
        if isinstance(cmd, click.Group):
            return [c for name, sub in sorted(cmd.commands.items()) for c in walk(sub, f"{path} {name}")]
        return [(path, cmd)]

    return walk(cli, "fer-exp")


def test_every_command_and_option_has_help() -> None:
    """Issue 12, point 5: no option is left for the user to guess."""
    import click

    missing = [f"{path}: command" for path, cmd in _commands() if not (cmd.help or "").strip()]
    for path, cmd in _commands():
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip():
                missing.append(f"{path} {'/'.join(param.opts)}")
    assert not missing, "options without help text: " + ", ".join(missing)
    assert len(_commands()) >= 14


def test_environment_variables_appear_in_help() -> None:
    import click

    from fer_experiments.cli import ENVIRONMENT, cli

    read = {}
    for path, cmd in _commands():
        for param in cmd.params:
            if isinstance(param, click.Option) and param.envvar:
                assert param.show_envvar, f"{path} {param.opts[0]} reads {param.envvar} but --help does not say so"
                read[param.envvar] = path
    top = run_cli("--help")
    assert top.returncode == 0, top.stderr
    listed = [name for name, _ in ENVIRONMENT]
    for var in set(read) | set(listed):
        assert var in top.stdout, f"{var} missing from `fer-exp --help`"
    assert set(read) <= set(listed)
    sub = " ".join(run_cli("search", "--help").stdout.split())
    assert "env var: FER_EXP_CACHE" in sub and "env var: MLFLOW_TRACKING_URI" in sub, sub
    assert isinstance(cli, click.Group)


def test_search_limit_help_says_how_it_relates_to_train_limit() -> None:
    proc = run_cli("search", "--help")
    text = " ".join(proc.stdout.split())
    assert "train_limit" in text and "resumed study keeps its own" in text, text
