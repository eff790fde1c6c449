"""Issue 25 (hardening, third round) cases that need no server and no training: options refused at parse time,
aliases, --top, outputs over inputs, size caps, unreachable stores, malformed tags, reading commands on a
mistyped store path, a --budget too short for one trial, exported graphs trusted only once complete.

Cases needing a real server, browser, exported graph or trained models are in
tests/integration/test_hardening3_real.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from fer_experiments.errors import DataError
from tests.conftest import run_cli


def _parse(*args: str) -> tuple[int, str]:
    """Run the CLI in-process (parse errors happen before any command body) -> (exit code, output)."""
    from fer_experiments.cli import cli

    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


# ------------------------------------------------------------------------- 3: NaN, inf, out of range
@pytest.mark.parametrize("args", [
    ("search", "--data", "x.csv", "--space", "s.yaml", "--study", "s", "--budget", "nan"),
    ("search", "--data", "x.csv", "--space", "s.yaml", "--study", "s", "--budget", "inf"),
    ("search", "--data", "x.csv", "--space", "s.yaml", "--study", "s", "--budget", "infm"),
    ("search", "--data", "x.csv", "--space", "s.yaml", "--study", "s", "--n-trials", "1", "--timeout", "nan"),
    ("search", "--data", "x.csv", "--space", "s.yaml", "--study", "s", "--n-trials", "1", "--timeout", "-5m"),
    ("search", "--data", "x.csv", "--space", "s.yaml", "--study", "s", "--n-trials", "1", "--budget", "0"),
    ("worker", "--data", "x.csv", "--study", "s", "--timeout", "nan"),
    ("serve", "--host", "256.0.0.1", "--poll-seconds", "nan"),
    ("serve", "--host", "256.0.0.1", "--poll-seconds", "inf"),
    ("serve", "--host", "256.0.0.1", "--body-timeout", "nan"),
    ("serve", "--host", "256.0.0.1", "--body-timeout", "1e9"),
    ("serve", "--host", "256.0.0.1", "--header-timeout", "nan"),
    ("serve", "--host", "256.0.0.1", "--batch-window-ms", "nan"),
    ("distill", "--run", "r", "--temperature", "nan"),
    ("distill", "--run", "r", "--temperature", "inf"),
    ("distill", "--run", "r", "--alpha", "nan"),
    ("train", "--data", "x.csv", "--learning-rate", "nan"),
    ("train", "--data", "x.csv", "--learning-rate", "inf"),
    ("promote", "--run", "r", "--min-accuracy", "nan"),
    ("predict", "x.png", "--margin", "nan"),
])
def test_non_finite_and_out_of_range_numbers_are_refused_at_parse_time(tmp_path: Path, args: tuple[str, ...],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # (serve: an address no server can listen on, should the option pass)
    code, out = _parse(*args)
    assert code == 2, out
    option = next(a for a in args if a.startswith("--") and args[args.index(a) + 1] in (
        "nan", "inf", "infm", "-5m", "0", "1e9"))
    assert option in out and ("finite" in out or "between" in out or "range" in out), out
    assert not (tmp_path / "mlruns").exists()


def _walk(group: click.Group):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _walk(command)
        else:
            yield name, command


def test_every_float_option_refuses_nan_one_way() -> None:
    """Structural: every float-valued option of every command goes through FiniteFloatRange (a plain click float
    or FloatRange lets NaN through its bounds); durations go through Duration."""
    from fer_experiments.cli import cli
    from fer_experiments.cli.options import Duration, FiniteFloatRange

    seen = 0
    for name, command in _walk(cli):
        for param in command.params:
            t = param.type
            if isinstance(t, (click.types.FloatParamType, click.FloatRange)):
                assert isinstance(t, FiniteFloatRange), f"{name} {param.opts}: {t!r}"
                seen += 1
            if param.name in ("timeout", "budget"):
                assert isinstance(t, Duration), f"{name} {param.opts}: {t!r}"
    assert seen >= 8


def test_set_override_refuses_nan() -> None:
    from fer_experiments.cli.options import parse_overrides
    from fer_experiments.errors import ConfigError

    assert parse_overrides(("filters=16", "learning_rate=1e-3")) == {"filters": 16, "learning_rate": 0.001}
    for bad in ("learning_rate=nan", "dropout=inf", "x=-inf"):
        with pytest.raises(ConfigError, match="not a finite number"):
            parse_overrides((bad,))


def test_durations_parse() -> None:
    from fer_experiments.cli.options import Duration

    d = Duration()
    assert d.convert("90", None, None) == 90 and d.convert("15m", None, None) == 900
    assert d.convert("6h", None, None) == 21600 and d.convert(" 2D ", None, None) == 172800


# ----------------------------------------------------------------------------------- 9: alias names
@pytest.mark.parametrize("alias", ["a b", "", "../x", "v1", "V12", "latest", "LATEST", "a/b", "x" * 300, "é!",
                                   "a.b", "a:b"])
def test_alias_mlflow_forbids_is_refused_before_anything_is_written(tmp_path: Path, alias: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for args in (("promote", "--run", "r"), ("rollback",), ("ensemble", "--study", "s", "--data", "x.csv"),
                 ("distill", "--run", "r")):
        code, out = _parse(*args, "--alias", alias)
        assert code == 2 and "--alias" in out, (args, out)
    assert not (tmp_path / "mlruns").exists()


def test_valid_aliases_pass() -> None:
    from fer_experiments.cli.options import AliasName

    for alias in ("champion", "challenger", "prod-2", "a_b", "v1x", "x" * 246):
        assert AliasName().convert(alias, None, None) == alias


# ---------------------------------------------------------------------------------------- 6: --top
def test_top_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fer_experiments.ensembles.members import MAX_TOP

    monkeypatch.chdir(tmp_path)
    code, out = _parse("ensemble", "--study", "s", "--data", "x.csv", "--method", "greedy", "--top", "1000000000")
    assert code == 2 and "--top" in out, out
    code, out = _parse("ensemble", "--study", "s", "--data", "x.csv", "--top", str(MAX_TOP + 1))
    assert code == 2 and "--top" in out, out


# --------------------------------------------------------------------------- 4: outputs over inputs
def test_video_outputs_never_replace_the_video(tmp_path: Path) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(b"not decoded: refused before the video is opened")
    before = video.read_bytes()
    for args in (("--csv", "v.mp4"), ("--out", "v.mp4"), ("--csv", str(video)), ("--out", "./v.mp4"),
                 ("--out", "a.mp4", "--csv", "a.mp4")):
        proc = run_cli("predict", "v.mp4", "--model", "missing.keras", *args, cwd=tmp_path, timeout=120)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert "replace" in proc.stderr or "also the annotated video" in proc.stderr, proc.stderr
        assert video.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]


def test_annotated_images_never_replace_their_photo(tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8 a photo")
    (tmp_path / "sub").mkdir()
    for out in (".", str(tmp_path), "./sub/.."):
        proc = run_cli("predict", "photo.jpg", "--model", "missing.keras", "--out", out, cwd=tmp_path, timeout=120)
        assert proc.returncode == 2 and "would replace it" in proc.stderr, (out, proc.stderr)
        assert photo.read_bytes() == b"\xff\xd8 a photo"


# ----------------------------------------------------------------------------------- 7: size caps
def test_endless_and_huge_files_are_refused_by_name(tmp_path: Path) -> None:
    from fer_experiments.io import read_capped

    started = time.monotonic()
    with pytest.raises(DataError, match="/dev/zero: more than 1,024 bytes"):
        read_capped("/dev/zero", 1024)
    sparse = tmp_path / "big.png"
    with open(sparse, "wb") as fh:
        fh.truncate(100 * 1024 ** 3)  # 100 GB, sparse: costs nothing on disk
    with pytest.raises(DataError, match=r"big\.png: 107,374,182,400 bytes; at most"):
        read_capped(sparse)
    assert time.monotonic() - started < 5
    assert read_capped(Path(__file__)) == Path(__file__).read_bytes()


def test_a_huge_image_in_a_tree_is_named(tmp_path: Path) -> None:
    from fer_experiments.data.folders import read_tree, scan_tree
    from tests.unit.test_data_folders import make_tree

    make_tree(tmp_path)
    big = tmp_path / "train" / "happy" / "huge.png"
    with open(big, "wb") as fh:
        fh.truncate(100 * 1024 ** 3)
    with pytest.raises(DataError) as err:
        read_tree(tmp_path, scan_tree(tmp_path))
    assert str(big) in str(err.value) and "bytes" in str(err.value)


def test_explain_dev_zero_is_one_line(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = run_cli("explain", "missing.keras", "/dev/zero", "--no-log", cwd=tmp_path, timeout=120)
    assert proc.returncode == 3 and "/dev/zero: more than" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and time.monotonic() - started < 60


# ------------------------------------------------------------------------ 8: an unreachable server
def test_unreachable_tracking_server_fails_within_seconds(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = run_cli("models", "--tracking-uri", "http://127.0.0.1:1", cwd=tmp_path, timeout=120)
    took = time.monotonic() - started
    assert proc.returncode == 5, proc.stderr
    assert "cannot open the MLflow tracking store http://127.0.0.1:1" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert took < 30, took  # 249 s with MLflow's own retries


def test_user_settings_of_mlflow_retries_win(monkeypatch: pytest.MonkeyPatch) -> None:
    from fer_experiments.tracking.store import HTTP_LIMITS, bound_http_requests

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "9")
    for name in set(HTTP_LIMITS) - {"MLFLOW_HTTP_REQUEST_MAX_RETRIES"}:
        monkeypatch.delenv(name, raising=False)
    bound_http_requests()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "9"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == HTTP_LIMITS["MLFLOW_HTTP_REQUEST_TIMEOUT"]


# ------------------------------------------------------------------------------ 10: malformed tags
def test_malformed_tags_read_as_missing() -> None:
    from fer_experiments.tracking import tags

    assert tags.trial_number_of({tags.TRIAL_NUMBER: "x1"}) is None
    assert tags.trial_number_of({tags.TRIAL_NUMBER: "7"}) == 7
    for raw in ("abc", "nan", "inf", "", None, "1e999"):
        assert tags.float_of(raw) is None, raw
    rec = tags.TrialRecord.from_run("r1", {tags.OBJECTIVE_VALUE: "abc", tags.TRIAL_NUMBER: "x1",
                                           tags.TRIAL_STATE: "COMPLETE"})
    assert rec.objective_value is None and rec.number == -1


def _study_with_bad_tags(uri: str) -> dict[str, str]:
    """A study's parent run and three trial runs written straight into MLflow; trial 1's objective value and
    trial 2's number are hand-edited nonsense; the objective is named with TeX marks."""
    from fer_experiments.tracking import TrackedRun, create_run, set_status, start_run, tags

    parent = create_run(uri, "bad", "study-bad", tags={tags.KIND: tags.KIND_STUDY, tags.STUDY: "bad",
                                                       tags.ENGINE: "optuna", tags.OBJECTIVE: "$\\foo$"})
    set_status(uri, parent, "FINISHED")
    runs = {}
    for number, value in ((0, "0.41"), (1, "abc"), (2, "0.52")):
        with start_run(uri, "bad", run_name=f"trial-{number}", parent_run_id=parent,
                       tags=tags.trial_tags(study="bad", engine="optuna", number=number)) as run:
            run.log_params({"filters": 8 * (number + 1)})
            run.log_metrics({"val_accuracy": 0.3, tags.PUBLIC_ACCURACY: 0.3 + number / 10})
            run.set_tags({tags.TRIAL_STATE: "COMPLETE", tags.OBJECTIVE_VALUE: value})
        runs[str(number)] = run.run_id
    TrackedRun(runs["2"], uri).set_tags({tags.TRIAL_NUMBER: "x1"})
    return runs


def test_report_survives_malformed_tags(prepared_stores: dict, tmp_path: Path) -> None:
    uri = prepared_stores["tracking_uri"]
    runs = _study_with_bad_tags(uri)
    out = tmp_path / "r.html"
    proc = run_cli("report", "--study", "bad", "--out", str(out), "--tracking-uri", uri, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    page = out.read_text()
    assert runs["0"] in page and runs["1"] in page  # the bad value shows as '-', its run is still listed
    assert runs["2"] not in page  # no trial number: not a trial of the table (as before for untagged runs)
    assert "Best trial: 0" in page and "$\\foo$" in page


def test_promote_dry_run_survives_malformed_tags(prepared_stores: dict, tmp_path: Path) -> None:
    from fer_experiments.registry.promote import best_of_study

    uri = prepared_stores["tracking_uri"]
    runs = _study_with_bad_tags(uri)
    # The run with a non-numeric objective is skipped; the one without a number still counts as a record.
    _, _, run_id = best_of_study(uri, "bad")
    assert run_id in (runs["0"], runs["2"]) and run_id != runs["1"]


# ---------------------------------------------------------------- 13: reading commands, mistyped path
@pytest.mark.parametrize("args", [
    ("report", "--study", "s", "--out", "r.html"),
    ("ensemble", "--study", "s", "--data", "x.csv"),
    ("rollback",),
    ("promote", "--study", "s", "--dry-run"),
    ("promote", "--run", "r"),
])
def test_reading_commands_never_create_a_store(tmp_path: Path, args: tuple[str, ...]) -> None:
    db = tmp_path / "typo" / "mlflwo.db"
    proc = run_cli(*args, "--tracking-uri", f"sqlite:///{db}", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "no MLflow tracking store at" in proc.stderr and "mlflwo.db" in proc.stderr
    assert not db.exists() and not db.parent.exists()


# ------------------------------------------------------------------- 12: a --budget too short for one trial
REFIT_SPACE = """\
name: tiny-refit
max_epochs: 1
pruner: none
refit: {top_k: 1, epochs: 1}
params:
  filters: {type: categorical, choices: [4, 8]}
  conv_blocks: 1
  convs_per_block: 1
  dense_layers: 0
"""


@pytest.mark.parametrize("budget", ["1s", "45s"])
def test_budget_too_short_for_one_trial_says_so(synthetic_csv: Path, tmp_path: Path, budget: str) -> None:
    (tmp_path / "space.yaml").write_text(REFIT_SPACE)
    proc = run_cli("search", "--data", str(synthetic_csv), "--space", "space.yaml", "--study", "b",
                   "--budget", budget, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr)
    assert "--budget: too short to run a single trial" in proc.stderr and "give at least --budget" in proc.stderr
    assert "refit" in proc.stderr


# ------------------------------------------------- 5, 11: exported graphs, no temp copies, only complete ones
def _onnx_file(path: Path) -> Path:
    """A tiny valid ONNX graph (Identity on a 48x48x1 input)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 48, 48, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 48, 48, 1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "tiny", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_find_exported_leaves_no_temp_copy_and_trusts_only_complete_graphs(prepared_stores: dict, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from fer_experiments.tracking import get_run, start_run, tags
    from fer_experiments.tracking.exported import _log_graph, find_exported

    uri = prepared_stores["tracking_uri"]
    with start_run(uri, "exp", run_name="x") as run:
        pass
    _log_graph(uri, run.run_id, _onnx_file(tmp_path / "model.onnx"))
    # Uploaded but not marked complete (a writer still copying, or one that died): not trusted.
    assert find_exported(run.run_id, uri) is None
    from fer_experiments.tracking.runs import TrackedRun

    TrackedRun(run.run_id, uri).set_tags({tags.EXPORTED: "onnx"})
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)
    first = find_exported(run.run_id, uri)
    second = find_exported(run.run_id, uri)
    assert first is not None and first == second and first.name == "model.onnx"
    assert first.stat().st_size == (tmp_path / "model.onnx").stat().st_size
    assert list(scratch.iterdir()) == []  # no copy per load in the temp folder (73 MB per predict before)
    artifacts = Path(prepared_stores["root"]) / "artifacts"
    assert artifacts in first.parents  # the local store's own file, not a copy
    assert get_run(uri, run.run_id).tags[tags.EXPORTED] == "onnx"


def test_export_lock_serialises_processes(prepared_stores: dict, tmp_path: Path) -> None:
    """Two exporters of one run: the second waits for the first (and then finds its graph)."""
    import subprocess
    import sys

    from fer_experiments.tracking.exported import export_lock

    uri = prepared_stores["tracking_uri"]
    probe = ("import time; from fer_experiments.tracking.exported import export_lock\n"
             f"with export_lock({uri!r}, 'run1'): print(time.time())\n")
    with export_lock(uri, "run1"):
        child = subprocess.Popen([sys.executable, "-c", probe], stdout=subprocess.PIPE, text=True)
        time.sleep(3.0)
        assert child.poll() is None  # still waiting for the lock
        released = time.time()
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0 and float(out) >= released
