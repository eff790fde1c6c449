"""Refit: retrain the study's top-K COMPLETE trials' configurations on all of Training after the search.

Each refit is a child run tagged ``fer.kind=refit`` and ``fer.refit_of=<trial run>`` (PublicTest still picks the
epoch); a refit is done once its run is FINISHED, so an interrupted one is redone by the next command. Under
``--budget`` the refits share what is left, and ``estimate_refit_seconds`` tells the trial loop what to keep.
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any

from fer_experiments.config import DataConfig
from fer_experiments.search.trial import gpu_label, tracked_trial
from fer_experiments.tracking import tags

if TYPE_CHECKING:
    from fer_experiments.search.lifecycle import SearchRun

_REFIT_OVERHEAD = 20.0
_MIN_REFIT_SECONDS = 10.0


def _top_trials(run: "SearchRun") -> list["tags.TrialRecord"]:
    """The study's top-K COMPLETE trials (refits excluded) by the objective, ties to the earlier trial."""
    from fer_experiments.tracking import find_trial_records

    assert run.refit_plan is not None
    records = [r for r in find_trial_records(run.cfg.tracking_uri, run.cfg.study, engine=run.engine.name,
                                             state="COMPLETE", kinds=(tags.KIND_TRIAL,))
               if r.objective_value is not None]
    records.sort(key=lambda r: (-(r.objective_value or 0.0), r.number))
    return records[:run.refit_plan["top_k"]]


def _refit_rows(run: "SearchRun") -> int:
    assert run.refit_plan is not None
    n = len(run.data.dataset.split("Training").y)
    limit = run.refit_plan["train_limit"]
    return n if limit is None else min(n, limit)


def estimate_refit_seconds(run: "SearchRun") -> float:
    """Seconds the refits of the current top-K trials need, from each trial's measured images/s (fit only) plus
    a PublicTest pass per epoch; at most ``refit.budget_share`` of the budget (before any trial: that share)."""
    from fer_experiments.tracking import get_run

    plan = run.refit_plan
    assert plan is not None
    cap = plan["budget_share"] * run.budget_seconds
    rows, n_val = _refit_rows(run), len(run.data.val.y)
    need, known = 0.0, 0
    for record in _top_trials(run):
        info = get_run(run.cfg.tracking_uri, record.run_id)
        ips = info.metrics.get(tags.TRAIN_IMAGES_PER_SECOND)
        if not ips:
            continue
        known += 1
        epochs = plan["epochs"] or int(float(info.params.get(tags.PARAM_EPOCHS, run.space.max_epochs)))
        views = 2 if info.params.get("tta") == "flip" else 1
        # Inference runs at roughly three times the training pace per image here.
        need += epochs * (rows / ips + views * n_val / (3 * ips)) + _REFIT_OVERHEAD
    if not known:
        return cap
    return min(cap, need)


def _refit_values(params: dict[str, str]) -> dict[str, Any]:
    """A trial run's model and training parameters (as logged) -> values for ``split_params``."""
    from fer_experiments.params import ALL_FIELDS

    return {k: params[k] for k in ALL_FIELDS if k in params and k != "time_budget_s"}


def refit(run: "SearchRun") -> None:
    """Retrain the top-K trials' configurations on the refit rows (all of Training by default), each as a child run
    of the study (``fer.kind=refit``, ``fer.refit_of``); a trial whose refit run is FINISHED is not refit again."""
    from fer_experiments.data import load_training_data
    from fer_experiments.tracking import end_run, find_runs, get_run

    plan, cfg, out = run.refit_plan, run.cfg, run.outcome
    assert plan is not None
    top = _top_trials(run)
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
        values = _refit_values(get_run(cfg.tracking_uri, record.run_id).params)
        epochs = plan["epochs"] or int(values.get(tags.PARAM_EPOCHS, run.space.max_epochs))
        if run.budget_deadline is not None:
            share = (run.budget_deadline - run.final_reserve - time.time()) / (len(todo) - i)
            if share < _MIN_REFIT_SECONDS:
                run.progress.note(f"--budget: no time left to refit trial {record.number}")
                break
            after = run.after_training()
            values["time_budget_s"] = round(share - after, 1) if share > 2 * after else round(share / 2, 1)
        run.progress.note(f"refit of trial {record.number} on {len(data.train.y)} Training rows, up to {epochs} epochs"
                          + (f", {values['time_budget_s']:.0f}s" if "time_budget_s" in values else ""))

        def show(epoch: int, metrics: dict[str, float], number: int = record.number) -> None:
            run.progress.epoch(number, epoch, epochs, metrics, objective)

        refit_tags = tags.trial_tags(study=cfg.study, engine=run.engine.name, number=record.number,
                                     kind=tags.KIND_REFIT) | {
            tags.REFIT_OF: record.run_id, tags.HOST: socket.gethostname(), tags.PID: os.getpid(),
            tags.GPU: gpu_label(cfg)}
        result = tracked_trial(tracking_uri=cfg.tracking_uri, experiment=run.experiment,
                               parent_run_id=run.parent.run_id, number=record.number, tags=refit_tags, data=data,
                               values=values, epochs=epochs, objective=objective,
                               extra_params={"space": run.space.name, "engine": run.engine.name,
                                             tags.PARAM_REFIT_OF: record.run_id},
                               observers=[show], run_name=f"refit-{record.number}")
        value = result.result.objective_value if result.result is not None else None
        out.refits.append((record.number, result.run_id, result.state, value))
        shown = f"{value:.4f}" if value is not None else (result.failure or result.state)
        run.progress.note(f"refit of trial {record.number} {result.state}: {objective} {shown} "
                          f"(trial: {record.objective_value:.4f})")


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
