"""Issue 24's two-objective studies without a store: ``objective: [metric, cost]`` in a space, the Pareto front,
the similar-cost pruning rule that replaces Optuna's pruners (which do not support such studies), and the 2018
reference accuracy drawn on the front."""

from __future__ import annotations

from typing import Any

import pytest

from fer_experiments.errors import ConfigError
from fer_experiments.search.pareto import (
    PUBLICTEST_SUPPORT,
    CostPoint,
    front,
    front_rows,
    reference_accuracy_2018,
    similar_cost_prune,
)
from fer_experiments.spaces import SearchSpace


def _space(**extra: Any) -> SearchSpace:
    d = {"name": "t", "max_epochs": 3, "params": {"filters": {"type": "categorical", "choices": [4, 8]}}}
    return SearchSpace.from_dict(d | extra, source="space.yaml")


def test_a_two_objective_space_is_validated_and_round_trips() -> None:
    space = _space(objective=["val_accuracy", "latency_ms"], pruner={"name": "median", "n_startup_trials": 2})
    assert space.objective == "val_accuracy" and space.cost_objective == "latency_ms"
    assert space.objectives == ("val_accuracy", "latency_ms")
    assert space.cost_runtime == "exported"  # measured on the default runtime without constraints
    assert SearchSpace.from_dict(space.to_dict()) == space
    assert space.to_dict()["objective"] == ["val_accuracy", "latency_ms"]
    assert space.content_hash() != _space(pruner={"name": "median", "n_startup_trials": 2}).content_hash()
    # A one-objective space keeps the string form (and the hash it had before two objectives existed).
    single = _space()
    assert single.to_dict()["objective"] == "val_accuracy" and single.cost_objective is None
    assert single.cost_runtime is None
    assert _space(objective=["val_macro_f1", "params"], constraints={"max_params": 9, "runtime": "int8"}
                  ).cost_runtime == "int8"
    for bad, message in [
        ({"objective": ["val_accuracy"]}, "objective: a two-objective study is [<val_accuracy or val_macro_f1>, "
                                          "<latency_ms or params or model_bytes>], got ['val_accuracy']"),
        ({"objective": ["val_accuracy", "speed"]}, "objective: a two-objective study is"),
        ({"objective": ["latency_ms", "val_accuracy"]}, "objective: a two-objective study is"),
        ({"objective": "latency_ms"}, "objective: unknown objective 'latency_ms'"),
        ({"objective": ["val_accuracy", "latency_ms"], "pruner": "hyperband"},
         "pruner.name: 'hyperband' cannot prune a two-objective study"),
    ]:
        with pytest.raises(ConfigError) as info:
            _space(**bad)
        assert f"space.yaml: {message}" in str(info.value)


def test_the_front_keeps_the_non_dominated_points_cheapest_first() -> None:
    pts = [CostPoint("a", 1.0, 0.50), CostPoint("b", 2.0, 0.60), CostPoint("c", 3.0, 0.55),  # c: b is cheaper+better
           CostPoint("d", 4.0, 0.70), CostPoint("e", 1.0, 0.45), CostPoint("f", 0.5, None),  # e: a dominates
           CostPoint("g", 2.0, 0.60)]  # g ties b: not strictly better, b (first) stays
    assert [p.label for p in front(pts)] == ["a", "b", "d"]
    assert front([]) == []
    rows = front_rows(pts + [CostPoint("seed-base", 0.2, 0.55, reference=True)], "val_accuracy", "latency_ms")
    assert [r["network"] for r in rows][:2] == ["seed-base", "f"]  # sorted by cost
    assert {r["network"] for r in rows if r["on_front"]} == {"a", "b", "d"}  # references never join the front
    assert next(r for r in rows if r["network"] == "seed-base")["reference"] is True
    assert rows[0]["val_accuracy"] == 0.55 and rows[0]["latency_ms"] == 0.2


def test_similar_cost_pruning_compares_only_trials_of_similar_cost() -> None:
    cheap = [(1.0, {1: 0.30, 2: 0.35}), (1.5, {1: 0.32}), (0.8, {1: 0.28})]
    costly = [(10.0, {1: 0.60}), (12.0, {1: 0.62}), (9.0, {1: 0.58})]
    # A cheap trial at 0.29 is below its cheap neighbours' median (0.30): pruned; the costly ones are not compared.
    why = similar_cost_prune(0.29, 1.0, 1, cheap + costly, min_neighbours=3)
    assert why == "below the median 0.3000 of 3 trials of similar cost (within 2x) at epoch 1"
    assert similar_cost_prune(0.31, 1.0, 1, cheap + costly, min_neighbours=3) is None
    # Against all trials it would have been pruned: the rule keeps the cheap end of the front alive.
    assert similar_cost_prune(0.31, 1.0, 1, [(1.0, c) for _, c in cheap + costly], min_neighbours=3) is not None
    # Too few neighbours, the warm-up, an epoch the others never reached, an unknown cost: never pruned.
    assert similar_cost_prune(0.10, 1.0, 1, cheap, min_neighbours=4) is None
    assert similar_cost_prune(0.10, 1.0, 1, cheap, min_neighbours=3, warmup_steps=1) is None
    assert similar_cost_prune(0.10, 1.0, 3, cheap, min_neighbours=1) is None
    assert similar_cost_prune(0.10, float("nan"), 1, cheap, min_neighbours=1) is None
    assert similar_cost_prune(0.10, 5.0, 1, cheap + costly, min_neighbours=1, ratio=2.0) == (
        "below the median 0.5900 of 2 trials of similar cost (within 2x) at epoch 1")  # 9 and 10, not 12


def test_the_2018_reference_accuracy_weights_its_recalls_by_publictest_counts() -> None:
    from fer_experiments import EXPRESSIONS
    from fer_experiments.search.summary import reference_rows

    rows = reference_rows()
    accs = {n: reference_accuracy_2018(rows, n) for n in ("base", "deep", "deep-bn")}
    assert sum(PUBLICTEST_SUPPORT) == 3589 and len(PUBLICTEST_SUPPORT) == len(EXPRESSIONS)
    # The 2018 study reported 58.1% for its best network; its table's recalls give the same order of figures.
    assert all(a is not None and 0.4 < a < 0.65 for a in accs.values()), accs
    assert max(accs, key=lambda n: accs[n] or 0) == "deep-bn"
    recall = {r["expression"]: float(r["recall"]) for r in rows if r["network"] == "2018/base"}
    assert accs["base"] == pytest.approx(sum(recall[e] * n for e, n in zip(EXPRESSIONS, PUBLICTEST_SUPPORT)) / 3589)
    assert reference_accuracy_2018(rows, "no-such-network") is None
