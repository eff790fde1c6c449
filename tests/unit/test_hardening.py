"""Issue 11 (hardening) cases that need no training: hostile names, YAML, sizes, image trees, resumed samplers."""

from __future__ import annotations

import os
import struct
import time
import zlib
from pathlib import Path

import optuna
import pytest

from fer_experiments.errors import ConfigError, DataError, TrialFailed
from tests.conftest import run_cli

SPACE = """\
name: hard
max_epochs: 1
sampler: {name: tpe, seed: 3}
pruner: none
params:
  filters: {type: categorical, choices: [4, 8]}
  learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  dense_units: {type: int, low: 8, high: 64}
"""


# ------------------------------------------------------------------------------------------ 11: study names
@pytest.mark.parametrize("name", ["", "x" * 300, "a/b", "../up", "bad name", "-dash"])
def test_bad_study_name_exits_2_and_creates_nothing(tmp_path: Path, name: str) -> None:
    (tmp_path / "space.yaml").write_text(SPACE)
    (tmp_path / "data.csv").write_text("emotion,pixels,Usage\n")
    proc = run_cli("search", "--data", "data.csv", "--space", "space.yaml", "--study", name, "--n-trials", "1",
                   cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--study" in proc.stderr and len(proc.stderr) < 400
    assert not (tmp_path / "mlruns").exists()


# ------------------------------------------------------------------- 12: a bad space leaves no lock file
def test_space_error_leaves_no_workers_file(tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text(SPACE.replace("max_epochs: 1", "max_epochs: -1"))
    (tmp_path / "data.csv").write_text("emotion,pixels,Usage\n")
    proc = run_cli("search", "--data", "data.csv", "--space", "space.yaml", "--study", "s", "--n-trials", "1",
                   cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "max_epochs" in proc.stderr
    assert not (tmp_path / "mlruns" / "optuna.db.workers").exists()
    assert not (tmp_path / "mlruns").exists()


# ----------------------------------------------------------------------------------------- 4: YAML bombs
def _bomb(levels: int = 7) -> str:
    """A flow sequence whose elements define anchors that each repeat the previous one 9 times (9**levels values)."""
    parts = ["&l0 [x, x, x, x, x, x, x, x, x]"]
    parts += [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


@pytest.mark.parametrize("field", ["name", "sampler.seed"])
def test_alias_bomb_is_refused_fast_with_a_short_message(tmp_path: Path, field: str) -> None:
    from fer_experiments.spaces import load_space

    top, _, sub = field.partition(".")
    body = f"name: {_bomb()}\n" if not sub else f"name: b\n{top}: {{{sub}: {_bomb()}}}\n"
    path = tmp_path / "bomb.yaml"
    path.write_text(body + "max_epochs: 1\nparams: {filters: 8}\n")
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        load_space(path)
    assert time.monotonic() - started < 5
    assert "alias" in str(err.value) and len(str(err.value)) < 300


def test_quoted_values_are_cut(tmp_path: Path) -> None:
    from fer_experiments.spaces import load_space

    path = tmp_path / "long.yaml"
    path.write_text("name: '" + "x" * 200_000 + "'\nmax_epochs: 1\nparams: {filters: 8}\n")
    with pytest.raises(ConfigError) as err:
        load_space(path)
    assert "name" in str(err.value) and len(str(err.value)) < 300
    path.write_text("name: n\nmax_epochs: 1\nparams: {batchnorm: '" + "y" * 100_000 + "'}\n")
    with pytest.raises(ConfigError) as err:
        load_space(path)
    assert "batchnorm" in str(err.value) and len(str(err.value)) < 400


def test_yaml_syntax_error_names_the_line_where_it_is(tmp_path: Path) -> None:
    from fer_experiments.spaces import load_space

    lines = ["name: x", "max_epochs: 2", "params:"] + ["  filters: 8" if i == 0 else f"  # line {i + 4}"
                                                       for i in range(18)]
    path = tmp_path / "syntax.yaml"
    path.write_text("\n".join(lines + ['  batch_size: "64'] + [f"  # more {i}" for i in range(15)]) + "\n")
    with pytest.raises(ConfigError) as err:
        load_space(path)
    assert f"{path}:22:" in str(err.value), err.value


# ------------------------------------------------------------------------------------ 5: unbounded sizes
@pytest.mark.parametrize("param,value", [("filters", 19620), ("dense_units", 10**6), ("batch_size", 10**6),
                                         ("epochs", 10**7)])
def test_size_parameters_have_hard_upper_bounds(tmp_path: Path, param: str, value: int) -> None:
    from fer_experiments.spaces import load_space

    path = tmp_path / "big.yaml"
    # max_epochs is bounded too (1000): the space's own epochs are what is checked here.
    path.write_text(f"name: big\nmax_epochs: {1000 if param == 'epochs' else 1}\n"
                    f"params: {{{param}: {value}}}\n")
    with pytest.raises(ConfigError, match=f"params.{param}"):
        load_space(path)


def test_memory_estimate_counts_weights_exactly_and_refuses_what_cannot_fit(monkeypatch) -> None:
    from fer_experiments.models.builder import build_model
    from fer_experiments.models.memory import estimate_training_memory
    from fer_experiments.params import ModelParams, TrainParams
    from fer_experiments.training.trainer import check_fits_in_memory

    for mp in (ModelParams(), ModelParams(filters=16, batchnorm="before_activation", head="global_avg"),
               ModelParams(conv_blocks=1, convs_per_block=1, filters=8, dense_layers=0)):
        assert estimate_training_memory(mp, TrainParams()).n_weights == build_model(mp).count_params()
    big = ModelParams(filters=1024, filter_growth=1.0, conv_blocks=5, convs_per_block=3)
    est = estimate_training_memory(big, TrainParams(batch_size=4096))
    assert est.total > 64 * 2**30
    monkeypatch.setenv("FER_EXP_MEMORY_LIMIT", "2G")
    with pytest.raises(TrialFailed, match="does not fit in memory"):
        check_fits_in_memory(big, TrainParams(batch_size=4096))
    check_fits_in_memory(ModelParams(filters=8, conv_blocks=1), TrainParams(batch_size=32))  # small ones pass


def test_killed_trial_is_retried_once_not_forever(tmp_path: Path) -> None:
    """A worker killed mid-trial (OOM) is retried once with the same params; if that dies too, no further retry."""
    from fer_experiments.search.reconcile import fail_stale
    from fer_experiments.search.study import open_storage

    storage = open_storage(f"sqlite:///{tmp_path}/o.db", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage, study_name="r")
    for attempt in range(2):  # the first run and its one retry (same params) both die
        trial = study.ask()
        trial.suggest_int("filters", 1, 10**6)
        storage.record_heartbeat(trial._trial_id)
        time.sleep(2.2)  # the "worker" died: no heartbeat
        fail_stale(study)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states.count(optuna.trial.TrialState.FAIL) == 2 and optuna.trial.TrialState.WAITING not in states, states


# ------------------------------------------------------------------------------------------- 10: image trees
def _tree(root: Path) -> Path:
    import cv2
    import numpy as np

    for split in ("train", "test"):
        (root / split / "happy").mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(root / split / "happy" / f"{i}.png"), np.full((48, 48), 40 * i, np.uint8))
    return root


def test_symlink_loop_in_image_tree_is_a_data_error(tmp_path: Path) -> None:
    root = _tree(tmp_path / "tree")
    os.symlink("b.png", root / "train" / "happy" / "a.png")
    os.symlink("a.png", root / "train" / "happy" / "b.png")
    proc = run_cli("data", "check", "--data", str(root), "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path,
                   timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "a.png" in proc.stderr and "symlink" in proc.stderr


def test_image_declaring_too_many_pixels_is_a_data_error(tmp_path: Path) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    root = _tree(tmp_path / "tree")
    (root / "train" / "happy" / "huge.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
    proc = run_cli("data", "check", "--data", str(root), "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path,
                   timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "huge.png" in proc.stderr and "100000x100000" in proc.stderr


# ------------------------------------------------------------------------------ 2: resuming continues
def test_resumed_study_does_not_repeat_earlier_trials(tmp_path: Path) -> None:
    from fer_experiments.search.study import create_or_resume, open_storage
    from fer_experiments.spaces import SearchSpace, suggest
    import yaml

    space = SearchSpace.from_dict(yaml.safe_load(SPACE), source="space.yaml")
    url = f"sqlite:///{tmp_path}/o.db"
    seen: list[tuple] = []
    for command in range(3):  # create, resume, resume again: each command runs 2 trials
        storage = open_storage(url)
        study, _, _ = create_or_resume(storage, url, "s", space, data_digest="d", limit=None, experiment=None)
        for _ in range(2):
            trial = study.ask()
            values = suggest(space, trial)
            study.tell(trial, 0.5)
            seen.append(tuple(sorted(values.items())))
    assert len(set(seen)) == len(seen), seen
    # A fresh study with the same space still starts where the first one did (reproducible).
    url2 = f"sqlite:///{tmp_path}/o2.db"
    study2, _, _ = create_or_resume(open_storage(url2), url2, "s", space, data_digest="d", limit=None, experiment=None)
    assert tuple(sorted(suggest(space, study2.ask()).items())) == seen[0]


# ------------------------------------------------------------- issue 12.4: reading commands create no store
@pytest.mark.parametrize("command,store", [(["studies"], "optuna.db"), (["models"], "mlflow.db"),
                                           (["reconcile"], "mlflow.db")])
def test_reading_command_in_the_wrong_folder_creates_no_store(tmp_path: Path, command: list[str], store: str) -> None:
    proc = run_cli(*command, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert str(tmp_path / "mlruns" / store) in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "mlruns").exists()


# ------------------------------------------------------------------------ 12 (smaller): data loads and caches
def test_plain_csv_named_gz_is_refused_with_a_cold_or_a_warm_cache(tmp_path: Path) -> None:
    import numpy as np

    from fer_experiments.data import load_dataset
    from tests.conftest import write_kaggle_csv

    rng = np.random.default_rng(0)
    parts = {s: (rng.integers(0, 255, (14, 48, 48)), np.arange(14) % 7) for s in ("Training", "PublicTest",
                                                                               "PrivateTest")}
    plain = write_kaggle_csv(tmp_path / "fer.csv", parts)
    named_gz = tmp_path / "fer.csv.gz"
    named_gz.write_bytes(plain.read_bytes())
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="not a gzip file") as cold:
        load_dataset(named_gz, cache_dir=cache)
    load_dataset(plain, cache_dir=cache)  # the same bytes are now cached under their digest
    with pytest.raises(DataError, match="not a gzip file") as warm:
        load_dataset(named_gz, cache_dir=cache)
    assert str(cold.value) == str(warm.value)


def test_cache_hit_keeps_this_loads_notes(tmp_path: Path) -> None:
    from fer_experiments.data import load_dataset

    root = _tree(tmp_path / "tree")
    for split in ("train", "test"):
        for cls in ("angry", "sad"):
            import cv2
            import numpy as np

            (root / split / cls).mkdir()
            for i in range(3):
                cv2.imwrite(str(root / split / cls / f"{i}.png"), np.full((48, 48), 30 * i + 5, np.uint8))
    cache = tmp_path / "cache"
    cold = load_dataset(root, cache_dir=cache)
    for i in range(3):
        (root / "train" / "happy" / f"notes{i}.txt").write_text("not an image")
    warm = load_dataset(root, cache_dir=cache)
    assert warm.digest == cold.digest  # a cache hit: the images did not change
    assert any("ignored 3 files" in n for n in warm.notes), warm.notes
    assert load_dataset(root, cache_dir=cache).notes == warm.notes


def test_remote_artifact_location_is_listed_not_looked_up_on_disk() -> None:
    """A tracking server's proxied artifacts (``mlflow-artifacts:/...``, one slash) are not a local path: the Docker
    smoke test's promote was refused because such a model's MLmodel was looked for on the worker's disk."""
    from fer_experiments.tracking.model_registry import artifact_location_problem

    problem = artifact_location_problem("mlflow-artifacts:/1/models/m-0123/artifacts")
    assert problem is None or "does not exist" not in problem, problem
