"""Search spaces as data: YAML -> a validated, frozen :class:`SearchSpace`.

Everything a study needs to know about its space is checked here, before any study exists, and every
error is a :class:`~fer_experiments.errors.ConfigError` whose message starts with the file and the key
path at fault (``search_spaces/x.yaml: params.dense_units.when: ...``).  The adapters that turn a space
into ``trial.suggest_*`` or ``hp.*`` calls live in ``suggest.py`` and ``kerastuner.py``.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import heapq
import json
import math
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Mapping, get_type_hints

import yaml

from fer_experiments.errors import ConfigError, short_repr
from fer_experiments.params import ALL_FIELDS, CHOICES, MAX_EPOCHS, MODEL_FIELDS, ModelParams, TrainParams

Kind = Literal["int", "float", "categorical", "fixed"]
#: One condition of a parameter: (parent name, values the parent must take).
Condition = tuple[str, tuple[Any, ...]]

KINDS: tuple[str, ...] = ("int", "float", "categorical", "fixed")
OBJECTIVES: tuple[str, ...] = ("val_accuracy", "val_macro_f1")
#: The second objective of a two-objective study (``objective: [val_accuracy, latency_ms]``): a serving-cost figure
#: of ``models.cost``, minimised, measured before the trial trains.
COST_OBJECTIVES: tuple[str, ...] = ("latency_ms", "params", "model_bytes")
#: Pruners a two-objective study accepts: Optuna's pruners do not support such studies (optuna#3450), so fer-exp
#: prunes a trial against trials of similar serving cost with the median rule (``search.pareto``).
COST_PRUNERS: tuple[str, ...] = ("median", "none")
SAMPLERS: tuple[str, ...] = ("tpe", "random", "gp")
#: Options each pruner accepts (beyond ``name``), with a check and a description of the check.
PRUNERS: dict[str, dict[str, tuple[Any, str]]] = {
    "median": {
        "n_startup_trials": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
        "n_warmup_steps": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
        "interval_steps": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    },
    "hyperband": {
        "min_resource": (lambda v: (_is_int(v) and v >= 1) or v == "auto", "an int >= 1 or 'auto'"),
        "reduction_factor": (lambda v: _is_int(v) and v >= 2, "an int >= 2"),
    },
    # Prunes a trial whose objective leaves [lower, upper] after the warm-up: a floor such as "better than chance".
    "threshold": {
        "lower": (lambda v: _is_number(v), "a number"),
        "upper": (lambda v: _is_number(v), "a number"),
        "n_warmup_steps": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
        "interval_steps": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    },
    "none": {},
}
DEFAULT_SEED = 42
DEFAULT_OBJECTIVE = "val_accuracy"

TOP_LEVEL_KEYS: tuple[str, ...] = (
    "name", "description", "objective", "max_epochs", "train_limit", "sampler", "pruner", "params", "refit",
    "start_from", "trial_budget", "constraints",
)
#: ``refit:`` keys, each with a check, a description of the check and its default.
REFIT_KEYS: dict[str, tuple[Any, str, Any]] = {
    # How many of the best trials are retrained.
    "top_k": (lambda v: _is_int(v) and v >= 1, "an int >= 1", 1),
    # Epochs of a refit (null: the trial's own epochs); the PublicTest-best epoch is kept.
    "epochs": (lambda v: v is None or (_is_int(v) and 1 <= v <= MAX_EPOCHS),
               f"an int 1-{MAX_EPOCHS} or null (the trial's epochs)", None),
    # Training rows of a refit (null: all of Training).
    "train_limit": (lambda v: v is None or (_is_int(v) and v >= 1), "an int >= 1 or null (all rows)", None),
    # Under --budget: the largest share of the budget the refits may reserve (the trials get the rest at least).
    "budget_share": (lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)", 0.5),
    # Continue the trial's trained weights (its best epoch) instead of starting from random weights.
    "warm_start": (lambda v: isinstance(v, bool), "true or false", False),
}
#: ``constraints:`` keys (``models.cost.LIMITS`` and the runtime), each with a check, a description and a default.
CONSTRAINT_KEYS: dict[str, tuple[Any, str, Any]] = {
    "max_latency_ms": (lambda v: _is_number(v) and v > 0, "a number > 0", None),
    "min_faces_per_second": (lambda v: _is_number(v) and v > 0, "a number > 0", None),
    "max_params": (lambda v: _is_int(v) and v >= 1, "an int >= 1", None),
    "max_model_bytes": (lambda v: _is_int(v) and v >= 1, "an int >= 1", None),
    "runtime": (lambda v: v in ("exported", "int8"), "one of exported, int8", "exported"),
}
#: ``trial_budget: "8%"``: each trial gets this share of ``--budget``, but never less than MIN_SHARE_SECONDS: the
#: first training step traces the graph (10-20 s for a separable net on 2 cores), so a shorter slice would rank
#: networks by their tracing time; on a short budget fewer trials fit, and the start point gets the rest.
MIN_SHARE_SECONDS = 75.0
_SHARE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*$")
SPEC_KEYS: dict[str, tuple[str, ...]] = {
    "int": ("type", "low", "high", "step", "log", "when"),
    "float": ("type", "low", "high", "step", "log", "when"),
    "categorical": ("type", "choices", "when"),
    "fixed": ("type", "value", "when"),
}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Int ranges up to this many values are checked value by value against the dataclasses (kernel_size 3..5
# contains the invalid 4); larger ones only at their ends.
_MAX_CHECKED_INTS = 10_000

# Python types of every parameter, from the dataclasses (annotations are strings under
# `from __future__ import annotations`, so resolve them).
_FIELD_TYPES: dict[str, type] = {**get_type_hints(ModelParams), **get_type_hints(TrainParams)}


def _is_int(v: Any) -> bool:
    # bool is a subclass of int; `true` is never a valid count.
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


# --------------------------------------------------------------------------------------------------
# Types
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a space: a distribution (int, float, categorical) or a fixed value, maybe conditional."""

    name: str
    kind: Kind
    low: int | float | None = None
    high: int | float | None = None
    #: int: always set (default 1); float: None unless discretised.
    step: int | float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    value: Any = None
    #: Conditions, sorted by parent name; all must hold for the parameter to exist.
    when: tuple[Condition, ...] = ()

    @property
    def searched(self) -> bool:
        """Whether a sampler chooses this parameter's value (everything but ``fixed``)."""
        return self.kind != "fixed"

    @property
    def parents(self) -> tuple[str, ...]:
        """Names of the parameters this one's conditions refer to."""
        return tuple(parent for parent, _ in self.when)

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether every condition holds for ``values`` (an absent parent fails its condition)."""
        return all(parent in values and values[parent] in allowed for parent, allowed in self.when)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one this parameter can take (bounds, step, choices; same type family)."""
        if self.kind == "int":
            if not _is_int(value) or not (self.low <= value <= self.high):  # type: ignore[operator]
                return False
            return (value - self.low) % self.step == 0  # type: ignore[operator]
        if self.kind == "float":
            if not _is_number(value) or not (self.low <= value <= self.high):  # type: ignore[operator]
                return False
            if self.step is None:
                return True
            k = (value - self.low) / self.step  # type: ignore[operator]
            return abs(k - round(k)) < 1e-8
        candidates = self.choices if self.kind == "categorical" else (self.value,)
        # Compare types too: True == 1 in Python, but a bool is never an int parameter's value.
        return any(type(value) is type(c) and value == c for c in candidates)

    def describe(self) -> str:
        """A short human form of the distribution, for messages."""
        if self.kind in ("int", "float"):
            extra = f" step {self.step}" if self.step not in (None, 1) else ""
            return f"{self.kind} {self.low}..{self.high}{extra}{' log' if self.log else ''}"
        if self.kind == "categorical":
            return f"one of {list(self.choices)}"
        return f"fixed {short_repr(self.value)}"

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-able form (the full YAML spec form)."""
        if self.kind in ("int", "float"):
            d: dict[str, Any] = {"type": self.kind, "low": self.low, "high": self.high, "step": self.step,
                                 "log": self.log}
        elif self.kind == "categorical":
            d = {"type": "categorical", "choices": list(self.choices)}
        else:
            d = {"type": "fixed", "value": self.value}
        if self.when:
            d["when"] = {parent: list(allowed) for parent, allowed in self.when}
        return d


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space. Build it with :func:`load_space` or :meth:`from_dict`, never by hand."""

    name: str
    description: str
    objective: str
    max_epochs: int
    train_limit: int | None
    #: ``{"name": ..., "seed": int | None, "options": {...}}``
    sampler: dict[str, Any]
    #: ``{"name": ..., **options}``
    pruner: dict[str, Any]
    #: In dependency order (parents before children), ties broken by name, so the order is canonical.
    params: tuple[ParamSpec, ...]
    #: ``{"top_k", "epochs", "train_limit", "budget_share"}`` (all keys set) or None: retrain the best trials after
    #: the search (``search.lifecycle``). Not part of the content hash: it does not change how trials compare.
    refit: dict[str, Any] | None = None
    #: Known-good starting points, run as the study's first trials: ``(name, {param: value})`` with the values a
    #: trial of this space takes (a preset's restricted to what the space searches). Not part of the content hash.
    start_from: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    #: Wall seconds of training every trial gets (``float``), or a share of ``--budget`` (``"8%"``); None: trials are
    #: bounded by their epochs only. Equal seconds make trials compare at equal cost.
    trial_budget: float | str | None = None
    #: Serving limits a configuration must meet before it trains (``models.cost.LIMITS`` keys, each a number) and
    #: the ``runtime`` they are measured on; None: no limits.
    constraints: dict[str, Any] | None = None
    #: The second objective (one of ``COST_OBJECTIVES``, minimised) of a two-objective study, or None.
    cost_objective: str | None = None
    #: Where the space came from (a path as given, or "<dict>"); not part of the content.
    source: str = field(default="<dict>", compare=False)

    @property
    def objectives(self) -> tuple[str, ...]:
        """The study's objectives: the PublicTest metric (maximised), then the cost figure (minimised) if any."""
        return (self.objective,) if self.cost_objective is None else (self.objective, self.cost_objective)

    @property
    def cost_runtime(self) -> str | None:
        """The serving runtime a trial's cost is measured on before it trains (None: the cost is not measured)."""
        if self.constraints is not None:
            return str(self.constraints["runtime"])
        return CONSTRAINT_KEYS["runtime"][2] if self.cost_objective is not None else None

    def __hash__(self) -> int:
        return hash(self.content_hash())

    def trial_seconds(self, budget_seconds: float | None) -> float | None:
        """Seconds of training per trial: ``trial_budget`` in seconds, or its share of ``budget_seconds`` but at
        least ``MIN_SHARE_SECONDS`` (None without a --budget)."""
        if self.trial_budget is None or isinstance(self.trial_budget, float):
            return self.trial_budget
        if not budget_seconds:
            return None
        match = _SHARE_RE.match(self.trial_budget)
        assert match is not None  # validated at load
        return max(MIN_SHARE_SECONDS, budget_seconds * float(match.group(1)) / 100.0)

    def start_points(self) -> list[tuple[str, dict[str, Any]]]:
        """The ``start_from`` points as ``(name, values)``, in the space's order."""
        return [(name, dict(values)) for name, values in self.start_from]

    def get(self, name: str) -> ParamSpec | None:
        """The spec of parameter ``name``, or None."""
        return next((p for p in self.params if p.name == name), None)

    @property
    def names(self) -> tuple[str, ...]:
        """Names of all declared parameters, in dependency order."""
        return tuple(p.name for p in self.params)

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-able form; ``SearchSpace.from_dict(space.to_dict())`` equals ``space``."""
        return {
            "name": self.name,
            "description": self.description,
            "objective": self.objective if self.cost_objective is None else list(self.objectives),
            "max_epochs": self.max_epochs,
            "train_limit": self.train_limit,
            "sampler": {"name": self.sampler["name"], "seed": self.sampler["seed"],
                        "options": dict(self.sampler["options"])},
            "pruner": dict(self.pruner),
            "params": {p.name: p.to_dict() for p in self.params},
        } | ({"refit": dict(self.refit)} if self.refit is not None else {}) | (
            {"start_from": [{"name": n, "params": dict(v)} for n, v in self.start_from]} if self.start_from else {}
        ) | ({"trial_budget": self.trial_budget} if self.trial_budget is not None else {}) | (
            {"constraints": dict(self.constraints)} if self.constraints is not None else {})

    def content_hash(self) -> str:
        """sha256 of the canonical JSON of the space, without ``source`` and ``description``.

        Formatting, comments, key order and equivalent spellings (``1e-4`` vs ``0.0001``, a bare scalar vs
        ``{type: fixed}``, an omitted default) do not change it; any bound, choice or option does.
        """
        d = self.to_dict()
        d.pop("description")
        d.pop("refit", None)  # what happens after the trials; spaces without it keep the hashes they had
        d.pop("start_from", None)  # which trials come first, not how trials compare
        canonical = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @classmethod
    def from_dict(cls, d: Any, source: str = "<dict>") -> SearchSpace:
        """Validate a parsed space (the YAML form or :meth:`to_dict`'s) and build it."""
        return _Validator(str(source)).space(d)


# --------------------------------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------------------------------


#: A search space is a few hundred YAML nodes; aliases that would expand a document beyond this many are refused
#: while loading (an "alias bomb" of nested anchors expands to billions of values from a few lines).
MAX_YAML_NODES = 10_000


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and alias bombs and reads ``1e-4`` as a float (YAML 1.2)."""

    def compose_document(self) -> Any:
        node = super().compose_document()
        _check_expanded_size(node)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                # PyYAML silently keeps the last duplicate: a repeated parameter would vanish unnoticed.
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {short_repr(key)}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_expanded_size(root: Any) -> None:
    """Count the nodes of the document as its aliases would expand it (memoised per node, so this is cheap even for
    a bomb) and refuse it beyond MAX_YAML_NODES, naming the line of the first alias-heavy node."""
    sizes: dict[int, int] = {}

    def size(node: Any) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if isinstance(node, yaml.ScalarNode):
            n = 1
        elif isinstance(node, yaml.SequenceNode):
            n = 1 + sum(size(child) for child in node.value)
        else:
            n = 1 + sum(size(k) + size(v) for k, v in node.value)
        sizes[id(node)] = n
        if n > MAX_YAML_NODES:
            raise yaml.constructor.ConstructorError(
                None, None, f"aliases expand this value to {n:,}+ nodes (at most {MAX_YAML_NODES:,} allowed): "
                "refusing a YAML alias bomb", node.start_mark)
        return n

    if root is not None:
        size(root)


# Copy the resolver table before adding to it, so the global SafeLoader is left alone.
_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Parse a YAML file; a missing file or a syntax error is a ConfigError naming the file (and line)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark, problem = exc.problem_mark or exc.context_mark, exc.problem or exc.context or "invalid YAML"
        context = exc.context or ""
        # An unclosed quote, bracket or brace is noticed lines later (often at the end of the file): point at the
        # line where it opens, which is where the mistake is, and say where the parser gave up.
        if (exc.context_mark is not None and exc.problem_mark is not None
                and exc.context_mark.line < exc.problem_mark.line
                and ("scanning" in context or "flow" in context)):
            problem = (f"{problem} ({context} that starts here; the parser gave up at line "
                       f"{exc.problem_mark.line + 1})")
            mark = exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML syntax error: {exc}") from None


def load_space(path: str | os.PathLike[str]) -> SearchSpace:
    """Read and validate a search-space YAML file."""
    return SearchSpace.from_dict(read_yaml(path), source=str(path))


#: The folder of the shipped spaces: package data, so a bare name works from any folder and any kind of install.
SHIPPED_SPACES_DIR = Path(str(resources.files("fer_experiments").joinpath("search_spaces")))


def resolve_space_path(name_or_path: str | os.PathLike[str]) -> Path:
    """An existing file as given, else a shipped space by name (``cpu-quick`` -> the package's
    ``search_spaces/cpu-quick.yaml``; a name with ``.yaml`` that is no file here is looked up there too)."""
    p = Path(name_or_path)
    if p.exists() or len(p.parts) > 1:
        return p
    shipped = SHIPPED_SPACES_DIR / (p.name if p.suffix in (".yaml", ".yml") else f"{p}.yaml")
    if shipped.exists():
        return shipped
    if p.suffix in (".yaml", ".yml"):
        return p  # reading it gives the usual "no such file" error
    known = sorted(f.stem for f in SHIPPED_SPACES_DIR.glob("*.yaml")) if SHIPPED_SPACES_DIR.is_dir() else []
    raise ConfigError(f"{name_or_path}: no such file and no shipped space of that name "
                      f"(shipped: {', '.join(known) or 'none'})")


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


_TYPE_WORDS: dict[type, str] = {bool: "a bool", int: "an int", float: "a float", str: "a string"}


def _type_name(v: Any) -> str:
    return "null" if v is None else {"bool": "a bool", "int": "an int", "float": "a float", "str": "a string",
                                     "list": "a list", "dict": "a mapping"}.get(type(v).__name__, type(v).__name__)


def _hint(word: str, known: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1) if isinstance(word, str) and len(word) <= 100 else []
    return f"; did you mean {short_repr(close[0])}?" if close else ""


def _field_error(name: str, value: Any) -> str | None:
    """The dataclass's own complaint about ``name=value`` alone, or None (all its checks are per field)."""
    base = ModelParams() if name in MODEL_FIELDS else TrainParams()
    try:
        dataclasses.replace(base, **{name: value})  # type: ignore[arg-type]
    except ConfigError as exc:
        return str(exc)
    return None


class _Validator:
    """Turns a parsed mapping into a SearchSpace, raising ConfigError('<source>: <key.path>: ...')."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> ConfigError:
        # Key paths and messages quote the user's text: keep both short whatever the file holds.
        path = path if len(path) <= 80 else path[:77] + "..."
        message = message if len(message) <= 600 else message[:597] + "..."
        return ConfigError(f"{self.source}: {path}: {message}" if path else f"{self.source}: {message}")

    # ---- top level ------------------------------------------------------------------------------

    def space(self, d: Any) -> SearchSpace:
        if d is None:
            raise self.fail("", "top level must be a mapping, got an empty document")
        if not isinstance(d, Mapping):
            raise self.fail("", f"top level must be a mapping, got {_type_name(d)}")
        for key in d:
            if key not in TOP_LEVEL_KEYS:
                raise self.fail(str(key), f"unknown key (allowed: {', '.join(TOP_LEVEL_KEYS)}){_hint(key, TOP_LEVEL_KEYS)}")
        for key in ("name", "max_epochs", "params"):
            if key not in d:
                raise self.fail(key, "required key is missing")

        name = d["name"]
        if not isinstance(name, str) or not _NAME_RE.match(name) or len(name) > 100:
            raise self.fail("name", f"must be a string of 1-100 letters, digits, '_', '.', '-'; got {short_repr(name)}")
        description = d.get("description")
        if description is None:
            description = ""
        if not isinstance(description, str):
            raise self.fail("description", f"must be a string, got {_type_name(description)}")
        objective, cost_objective = self.objective(d.get("objective"))
        max_epochs = d["max_epochs"]
        # Bounded here as a training's epochs are, so that the space is refused at load, not each trial at run time.
        if not _is_int(max_epochs) or not 1 <= max_epochs <= MAX_EPOCHS:
            raise self.fail("max_epochs", f"must be an int 1-{MAX_EPOCHS}, got {short_repr(max_epochs)}")
        train_limit = d.get("train_limit")
        if train_limit is not None and (not _is_int(train_limit) or train_limit < 1):
            raise self.fail("train_limit", f"must be an int >= 1 or null (all rows), got {short_repr(train_limit)}")

        sampler = self.sampler(d.get("sampler"))
        pruner = self.pruner(d.get("pruner"))
        if cost_objective is not None and pruner["name"] not in COST_PRUNERS:
            raise self.fail("pruner.name", f"{pruner['name']!r} cannot prune a two-objective study (Optuna's pruners "
                                           "do not support one); use median (a trial is compared with trials of "
                                           "similar serving cost) or none")
        params = self.params(d["params"])

        epochs = next((p for p in params if p.name == "epochs"), None)
        if epochs is not None:
            if epochs.kind == "int":
                key, largest = "high", epochs.high
            elif epochs.kind == "categorical":
                key, largest = "choices", max(epochs.choices)
            else:
                key, largest = "value", epochs.value
            if largest > max_epochs:
                raise self.fail(f"params.epochs.{key}", f"{largest} exceeds max_epochs ({max_epochs})")

        space = SearchSpace(name=name, description=description, objective=objective, max_epochs=max_epochs,
                            train_limit=train_limit, sampler=sampler, pruner=pruner, params=params,
                            refit=self.refit(d.get("refit")), trial_budget=self.trial_budget(d.get("trial_budget")),
                            constraints=self.constraints(d.get("constraints")), cost_objective=cost_objective,
                            source=self.source)
        start = self.start_from(d.get("start_from"), space)
        return dataclasses.replace(space, start_from=start) if start else space

    def objective(self, raw: Any) -> tuple[str, str | None]:
        """``objective:`` one PublicTest metric, or ``[metric, cost figure]`` for a two-objective study."""
        if raw is None:
            return DEFAULT_OBJECTIVE, None
        if isinstance(raw, list):
            if len(raw) != 2 or raw[0] not in OBJECTIVES or raw[1] not in COST_OBJECTIVES:
                raise self.fail("objective", f"a two-objective study is [<{' or '.join(OBJECTIVES)}>, "
                                             f"<{' or '.join(COST_OBJECTIVES)}>], got {short_repr(raw)}")
            return str(raw[0]), str(raw[1])
        if raw not in OBJECTIVES:
            raise self.fail("objective", f"unknown objective {short_repr(raw)} (allowed: {', '.join(OBJECTIVES)}, "
                                         f"or [<objective>, <{' or '.join(COST_OBJECTIVES)}>])")
        return str(raw), None

    def constraints(self, raw: Any) -> dict[str, Any] | None:
        """``constraints:``: serving limits (at least one) and the runtime they hold for (default ``exported``)."""
        from fer_experiments.models.cost import LIMITS

        out = self.section(raw, "constraints", CONSTRAINT_KEYS)
        if out is None:
            return None
        if not any(k in out for k in LIMITS):
            raise self.fail("constraints", f"names no limit (one of {', '.join(LIMITS)})")
        return {k: float(v) if k in ("max_latency_ms", "min_faces_per_second") else v for k, v in out.items()} | {
            "runtime": out.get("runtime", CONSTRAINT_KEYS["runtime"][2])}

    def trial_budget(self, raw: Any) -> float | str | None:
        """Seconds (a number > 0) or a share of --budget (``"8%"``), or None."""
        if raw is None:
            return None
        if _is_number(raw) and raw > 0:
            return float(raw)
        if isinstance(raw, str) and (m := _SHARE_RE.match(raw)) and 0 < float(m.group(1)) < 100:
            return raw.strip()
        raise self.fail("trial_budget", f"must be seconds (a number > 0) or a share of --budget such as '8%', "
                                        f"got {short_repr(raw)}")

    def start_from(self, raw: Any, space: SearchSpace) -> tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]:
        """``start_from:``: a list of preset names or ``{name: ..., params: {...}}`` parameter sets; each must lie
        inside the space (a preset's searched values within their ranges, a parameter set naming searched ones)."""
        from fer_experiments.models.presets import PRESETS
        from fer_experiments.spaces.suggest import preset_values_for_space

        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise self.fail("start_from", f"must be a list of preset names or {{name, params}} mappings, got "
                                          f"{_type_name(raw)}")
        out: list[tuple[str, tuple[tuple[str, Any], ...]]] = []
        for i, entry in enumerate(raw):
            path = f"start_from[{i}]"
            if isinstance(entry, str):
                if entry not in PRESETS:
                    raise self.fail(path, f"unknown preset {short_repr(entry)} (known: {', '.join(PRESETS)})"
                                          f"{_hint(entry, tuple(PRESETS))}")
                name, given = entry, PRESETS[entry].values()
            elif isinstance(entry, Mapping):
                extra = sorted(set(map(str, entry)) - {"name", "params"})
                if extra or not isinstance(entry.get("name"), str) or not isinstance(entry.get("params"), Mapping):
                    raise self.fail(path, "must be a preset name or a mapping {name: <text>, params: {<param>: "
                                          "<value>, ...}}")
                name, given = entry["name"], dict(entry["params"])
                unknown = sorted(set(map(str, given)) - set(space.names))
                if unknown:
                    raise self.fail(f"{path}.params", f"{', '.join(unknown)}: not parameters of this space (it "
                                                      f"declares {', '.join(space.names)})")
            else:
                raise self.fail(path, f"must be a preset name or a {{name, params}} mapping, got {_type_name(entry)}")
            try:
                values = preset_values_for_space(space, given)
            except ConfigError as exc:
                raise self.fail(path, f"{name}: {exc}") from None
            if any(n == name for n, _ in out):
                raise self.fail(path, f"{name!r} is listed twice")
            out.append((name, tuple(values.items())))
        return tuple(out)

    def refit(self, raw: Any) -> dict[str, Any] | None:
        """``refit:`` absent or null: no refit; a mapping: its keys over the defaults (``refit: {}`` = all defaults)."""
        out = self.section(raw, "refit", REFIT_KEYS)
        if out is None:
            return None
        out = {k: float(v) if k == "budget_share" else v for k, v in out.items()}
        return {key: out.get(key, default) for key, (_, _, default) in REFIT_KEYS.items()}

    def section(self, raw: Any, name: str, keys: Mapping[str, tuple[Any, str, Any]]) -> dict[str, Any] | None:
        """A mapping section (``refit:``, ``constraints:``): None when absent, else its keys, each known to ``keys``
        (key -> a check, what it wants, a default) and passing its check."""
        if raw is None:
            return None
        if not isinstance(raw, Mapping):
            raise self.fail(name, f"must be a mapping ({', '.join(keys)}), got {_type_name(raw)}")
        out: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in keys:
                raise self.fail(f"{name}.{key}",
                                f"unknown key (allowed: {', '.join(keys)}){_hint(str(key), tuple(keys))}")
            check, wanted, _ = keys[key]
            if not check(value):
                raise self.fail(f"{name}.{key}", f"must be {wanted}, got {short_repr(value)}")
            out[key] = value
        return out

    def sampler(self, raw: Any) -> dict[str, Any]:
        if raw is None:
            raw = {}
        if isinstance(raw, str):  # `sampler: random` is short for `sampler: {name: random}`
            raw = {"name": raw}
        if not isinstance(raw, Mapping):
            raise self.fail("sampler", f"must be a mapping (or a sampler name), got {_type_name(raw)}")
        allowed = ("name", "seed", "options")
        for key in raw:
            if key not in allowed:
                raise self.fail(f"sampler.{key}", f"unknown key (allowed: {', '.join(allowed)}; "
                                                  "sampler arguments go under options:)")
        name = raw.get("name", "tpe")
        if name not in SAMPLERS:
            raise self.fail("sampler.name", f"unknown sampler {short_repr(name)} (allowed: {', '.join(SAMPLERS)})")
        seed = raw.get("seed", DEFAULT_SEED)
        if seed is not None and not _is_int(seed):
            raise self.fail("sampler.seed", f"must be an int (or null for no seed), got {short_repr(seed)}")
        options = raw.get("options") or {}
        if not isinstance(options, Mapping):
            raise self.fail("sampler.options", f"must be a mapping of sampler arguments, got {_type_name(options)}")
        known = _sampler_arguments(name)
        for key, value in options.items():
            if key == "seed":
                raise self.fail("sampler.options.seed", "set the seed as sampler.seed")
            if known is not None and key not in known:
                raise self.fail(f"sampler.options.{key}",
                                f"unknown option for sampler {short_repr(name)} (allowed: {', '.join(sorted(known))})")
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                raise self.fail(f"sampler.options.{key}", f"must be plain data, got {short_repr(value)}") from None
        return {"name": name, "seed": seed, "options": dict(options)}

    def pruner(self, raw: Any) -> dict[str, Any]:
        if raw is None:
            raw = {}
        if isinstance(raw, str):
            raw = {"name": raw}
        if not isinstance(raw, Mapping):
            raise self.fail("pruner", f"must be a mapping (or a pruner name), got {_type_name(raw)}")
        name = raw.get("name", "median")
        if not isinstance(name, str) or name not in PRUNERS:
            raise self.fail("pruner.name", f"unknown pruner {short_repr(name)} (allowed: {', '.join(PRUNERS)})")
        options = PRUNERS[name]
        out: dict[str, Any] = {"name": name}
        for key, value in raw.items():
            if key == "name":
                continue
            if key not in options:
                allowed = ", ".join(options) or "no options"
                raise self.fail(f"pruner.{key}", f"unknown option for pruner {short_repr(name)} (allowed: {allowed})")
            check, wanted = options[key]
            if not check(value):
                raise self.fail(f"pruner.{key}", f"must be {wanted}, got {short_repr(value)}")
            out[key] = value
        return out

    # ---- params ---------------------------------------------------------------------------------

    def params(self, raw: Any) -> tuple[ParamSpec, ...]:
        if not isinstance(raw, Mapping) or not raw:
            raise self.fail("params", f"must be a non-empty mapping of parameter specs, got {short_repr(raw)}")
        specs: dict[str, ParamSpec] = {}
        raw_when: dict[str, Any] = {}
        for name, spec in raw.items():
            if name not in ALL_FIELDS:
                raise self.fail(f"params.{name}", f"unknown parameter {short_repr(name)}{_hint(name, ALL_FIELDS)} "
                                                  f"(known: {', '.join(ALL_FIELDS)})")
            specs[name], raw_when[name] = self.param(name, spec)
        # Conditions need every parameter parsed first: a parent may be declared after its child.
        specs = {name: dataclasses.replace(spec, when=self.conditions(name, raw_when[name], specs))
                 for name, spec in specs.items()}
        return self.ordered(specs)

    def param(self, name: str, raw: Any) -> tuple[ParamSpec, Any]:
        path = f"params.{name}"
        if isinstance(raw, list):
            raise self.fail(path, "a list is not a parameter spec; write {type: categorical, choices: [...]}")
        if not isinstance(raw, Mapping):  # a bare scalar is a fixed value
            return ParamSpec(name=name, kind="fixed", value=self.value(name, raw, path)), None
        if "type" not in raw:
            raise self.fail(f"{path}.type", f"required key is missing (one of {', '.join(KINDS)})")
        kind = raw["type"]
        if kind not in KINDS:
            raise self.fail(f"{path}.type", f"unknown type {short_repr(kind)} (allowed: {', '.join(KINDS)})")
        for key in raw:
            if key not in SPEC_KEYS[kind]:
                raise self.fail(f"{path}.{key}", f"unknown key for type {kind} "
                                                 f"(allowed: {', '.join(SPEC_KEYS[kind])}){_hint(key, SPEC_KEYS[kind])}")
        ftype = _FIELD_TYPES[name]
        if kind in ("int", "float") and ftype.__name__ != kind:
            raise self.fail(f"{path}.type", f"{name} is a {ftype.__name__} parameter; type {kind} does not fit "
                                            f"(use {'categorical or fixed' if ftype in (str, bool) else ftype.__name__})")
        if kind == "int":
            spec = self.int_spec(name, raw, path)
        elif kind == "float":
            spec = self.float_spec(name, raw, path)
        elif kind == "categorical":
            choices = raw.get("choices")
            if not isinstance(choices, list) or not choices:
                raise self.fail(f"{path}.choices", f"must be a non-empty list, got {short_repr(choices)}")
            values = tuple(self.value(name, c, f"{path}.choices[{i}]") for i, c in enumerate(choices))
            for i, v in enumerate(values):
                if any(type(v) is type(w) and v == w for w in values[:i]):
                    raise self.fail(f"{path}.choices[{i}]", f"duplicate choice {short_repr(v)}")
            spec = ParamSpec(name=name, kind="categorical", choices=values)
        else:
            if "value" not in raw:
                raise self.fail(f"{path}.value", "required key is missing")
            spec = ParamSpec(name=name, kind="fixed", value=self.value(name, raw["value"], f"{path}.value"))
        return spec, raw.get("when")

    def number(self, raw: Mapping[str, Any], key: str, path: str, integer: bool) -> Any:
        if key not in raw:
            raise self.fail(f"{path}.{key}", "required key is missing")
        v = raw[key]
        if integer and not _is_int(v):
            raise self.fail(f"{path}.{key}", f"must be an int, got {short_repr(v)}")
        if not integer and not _is_number(v):
            raise self.fail(f"{path}.{key}", f"must be a finite number, got {short_repr(v)}")
        return v if integer else float(v)

    def range_checks(self, low: Any, high: Any, step: Any, log: Any, path: str) -> None:
        if not isinstance(log, bool):
            raise self.fail(f"{path}.log", f"must be true or false, got {short_repr(log)}")
        if low > high:
            raise self.fail(f"{path}.low", f"low ({low}) is above high ({high})")
        if log and low <= 0:
            raise self.fail(f"{path}.low", f"log: true needs low > 0, got {low}")
        if step is not None:
            if step <= 0:
                raise self.fail(f"{path}.step", f"must be > 0, got {step}")
            if log and step != 1:
                raise self.fail(f"{path}.step", "step cannot be combined with log: true")
            k = (high - low) / step
            if abs(k - round(k)) > 1e-8:
                # Optuna would silently lower high to the last step; say so instead.
                raise self.fail(f"{path}.step", f"high - low ({high - low:g}) is not a multiple of step ({step:g})")

    def int_spec(self, name: str, raw: Mapping[str, Any], path: str) -> ParamSpec:
        low, high = self.number(raw, "low", path, True), self.number(raw, "high", path, True)
        step = raw.get("step", 1)
        if not _is_int(step):
            raise self.fail(f"{path}.step", f"must be an int, got {short_repr(step)}")
        log = raw.get("log", False)
        self.range_checks(low, high, step, log, path)
        spec = ParamSpec(name=name, kind="int", low=low, high=high, step=step, log=log)
        # Ends first, so the message points at the bound to change; then the values in between.
        for key, v in (("low", low), ("high", high)):
            problem = _field_error(name, v)
            if problem:
                raise self.fail(f"{path}.{key}", problem)
        if (high - low) // step + 1 <= _MAX_CHECKED_INTS:
            for v in range(low + step, high, step):
                problem = _field_error(name, v)
                if problem:
                    raise self.fail(path, f"value {v} of the range is invalid: {problem}")
        return spec

    def float_spec(self, name: str, raw: Mapping[str, Any], path: str) -> ParamSpec:
        low, high = self.number(raw, "low", path, False), self.number(raw, "high", path, False)
        step = raw.get("step")
        if step is not None:
            if not _is_number(step):
                raise self.fail(f"{path}.step", f"must be a number, got {short_repr(step)}")
            step = float(step)
        log = raw.get("log", False)
        self.range_checks(low, high, step, log, path)
        # The dataclasses check intervals only, so the two ends stand for the whole range.
        for key, v in (("low", low), ("high", high)):
            problem = _field_error(name, v)
            if problem:
                raise self.fail(f"{path}.{key}", problem)
        return ParamSpec(name=name, kind="float", low=low, high=high, step=step, log=log)

    def value(self, name: str, v: Any, path: str) -> Any:
        """Coerce a fixed value, a choice or a condition value to ``name``'s type and check it is valid."""
        ftype = _FIELD_TYPES[name]
        wanted = _TYPE_WORDS[ftype]
        if isinstance(v, (list, dict)) or v is None:
            raise self.fail(path, f"must be {wanted}, got {_type_name(v)}")
        if ftype is float and _is_number(v):
            v = float(v)  # 2 and 2.0 are one choice; Optuna and keras-tuner want one type per choice list
        elif not (ftype is bool and isinstance(v, bool) or ftype is int and _is_int(v)
                  or ftype is str and isinstance(v, str)):
            hint = " (quote it: YAML reads yes/no/on/off/true/false as booleans)" if (
                ftype is str and isinstance(v, bool)) else ""
            raise self.fail(path, f"{name} takes {wanted}, got {short_repr(v)}{hint}")
        if name in CHOICES and v not in CHOICES[name]:
            raise self.fail(path, f"{short_repr(v)} is not a valid {name} (allowed: {', '.join(CHOICES[name])})"
                                  f"{_hint(v, CHOICES[name])}")
        problem = _field_error(name, v)
        if problem:
            raise self.fail(path, problem)
        return v

    def conditions(self, name: str, raw: Any, specs: Mapping[str, ParamSpec]) -> tuple[Condition, ...]:
        if raw is None:
            return ()
        path = f"params.{name}.when"
        if not isinstance(raw, Mapping) or not raw:
            raise self.fail(path, f"must be a non-empty mapping of parameter: value(s), got {short_repr(raw)}")
        out: list[Condition] = []
        for parent, allowed in raw.items():
            if parent not in specs:
                raise self.fail(path, f"condition on unknown parameter {short_repr(parent)}"
                                      f"{_hint(parent, list(specs))}")
            ppath = f"{path}.{parent}"
            pspec = specs[parent]
            if pspec.kind == "float":
                raise self.fail(ppath, f"cannot condition on float parameter {short_repr(parent)}: a continuous value "
                                       "never equals a listed one (make it int or categorical)")
            values = allowed if isinstance(allowed, list) else [allowed]
            if not values:
                raise self.fail(ppath, "needs at least one value")
            coerced = []
            for i, v in enumerate(values):
                vpath = f"{ppath}[{i}]" if isinstance(allowed, list) else ppath
                v = self.value(parent, v, vpath)
                if not pspec.contains(v):
                    raise self.fail(vpath, f"{short_repr(parent)} can never take {short_repr(v)} ({pspec.describe()})")
                if v not in coerced:
                    coerced.append(v)
            # Sorted: the allowed values are a set, so their order must not change the content hash.
            out.append((parent, tuple(sorted(coerced))))
        return tuple(sorted(out))

    def ordered(self, specs: dict[str, ParamSpec]) -> tuple[ParamSpec, ...]:
        """Parents before children (Kahn's algorithm, ties by name); a cycle is an error."""
        children: dict[str, list[str]] = {n: [] for n in specs}
        waiting = {n: len(set(s.parents)) for n, s in specs.items()}
        for n, s in specs.items():
            for parent in set(s.parents):
                children[parent].append(n)
        ready = [n for n, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            n = heapq.heappop(ready)
            order.append(n)
            for child in children[n]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    heapq.heappush(ready, child)
        if len(order) < len(specs):
            raise self._cycle(specs, set(specs) - set(order))
        return tuple(specs[n] for n in order)

    def _cycle(self, specs: Mapping[str, ParamSpec], stuck: set[str]) -> ConfigError:
        # Every stuck node has a stuck parent, so walking parents from any of them must revisit a node.
        start = min(stuck)
        path = [start]
        while True:
            nxt = min(p for p in specs[path[-1]].parents if p in stuck)
            if nxt in path:
                cycle = path[path.index(nxt):] + [nxt]
                break
            path.append(nxt)
        # Written child -> parent: "a depends on b depends on a".
        return self.fail(f"params.{cycle[0]}.when", f"conditions form a cycle: {' -> '.join(cycle)}")


#: Plain-data keyword arguments of Optuna 5's samplers (besides seed), listed here so that validating a space
#: needs no Optuna import (only fer_experiments.search imports it; its make_sampler passes them on).
_SAMPLER_ARGUMENTS: dict[str, set[str]] = {
    "tpe": {"consider_prior", "prior_weight", "consider_magic_clip", "consider_endpoints", "n_startup_trials",
            "n_ei_candidates", "multivariate", "group", "warn_independent_sampling", "constant_liar"},
    "random": set(),
    "gp": {"n_startup_trials", "deterministic_objective", "warn_independent_sampling"},
}


def _sampler_arguments(name: str) -> set[str] | None:
    """Keyword arguments the Optuna sampler accepts (besides seed)."""
    return _SAMPLER_ARGUMENTS.get(name)
