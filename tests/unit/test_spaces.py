"""Search spaces: YAML validation, the Optuna and keras-tuner adapters, identity, presets."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from fer_experiments.errors import ConfigError
from fer_experiments.models.presets import PRESETS
from fer_experiments.params import split_params
from fer_experiments.spaces import (
    ParamSpec,
    SearchSpace,
    active_values,
    epochs_for,
    load_space,
    preset_values_for_space,
    resolve_space_path,
    suggest,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("seed-family", "cpu-quick", "gpu-full", "cpu-hour", "edge")

optuna.logging.set_verbosity(optuna.logging.WARNING)

# A small valid space; bad cases are built by changing one thing in it.
BASE: dict[str, Any] = {
    "name": "t",
    "max_epochs": 60,
    "params": {
        "conv_blocks": {"type": "int", "low": 1, "high": 3},
        "filters": {"type": "categorical", "choices": [32, 64]},
        "batchnorm": {"type": "categorical", "choices": ["none", "after_activation"]},
        "conv_dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "dense_layers": {"type": "int", "low": 0, "high": 2},
        "dense_units": {"type": "int", "low": 32, "high": 128, "step": 32, "when": {"dense_layers": [1, 2]}},
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "epochs": {"type": "int", "low": 10, "high": 60},
        "head": "flatten",
    },
}


def write(tmp_path: Path, data: Any, name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def changed(**changes: Any) -> dict[str, Any]:
    """BASE with top-level keys replaced (None deletes) and ``params__<name>`` specs replaced (None deletes)."""
    d = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        target, key = (d["params"], key[len("params__"):]) if key.startswith("params__") else (d, key)
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return d


def sample_with(space: SearchSpace, sampler: optuna.samplers.BaseSampler, n: int) -> list[dict[str, Any]]:
    study = optuna.create_study(direction="maximize", sampler=sampler)
    out: list[dict[str, Any]] = []
    for i in range(n):
        trial = study.ask()
        values = suggest(space, trial)
        out.append(values)
        study.tell(trial, float(i % 7))
    return out


# ---------------------------------------------------------------------------------------------------
# Shipped spaces
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_loads_and_every_sample_builds_params(name: str) -> None:
    space = load_space(ROOT / "search_spaces" / f"{name}.yaml")
    assert space.name == name
    for values in sample_with(space, optuna.samplers.RandomSampler(seed=0), 30):
        split_params(values)  # raises on any invalid value
        assert epochs_for(space, values) <= space.max_epochs
        assert set(values) <= set(space.names)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_works_with_tpe(name: str) -> None:
    space = load_space(ROOT / "search_spaces" / f"{name}.yaml")
    for values in sample_with(space, optuna.samplers.TPESampler(seed=1, n_startup_trials=3), 8):
        split_params(values)


def test_shipped_spaces_match_the_design() -> None:
    seed = load_space(ROOT / "search_spaces" / "seed-family.yaml")
    assert (seed.max_epochs, seed.objective, seed.train_limit) == (60, "val_accuracy", None)
    assert seed.sampler == {"name": "tpe", "seed": 42, "options": {}}
    assert seed.pruner == {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 5}
    assert seed.get("dense_units").when == (("dense_layers", (1, 2, 3, 4)),)
    assert seed.get("batchnorm").choices == ("none", "before_activation", "after_activation", "dense_only")

    quick = load_space(ROOT / "search_spaces" / "cpu-quick.yaml")
    assert (quick.max_epochs, quick.train_limit) == (5, 6000)
    assert quick.get("filters").choices == (8, 16, 24)
    assert quick.pruner == {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 1}

    full = load_space(ROOT / "search_spaces" / "gpu-full.yaml")
    assert full.max_epochs == 150 and full.get("epochs").high == 150
    assert full.pruner == {"name": "hyperband", "min_resource": 5, "reduction_factor": 3}
    assert full.get("filter_growth").choices == (1.5, 2.0)
    assert full.get("early_stopping_patience").value == 15 and full.get("augment_flip").value is True


def test_resolve_space_path_finds_shipped_spaces_by_name(tmp_path: Path) -> None:
    # Package data (found from any folder); the checkout's search_spaces/ link shows the same files.
    shipped = resolve_space_path("cpu-quick")
    assert shipped == ROOT / "fer_experiments" / "search_spaces" / "cpu-quick.yaml"
    assert shipped.resolve() == (ROOT / "search_spaces" / "cpu-quick.yaml").resolve()
    assert resolve_space_path("cpu-quick.yaml") == shipped
    own = write(tmp_path, BASE)
    assert resolve_space_path(own) == own
    with pytest.raises(ConfigError, match="no shipped space of that name"):
        resolve_space_path("no-such-space")


def test_importing_spaces_imports_neither_optuna_nor_keras_tuner() -> None:
    code = ("import sys, fer_experiments.spaces; "
            "bad = [m for m in ('optuna', 'keras_tuner', 'tensorflow', 'mlflow') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ---------------------------------------------------------------------------------------------------
# Validation: every error names the file and the key path
# ---------------------------------------------------------------------------------------------------

BAD_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown top-level key", changed(maxepochs=3), "maxepochs: unknown key"),
    ("missing name", changed(name=None), "name: required key is missing"),
    ("bad name", changed(name="has space"), "name: must be a string of 1-100 letters"),
    ("missing max_epochs", changed(max_epochs=None), "max_epochs: required key is missing"),
    ("max_epochs < 1", changed(max_epochs=0), "max_epochs: must be an int 1-1000, got 0"),
    ("max_epochs bool", changed(max_epochs=True), "max_epochs: must be an int 1-1000, got True"),
    # More than a training may run: refused at load (it used to fail every trial instead).
    ("max_epochs > 1000", changed(max_epochs=1001), "max_epochs: must be an int 1-1000, got 1001"),
    ("refit epochs > 1000", changed(refit={"epochs": 5000}), "refit.epochs: must be an int 1-1000 or null"),
    ("train_limit 0", changed(train_limit=0), "train_limit: must be an int >= 1 or null"),
    ("objective", changed(objective="val_loss"), "objective: unknown objective 'val_loss'"),
    ("params empty", changed(params={}), "params: must be a non-empty mapping"),
    ("unknown param", changed(params__conv_blockz={"type": "int", "low": 1, "high": 2}),
     "params.conv_blockz: unknown parameter 'conv_blockz'; did you mean 'conv_blocks'?"),
    ("unknown spec key", changed(params__conv_blocks={"type": "int", "low": 1, "high": 3, "stepp": 1}),
     "params.conv_blocks.stepp: unknown key for type int"),
    ("choices on int", changed(params__conv_blocks={"type": "int", "low": 1, "high": 3, "choices": [1]}),
     "params.conv_blocks.choices: unknown key for type int"),
    ("missing type", changed(params__conv_blocks={"low": 1, "high": 3}), "params.conv_blocks.type: required key"),
    ("unknown type", changed(params__conv_blocks={"type": "integer", "low": 1, "high": 3}),
     "params.conv_blocks.type: unknown type 'integer'"),
    ("int type on float field", changed(params__conv_dropout={"type": "int", "low": 0, "high": 1}),
     "params.conv_dropout.type: conv_dropout is a float parameter"),
    ("float type on str field", changed(params__batchnorm={"type": "float", "low": 0, "high": 1}),
     "params.batchnorm.type: batchnorm is a str parameter"),
    ("missing low", changed(params__conv_blocks={"type": "int", "high": 3}), "params.conv_blocks.low: required key"),
    ("float bound on int", changed(params__conv_blocks={"type": "int", "low": 1.5, "high": 3}),
     "params.conv_blocks.low: must be an int, got 1.5"),
    ("low above high", changed(params__conv_blocks={"type": "int", "low": 3, "high": 1}),
     "params.conv_blocks.low: low (3) is above high (1)"),
    ("float low above high", changed(params__conv_dropout={"type": "float", "low": 0.4, "high": 0.1}),
     "params.conv_dropout.low: low (0.4) is above high (0.1)"),
    ("log low <= 0", changed(params__learning_rate={"type": "float", "low": 0.0, "high": 0.1, "log": True}),
     "params.learning_rate.low: log: true needs low > 0"),
    ("step with log", changed(params__learning_rate={"type": "float", "low": 1e-4, "high": 1e-2, "log": True,
                                                     "step": 1e-4}),
     "params.learning_rate.step: step cannot be combined with log"),
    ("log not bool", changed(params__learning_rate={"type": "float", "low": 1e-4, "high": 1e-2, "log": "yes"}),
     "params.learning_rate.log: must be true or false"),
    ("step <= 0", changed(params__dense_layers={"type": "int", "low": 0, "high": 2, "step": 0}),
     "params.dense_layers.step: must be > 0"),
    ("step not dividing", changed(params__dense_units={"type": "int", "low": 32, "high": 100, "step": 32}),
     "params.dense_units.step: high - low (68) is not a multiple of step (32)"),
    ("empty choices", changed(params__filters={"type": "categorical", "choices": []}),
     "params.filters.choices: must be a non-empty list"),
    ("duplicate choice", changed(params__filters={"type": "categorical", "choices": [32, 32]}),
     "params.filters.choices[1]: duplicate choice 32"),
    ("bare list", changed(params__filters=[32, 64]), "params.filters: a list is not a parameter spec"),
    ("enum choice", changed(params__batchnorm={"type": "categorical", "choices": ["none", "after_actvation"]}),
     "params.batchnorm.choices[1]: 'after_actvation' is not a valid batchnorm (allowed: none, before_activation, "
     "after_activation, dense_only); did you mean 'after_activation'?"),
    ("enum fixed bare", changed(params__head="flat"), "params.head: 'flat' is not a valid head"),
    ("enum fixed explicit", changed(params__optimizer={"type": "fixed", "value": "adamm"}),
     "params.optimizer.value: 'adamm' is not a valid optimizer"),
    ("fixed missing value", changed(params__head={"type": "fixed"}), "params.head.value: required key is missing"),
    ("choice of wrong type", changed(params__filters={"type": "categorical", "choices": [32, "64"]}),
     "params.filters.choices[1]: filters takes an int, got '64'"),
    ("yaml bool for a string", changed(params__class_weight={"type": "categorical", "choices": [False, "balanced"]}),
     "params.class_weight.choices[0]: class_weight takes a string, got False (quote it"),
    ("int range end invalid", changed(params__conv_blocks={"type": "int", "low": 1, "high": 6}),
     "params.conv_blocks.high: conv_blocks must be 1-5, got 6"),
    ("int range inner value invalid", changed(params__kernel_size={"type": "int", "low": 3, "high": 5}),
     "params.kernel_size: value 4 of the range is invalid: kernel_size must be 1, 3, 5 or 7"),
    ("float range end invalid", changed(params__conv_dropout={"type": "float", "low": 0.0, "high": 1.0}),
     "params.conv_dropout.high: conv_dropout must be in [0, 1)"),
    ("fixed value invalid", changed(params__augment_zoom=0.9), "params.augment_zoom: augment_zoom must be in [0, 0.5]"),
    ("choice invalid", changed(params__filters={"type": "categorical", "choices": [0, 32]}),
     "params.filters.choices[0]: filters must be 1-1024"),
    ("condition on unknown param",
     changed(params__dense_units={"type": "int", "low": 32, "high": 128, "when": {"dense_layerz": [1, 2]}}),
     "params.dense_units.when: condition on unknown parameter 'dense_layerz'"),
    ("condition on undeclared field",
     changed(params__dense_dropout={"type": "float", "low": 0.0, "high": 0.5, "when": {"activation": "relu"}}),
     "params.dense_dropout.when: condition on unknown parameter 'activation'"),
    ("condition value never taken",
     changed(params__dense_units={"type": "int", "low": 32, "high": 128, "when": {"dense_layers": [1, 5]}}),
     "params.dense_units.when.dense_layers[1]: 'dense_layers' can never take 5 (int 0..2)"),
    ("condition value never taken (choice)",
     changed(params__dense_units={"type": "int", "low": 32, "high": 128, "when": {"batchnorm": "dense_only"}}),
     "params.dense_units.when.batchnorm: 'batchnorm' can never take 'dense_only' (one of ['none', 'after_activation'])"),
    ("condition value never taken (fixed)",
     changed(params__dense_units={"type": "int", "low": 32, "high": 128, "when": {"head": "global_avg"}}),
     "params.dense_units.when.head: 'head' can never take 'global_avg' (fixed 'flatten')"),
    ("condition value of wrong type",
     changed(params__dense_units={"type": "int", "low": 32, "high": 128, "when": {"dense_layers": "one"}}),
     "params.dense_units.when.dense_layers: dense_layers takes an int, got 'one'"),
    ("condition on float",
     changed(params__dense_units={"type": "int", "low": 32, "high": 128, "when": {"conv_dropout": 0.5}}),
     "params.dense_units.when.conv_dropout: cannot condition on float parameter 'conv_dropout'"),
    ("empty condition", changed(params__dense_units={"type": "int", "low": 32, "high": 128, "when": {}}),
     "params.dense_units.when: must be a non-empty mapping"),
    ("condition cycle",
     changed(params__dense_layers={"type": "int", "low": 0, "high": 2, "when": {"dense_units": [32, 64]}}),
     "params.dense_layers.when: conditions form a cycle: dense_layers -> dense_units -> dense_layers"),
    ("self condition",
     changed(params__filters={"type": "categorical", "choices": [32, 64], "when": {"filters": 32}}),
     "params.filters.when: conditions form a cycle: filters -> filters"),
    ("sampler name", changed(sampler={"name": "cmaes"}), "sampler.name: unknown sampler 'cmaes'"),
    ("sampler key", changed(sampler={"name": "tpe", "n_startup_trials": 5}),
     "sampler.n_startup_trials: unknown key (allowed: name, seed, options; sampler arguments go under options:)"),
    ("sampler option", changed(sampler={"name": "tpe", "options": {"n_startup_trial": 5}}),
     "sampler.options.n_startup_trial: unknown option for sampler 'tpe'"),
    ("sampler seed in options", changed(sampler={"name": "random", "options": {"seed": 1}}),
     "sampler.options.seed: set the seed as sampler.seed"),
    ("sampler seed", changed(sampler={"name": "tpe", "seed": "42"}), "sampler.seed: must be an int"),
    ("sampler options not a mapping", changed(sampler={"name": "tpe", "options": [1]}),
     "sampler.options: must be a mapping"),
    ("pruner name", changed(pruner={"name": "asha"}), "pruner.name: unknown pruner 'asha'"),
    ("pruner option of another pruner", changed(pruner={"name": "median", "min_resource": 5}),
     "pruner.min_resource: unknown option for pruner 'median' (allowed: n_startup_trials, n_warmup_steps, "
     "interval_steps)"),
    ("pruner none with options", changed(pruner={"name": "none", "n_warmup_steps": 1}),
     "pruner.n_warmup_steps: unknown option for pruner 'none' (allowed: no options)"),
    ("pruner option value", changed(pruner={"name": "hyperband", "reduction_factor": 1}),
     "pruner.reduction_factor: must be an int >= 2, got 1"),
    ("pruner not a mapping", changed(pruner=[1]), "pruner: must be a mapping"),
    ("epochs above max_epochs", changed(max_epochs=30), "params.epochs.high: 60 exceeds max_epochs (30)"),
    ("epochs choice above max_epochs", changed(params__epochs={"type": "categorical", "choices": [10, 90]}),
     "params.epochs.choices: 90 exceeds max_epochs (60)"),
    ("epochs fixed above max_epochs", changed(params__epochs=61), "params.epochs.value: 61 exceeds max_epochs (60)"),
]


@pytest.mark.parametrize("data, expected", [(d, e) for _, d, e in BAD_CASES], ids=[i for i, _, _ in BAD_CASES])
def test_bad_space_names_file_and_key(tmp_path: Path, data: dict[str, Any], expected: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_space(path)
    assert str(info.value).startswith(f"{path}: ")
    assert f"{path}: {expected}" in str(info.value)
    assert info.value.exit_code == 2


def test_base_space_is_valid(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, BASE))
    assert space.names == ("batchnorm", "conv_blocks", "conv_dropout", "dense_layers", "dense_units", "epochs",
                           "filters", "head", "learning_rate")


def test_from_dict_names_its_source() -> None:
    with pytest.raises(ConfigError, match=r"^study 'abc': params.conv_blocks.low: low \(3\) is above high"):
        SearchSpace.from_dict(changed(params__conv_blocks={"type": "int", "low": 3, "high": 1}), source="study 'abc'")
    with pytest.raises(ConfigError, match=r"^<dict>: top level must be a mapping, got a list"):
        SearchSpace.from_dict([1, 2])


def test_file_not_found(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=f"^{path}: file not found$"):
        load_space(path)


@pytest.mark.parametrize("text, expected", [
    ("- 1\n- 2\n", "top level must be a mapping, got a list"),
    ("just a string\n", "top level must be a mapping, got a string"),
    ("", "top level must be a mapping, got an empty document"),
])
def test_top_level_not_a_mapping(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=f"^{path}: {expected}"):
        load_space(path)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: t\nmax_epochs: 3\nparams:\n  conv_blocks: {type: int, low: 1, high: 3\n  head: x\n")
    with pytest.raises(ConfigError) as info:
        load_space(path)
    message = str(info.value)
    # The unclosed brace opens on line 4 (where the fix goes); the parser only gives up on line 5.
    assert message.startswith(f"{path}:4:") and "YAML syntax error" in message and "line 5" in message


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "name: t\nmax_epochs: 3\nparams:\n  head: flatten\n  head: global_avg\n")
    with pytest.raises(ConfigError, match=f"^{path}:5:3: YAML syntax error: duplicate key 'head'"):
        load_space(path)


def test_null_fixed_value(tmp_path: Path) -> None:
    path = write(tmp_path, "name: t\nmax_epochs: 3\nparams:\n  head: null\n")
    with pytest.raises(ConfigError, match=f"^{path}: params.head: must be a string, got null$"):
        load_space(path)


def test_yaml_scientific_notation_without_dot_is_a_number(tmp_path: Path) -> None:
    path = write(tmp_path, "name: t\nmax_epochs: 3\nparams:\n  learning_rate: {type: float, low: 1e-4, high: 1e-2, log: true}\n")
    assert load_space(path).get("learning_rate").low == 1e-4


def test_shorthands_and_defaults(tmp_path: Path) -> None:
    text = """
    name: t
    max_epochs: 3
    sampler: random
    pruner: none
    params:
      head: flatten
      filter_growth: {type: categorical, choices: [1.5, 2]}
      augment_flip: {type: fixed, value: true}
    """
    space = load_space(write(tmp_path, textwrap.dedent(text)))
    assert space.sampler == {"name": "random", "seed": 42, "options": {}}
    assert space.pruner == {"name": "none"}
    assert space.objective == "val_accuracy" and space.train_limit is None and space.description == ""
    assert space.get("head") == ParamSpec(name="head", kind="fixed", value="flatten")
    assert space.get("filter_growth").choices == (1.5, 2.0)
    assert all(type(c) is float for c in space.get("filter_growth").choices)
    defaults = load_space(write(tmp_path, {"name": "t", "max_epochs": 1, "params": {"head": "flatten"}}, "d.yaml"))
    assert defaults.sampler == {"name": "tpe", "seed": 42, "options": {}} and defaults.pruner == {"name": "median"}


def test_sampler_options_are_checked_against_optuna(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, changed(sampler={"name": "tpe", "seed": None,
                                                        "options": {"n_startup_trials": 5, "multivariate": True}})))
    assert space.sampler == {"name": "tpe", "seed": None, "options": {"n_startup_trials": 5, "multivariate": True}}
    sampler = optuna.samplers.TPESampler(seed=space.sampler["seed"], **space.sampler["options"])
    assert isinstance(sampler, optuna.samplers.TPESampler)


# ---------------------------------------------------------------------------------------------------
# The Optuna adapter
# ---------------------------------------------------------------------------------------------------


def test_suggest_with_fixed_trial_gives_exact_values() -> None:
    space = load_space(ROOT / "search_spaces" / "cpu-quick.yaml")
    given = {"conv_blocks": 3, "convs_per_block": 2, "filters": 16, "conv_dropout": 0.25,
             "batchnorm": "after_activation", "head": "global_avg", "dense_layers": 1, "dense_units": 64,
             "batch_size": 128, "learning_rate": 1e-3}
    values = suggest(space, optuna.trial.FixedTrial(given))
    assert values == {**given, "filter_growth": 2.0, "kernel_size": 3}
    assert type(values["filter_growth"]) is float and type(values["kernel_size"]) is int

    # dense_units is inactive when dense_layers is 0: not suggested even though the trial has a value.
    values = suggest(space, optuna.trial.FixedTrial({**given, "dense_layers": 0}))
    assert "dense_units" not in values and values["dense_layers"] == 0


class RecordingTrial:
    """A trial double that records every call and answers the low end / first choice."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        self.calls.append(("int", name, low, high, step, log))
        return high

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        self.calls.append(("float", name, low, high, step, log))
        return low

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        self.calls.append(("categorical", name, tuple(choices)))
        return choices[-1]


def test_suggest_calls_the_right_methods_in_dependency_order(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, BASE))
    trial = RecordingTrial()
    values = suggest(space, trial)
    assert trial.calls == [
        ("categorical", "batchnorm", ("none", "after_activation")),
        ("int", "conv_blocks", 1, 3, 1, False),
        ("float", "conv_dropout", 0.0, 0.5, None, False),
        ("int", "dense_layers", 0, 2, 1, False),
        ("int", "dense_units", 32, 128, 32, False),
        ("int", "epochs", 10, 60, 1, False),
        ("categorical", "filters", (32, 64)),
        ("float", "learning_rate", 1e-4, 1e-2, None, True),
    ]
    assert values["head"] == "flatten" and values["dense_units"] == 128


CONDITIONAL = """
name: conditional
max_epochs: 5
params:
  # children first: declaration order does not matter
  dense_dropout: {type: float, low: 0.0, high: 0.5, when: {dense_units: [128, 256], head: flatten}}
  dense_units: {type: categorical, choices: [64, 128, 256], when: {dense_layers: [1, 2]}}
  dense_layers: {type: int, low: 0, high: 2}
  head: {type: categorical, choices: [flatten, global_avg]}
  l2: {type: float, low: 1.0e-6, high: 1.0e-3, log: true, when: {optimizer: sgd}}
  optimizer: {type: categorical, choices: [adam, sgd]}
  label_smoothing: {type: fixed, value: 0.1, when: {head: global_avg}}
"""


@pytest.fixture()
def conditional(tmp_path: Path) -> SearchSpace:
    return load_space(write(tmp_path, CONDITIONAL, "conditional.yaml"))


ALL_GIVEN = {"dense_layers": 2, "dense_units": 256, "dense_dropout": 0.3, "head": "flatten",
             "optimizer": "sgd", "l2": 1e-4}


@pytest.mark.parametrize("given, present, absent", [
    ({}, {"dense_layers", "dense_units", "dense_dropout", "head", "optimizer", "l2"}, {"label_smoothing"}),
    ({"dense_layers": 0}, {"dense_layers", "head"}, {"dense_units", "dense_dropout"}),        # chain: grandchild too
    ({"dense_units": 64}, {"dense_units"}, {"dense_dropout"}),                                  # one parent fails
    ({"head": "global_avg"}, {"dense_units", "label_smoothing"}, {"dense_dropout"}),          # the other fails
    ({"optimizer": "adam"}, {"optimizer"}, {"l2"}),
])
def test_conditions(conditional: SearchSpace, given: dict[str, Any], present: set[str], absent: set[str]) -> None:
    values = suggest(conditional, optuna.trial.FixedTrial({**ALL_GIVEN, **given}))
    assert present <= set(values)
    assert not absent & set(values)
    assert values == active_values(conditional, values)


def test_conditions_are_parsed_and_ordered(conditional: SearchSpace) -> None:
    assert conditional.get("dense_dropout").when == (("dense_units", (128, 256)), ("head", ("flatten",)))
    order = conditional.names
    assert order.index("dense_layers") < order.index("dense_units") < order.index("dense_dropout")
    assert order.index("head") < order.index("dense_dropout") and order.index("optimizer") < order.index("l2")


def test_conditional_space_samples_only_active_params(conditional: SearchSpace) -> None:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(40):
        trial = study.ask()
        values = suggest(conditional, trial)
        assert set(trial.params) == set(values) - {"label_smoothing"}  # fixed values are not suggested
        if values["dense_layers"] == 0:
            assert "dense_units" not in values and "dense_dropout" not in values
        study.tell(trial, 0.5)


def test_epochs_for() -> None:
    seed = load_space(ROOT / "search_spaces" / "seed-family.yaml")
    assert epochs_for(seed, {"epochs": 30}) == 30
    assert epochs_for(seed, {}) == 60
    assert epochs_for(seed, {"epochs": 100}) == 60
    assert epochs_for(load_space(ROOT / "search_spaces" / "cpu-quick.yaml"), {"filters": 8}) == 5


# ---------------------------------------------------------------------------------------------------
# Identity: content hash and the dict form
# ---------------------------------------------------------------------------------------------------

COMPACT = """
name: h
max_epochs: 10
sampler: {name: tpe}
params:
  dense_layers: {type: int, low: 0, high: 2}
  dense_units: {type: int, low: 32, high: 128, step: 32, when: {dense_layers: [2, 1]}}
  learning_rate: {type: float, low: 1e-4, high: 1e-2, log: true}
  head: flatten
"""

REFORMATTED = """
# same space, different spelling
params:
  head:
    type: fixed
    value: flatten          # explicit fixed form
  learning_rate:
    low: 0.0001
    high: 0.01
    log: true
    type: float
  dense_units:
    when:
      dense_layers: [1, 2]
    step: 32
    type: int
    high: 128
    low: 32
    log: false
  dense_layers: {type: int, low: 0, high: 2, step: 1}

sampler:
  seed: 42
  name: tpe
  options: {}
max_epochs: 10
description: a description is not content
name: h
"""


def test_content_hash_ignores_formatting_and_spelling(tmp_path: Path) -> None:
    a = load_space(write(tmp_path, COMPACT, "a.yaml"))
    b = load_space(write(tmp_path, REFORMATTED, "b.yaml"))
    assert a.content_hash() == b.content_hash()
    assert len(a.content_hash()) == 64
    assert a.source != b.source and a.description != b.description


@pytest.mark.parametrize("old, new", [
    ("high: 128", "high: 160"),
    ("low: 1e-4", "low: 2e-4"),
    ("[2, 1]", "[2]"),
    ("max_epochs: 10", "max_epochs: 11"),
    ("{name: tpe}", "{name: tpe, seed: 7}"),
    ("name: h", "name: h2"),
    ("head: flatten", "head: global_avg"),
])
def test_content_hash_changes_with_content(tmp_path: Path, old: str, new: str) -> None:
    base = load_space(write(tmp_path, COMPACT, "a.yaml")).content_hash()
    assert old in COMPACT
    assert load_space(write(tmp_path, COMPACT.replace(old, new), "b.yaml")).content_hash() != base


def test_choice_order_is_content(tmp_path: Path) -> None:
    a = load_space(write(tmp_path, changed(params__filters={"type": "categorical", "choices": [32, 64]}), "a.yaml"))
    b = load_space(write(tmp_path, changed(params__filters={"type": "categorical", "choices": [64, 32]}), "b.yaml"))
    assert a.content_hash() != b.content_hash()


@pytest.mark.parametrize("name", SHIPPED)
def test_dict_round_trip(name: str) -> None:
    space = load_space(ROOT / "search_spaces" / f"{name}.yaml")
    stored = json.loads(json.dumps(space.to_dict()))  # what a study stores
    rebuilt = SearchSpace.from_dict(stored, source="study")
    assert rebuilt == space
    assert rebuilt.content_hash() == space.content_hash()
    assert rebuilt.to_dict() == space.to_dict()
    assert rebuilt.source == "study" and hash(rebuilt) == hash(space)


def test_from_dict_validates_and_does_not_mutate_its_input() -> None:
    d = changed()
    before = json.dumps(d, sort_keys=True)
    SearchSpace.from_dict(d)
    assert json.dumps(d, sort_keys=True) == before
    bad = changed(params__conv_blocks={"type": "int", "low": 1, "high": 9})
    with pytest.raises(ConfigError, match="^<dict>: params.conv_blocks.high"):
        SearchSpace.from_dict(bad)


# ---------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(p for p in PRESETS if p.startswith("seed-")))
def test_seed_presets_fit_the_seed_family(preset: str) -> None:
    space = load_space(ROOT / "search_spaces" / "seed-family.yaml")
    values = PRESETS[preset].values()
    enqueued = preset_values_for_space(space, values)
    searched = {p.name for p in space.params if p.searched}
    assert set(enqueued) == searched  # every searched parameter is given by the preset and active
    assert "head" not in enqueued and "filter_growth" not in enqueued  # fixed by the space
    assert "seed" not in enqueued and "activation" not in enqueued  # not in the space

    # Enqueued into a study, the first trial reproduces the preset on every searched parameter.
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial(enqueued)
    sampled = suggest(space, study.ask())
    assert {k: sampled[k] for k in enqueued} == enqueued


def test_preset_outside_the_space_is_rejected_naming_the_param() -> None:
    full = load_space(ROOT / "search_spaces" / "gpu-full.yaml")
    with pytest.raises(ConfigError, match=r"preset value conv_blocks=1 is outside space 'gpu-full' .*int 3..5"):
        preset_values_for_space(full, PRESETS["seed-base"].values())


@pytest.mark.parametrize("values, message", [
    ({"dense_units": 100}, "dense_units=100"),             # off the step grid
    ({"dense_units": 576}, "dense_units=576"),             # above high
    ({"filters": 48}, "filters=48"),                         # not a choice
    ({"conv_dropout": 0.6}, "conv_dropout=0.6"),
    ({"batchnorm": "dense_only"}, "batchnorm='dense_only'"),
    ({"conv_blocks": 2.0}, "conv_blocks=2.0"),             # wrong type for an int parameter
])
def test_preset_values_rejected(tmp_path: Path, values: dict[str, Any], message: str) -> None:
    space = load_space(write(tmp_path, BASE))
    with pytest.raises(ConfigError, match=message):
        preset_values_for_space(space, {"dense_layers": 1, **values})


def test_preset_values_conditions(conditional: SearchSpace) -> None:
    # dense_layers 0: dense_units and its child dense_dropout are dropped.
    assert preset_values_for_space(conditional, {"dense_layers": 0, "dense_units": 64, "dense_dropout": 0.1}) == \
        {"dense_layers": 0}
    # Both parents known and matching: kept.
    assert preset_values_for_space(conditional, {"dense_layers": 1, "dense_units": 128, "dense_dropout": 0.1,
                                                 "head": "flatten"}) == \
        {"dense_layers": 1, "dense_units": 128, "dense_dropout": 0.1, "head": "flatten"}
    # head not given: undecided, kept (Optuna uses it only if dense_dropout is suggested).
    assert preset_values_for_space(conditional, {"dense_layers": 1, "dense_units": 128, "dense_dropout": 0.1}) == \
        {"dense_layers": 1, "dense_units": 128, "dense_dropout": 0.1}
    # An inactive value is dropped before its range is checked.
    assert preset_values_for_space(conditional, {"optimizer": "adam", "l2": 5.0}) == {"optimizer": "adam"}
    assert preset_values_for_space(conditional, {"optimizer": "sgd", "l2": 0.001})["l2"] == 0.001


def test_preset_values_fixed_parent(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, changed(
        params__dense_dropout={"type": "float", "low": 0.0, "high": 0.5, "when": {"head": "flatten"}},
        params__l2={"type": "float", "low": 0.0, "high": 0.1, "when": {"batchnorm": "none"}})))
    assert preset_values_for_space(space, {"dense_dropout": 0.2, "l2": 0, "batchnorm": "after_activation"}) == \
        {"dense_dropout": 0.2, "batchnorm": "after_activation"}
    # A float parameter given as an int is the same value.
    kept = preset_values_for_space(space, {"l2": 0, "batchnorm": "none"})
    assert kept == {"l2": 0.0, "batchnorm": "none"} and type(kept["l2"]) is float


# ---------------------------------------------------------------------------------------------------
# The keras-tuner adapter
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kt() -> Any:
    return pytest.importorskip("keras_tuner")


def _by_name(hp: Any) -> dict[str, Any]:
    return {h.name: h for h in hp.space}


def _conditions(h: Any) -> list[tuple[str, list[Any]]]:
    return [(c.name, list(c.values)) for c in h.conditions]


def test_kt_declares_types_ranges_and_scopes(kt: Any) -> None:
    from keras_tuner.engine import hyperparameters as kth
    from fer_experiments.spaces import define_kt

    space = load_space(ROOT / "search_spaces" / "cpu-quick.yaml")
    hp = kt.HyperParameters()
    values = define_kt(space, hp)
    hps = _by_name(hp)
    assert set(hps) == set(space.names)

    assert isinstance(hps["conv_blocks"], kth.Int)
    assert (hps["conv_blocks"].min_value, hps["conv_blocks"].max_value, hps["conv_blocks"].step,
            hps["conv_blocks"].sampling) == (2, 3, 1, "linear")
    lr = hps["learning_rate"]
    assert isinstance(lr, kth.Float) and (lr.min_value, lr.max_value, lr.sampling) == (5e-4, 3e-3, "log")
    assert isinstance(hps["filters"], kth.Choice) and list(hps["filters"].values) == [8, 16, 24]
    assert isinstance(hps["batchnorm"], kth.Choice) and list(hps["batchnorm"].values) == ["none", "after_activation", "before_activation"]
    assert isinstance(hps["filter_growth"], kth.Fixed) and hps["filter_growth"].value == 2.0
    assert isinstance(hps["kernel_size"], kth.Fixed) and hps["kernel_size"].value == 3
    assert _conditions(hps["dense_units"]) == [("dense_layers", [1])]
    assert all(not hps[n].conditions for n in hps if n != "dense_units")

    # keras-tuner's defaults: the low end / first choice; dense_layers 0 leaves dense_units out.
    assert values["conv_blocks"] == 2 and values["filters"] == 8 and values["dense_layers"] == 0
    assert "dense_units" not in values and values["filter_growth"] == 2.0
    split_params(values)

    # Declaring again (a rebuild) adds nothing.
    assert define_kt(space, hp) == values and len(hp.space) == len(space.params)


def test_kt_active_values_follow_the_trial_values(kt: Any) -> None:
    from fer_experiments.spaces import define_kt

    space = load_space(ROOT / "search_spaces" / "cpu-quick.yaml")
    hp = kt.HyperParameters()
    hp.values.update({"dense_layers": 1, "dense_units": 64, "filters": 16})
    values = define_kt(space, hp)
    assert values["dense_layers"] == 1 and values["dense_units"] == 64 and values["filters"] == 16


def test_kt_multi_parent_and_chained_conditions(kt: Any, conditional: SearchSpace) -> None:
    from fer_experiments.spaces import build_hyperparameters, define_kt

    hp = build_hyperparameters(conditional)
    hps = _by_name(hp)
    assert _conditions(hps["dense_units"]) == [("dense_layers", [1, 2])]
    assert _conditions(hps["dense_dropout"]) == [("dense_units", [128, 256]), ("head", ["flatten"])]
    assert _conditions(hps["l2"]) == [("optimizer", ["sgd"])]
    assert hps["l2"].sampling == "log"

    # The same trial values give the same active parameters through both adapters.
    for given in ({}, {"dense_layers": 0}, {"dense_units": 64}, {"head": "global_avg"}, {"optimizer": "adam"}):
        trial_values = {**ALL_GIVEN, **given}
        expected = suggest(conditional, optuna.trial.FixedTrial(trial_values))
        hp = kt.HyperParameters()
        hp.values.update({k: v for k, v in expected.items() if k != "label_smoothing"})
        assert define_kt(conditional, hp) == expected, given
        for name in conditional.names:
            assert hp.is_active(name) == (name in expected), (given, name)


def test_kt_bool_choices_come_back_as_bools(kt: Any, tmp_path: Path) -> None:
    from fer_experiments.spaces import define_kt

    space = load_space(write(tmp_path, {"name": "b", "max_epochs": 2, "params": {
        "augment_flip": {"type": "categorical", "choices": [True, False]},
        "augment_zoom": {"type": "float", "low": 0.0, "high": 0.2, "when": {"augment_flip": True}}}}))
    for flip in (True, False):
        hp = kt.HyperParameters()
        hp.values["augment_flip"] = flip
        values = define_kt(space, hp)
        assert values["augment_flip"] is flip  # keras-tuner itself would answer 1 / 0
        assert ("augment_zoom" in values) is flip


@pytest.mark.parametrize("name", SHIPPED)
def test_kt_agrees_with_optuna_on_random_trials(kt: Any, name: str) -> None:
    from fer_experiments.spaces import define_kt

    space = load_space(ROOT / "search_spaces" / f"{name}.yaml")
    for expected in sample_with(space, optuna.samplers.RandomSampler(seed=5), 10):
        hp = kt.HyperParameters()
        hp.values.update(expected)
        assert define_kt(space, hp) == expected
