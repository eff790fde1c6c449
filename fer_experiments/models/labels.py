"""Short human labels of a network's key choices, for run names and tables: ``3x2c16 bn-after gap d128``."""

from __future__ import annotations

from typing import Any, Mapping

_BATCHNORM = {"before_activation": "bn-before", "after_activation": "bn-after", "dense_only": "bn-dense"}
_HEAD = {"global_avg": "gap", "flatten": "flat"}


def describe(values: Mapping[str, Any]) -> str:
    """``conv_blocks`` x ``convs_per_block`` c ``filters``, then batch norm, head and dense layers when set.

    Works on a trial's raw values (a space may fix or leave out any of them: missing ones are skipped), e.g.
    ``{"conv_blocks": 3, "convs_per_block": 2, "filters": 16, "batchnorm": "after_activation", "head":
    "global_avg"}`` -> ``3x2c16 bn-after gap``.
    """
    parts: list[str] = []
    if values.get("family") not in (None, "", "plain"):
        parts.append(str(values["family"]))
    blocks, convs, filters = values.get("conv_blocks"), values.get("convs_per_block"), values.get("filters")
    if blocks is not None or filters is not None:
        arch = f"{blocks if blocks is not None else '?'}x{convs if convs is not None else '?'}"
        parts.append(arch + (f"c{filters}" if filters is not None else ""))
    if values.get("batchnorm") in _BATCHNORM:
        parts.append(_BATCHNORM[values["batchnorm"]])
    if values.get("head") in _HEAD:
        parts.append(_HEAD[values["head"]])
    try:  # run params come back from MLflow as strings
        dense = int(values.get("dense_layers") or 0)
    except (TypeError, ValueError):
        dense = 0
    if dense:
        units = values.get("dense_units")
        parts.append(f"d{units if units is not None else '?'}" + (f"x{dense}" if dense > 1 else ""))
    return " ".join(parts)


def run_name(number: int, values: Mapping[str, Any], prefix: str = "trial") -> str:
    """``trial-3 3x2c16 bn-after gap``: the trial and what it trains, as the MLflow run list shows it."""
    label = describe(values)
    return f"{prefix}-{number}" + (f" {label}" if label else "")
