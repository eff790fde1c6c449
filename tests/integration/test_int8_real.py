"""``--runtime int8`` on a real run: the INT8 graph is quantized on Training faces of the run's data set on first
use, logged to the run (with its agreement with the float graph) and found there next time; without calibration
faces the user is told what to do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import invoke_cli

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


@pytest.fixture(scope="module")
def trained(tiny_real_csv: Path, real_dataset, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from PIL import Image

    root = tmp_path_factory.mktemp("int8")
    csv = root / "fer-tiny.csv"
    shutil.copy(tiny_real_csv, csv)
    proc = invoke_cli("train", "--data", str(csv), "--preset", "seed-base", "--set", "conv_blocks=2", "--set",
                      "convs_per_block=1", "--set", "filters=8", "--set", "dense_layers=0", "--epochs", "1", cwd=root,
                      env={"FER2013_CSV": ""})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id = next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("run: "))
    faces = []
    for i, face in enumerate(real_dataset.split("PrivateTest").x[:4]):
        faces.append(root / f"face{i}.png")
        Image.fromarray(face).save(faces[-1])
    return {"root": root, "csv": csv, "run_id": run_id, "faces": faces, "uri": f"sqlite:///{root}/mlruns/mlflow.db"}


def _predict(trained: dict, runtime: str, env: dict[str, str] | None = None):
    return invoke_cli("predict", *map(str, trained["faces"]), "--model", f"runs:/{trained['run_id']}/model",
                      "--no-detect", "--json", "--runtime", runtime, cwd=trained["root"],
                      env={"FER2013_CSV": ""} | (env or {}))


def test_int8_is_made_on_first_use_logged_to_the_run_and_close_to_the_float_graph(trained: dict) -> None:
    import mlflow

    first = _predict(trained, "int8")
    assert first.returncode == 0, first.stdout + first.stderr
    client = mlflow.MlflowClient(trained["uri"])
    run = client.get_run(trained["run_id"])
    assert float(run.data.tags["fer.int8_agreement"]) >= 0.9
    assert "exported-int8/model.onnx" in [a.path for a in client.list_artifacts(trained["run_id"], "exported-int8")]
    again = _predict(trained, "int8")
    float_graph = _predict(trained, "exported")
    answers = [json.loads(p.stdout) for p in (first, again, float_graph)]
    assert {r["runtime"] for r in answers[0]} == {"int8"} and {r["runtime"] for r in answers[2]} == {"exported"}
    probs = [np.array([list(r["faces"][0]["probabilities"].values()) for r in a]) for a in answers]
    np.testing.assert_array_equal(probs[0], probs[1])  # the same logged graph, found in the run
    assert np.abs(probs[0] - probs[2]).max() < 0.05


def test_int8_without_calibration_faces_says_what_to_do(trained: dict) -> None:
    import mlflow

    # Another run whose data set is gone: it has no INT8 graph and nothing to calibrate one on.
    proc = invoke_cli("train", "--data", str(trained["csv"]), "--preset", "seed-base", "--set", "conv_blocks=1",
                      "--set", "convs_per_block=1", "--set", "filters=4", "--set", "dense_layers=0", "--epochs", "1",
                      "--limit", "100", cwd=trained["root"], env={"FER2013_CSV": ""})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id = next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("run: "))
    moved = trained["root"] / "elsewhere.csv"
    trained["csv"].rename(moved)
    try:
        other = dict(trained, run_id=run_id)
        refused = _predict(other, "int8")
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "FER2013_CSV" in refused.stderr and "--runtime exported" in refused.stderr
        # FER2013_CSV gives the faces instead.
        done = _predict(other, "int8", env={"FER2013_CSV": str(moved)})
        assert done.returncode == 0, done.stdout + done.stderr
        assert "fer.int8_agreement" in mlflow.MlflowClient(trained["uri"]).get_run(run_id).data.tags
    finally:
        moved.rename(trained["csv"])
