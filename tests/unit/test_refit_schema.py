"""The search-space schema's refit section and the family's new parameters (issue 14)."""

from __future__ import annotations

from typing import Any

import pytest

from fer_experiments.errors import ConfigError
from fer_experiments.spaces import SearchSpace, load_space, resolve_space_path

BASE: dict[str, Any] = {"name": "t", "max_epochs": 3, "params": {"filters": 8}}


def _space(**extra: Any) -> SearchSpace:
    return SearchSpace.from_dict(BASE | extra, source="s.yaml")


def test_refit_defaults_and_values() -> None:
    assert _space().refit is None
    assert _space(refit=None).refit is None
    assert _space(refit={}).refit == {"top_k": 1, "epochs": None, "train_limit": None, "budget_share": 0.5,
                                      "warm_start": False}
    assert _space(refit={"top_k": 3, "epochs": 20, "train_limit": None, "budget_share": 0.6,
                         "warm_start": True}).refit == {
        "top_k": 3, "epochs": 20, "train_limit": None, "budget_share": 0.6, "warm_start": True}


@pytest.mark.parametrize(("refit", "key"), [
    ({"top_k": 0}, "refit.top_k"), ({"top_k": True}, "refit.top_k"), ({"epochs": 0}, "refit.epochs"),
    ({"epochs": "ten"}, "refit.epochs"), ({"train_limit": -1}, "refit.train_limit"),
    ({"budget_share": 1.5}, "refit.budget_share"), ({"topk": 2}, "refit.topk"), ([1], "refit"),
    ({"warm_start": "yes"}, "refit.warm_start"),
])
def test_bad_refit_is_a_config_error_naming_the_key(refit: Any, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _space(refit=refit)
    assert str(info.value).startswith(f"s.yaml: {key}:"), str(info.value)


def test_refit_round_trips_and_leaves_the_content_hash_alone() -> None:
    without, with_refit = _space(), _space(refit={"top_k": 2})
    assert with_refit.content_hash() == without.content_hash()
    assert SearchSpace.from_dict(with_refit.to_dict()) == with_refit
    assert "refit" not in without.to_dict()  # spaces without refit keep their canonical form (and hash)


def test_new_parameters_are_searchable() -> None:
    space = _space(params={"block": {"type": "categorical", "choices": ["plain", "residual", "separable"]},
                           "tta": "flip", "augment_crop": {"type": "int", "low": 0, "high": 4, "step": 2},
                           "stem_filters": {"type": "categorical", "choices": [0, 16]}})
    assert space.get("block").choices == ("plain", "residual", "separable")
    assert space.get("tta").value == "flip"


@pytest.mark.parametrize(("params", "key"), [
    ({"block": {"type": "categorical", "choices": ["plain", "dense"]}}, "params.block.choices[1]"),
    ({"tta": "rotate"}, "params.tta"),
    ({"augment_crop": {"type": "int", "low": 0, "high": 20}}, "params.augment_crop.high"),
    ({"time_budget_s": -1.0}, "params.time_budget_s"),
])
def test_bad_new_parameter_values_name_the_key(params: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _space(params=params)
    assert str(info.value).startswith(f"s.yaml: {key}:"), str(info.value)


def test_shipped_cpu_hour_space() -> None:
    space = load_space(resolve_space_path("cpu-hour"))
    assert space.refit is not None and space.refit["train_limit"] is None and space.refit["top_k"] >= 1
    assert space.get("tta").value == "flip" and space.get("augment_crop").value > 0
    # Issue 21: trials see all of Training for equal slices of the budget (no epoch-based pruner between slices).
    assert space.train_limit is None and space.trial_budget is not None and space.pruner["name"] == "none"
    assert set(space.get("block").choices) == {"plain", "residual", "separable"}
    gpu = load_space(resolve_space_path("gpu-full"))
    assert gpu.refit is not None
