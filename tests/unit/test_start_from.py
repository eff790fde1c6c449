"""Issue 21's space keys and trainer pieces, without a store: ``start_from`` (validated against the presets and the
space), ``trial_budget`` (seconds or a share of --budget), the shipped cpu-hour space's start points, a training
that continues given weights, and a cosine schedule sized in steps to a time budget."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from fer_experiments.errors import ConfigError
from fer_experiments.spaces import SearchSpace, load_space, resolve_space_path


def _space(**extra: Any) -> SearchSpace:
    d = {"name": "t", "max_epochs": 3, "params": {
        "block": {"type": "categorical", "choices": ["separable", "plain"]},
        "filters": {"type": "categorical", "choices": [16, 32]},
        "stem_filters": {"type": "categorical", "choices": [0, 8, 16]},
        "learning_rate": {"type": "float", "low": 1e-3, "high": 5e-3, "log": True}}}
    return SearchSpace.from_dict(d | extra, source="space.yaml")


def test_start_from_presets_and_parameter_sets_in_order() -> None:
    space = _space(start_from=["mini-xception-wide", {"name": "mine", "params": {"filters": 16, "block": "plain"}}])
    assert space.start_points() == [
        ("mini-xception-wide", {"block": "separable", "filters": 32, "learning_rate": 0.002, "stem_filters": 16}),
        ("mine", {"block": "plain", "filters": 16})]
    assert SearchSpace.from_dict(space.to_dict()) == space
    # Which trials come first does not change how trials compare: a study keeps its identity.
    assert space.content_hash() == _space().content_hash()


@pytest.mark.parametrize(("start_from", "message"), [
    (["mini-xceptoin-wide"], "start_from[0]: unknown preset 'mini-xceptoin-wide' (known: seed-base, seed-deep, "
                             "seed-deep-bn, mini-xception, mini-xception-wide); did you mean 'mini-xception-wide'?"),
    (["seed-deep-bn"], "start_from[0]: seed-deep-bn: preset value filters=64 is outside space"),
    ([{"name": "x", "params": {"dense_units": 3}}], "start_from[0].params: dense_units: not parameters of this space"),
    ([{"name": "x", "params": {"filters": 8}}], "start_from[0]: x: preset value filters=8 is outside space"),
    ([{"params": {"filters": 16}}], "start_from[0]: must be a preset name or a mapping {name: <text>, params:"),
    (["mini-xception", "mini-xception"], "start_from[1]: 'mini-xception' is listed twice"),
    ("mini-xception", "start_from: must be a list"),
    ([3], "start_from[0]: must be a preset name or a {name, params} mapping, got an int"),
])
def test_bad_start_from_is_refused_naming_the_entry(start_from: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _space(start_from=start_from)
    assert f"space.yaml: {message}" in str(info.value)


def test_trial_budget_seconds_or_a_share_of_the_budget() -> None:
    assert _space().trial_seconds(600) is None
    assert _space(trial_budget=30).trial_seconds(None) == 30.0
    assert _space(trial_budget=30).trial_seconds(600) == 30.0
    assert _space(trial_budget="8%").trial_seconds(3600) == pytest.approx(288.0)
    assert _space(trial_budget=" 2.5 % ").trial_seconds(4000) == pytest.approx(100.0)
    # Never a slice shorter than the graph's tracing could dominate.
    assert _space(trial_budget="8%").trial_seconds(600) == pytest.approx(75.0)
    assert _space(trial_budget="8%").trial_seconds(None) is None  # a share needs a --budget
    # Equal slices are how trials compare: part of the study's identity.
    assert _space(trial_budget="8%").content_hash() != _space().content_hash()
    for bad in (0, -3, "0%", "100%", "8 percent", float("nan"), float("inf"), True):
        with pytest.raises(ConfigError, match="trial_budget: must be seconds"):
            _space(trial_budget=bad)


def test_shipped_cpu_hour_starts_from_the_best_known_networks_exactly() -> None:
    """Its first trials are the presets themselves, not the presets bent by the space's fixed values."""
    from fer_experiments.models.presets import get_preset
    from fer_experiments.params import split_params

    space = load_space(resolve_space_path("cpu-hour"))
    names = [name for name, _ in space.start_points()]
    assert names == ["mini-xception-wide-window40", "mini-xception-wide", "mini-xception"]
    fixed = {p.name: p.value for p in space.params if p.kind == "fixed"}
    for name, values in space.start_points():
        model, train = split_params(fixed | values)
        # The first one is mini-xception-wide itself on the central 40x40 window (its augment_crop 4 = (48 - 40) / 2).
        preset = get_preset(name.removesuffix("-window40"))
        window = 40 if name.endswith("-window40") else 0
        assert model == dataclasses.replace(preset.model, input_window=window)
        assert train == type(train)(**{**preset.train.__dict__, "epochs": train.epochs})
    assert space.refit is not None and space.refit["warm_start"] and space.train_limit is None
    assert space.trial_seconds(3600) == pytest.approx(0.06 * 3600)
    assert space.trial_seconds(600) == pytest.approx(75.0)


def _split(n: int, seed: int):
    from fer_experiments.data import Split

    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, 48, 48)).astype("uint8"), rng.integers(0, 7, n))


@pytest.mark.slow
def test_a_training_continues_given_weights_and_never_ends_below_them() -> None:
    from fer_experiments.params import ModelParams, TrainParams
    from fer_experiments.training.trainer import train_model

    model = ModelParams(conv_blocks=1, filters=4, dense_layers=0, head="global_avg", tta="flip")
    first = train_model(model, TrainParams(epochs=2, batch_size=64, learning_rate=1e-2), _split(512, 0),
                        _split(128, 1))
    weights = first.model.get_weights()
    # lr ~0: the weights barely move, so the continued training starts exactly where the first one ended.
    again = train_model(model, TrainParams(epochs=1, batch_size=64, learning_rate=1e-9), _split(512, 0),
                        _split(128, 1), initial_weights=weights)
    assert again.objective_value >= first.objective_value
    np.testing.assert_allclose(again.model.predict(_split(8, 2).x[..., None].astype("float32"), verbose=0),
                               first.model.predict(_split(8, 2).x[..., None].astype("float32"), verbose=0),
                               atol=1e-4)
    wrong = ModelParams(conv_blocks=1, filters=6, dense_layers=0, head="global_avg", tta="flip")
    with pytest.raises(ConfigError, match="initial weights do not fit this network"):
        train_model(wrong, TrainParams(epochs=1), _split(64, 0), _split(32, 1), initial_weights=weights)


@pytest.mark.slow
def test_time_budget_is_counted_in_steps_not_whole_epochs() -> None:
    """A budget of about one and a half epochs trains into the second epoch and the cosine decays over it, where
    whole-epoch sizing stopped after the first and left the rest of the time unused."""
    import time

    from fer_experiments.params import ModelParams, TrainParams
    from fer_experiments.training.trainer import train_model

    model = ModelParams(conv_blocks=1, filters=4, dense_layers=0, head="global_avg")
    probe = train_model(model, TrainParams(epochs=1, batch_size=32), _split(1024, 0), _split(64, 1))
    epoch = probe.train_seconds  # one epoch's fit here, now, traced graph included
    budget = max(4.0, 1.5 * epoch + 2.0)
    started = time.monotonic()
    result = train_model(model, TrainParams(epochs=50, batch_size=32, lr_schedule="cosine", learning_rate=1e-2,
                                            time_budget_s=budget), _split(1024, 0), _split(64, 1))
    took = time.monotonic() - started
    assert took <= budget + 5.0
    assert result.images_seen % 1024 != 0 or result.epochs_run >= 2  # a partial epoch: stopped at a step
    assert result.history["lr"][-1] < 0.5 * 1e-2  # the cosine was sized to the steps that fit
