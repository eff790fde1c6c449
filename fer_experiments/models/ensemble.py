"""members + weights -> one keras.Model that averages the members' class probabilities. Pure: no I/O.

The ensemble is an ordinary functional model (the members are nested models, each output scaled by its weight with
``Rescaling`` and summed with ``Add``), so it saves, logs and reloads through ``mlflow.keras`` with no custom
objects, and ``evaluate``, ``predict``, ``serve`` and MLflow serving use it like any single network. Whatever a
member does inside itself (test-time augmentation, its own rescaling of raw 0-255 pixels) keeps working.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

from fer_experiments import IMAGE_SIZE
from fer_experiments.errors import ConfigError

if TYPE_CHECKING:
    import keras

#: Name of the i-th member inside an ensemble (members are renamed: every network of the family is "fer_cnn").
MEMBER_NAME = "member_{i}"


def normalise_weights(weights: Sequence[float]) -> list[float]:
    """Weights scaled to sum to 1; ConfigError for negative, non-finite or all-zero weights."""
    values = [float(w) for w in weights]
    if not values or any(not math.isfinite(w) or w < 0 for w in values) or sum(values) <= 0:
        raise ConfigError(f"ensemble weights must be finite, non-negative and not all zero; got {values}")
    total = sum(values)
    return [w / total for w in values]


def build_ensemble(members: Sequence["keras.Model"], weights: Sequence[float] | None = None, *,
                   name: str = "fer_ensemble") -> "keras.Model":
    """One model whose output is ``sum_i w_i * member_i(x)`` (weights normalised; equal weights when None).

    Members with weight 0 are left out. The members are renamed ``member_0``, ``member_1``, ... in place (nested
    models need distinct names); their weights are shared with the ensemble, not copied.
    """
    import keras
    from keras import layers

    if not members:
        raise ConfigError("an ensemble needs at least one member")
    if weights is None:
        weights = [1.0] * len(members)
    if len(weights) != len(members):
        raise ConfigError(f"{len(members)} member(s) but {len(weights)} weight(s)")
    kept = [(m, w) for m, w in zip(members, normalise_weights(weights)) if w > 0]
    inputs = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), dtype="float32", name="pixels")
    scaled = []
    for i, (member, weight) in enumerate(kept):
        member.name = MEMBER_NAME.format(i=i)
        # float32 like the members' softmax, so the average stays a well-formed distribution.
        scaled.append(layers.Rescaling(weight, dtype="float32", name=f"weight_{i}")(member(inputs)))
    outputs = scaled[0] if len(scaled) == 1 else layers.Add(dtype="float32", name="average")(scaled)
    return keras.Model(inputs, outputs, name=name)


def ensemble_members(model: "keras.Model") -> list[tuple["keras.Model", float]]:
    """(member, weight) pairs of a model made by ``build_ensemble`` (also after it was saved and loaded)."""
    import keras

    by_name = {layer.name: layer for layer in model.layers}
    out = []
    i = 0
    while MEMBER_NAME.format(i=i) in by_name:
        member = by_name[MEMBER_NAME.format(i=i)]
        assert isinstance(member, keras.Model)
        out.append((member, float(by_name[f"weight_{i}"].scale)))
        i += 1
    return out
