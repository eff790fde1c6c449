"""Refit: after the trials, retrain the study's top-K COMPLETE trials' configurations on the refit rows (all of
Training by default; PublicTest still picks the epoch), each a child run tagged ``fer.kind=refit`` and
``fer.refit_of=<trial run>``; with ``refit.warm_start`` a refit continues its trial's trained weights. A refit is
done once its run is FINISHED, so an interrupted one is redone by the next command.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from fer_experiments.config import DataConfig
from fer_experiments.search.run import SearchRun, refit_ranking
from fer_experiments.search.trial import gpu_label, tracked_trial
from fer_experiments.tracking import tags

#: ``--refit`` on a space without ``refit:``: the best trial, its own epochs, all of Training.
DEFAULT_REFIT: dict[str, Any] = {"top_k": 1, "epochs": None, "train_limit": None, "budget_share": 0.5}
#: The least a refit is worth starting with.
_MIN_REFIT_SECONDS = 10.0

def _refit_values(params: dict[str, str]) -> dict[str, Any]:
    """A trial run's model and training parameters (as logged) -> values for ``split_params``."""
    from fer_experiments.params import ALL_FIELDS

    return {k: params[k] for k in ALL_FIELDS if k in params and k != "time_budget_s"}


def refit(run: SearchRun) -> None:
    """Retrain the top-K trials' configurations on the refit rows (all of Training by default), each as a child run
    of the study (``fer.kind=refit``, ``fer.refit_of``); a trial whose refit run is FINISHED is not refit again."""
    from fer_experiments.data import load_training_data
    from fer_experiments.tracking import end_run, find_runs, get_run

    plan, cfg, out = run.refit_plan, run.cfg, run.outcome
    assert plan is not None
    ranked, reason = refit_ranking(cfg.tracking_uri, cfg.study, run.engine.name, run.space)
    top = ranked[:plan["top_k"]]
    if reason:
        run.progress.note(f"refit: {reason}")
    existing = find_runs(cfg.tracking_uri, None, filter_string=tags.study_filter(
        cfg.study, kind=tags.KIND_REFIT, engine=run.engine.name))
    done = {r.tags.get(tags.REFIT_OF) for r in existing if r.status == "FINISHED"}
    for r in existing:  # a refit whose process died on this host (SIGKILL) must not stay RUNNING
        if r.status == "RUNNING" and r.tags.get(tags.HOST) == socket.gethostname() and not _alive(r.tags.get(tags.PID)):
            end_run(cfg.tracking_uri, r.run_id, "KILLED", reason="its process is gone; refit again")
    todo = [t for t in top if t.run_id not in done]
    if not todo:
        return
    data = load_training_data(DataConfig(path=cfg.data.path, limit=plan["train_limit"],
                                         subset_seed=cfg.data.subset_seed, cache_dir=cfg.data.cache_dir),
                              run.data.dataset)
    objective = run.space.objective
    for i, record in enumerate(todo):
        trial_run = get_run(cfg.tracking_uri, record.run_id)
        values = _refit_values(trial_run.params)
        epochs = plan["epochs"] or int(values.get(tags.PARAM_EPOCHS, run.space.max_epochs))
        if run.budget_deadline is not None:
            share = (run.budget_deadline - run.final_reserve - time.time()) / (len(todo) - i)
            if share < _MIN_REFIT_SECONDS:
                run.progress.note(f"--budget: no time left to refit trial {record.number}")
                break
            after = run.after_training()
            values["time_budget_s"] = round(share - after, 1) if share > 2 * after else round(share / 2, 1)
        weights, warm_tags = _warm_start(run, record, trial_run) if plan.get("warm_start") else (None, {})
        start = (f"continuing trial {record.number}'s epoch {warm_tags[tags.WARM_START_EPOCH]} weights"
                 if weights is not None else "from random weights")
        run.progress.note(f"refit of trial {record.number} on {len(data.train.y)} Training rows, up to {epochs} epochs"
                          + (f", {values['time_budget_s']:.0f}s" if "time_budget_s" in values else "") + f", {start}")

        def show(epoch: int, metrics: dict[str, float], number: int = record.number) -> None:
            run.progress.epoch(number, epoch, epochs, metrics, objective)

        refit_tags = tags.trial_tags(study=cfg.study, engine=run.engine.name, number=record.number,
                                     kind=tags.KIND_REFIT) | {
            tags.REFIT_OF: record.run_id, tags.HOST: socket.gethostname(), tags.PID: os.getpid(),
            tags.GPU: gpu_label(cfg)} | warm_tags
        if reason and record.run_id == top[0].run_id:
            refit_tags[tags.REFIT_CHOICE] = reason
        result = tracked_trial(tracking_uri=cfg.tracking_uri, experiment=run.experiment,
                               parent_run_id=run.parent.run_id, number=record.number, tags=refit_tags, data=data,
                               values=values, epochs=epochs, objective=objective,
                               extra_params={"space": run.space.name, "engine": run.engine.name,
                                             tags.PARAM_REFIT_OF: record.run_id},
                               observers=[show], run_name=f"refit-{record.number}", initial_weights=weights)
        value = result.result.objective_value if result.result is not None else None
        out.refits.append((record.number, result.run_id, result.state, value))
        shown = f"{value:.4f}" if value is not None else (result.failure or result.state)
        run.progress.note(f"refit of trial {record.number} {result.state}: {objective} {shown} "
                          f"(trial: {record.objective_value:.4f})")


def _warm_start(run: SearchRun, record: "tags.TrialRecord", trial_run: Any) -> tuple[list[Any] | None, dict[str, Any]]:
    """The trial's trained weights (its best epoch: kept in memory by this command, else its logged model) and the
    tags that say so; (None, {}) with a note when neither is there (the refit then starts from random weights)."""
    weights = run.trained.get(record.run_id, (0.0, None))[1]
    if weights is None:
        from fer_experiments.tracking.model_io import load_keras_model

        try:
            weights = load_keras_model(f"runs:/{record.run_id}/model", run.cfg.tracking_uri).get_weights()
        except Exception as exc:  # noqa: BLE001 - a missing or unreadable model: refit from scratch, say why
            run.progress.note(f"refit of trial {record.number}: its model cannot be loaded ({type(exc).__name__}); "
                              "starting from random weights")
            return None, {}
    epoch = trial_run.metrics.get("best_epoch")
    return weights, {tags.WARM_START_OF: record.run_id, tags.WARM_START_TRIAL: record.number,
                     tags.WARM_START_EPOCH: int(epoch) if epoch is not None else "unknown"}


def _alive(pid: str | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
