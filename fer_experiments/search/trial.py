"""One trial as a child MLflow run of the study's parent run: what every engine's trial and every refit run.

``tracked_trial`` starts the run, trains, and ends it with the trial's state (COMPLETE, PRUNED or FAIL) as tags;
``TrialRun`` says how the training ended.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from fer_experiments.config import SearchConfig
from fer_experiments.errors import ConfigError

if TYPE_CHECKING:
    from fer_experiments.data import TrainingData
    from fer_experiments.training.trainer import BatchObserver, EpochObserver, TrainResult


class ConstraintViolated(Exception):
    """A configuration past its space's serving limits: it never trains (the engine's own stop exception is used
    where it has one, e.g. Optuna's ``TrialPruned``)."""


class OutOfTheRunning(Exception):
    """A challenger stopped because no refit can take it any more (``search.ranking.out_of_the_running``): a
    normal end, PRUNED like an engine's own stop; ``value`` is the best objective it reached."""

    def __init__(self, message: str, value: float) -> None:
        super().__init__(message)
        self.value = value


@dataclass
class TrialRun:
    """How one trial's training ended: COMPLETE (``result``), FAIL (``failure``) or stopped on purpose by the
    engine (``stopped``, e.g. Optuna's pruning exception)."""

    run_id: str
    number: int
    epochs_reached: int = 0
    result: "TrainResult | None" = None
    failure: str | None = None
    stopped: BaseException | None = None
    #: Set when the trial never trained because its serving cost broke a limit: the broken limits, one line.
    skipped: str | None = None
    #: Under a space's ``constraints:``: how far the cost is past each limit (<= 0: within), for the sampler.
    constraints: list[float] | None = None
    #: The serving-cost figures measured before training (``models.cost.ServingCost.figures``), None if not measured.
    cost: dict[str, float] | None = None

    @property
    def state(self) -> str:
        return "COMPLETE" if self.result is not None else "PRUNED" if self.stopped is not None else "FAIL"


def gpu_label(cfg: SearchConfig) -> str | None:
    """The GPU a worker runs on: --gpu, or FER_EXP_GPU_LABEL where a container runtime already pinned the device."""
    return str(cfg.gpu) if cfg.gpu is not None else os.environ.get("FER_EXP_GPU_LABEL")


def tracked_trial(*, tracking_uri: str, experiment: str, parent_run_id: str, number: int, tags: dict[str, Any],
                  data: "TrainingData", values: dict[str, Any], epochs: int, objective: str,
                  extra_params: dict[str, Any], observers: Sequence["EpochObserver"] = (),
                  stop_exceptions: tuple[type[BaseException], ...] = (),
                  on_run: Callable[[str], None] | None = None,
                  on_phase: Callable[[str, float], None] | None = None,
                  on_end: Callable[[], None] | None = None,
                  on_batch: "BatchObserver | None" = None, run_name: str | None = None,
                  initial_weights: Sequence[Any] | None = None, cost: dict[str, float] | None = None,
                  skip: str | None = None) -> TrialRun:
    """One trial as a child MLflow run of the study's parent run.

    The run ends FINISHED (trial_state COMPLETE; or trial_state PRUNED, tagged with the epoch reached, when an
    observer raises one of ``stop_exceptions`` or ``OutOfTheRunning``) or FAILED (FAIL, with the reason: NaN loss,
    out of memory, an invalid combination or any other error of this trial alone). Ctrl-C/SIGTERM propagate after
    tagging the run FAIL; the run then ends KILLED. ``on_phase(phase, seconds)`` receives the trial's
    ``trial_setup``, ``training`` and ``tracking`` wall times.
    """
    from fer_experiments.errors import TrialFailed
    from fer_experiments.models.labels import run_name as describe_run
    from fer_experiments.params import split_params
    from fer_experiments.tracking import start_run, tags as names
    from fer_experiments.tracking.training_run import base_tags, tracked_training

    reached = {"epoch": 0}
    clock = {"start": time.perf_counter(), "fit": 0.0, "epoch_end": 0.0}

    def count(epoch: int, metrics: dict[str, float]) -> None:
        reached["epoch"] = epoch
        clock["epoch_end"] = time.perf_counter()

    # The run list then says what each trial trains: "trial-3 3x2c16 bn-after gap" (a refit names itself).
    with start_run(tracking_uri, experiment, run_name=run_name or describe_run(number, values),
                   tags=base_tags(data) | tags,
                   parent_run_id=parent_run_id) as run:
        if on_run is not None:
            on_run(run.run_id)
        outcome = TrialRun(run_id=run.run_id, number=number)
        if cost:
            run.log_metrics(cost, step=0)
        if skip is not None:
            from fer_experiments.params import flat_params

            model_params, train_params = split_params(values | {"epochs": epochs})
            run.log_params(flat_params(model_params, train_params) | {names.TRIAL_NUMBER: number} | extra_params)
            run.set_tags({names.TRIAL_STATE: "PRUNED", names.PRUNED_AT_EPOCH: 0, names.CONSTRAINT_VIOLATION: skip})
            outcome.skipped = skip
            outcome.stopped = (stop_exceptions[0] if stop_exceptions else ConstraintViolated)(
                f"not trained: {skip}")
            if on_end is not None:
                on_end()
            return outcome
        try:
            model_params, train_params = split_params(values | {"epochs": epochs})
            clock["fit"] = clock["epoch_end"] = time.perf_counter()
            outcome.result = tracked_training(run, model_params, train_params, data, objective=objective,
                                              extra_params={names.TRIAL_NUMBER: number} | extra_params,
                                              observers=[count, *observers], on_batch=on_batch,
                                              initial_weights=initial_weights)
        except (*stop_exceptions, OutOfTheRunning) as exc:
            # Pruned = stopped on purpose, a normal end: FINISHED with trial_state PRUNED (as Optuna's and Ray Tune's
            # MLflow integrations do). KILLED is kept for interruptions, so the UI's red cross means "interrupted".
            run.set_tags({names.TRIAL_STATE: "PRUNED", names.PRUNED_AT_EPOCH: reached["epoch"]} | (
                {names.PRUNE_REASON: str(exc)[:500]} if str(exc) else {}))
            outcome.stopped = exc
        except KeyboardInterrupt:
            run.set_tags({names.TRIAL_STATE: "FAIL"})
            raise
        except (TrialFailed, ConfigError) as exc:
            outcome.failure = str(exc)
        except Exception as exc:  # noqa: BLE001 - an unexpected error fails this trial, not the search
            outcome.failure = f"{type(exc).__name__}: {exc}"
        if on_end is not None:
            on_end()  # training is over: from here the outcome is recorded whole
        if outcome.failure is not None:
            outcome.failure = outcome.failure.splitlines()[0][:1000] if outcome.failure else "unknown error"
            run.set_tags({names.TRIAL_STATE: "FAIL", names.FAILURE_REASON: outcome.failure})
            run.final_status = "FAILED"
        elif outcome.result is not None:
            run.set_tags({names.TRIAL_STATE: "COMPLETE", names.OBJECTIVE_VALUE: outcome.result.objective_value})
    if on_phase is not None:
        # A trial that failed before training counts all its time as set-up; one stopped mid-epoch, up to its last
        # finished epoch as training.
        ended = time.perf_counter()
        fit = clock["fit"] or ended
        trained_until = max(clock["epoch_end"], fit)
        on_phase("trial_setup", fit - clock["start"])
        on_phase("training", trained_until - fit)
        on_phase("tracking", ended - trained_until)
    outcome.epochs_reached = reached["epoch"]
    return outcome
