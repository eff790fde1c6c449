"""Face grids (samples, predictions, mistakes) and the explain maps (feature maps per block, Grad-CAM), on synthetic
faces and tiny untrained models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fer_experiments import IMAGE_SIZE, NUM_CLASSES

PNG = b"\x89PNG\r\n\x1a\n"


def _faces(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8), np.arange(n) % NUM_CLASSES


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# ------------------------------------------------------------------------------------------------------ grids
def test_pick_per_class_is_seeded_within_class_and_short_classes_give_what_they_have() -> None:
    from fer_experiments.evaluation.grids import pick_per_class

    y = np.array([0] * 10 + [1] * 2 + [3] * 5)
    a, b, c = pick_per_class(y, 4, seed=1), pick_per_class(y, 4, seed=1), pick_per_class(y, 4, seed=2)
    assert [list(r) for r in a] == [list(r) for r in b]
    assert [list(r) for r in a] != [list(r) for r in c]
    assert [len(r) for r in a] == [4, 2, 0, 4, 0, 0, 0]
    for cls, rows in enumerate(a):
        assert (y[rows] == cls).all()


def test_sample_grid_has_a_row_per_class_and_its_png_grows_with_per_class() -> None:
    from fer_experiments.evaluation.grids import figure_png, sample_grid

    x, y = _faces(70)
    small = _png_size(figure_png(sample_grid(x, y, per_class=2)))
    big = _png_size(figure_png(sample_grid(x, y, per_class=8)))
    assert big[0] > small[0] and big[1] == small[1]  # wider with more faces per class, the same 7 rows high
    assert 400 < big[1] < 900


def test_mistake_cells_are_the_most_confident_wrong_answers_first() -> None:
    from fer_experiments.evaluation.grids import mistake_cells, prediction_cells

    y = np.array([0, 1, 2, 3, 4])
    probs = np.full((5, NUM_CLASSES), 0.01)
    probs[0, 0] = 0.9  # right
    probs[1, 5] = 0.6  # wrong, 0.6
    probs[2, 6] = 0.95  # wrong, 0.95
    probs[3, 3] = 0.5  # right
    probs[4, 1] = 0.7  # wrong, 0.7
    cells = mistake_cells(y, probs, n=10)
    assert [(c.row, c.pred, round(c.prob, 2)) for c in cells] == [(2, 6, 0.95), (4, 1, 0.7), (1, 5, 0.6)]
    assert not any(c.right for c in cells)
    assert len(mistake_cells(y, probs, n=2)) == 2
    right = {c.row: c.right for c in prediction_cells(y, probs, per_class=1)}
    assert right == {0: True, 1: False, 2: False, 3: True, 4: False}


def test_prediction_and_mistakes_grids_render() -> None:
    from fer_experiments.evaluation.grids import figure_png, mistakes_grid, prediction_grid

    x, y = _faces(60)
    probs = np.random.default_rng(3).dirichlet(np.ones(NUM_CLASSES), size=60)
    fig, cells = prediction_grid(x, y, probs, per_class=3, label="PrivateTest")
    assert len(cells) == 21
    right = sum(c.right for c in cells)
    assert f"{right} of 21 right" in fig._suptitle.get_text()
    w, h = _png_size(figure_png(fig))
    assert w > h  # 3 rows of 7 (one column per class)
    fig2, wrong = mistakes_grid(x, y, probs, n=16)
    assert len(wrong) == 16 and all(not c.right for c in wrong)
    assert _png_size(figure_png(fig2))[0] > 500


# ---------------------------------------------------------------------------------------------------- explain
@pytest.fixture(scope="module")
def tiny_model():
    from fer_experiments.models.builder import build_model
    from fer_experiments.params import ModelParams

    return build_model(ModelParams(conv_blocks=3, convs_per_block=2, filters=4, batchnorm="after_activation",
                                   dense_layers=1, dense_units=8, head="global_avg"))


def test_conv_blocks_are_found_by_name_and_by_pooling_and_a_tta_wrapper_is_unwrapped(tiny_model) -> None:
    import keras

    from fer_experiments.models.explain import conv_block_layers, core_model

    assert [(b, layer.name) for b, layer in conv_block_layers(tiny_model)] == [
        ("block1", "block1_conv2_bn"), ("block2", "block2_conv2_bn"), ("block3", "block3_conv2_bn")]
    # No block names: the last rank-4 layer before each pooling, and the last one before the head.
    inp = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1))
    h = keras.layers.Conv2D(3, 3, padding="same", name="c1")(inp)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Conv2D(5, 3, padding="same", name="c2")(h)
    h = keras.layers.Activation("relu", name="c2_act")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    plain = keras.Model(inp, keras.layers.Dense(NUM_CLASSES, activation="softmax")(h))
    assert [layer.name for _, layer in conv_block_layers(plain)] == ["c1", "c2_act"]
    # A flip test-time-augmentation wrapper holds the network as a nested model.
    flipped = keras.layers.Lambda(lambda t: keras.ops.flip(t, axis=2))(inp)
    tta = keras.Model(inp, keras.layers.Average()([tiny_model(inp), tiny_model(flipped)]), name="tta")
    assert core_model(tta) is tiny_model
    assert len(conv_block_layers(tta)) == 3


def test_explain_gives_feature_maps_per_block_and_a_normalised_48px_grad_cam(tiny_model) -> None:
    from fer_experiments.models.explain import explain

    face, _ = _faces(1, seed=5)
    ex = explain(tiny_model, face[0])
    assert {k: v.shape for k, v in ex.feature_maps.items()} == {
        "block1": (48, 48, 4), "block2": (24, 24, 8), "block3": (12, 12, 16)}
    assert ex.cam.shape == (IMAGE_SIZE, IMAGE_SIZE) and ex.cam.dtype == np.float32
    assert ex.cam.min() >= 0.0 and ex.cam.max() in (0.0, 1.0)
    assert ex.class_index == int(np.argmax(ex.probabilities))
    assert ex.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert ex.cam_layer == "block3_conv2_bn"
    other = explain(tiny_model, face[0], class_index=(ex.class_index + 1) % NUM_CLASSES)
    assert other.class_index == (ex.class_index + 1) % NUM_CLASSES


def test_class_gradient_matches_finite_differences(tiny_model) -> None:
    """The backend branch returns the real gradient of the class logit with respect to the block's activations."""
    import keras

    from fer_experiments.models.explain import _class_gradient, _score_function, conv_block_layers

    target = conv_block_layers(tiny_model)[-1][1]
    face, _ = _faces(1, seed=9)
    act = np.asarray(keras.Model(tiny_model.inputs, target.output).predict_on_batch(
        face.astype(np.float32)[..., None]), dtype=np.float64)
    score = _score_function(tiny_model, target, 2)
    grad = _class_gradient(score, act.astype(np.float32))
    assert grad.shape == act.shape
    assert np.count_nonzero(grad) > 0
    eps = 1e-3
    # Where the gradient is largest: elements that win their max-pool window (elsewhere it is 0, and a finite step
    # could make an element win and move the score, a kink and not a wrong gradient).
    flat = np.argsort(-np.abs(grad[0]).ravel())[:5]
    for idx in [np.unravel_index(i, act.shape[1:]) for i in flat]:
        up, down = act.copy(), act.copy()
        up[(0, *idx)] += eps
        down[(0, *idx)] -= eps
        at, hi, lo = (float(np.asarray(score(a.astype(np.float32)))[0]) for a in (act, up, down))
        # One-sided differences too: an element tied with another for its max-pool window (equal activations are
        # common after ReLU + BatchNorm) has different slopes up and down, and the gradient is one of them.
        slopes = [(hi - lo) / (2 * eps), (hi - at) / eps, (at - lo) / eps]
        assert any(grad[(0, *idx)] == pytest.approx(s, rel=0.05, abs=1e-3) for s in slopes), (grad[(0, *idx)], slopes)


def test_explain_images_are_pngs_one_per_block_and_the_grad_cam(tiny_model) -> None:
    from fer_experiments.evaluation.explain import explain_images

    face, _ = _faces(1, seed=2)
    images = explain_images(tiny_model, face[0])
    assert sorted(images) == ["feature-maps-block1.png", "feature-maps-block2.png", "feature-maps-block3.png",
                              "grad-cam.png"]
    for name, data in images.items():
        w, h = _png_size(data)
        assert w > 200 and h > 100, name
        assert len(data) < 200_000, name


def test_explain_refuses_a_face_of_the_wrong_size(tiny_model) -> None:
    from fer_experiments.errors import ConfigError
    from fer_experiments.models.explain import explain

    with pytest.raises(ConfigError, match="48x48"):
        explain(tiny_model, np.zeros((64, 64), dtype=np.uint8))


# ------------------------------------------------------------------------------------------------------- CLI
def test_data_check_writes_a_sample_grid(tmp_path: Path) -> None:
    from tests.conftest import invoke_cli, write_kaggle_csv

    x, y = _faces(70)
    csv = write_kaggle_csv(tmp_path / "tiny.csv", {"Training": (x, y), "PublicTest": (x[:35], y[:35]),
                                                   "PrivateTest": (x[:35], y[:35])})
    proc = invoke_cli("data", "check", "--data", str(csv), "--per-class", "3", "--grid", str(tmp_path / "g.png"),
                      "--chart", str(tmp_path / "c.png"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"sample faces: {tmp_path / 'g.png'}" in proc.stdout
    w3, h3 = _png_size((tmp_path / "g.png").read_bytes())
    proc = invoke_cli("data", "check", "--data", str(csv), "--per-class", "6", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    w6, h6 = _png_size((tmp_path / "tiny-samples.png").read_bytes())
    assert w6 > w3 and h6 == h3


@pytest.mark.parametrize("block, expected", [
    ("residual", ["block1_relu", "block2_relu"]),  # the activation after the shortcut's sum, before pooling
    ("separable", ["block1_add", "block2_add"]),  # mini-Xception pools inside the block: the sum after it
])
def test_explain_finds_residual_and_separable_blocks_inside_a_flip_tta_model(block: str, expected: list) -> None:
    from fer_experiments.models.builder import build_network, with_tta
    from fer_experiments.models.explain import conv_block_layers, core_model, explain
    from fer_experiments.params import ModelParams

    network = build_network(ModelParams(conv_blocks=2, convs_per_block=2, filters=4, block=block,
                                        batchnorm="after_activation", dense_layers=0, head="global_avg"))
    exported = with_tta(network, "flip")
    assert core_model(exported) is network
    assert [layer.name for _, layer in conv_block_layers(exported)] == expected
    face, _ = _faces(1, seed=4)
    ex = explain(exported, face[0])
    assert ex.cam.shape == (IMAGE_SIZE, IMAGE_SIZE) and ex.cam.max() in (0.0, 1.0) and ex.cam.min() >= 0
    assert ex.cam_layer == expected[-1] and list(ex.feature_maps) == ["block1", "block2"]
    # The probabilities are the exported model's (the mean over the image and its mirror).
    np.testing.assert_allclose(ex.probabilities, np.asarray(exported.predict_on_batch(
        face[:1].astype(np.float32)[..., None]))[0], atol=1e-6)


def test_explain_command_logs_its_pictures_to_the_models_run(tmp_path: Path, stores: dict, tiny_model) -> None:
    """In process (click's runner): a runs:/ model's explain pictures land in explain/ of its run, flat, where the
    study report looks for the best trial's."""
    import cv2
    from click.testing import CliRunner

    from fer_experiments.cli import cli
    from fer_experiments.tracking import start_run
    from fer_experiments.tracking.runs import list_artifacts

    uri = stores["tracking_uri"]
    with start_run(uri, "explain") as run:
        model_uri = run.log_keras_model(tiny_model)
    face, _ = _faces(1, seed=6)
    cv2.imwrite(str(tmp_path / "crop.png"), face[0])
    result = CliRunner().invoke(cli, ["explain", model_uri, str(tmp_path / "crop.png"), "--out", str(tmp_path / "o"),
                                      "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert f"logged to run {run.run_id} under explain/" in result.output
    assert sorted(list_artifacts(uri, run.run_id, "explain")) == [
        "explain/crop-feature-maps-block1.png", "explain/crop-feature-maps-block2.png",
        "explain/crop-feature-maps-block3.png", "explain/crop-grad-cam.png"]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "explain.json", "face.png", "feature-maps-block1.png", "feature-maps-block2.png", "feature-maps-block3.png",
        "grad-cam.png"]
