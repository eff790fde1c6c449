"""``fer-exp compare-engines``: Optuna (TPE + Hyperband pruner) against keras-tuner (Hyperband) on one space.

Both engines get the same total epoch budget per seed and the same data; each run is a real study with its trials
tracked as usual. The result is a table and a plot of the best PublicTest accuracy against epochs spent, printed
and logged to a ``compare-engines`` parent run. Nothing is registered.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable

from fer_experiments.config import SearchConfig


@dataclass
class EngineRun:
    engine: str
    seed: int
    study: str
    trials: int
    epochs_spent: int
    best: float | None
    curve: list[tuple[int, float | None]] = field(default_factory=list)


@dataclass
class Comparison:
    budget_epochs: int
    runs: list[EngineRun]
    parent_run_id: str
    objective: str = "val_accuracy"

    @property
    def label(self) -> str:
        """The objective in words (``best PublicTest accuracy`` or ``best PublicTest macro-F1``)."""
        return "best PublicTest " + ("accuracy" if self.objective == "val_accuracy" else "macro-F1")

    def table(self) -> str:
        """Per run and per engine (mean and standard deviation over seeds)."""
        lines = [f"{'engine':<12} {'seed':>4} {'trials':>6} {'epochs':>6} {self.label:>26}"]
        for r in self.runs:
            best = "-" if r.best is None else f"{r.best:.4f}"
            lines.append(f"{r.engine:<12} {r.seed:>4} {r.trials:>6} {r.epochs_spent:>6} {best:>26}")
        lines.append("")
        for engine in dict.fromkeys(r.engine for r in self.runs):
            bests = [r.best for r in self.runs if r.engine == engine and r.best is not None]
            spread = statistics.stdev(bests) if len(bests) > 1 else 0.0
            mean = f"{statistics.mean(bests):.4f} +- {spread:.4f}" if bests else "-"
            lines.append(f"{engine:<12} mean best over {len(bests)} seed(s): {mean} (budget {self.budget_epochs} epochs)")
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        rows = [f"engine,seed,study,trials,epochs_spent,best_{self.objective}"]
        rows += [f"{r.engine},{r.seed},{r.study},{r.trials},{r.epochs_spent},{'' if r.best is None else r.best}"
                 for r in self.runs]
        return "\n".join(rows) + "\n"


def _figure(runs: list[EngineRun], label: str) -> Any:
    from fer_experiments.evaluation.plots import _figure as new_figure

    fig = new_figure(8, 5)
    ax = fig.add_subplot()
    colours = {"optuna": "tab:blue", "keras-tuner": "tab:orange"}
    for r in runs:
        points = [(e, b) for e, b in r.curve if b is not None]
        if points:
            xs, ys = zip(*points)
            ax.step(xs, ys, where="post", color=colours.get(r.engine), alpha=0.85, marker="o", markersize=3,
                    linestyle=("-", "--", ":", "-.")[r.seed % 4], label=f"{r.engine} seed {r.seed}")
    ax.set_xlabel("epochs spent")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Optuna (TPE + Hyperband pruner) vs keras-tuner (Hyperband)")
    fig.tight_layout()
    return fig


def compare_engines(base: SearchConfig, budget_epochs: int, seeds: int,
                    echo: Callable[[str], None] = print) -> Comparison:
    """Run both engines for ``seeds`` seeds with ``budget_epochs`` each; log and return the comparison."""
    from fer_experiments.search.engines import make_engine
    from fer_experiments.search.lifecycle import run_search
    from fer_experiments.spaces import SearchSpace, load_space, resolve_space_path
    from fer_experiments.tracking import TrackedRun, create_run, end_run, prepare_store, tags

    assert base.space_path is not None
    space = load_space(resolve_space_path(base.space_path))
    prepare_store(base.tracking_uri)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    parent_id = create_run(base.tracking_uri, "compare-engines", f"compare-{space.name}-{stamp}", tags={
        tags.KIND: tags.KIND_COMPARE, tags.SPACE_FILE: str(space.source), tags.SPACE_HASH: space.content_hash()})
    parent = TrackedRun(parent_id, base.tracking_uri)
    runs: list[EngineRun] = []
    status = "FAILED"
    try:
        parent.log_params({"budget_epochs": budget_epochs, "seeds": seeds, tags.PARAM_SPACE: space.name,
                           tags.OBJECTIVE: space.objective,
                           tags.PARAM_LIMIT: base.data.limit if base.data.limit is not None else space.train_limit})
        for seed in range(seeds):
            study = f"cmp-{stamp}-optuna-s{seed}"
            echo(f"== optuna seed {seed}: study {study}")
            optuna_space = SearchSpace.from_dict(space.to_dict() | {
                "sampler": {"name": "tpe", "seed": seed},
                "pruner": {"name": "hyperband", "min_resource": 1, "reduction_factor": 3}}, source=space.source)
            cfg = dataclasses.replace(base, study=study, space_path=None, n_trials=10**6,
                                      experiment="compare-engines-trials")
            o = run_search(cfg, make_engine("optuna"), space=optuna_space, epoch_budget=budget_epochs,
                           register=False)
            runs.append(EngineRun("optuna", seed, study, o.ran, o.epochs_spent, o.best_value, o.curve))
            study = f"cmp-{stamp}-kt-s{seed}"
            echo(f"== keras-tuner seed {seed}: study {study}")
            cfg = dataclasses.replace(base, study=study, space_path=None, n_trials=10**6,
                                      experiment="compare-engines-trials")
            k = run_search(cfg, make_engine("keras-tuner", tuner="hyperband", seed=seed), space=space,
                           epoch_budget=budget_epochs, register=False)
            runs.append(EngineRun("keras-tuner", seed, study, k.ran, k.epochs_spent, k.best_value, k.curve))
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        result = Comparison(budget_epochs=budget_epochs, runs=runs, parent_run_id=parent_id, objective=space.objective)
        if runs:
            parent.log_text(result.table(), "compare/engines.txt")
            parent.log_text(result.csv(), "compare/engines.csv")
            parent.log_figure(_figure(runs, result.label), "compare/best_vs_epochs.png")
        end_run(base.tracking_uri, parent_id, status)
    return result


