"""`fer-exp predict` with the default detector (YuNet), `--detector haar`, and the Haar fallback with one line when
the CNN detector's library cannot be loaded (FER_EXP_YUNET_LIBRARY naming a file that is not there)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import real_photos as R  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(R.available() is not None, reason=f"source images missing: {R.available()}")]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import cv2
    import keras

    from fer_experiments.models.builder import build_model
    from fer_experiments.params import ModelParams

    work = tmp_path_factory.mktemp("detector-cli")
    keras.utils.set_random_seed(3)
    build_model(ModelParams(conv_blocks=1, convs_per_block=1, filters=4, dense_layers=0, head="global_avg",
                            conv_dropout=0.0)).save(work / "tiny.keras")
    group = next(p for p in R.face_photos() if p.name == "group-48-80px")
    cv2.imwrite(str(work / "group.jpg"), group.gray, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return {"work": work, "model": work / "tiny.keras", "photo": work / "group.jpg", "truth": group.faces}


def _predict(files: dict[str, Path], *args: str, env: dict[str, str] | None = None):
    proc = run_cli("predict", str(files["photo"]), "--model", str(files["model"]), "--runtime", "keras", "--json",
                   *args, cwd=files["work"], env=env)
    assert proc.returncode == 0, proc.stderr
    boxes = [(f["box"]["x"], f["box"]["y"], f["box"]["w"], f["box"]["h"]) for f in json.loads(proc.stdout)[0]["faces"]]
    found, false = R.score(boxes, files["truth"])
    return sum(found), false, [line for line in proc.stderr.splitlines() if line.strip()]


def test_predict_default_is_yunet_and_haar_is_an_option_and_the_fallback(files) -> None:
    found_yunet, false, stderr = _predict(files)
    assert (found_yunet, false) == (6, 0)  # all six faces of 48-80 px on the coffee photo
    assert not any("unavailable" in line for line in stderr), stderr
    found_haar, _, stderr = _predict(files, "--detector", "haar")
    assert found_haar < found_yunet and not any("unavailable" in line for line in stderr)
    found_fallback, _, stderr = _predict(files, env={"FER_EXP_YUNET_LIBRARY": str(files["work"] / "missing.so")})
    warned = [line for line in stderr if "unavailable" in line]
    assert len(warned) == 1 and "yunet" in warned[0] and "using haar" in warned[0], stderr
    assert found_fallback == found_haar
