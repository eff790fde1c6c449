"""The trial function: suggest params from the space -> one tracked training as a child run -> objective value."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import optuna

from fer_experiments.errors import ConfigError, TrialFailed
from fer_experiments.params import split_params

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
        from fer_experiments.experiment import base_tags, tracked_training
        from fer_experiments.spaces import epochs_for, suggest
        from fer_experiments.tracking import start_run

        if self.on_start is not None:
            self.on_start()
        values = suggest(self.space, trial)
        epochs = epochs_for(self.space, values)
        tags = base_tags(self.data) | self.tags | {
            "fer.kind": "trial", "fer.engine": "optuna", "study": self.study_name, "trial_number": trial.number,
            "optuna_study": self.study_name, "optuna_trial_number": trial.number,
            "host": socket.gethostname()}
        outcome: BaseException | None = None
        reached = {"epoch": 0}
        with start_run(self.tracking_uri, self.experiment, run_name=f"trial-{trial.number}", tags=tags,
                       parent_run_id=self.parent_run_id) as run:
            trial.set_user_attr("mlflow_run_id", run.run_id)
            try:
                model_params, train_params = split_params(values | {"epochs": epochs})
                result = tracked_training(
                    run, model_params, train_params, self.data, objective=self.space.objective,
                    extra_params={"trial_number": trial.number, "space": self.space.name},
                    observers=[self._reporter(trial, epochs, reached)])
            except optuna.TrialPruned as exc:
                run.set_tags({"trial_state": "PRUNED", "pruned": "true", "pruned_at_epoch": reached["epoch"]})
                # Pruned = stopped on purpose before its last epoch: KILLED, for every pruned trial alike.
                run.final_status = "KILLED"
                outcome = exc
            except (TrialFailed, ConfigError) as exc:
                outcome = self._failed(trial, run, str(exc))
            except KeyboardInterrupt:
                trial.set_user_attr("fail_reason", "interrupted")
                run.set_tags({"trial_state": "FAIL", "fail_reason": "interrupted"})
                raise
            except Exception as exc:  # noqa: BLE001 - an unexpected error fails this trial, not the search
                outcome = self._failed(trial, run, f"{type(exc).__name__}: {exc}")
            else:
                run.set_tags({"trial_state": "COMPLETE", "objective_value": result.objective_value})
        if outcome is not None:
            raise outcome
        return result.objective_value

    def _failed(self, trial: optuna.Trial, run: Any, reason: str) -> TrialFailed:
        reason = reason.splitlines()[0][:1000] if reason else "unknown error"
        trial.set_user_attr("fail_reason", reason)
        run.set_tags({"trial_state": "FAIL", "fail_reason": reason})
        run.final_status = "FAILED"
        return TrialFailed(f"trial {trial.number}: {reason}")

    def _reporter(self, trial: optuna.Trial, epochs: int, reached: dict[str, int]) -> Callable[[int, dict[str, float]], None]:
        objective = self.space.objective

        def report(epoch: int, metrics: dict[str, float]) -> None:
            reached["epoch"] = epoch
            if self.on_epoch is not None:
                self.on_epoch(trial.number, epoch, epochs, metrics)
            trial.report(metrics[objective], step=epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} ({objective} {metrics[objective]:.4f})")

        return report
