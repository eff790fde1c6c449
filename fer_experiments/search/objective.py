"""The trial function: suggest params from the space -> one tracked training as a child run -> objective value."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import optuna

from fer_experiments.errors import TrialFailed

if TYPE_CHECKING:
    from fer_experiments.experiment import TrainingData
    from fer_experiments.spaces import SearchSpace

#: (trial number, epoch, max epochs, metrics) -> None: the live display's hook.
EpochHook = Callable[[int, int, int, dict[str, float]], None]


@dataclass
class Objective:
    """Callable for ``study.optimize``: each call is one trial and one MLflow child run."""

    space: "SearchSpace"
    data: "TrainingData"
    tracking_uri: str
    experiment: str
    parent_run_id: str
    study_name: str
    tags: dict[str, Any] = field(default_factory=dict)
    on_epoch: EpochHook | None = None
    #: Called first thing in every trial (the runner releases its trial-start lock there).
    on_start: Callable[[], None] | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        from fer_experiments.experiment import tracked_trial
        from fer_experiments.spaces import epochs_for, suggest

        if self.on_start is not None:
            self.on_start()
        values = suggest(self.space, trial)
        epochs = epochs_for(self.space, values)
        tags = self.tags | {
            "fer.kind": "trial", "fer.engine": "optuna", "study": self.study_name, "trial_number": trial.number,
            "optuna_study": self.study_name, "optuna_trial_number": trial.number, "host": socket.gethostname()}
        try:
            done = tracked_trial(
                tracking_uri=self.tracking_uri, experiment=self.experiment, parent_run_id=self.parent_run_id,
                number=trial.number, tags=tags, data=self.data, values=values, epochs=epochs,
                objective=self.space.objective, extra_params={"space": self.space.name},
                observers=[self._reporter(trial, epochs)], stop_exceptions=(optuna.TrialPruned,),
                on_run=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id))
        except KeyboardInterrupt:
            _queue_again(trial)
            trial.set_user_attr("fail_reason", "interrupted")
            raise
        if done.stopped is not None:
            raise done.stopped
        if done.failure is not None:
            trial.set_user_attr("fail_reason", done.failure)
            raise TrialFailed(f"trial {trial.number}: {done.failure}")
        assert done.result is not None
        return done.result.objective_value

    def _reporter(self, trial: optuna.Trial, epochs: int) -> Callable[[int, dict[str, float]], None]:
        objective = self.space.objective

        def report(epoch: int, metrics: dict[str, float]) -> None:
            if self.on_epoch is not None:
                self.on_epoch(trial.number, epoch, epochs, metrics)
            trial.report(metrics[objective], step=epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} ({objective} {metrics[objective]:.4f})")

        return report


def _queue_again(trial: optuna.Trial) -> None:
    """Ctrl-C / SIGTERM (docker stop) is no verdict on the params: queue them again for the next trial of any worker,
    as Optuna's heartbeat retry does for a dead worker's trial (same system attrs, at most 3 retries)."""
    import warnings

    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)(trial.study, frozen)
