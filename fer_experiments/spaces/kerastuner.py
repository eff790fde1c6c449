"""The keras-tuner adapter: a SearchSpace -> ``hp.Int`` / ``hp.Float`` / ``hp.Choice`` / ``hp.Fixed``.

keras_tuner imports TensorFlow (~10 s), so it is imported inside the functions that need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fer_experiments.spaces.schema import ParamSpec, SearchSpace

if TYPE_CHECKING:  # pragma: no cover
    import keras_tuner


def define_kt(space: SearchSpace, hp: keras_tuner.HyperParameters) -> dict[str, Any]:
    """Declare ``space`` on ``hp`` (idempotent) and return the active values, as :func:`suggest` does.

    A parameter with one condition on an unconditional parent is declared inside
    ``hp.conditional_scope(parent, values)``. keras-tuner's scopes only accept a parent declared under the
    scopes already open, so a parameter with several conditions, or with a conditional parent, is declared
    with its conditions attached directly (through keras-tuner's public (de)serialisation) and merged in;
    the meaning is the same: every condition must hold, and an absent parent fails its condition.
    Call it outside any ``hp.name_scope``.
    """
    unconditional = {spec.name for spec in space.params if not spec.when}
    values: dict[str, Any] = {}
    for spec in space.params:
        if not spec.when:
            value = _declare(hp, spec)
        elif len(spec.when) == 1 and spec.when[0][0] in unconditional:
            parent, allowed = spec.when[0]
            with hp.conditional_scope(parent, list(allowed)):
                value = _declare(hp, spec)
        else:
            value = _declare_with_conditions(hp, spec)
        # hp returns None for an inactive parameter; deciding activity on our own values as well keeps the
        # result identical to the Optuna adapter's even if hp.values holds leftovers of inactive parameters.
        if spec.active(values) and value is not None:
            values[spec.name] = _as_declared(spec, value)
    return values


def build_hyperparameters(space: SearchSpace) -> keras_tuner.HyperParameters:
    """A fresh ``keras_tuner.HyperParameters`` with ``space`` declared (for a Tuner's ``hyperparameters=``)."""
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    define_kt(space, hp)
    return hp


def _as_declared(spec: ParamSpec, value: Any) -> Any:
    """The space's own choice equal to ``value``: keras-tuner stores bool choices as ints (True -> 1)."""
    if spec.kind == "categorical":
        return next((c for c in spec.choices if c == value), value)
    if spec.kind == "fixed" and value == spec.value:
        return spec.value
    return value


def _declare(hp: keras_tuner.HyperParameters, spec: ParamSpec) -> Any:
    if spec.kind == "int":
        # keras-tuner's log sampling takes no step (ours forbids step with log too).
        return hp.Int(spec.name, spec.low, spec.high, step=None if spec.log else spec.step,
                      sampling="log" if spec.log else "linear")
    if spec.kind == "float":
        return hp.Float(spec.name, spec.low, spec.high, step=spec.step, sampling="log" if spec.log else "linear")
    if spec.kind == "categorical":
        return hp.Choice(spec.name, list(spec.choices))
    return hp.Fixed(spec.name, spec.value)


def _declare_with_conditions(hp: keras_tuner.HyperParameters, spec: ParamSpec) -> Any:
    from keras_tuner.engine import hyperparameters as kth

    # Build the plain hyperparameter through a scratch container, then attach all conditions in its
    # serialised form: the public way to express "active iff every parent takes one of its values".
    scratch = type(hp)()
    _declare(scratch, spec)
    config = kth.serialize(scratch.space[0])
    config["config"]["conditions"] = [
        {"class_name": "Parent", "config": {"name": parent, "values": list(allowed)}}
        for parent, allowed in spec.when
    ]
    obj = kth.deserialize(config)
    hp.merge([obj], overwrite=False)  # no-op when already declared with these conditions (a rebuild)
    return hp.values.get(spec.name) if hp.is_active(obj) else None
