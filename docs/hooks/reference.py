"""MkDocs hook: the search-space reference page, generated at build time from the code that validates spaces.

Every table below is computed from ``fer_experiments.spaces.schema`` and ``fer_experiments.params``: the keys and
their defaults from the schema's constants and from a parsed minimal space, and each constraint from the message the
validator itself gives for an invalid value. Nothing is copied by hand, so the page cannot drift from the code.
(``mkdocs.yml``: ``hooks: [docs/hooks/reference.py]``; the page is ``reference/search-space.md``.)
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from typing import Any

PAGE = "reference/search-space.md"


def on_files(files: Any, config: Any) -> Any:
    """Add the generated page to the site's files (before the navigation is built, so ``nav`` can name it)."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=render()))
    return files


# ----------------------------------------------------------------------------------------------------- helpers
def _cell(value: Any) -> str:
    """A default as YAML writes it: ``null``, ``true``, ``'plain'``, ``{"name": "tpe"}``."""
    import json

    if value is None or isinstance(value, (bool, dict)):
        text = json.dumps(value)
    else:
        text = repr(value)
    return f"`{text}`".replace("|", "\\|")


def _constraint(message: str) -> str:
    """A validator's message for a bad value -> the rule it states (``must be an int 1-1000``)."""
    text = message.split(": ", 1)[1] if message.startswith("<dict>: ") else message
    text = re.sub(r"^[a-z_.]+: ", "", text)  # the key path
    allowed = re.search(r"\(allowed: ([^)]*)\)", text)
    if allowed:
        return "one of " + ", ".join(f"`{v}`" for v in allowed.group(1).split(", "))
    return re.sub(r"[,;]? got .*$", "", text).strip()


def _space_error(space: dict[str, Any]) -> str | None:
    from fer_experiments.errors import ConfigError
    from fer_experiments.spaces.schema import SearchSpace

    try:
        SearchSpace.from_dict(space)
    except ConfigError as exc:
        return str(exc)
    return None


MINIMAL: dict[str, Any] = {"name": "x", "max_epochs": 1, "params": {"filters": 16}}


def _field_docs(cls: type) -> dict[str, str]:
    """The ``#:`` comment lines above each field of a dataclass."""
    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = re.match(r"^(\w+): [^=]+=", stripped)
        if match and pending:
            docs[match.group(1)] = " ".join(pending)
        pending = [] if not stripped.startswith("#") else pending
    return docs


def _param_rule(cls: type, name: str, kind: type) -> str:
    """The dataclass's own rule for a parameter, from the error it raises for a value outside it."""
    from fer_experiments.errors import ConfigError
    from fer_experiments.params import CHOICES

    if name in CHOICES:
        return "one of " + ", ".join(f"`{v}`" for v in CHOICES[name])
    if kind is bool:
        return "`true` or `false`"
    rules = []
    for bad in ((-1, 10**9) if kind is int else (-1.0, 10.0**9)):
        try:
            dataclasses.replace(cls(), **{name: bad})
        except ConfigError as exc:
            rule = _constraint(str(exc)).removeprefix(f"{name} ")
            if rule not in rules:
                rules.append(rule)
    return "; ".join(rules) if rules else f"any {kind.__name__}"


# ------------------------------------------------------------------------------------------------------ render
def render() -> str:
    from fer_experiments.params import MAX_EPOCHS, ModelParams, TrainParams
    from fer_experiments.spaces.schema import (
        CONSTRAINT_KEYS,
        COST_OBJECTIVES,
        COST_PRUNERS,
        KINDS,
        PRUNERS,
        REFIT_KEYS,
        SAMPLERS,
        SPEC_KEYS,
        TOP_LEVEL_KEYS,
        SearchSpace,
    )

    defaults = SearchSpace.from_dict(MINIMAL).to_dict()
    out = [
        "# Search-space reference",
        "",
        "!!! note \"Generated\"",
        "    This page is generated when the site is built (`docs/hooks/reference.py`) from the code that validates",
        "    spaces: `fer_experiments/spaces/schema.py` and `fer_experiments/params.py`. Each rule is the validator's",
        "    own message for a value that breaks it. The [search-space guide](search-space-guide.md) explains the",
        "    format with examples.",
        "",
        "## Top-level keys",
        "",
        "| key | required | default | rule |",
        "|---|---|---|---|",
    ]
    for key in TOP_LEVEL_KEYS:
        without = {k: v for k, v in MINIMAL.items() if k != key}
        required = _space_error(without) is not None
        messages = [m for m in (_space_error(MINIMAL | {key: bad}) for bad in (-1, "?")) if m]
        rule = next((_constraint(m) for m in messages if "allowed" in m), None) or (
            _constraint(messages[0]) if messages else "any value")
        default = "" if required else _cell(defaults.get(key)) if key in defaults else "absent"
        out.append(f"| `{key}` | {'yes' if required else 'no'} | {default} | {rule} |")
    out += ["", "No other top-level key is accepted.", "", "## `sampler`", "",
            "A mapping `{name, seed, options}`, or a bare name. `options` are further keyword arguments of the "
            "sampler class (plain data, checked against its signature).", "",
            "| name | default | seed default |", "|---|---|---|"]
    for name in SAMPLERS:
        mark = "yes" if name == defaults["sampler"]["name"] else ""
        out.append(f"| `{name}` | {mark} | `{defaults['sampler']['seed']}` |")
    out += ["", "## `pruner`", "",
            f"A mapping `{{name, ...options}}`, or a bare name; default `{defaults['pruner']['name']}`. An option "
            "left out takes Optuna's default.", "", "| name | option | rule |", "|---|---|---|"]
    for name, options in PRUNERS.items():
        if not options:
            out.append(f"| `{name}` | (none) | |")
        for option, (_, rule) in options.items():
            out.append(f"| `{name}` | `{option}` | {rule} |")
    out += ["", "## `refit`", "", "Absent or `null`: no refit. A mapping with any of these keys:", "",
            "| key | default | rule |", "|---|---|---|"]
    for key, (_, rule, default) in REFIT_KEYS.items():
        out.append(f"| `{key}` | {_cell(default)} | {rule} |")
    out += ["", "## `constraints`", "",
            "Absent: no serving limits. A mapping naming at least one limit; a configuration past one is not trained "
            "(its trial ends PRUNED, tagged `fer.constraint_violation`).", "",
            "| key | default | rule |", "|---|---|---|"]
    for key, (_, rule, default) in CONSTRAINT_KEYS.items():
        out.append(f"| `{key}` | {_cell(default)} | {rule} |")
    out += ["", "## Two objectives", "",
            f"`objective: [val_accuracy, latency_ms]` makes a two-objective study: the PublicTest metric is "
            f"maximised and the serving-cost figure ({', '.join(f'`{c}`' for c in COST_OBJECTIVES)}) minimised, "
            "measured before the trial trains on the `constraints` runtime (default `exported`). Its pruner is one of "
            f"{', '.join(f'`{p}`' for p in COST_PRUNERS)}: `median` compares a trial with trials of similar serving "
            "cost.", ""]
    out += ["", "## Parameter specs", "",
            "Each entry of `params` maps a parameter name to a spec (or to a bare scalar: a fixed value). "
            "Every type also takes `when:` (conditions).", "", "| `type` | keys |", "|---|---|"]
    for kind in KINDS:
        out.append(f"| `{kind}` | {', '.join(f'`{k}`' for k in SPEC_KEYS[kind])} |")
    out += ["", "## Parameters", "",
            "The names a space (or `fer-exp train --set`, or `fx.train(params=...)`) may set: the fields of "
            "`ModelParams` (the network) and `TrainParams` (its training). A parameter a space does not declare "
            f"keeps its default. `epochs` never exceeds the space's `max_epochs` (at most {MAX_EPOCHS}).", ""]
    for cls, title in ((ModelParams, "Model (`ModelParams`)"), (TrainParams, "Training (`TrainParams`)")):
        hints = typing.get_type_hints(cls)
        docs = _field_docs(cls)
        out += [f"### {title}", "", "| name | type | default | rule | meaning |", "|---|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            kind = hints[f.name]
            out.append(f"| `{f.name}` | {kind.__name__} | {_cell(f.default)} | {_param_rule(cls, f.name, kind)} | "
                       f"{docs.get(f.name, '').replace('|', '/')} |")
        out.append("")
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # print the page: python docs/hooks/reference.py
    print(render())
