"""The one Optuna adapter: a SearchSpace -> ``trial.suggest_*`` calls.

The trial is duck-typed (anything with Optuna's ``suggest_int`` / ``suggest_float`` / ``suggest_categorical``:
``optuna.trial.Trial``, ``FixedTrial``, a test double), so this module never imports Optuna.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

from fer_experiments.errors import ConfigError
from fer_experiments.spaces.schema import ParamSpec, SearchSpace


class TrialLike(Protocol):
    """The part of ``optuna.trial.Trial`` that :func:`suggest` uses."""

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


def suggest(space: SearchSpace, trial: TrialLike) -> dict[str, Any]:
    """Sample the active parameters of ``space`` on ``trial``; return the flat ``{name: value}`` dict.

    Parameters are visited in dependency order, so a condition is decided on values already sampled;
    a parameter whose condition fails is neither suggested nor returned (the dataclass default applies).
    Fixed parameters are returned without a suggest call (they are not part of the sampler's space).
    """
    values: dict[str, Any] = {}
    for spec in space.params:
        if not spec.active(values):
            continue
        if spec.kind == "int":
            values[spec.name] = trial.suggest_int(spec.name, spec.low, spec.high, step=spec.step, log=spec.log)
        elif spec.kind == "float":
            values[spec.name] = trial.suggest_float(spec.name, spec.low, spec.high, step=spec.step, log=spec.log)
        elif spec.kind == "categorical":
            values[spec.name] = trial.suggest_categorical(spec.name, list(spec.choices))
        else:
            values[spec.name] = spec.value
    return values


def active_values(space: SearchSpace, values: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``values`` that ``space`` declares and whose conditions hold, in dependency order."""
    out: dict[str, Any] = {}
    for spec in space.params:
        if spec.name in values and spec.active(out):
            out[spec.name] = values[spec.name]
    return out


def epochs_for(space: SearchSpace, values: Mapping[str, Any]) -> int:
    """Epochs of one trial: its ``epochs`` value if the space has one, else ``max_epochs``; never above it."""
    return min(int(values.get("epochs", space.max_epochs)), space.max_epochs)


def preset_values_for_space(space: SearchSpace, preset_values: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a preset's values to enqueue in a study of ``space`` (``study.enqueue_trial``).

    Keeps only parameters the space searches (fixed ones are the space's to set; names it does not declare
    are dropped), raises ConfigError naming the parameter when a value lies outside its distribution, and
    drops a parameter whose condition is known to fail (its parent is fixed or given and takes another
    value, or its parent is itself dropped). A condition on a searched parent the preset does not give is
    undecided: the value is kept, and Optuna uses it only if the parameter is suggested.
    """
    known: dict[str, Any] = {}       # values decided so far (given or fixed) of active parameters
    inactive: set[str] = set()       # parameters known to be absent
    out: dict[str, Any] = {}
    for spec in space.params:
        state = _condition_state(spec, known, inactive)
        if state is False:
            inactive.add(spec.name)
            continue
        if spec.kind == "fixed":
            known[spec.name] = spec.value
            continue
        if spec.name not in preset_values:
            continue
        value = _coerce(spec, preset_values[spec.name])
        if not spec.contains(value):
            raise ConfigError(f"preset value {spec.name}={preset_values[spec.name]!r} is outside space "
                              f"{space.name!r} ({space.source}): {spec.describe()}")
        known[spec.name] = value
        out[spec.name] = value
    return out


def _condition_state(spec: ParamSpec, known: Mapping[str, Any], inactive: set[str]) -> bool | None:
    """True: every condition holds; False: one fails; None: undecided (a parent's value is unknown)."""
    undecided = False
    for parent, allowed in spec.when:
        if parent in inactive:
            return False
        if parent not in known:
            undecided = True
        elif known[parent] not in allowed:
            return False
    return None if undecided else True


def _coerce(spec: ParamSpec, value: Any) -> Any:
    # A float parameter given as an int (filter_growth=2) is the same value; anything else keeps its type
    # and is judged by ParamSpec.contains.
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    floats = spec.kind == "float" or any(isinstance(c, float) for c in (*spec.choices, spec.value))
    if numeric and floats and spec.kind != "int":
        return float(value)
    return value
