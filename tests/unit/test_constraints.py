"""Issue 24's pieces without a store: ``constraints:`` in a space (validated, part of its identity), the cost of a
network measured before it trains (cached by architecture), the amounts past each limit that Optuna's
trial constraints (which TPE and GP read) record, and the shipped edge space."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fer_experiments.errors import ConfigError
from fer_experiments.models.cost import ServingCost, serving_cost, violations
from fer_experiments.params import ModelParams
from fer_experiments.spaces import SearchSpace, load_space, resolve_space_path


def _space(**extra: Any) -> SearchSpace:
    d = {"name": "t", "max_epochs": 3, "params": {"filters": {"type": "categorical", "choices": [4, 8]}}}
    return SearchSpace.from_dict(d | extra, source="space.yaml")


def test_constraints_are_validated_and_part_of_the_identity() -> None:
    space = _space(constraints={"max_latency_ms": 2, "max_params": 500000, "runtime": "int8"})
    assert space.constraints == {"max_latency_ms": 2.0, "max_params": 500000, "runtime": "int8"}
    assert _space(constraints={"min_faces_per_second": 1000}).constraints["runtime"] == "exported"
    assert SearchSpace.from_dict(space.to_dict()) == space
    assert space.content_hash() != _space().content_hash()  # which configurations may train: how trials compare
    for bad, message in [
        ({"max_latncy_ms": 2}, "constraints.max_latncy_ms: unknown key"),
        ({"runtime": "exported"}, "constraints: names no limit"),
        ({"max_latency_ms": float("nan")}, "constraints.max_latency_ms: must be a number > 0"),
        ({"max_latency_ms": float("inf")}, "constraints.max_latency_ms: must be a number > 0"),
        ({"max_params": 1.5}, "constraints.max_params: must be an int >= 1"),
        ({"max_params": 10, "runtime": "keras"}, "constraints.runtime: must be one of exported, int8"),
    ]:
        with pytest.raises(ConfigError) as info:
            _space(constraints=bad)
        assert f"space.yaml: {message}" in str(info.value)


def test_violations_say_how_far_past_each_limit() -> None:
    cost = ServingCost(params=60_000, model_bytes=250_000, latency_ms=2.5, runtime="exported")
    over, broken = violations(cost, {"max_latency_ms": 2.0, "max_params": 100_000, "min_faces_per_second": 500,
                                     "runtime": "exported"})
    # In LIMITS order: latency, faces/s, params.
    assert over == pytest.approx([0.5, 100.0, -40_000.0])
    assert broken == ["latency_ms 2.500 > max_latency_ms 2", "faces_per_second 400.000 < min_faces_per_second 500"]
    assert violations(cost, {"max_model_bytes": 300_000})[1] == []


def test_optuna_trial_constraints_name_each_limit_in_the_order_of_the_amounts() -> None:
    from fer_experiments.search.engines.optuna import constraint_names

    space = _space(constraints={"max_params": 10, "max_latency_ms": 2, "runtime": "int8"})
    assert constraint_names(space) == ["max_latency_ms", "max_params"]  # violations() measures in LIMITS order
    cost = ServingCost(params=40, model_bytes=1, latency_ms=1.0, runtime="int8")
    assert violations(cost, space.constraints)[0] == [-1.0, 30.0]
    assert constraint_names(_space()) == []


@pytest.mark.slow
def test_cost_is_measured_before_training_and_cached_by_architecture(tmp_path: Path) -> None:
    model = ModelParams(conv_blocks=1, filters=4, dense_layers=0, head="global_avg", tta="flip")
    cache = tmp_path / "serving_cost.json"
    first = serving_cost(model, cache_file=cache, repeats=20)
    assert not first.cached and first.seconds > 0
    assert first.params > 0 and first.model_bytes > 1000 and first.latency_ms > 0
    assert first.faces_per_second == pytest.approx(1000 / first.latency_ms)
    again = serving_cost(model, cache_file=cache)
    assert again.cached and (again.params, again.model_bytes, again.latency_ms) == (
        first.params, first.model_bytes, first.latency_ms)
    assert len(json.loads(cache.read_text())) == 1
    other = serving_cost(ModelParams(conv_blocks=1, filters=6, dense_layers=0, head="global_avg", tta="flip"),
                         cache_file=cache, repeats=20)
    assert not other.cached and other.params > first.params
    with pytest.raises(ConfigError, match="runtime must be one of exported, int8"):
        serving_cost(model, "keras")


def test_shipped_edge_space() -> None:
    space = load_space(resolve_space_path("edge"))
    assert space.constraints == {"min_faces_per_second": 1000.0, "runtime": "exported"}
    assert [name for name, _ in space.start_points()] == ["mini-xception"]
    assert space.sampler["name"] == "tpe"  # a sampler that reads trial constraints
