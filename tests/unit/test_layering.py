"""The code's layering, checked from the source: imports point down the data flow, MLflow and Optuna each have one
home, tag names are spelled in one module, and the packages whose modules depend on each other have no cycle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "fer_experiments"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every module a file imports (top level, inside functions and under TYPE_CHECKING alike)."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _internal(imports: set[str]) -> set[str]:
    return {m for m in imports if m in MODULES and m.startswith("fer_experiments.")}


@pytest.mark.parametrize("library, home", [("mlflow", "tracking"), ("optuna", "search"),
                                           ("keras_tuner", "search")])
def test_each_library_is_imported_in_its_home_only(library: str, home: str) -> None:
    # spaces/ holds the one adapter that declares a space on keras-tuner's hp.
    allowed = {home} | ({"spaces"} if library == "keras_tuner" else set())
    offenders = [name for name, path in MODULES.items()
                 if _package(name) not in allowed
                 and any(m == library or m.startswith(library + ".") for m in _imports(path))]
    assert not offenders, f"{library} imported outside {sorted(allowed)}: {offenders}"


#: Which packages each package must not import (the flow: data -> spaces/models -> training -> evaluation ->
#: tracking -> search -> ensembles -> registry -> serving -> cli).
FORBIDDEN = {
    "data": {"spaces", "models", "training", "evaluation", "tracking", "search", "ensembles", "registry", "serving",
             "cli"},
    "spaces": {"training", "evaluation", "tracking", "search", "ensembles", "registry", "serving", "cli"},
    "models": {"training", "evaluation", "tracking", "search", "ensembles", "registry", "serving", "cli"},
    "training": {"tracking", "search", "ensembles", "registry", "serving", "cli"},
    "evaluation": {"tracking", "search", "ensembles", "registry", "serving", "cli"},
    "tracking": {"search", "ensembles", "registry", "serving", "cli"},
    "search": {"ensembles", "registry", "serving", "cli"},
    # ensembles sits between search and registry: it reads studies through their MLflow runs, never through search.
    "ensembles": {"search", "registry", "serving", "cli"},
    "registry": {"search", "training", "serving", "cli"},
    "serving": {"cli"},
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_down_the_flow(package: str) -> None:
    bad = []
    for name, path in MODULES.items():
        if _package(name) != package:
            continue
        for target in _internal(_imports(path)):
            if _package(target) in FORBIDDEN[package]:
                bad.append(f"{name} -> {target}")
    assert not bad, bad


@pytest.mark.parametrize("package", ["data", "search", "tracking", "ensembles"])
def test_no_import_cycle_inside_package(package: str) -> None:
    graph = {name: {t for t in _internal(_imports(path)) if _package(t) == package and t != name}
             for name, path in MODULES.items() if _package(name) == package}
    # The package's __init__ re-exports its modules: edges into it stand for the module they name.
    init = f"fer_experiments.{package}"
    graph.pop(init, None)
    for edges in graph.values():
        edges.discard(init)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                pytest.fail(f"import cycle: {' -> '.join(path + [node, nxt])}")
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


_TAG_LITERAL = re.compile(r"""["'](fer\.[a-z_]+|trial_state|objective_value|trial_number|mlflow_run_id|"""
                          r"""optuna_study|optuna_trial_number|failure_reason|fail_reason)["']""")


def test_tag_names_are_spelled_in_one_module() -> None:
    files = sorted(str(path.relative_to(PKG)) for path in MODULES.values() if _TAG_LITERAL.search(path.read_text()))
    assert files == ["tracking/tags.py"], files


def test_only_the_cli_imports_the_public_api() -> None:
    # fer_experiments.api sits on top of the flow beside cli/: the CLI is built on it, nothing below may use it
    # (the package's __init__ re-exports it lazily, on first use).
    users = sorted(name for name, path in MODULES.items()
                   if any(m == "fer_experiments.api" or m.startswith("fer_experiments.api.") for m in _imports(path))
                   or ("fer_experiments" in _imports(path) and "api" in _from_package_names(path)))
    assert all(_package(name) in ("cli", "") for name in users), users
    assert not {_package(t) for t in _internal(_imports(PKG / "api.py"))} & {"cli"}


def _from_package_names(path: Path) -> set[str]:
    """Names imported with ``from fer_experiments import NAME``."""
    tree = ast.parse(path.read_text())
    return {a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module == "fer_experiments"
            for a in node.names}
