"""The one search lifecycle every engine plugs into.

``run_search(cfg, engine)`` does, for Optuna and keras-tuner alike (keras-tuner's own shape: one ``search()`` loop
and a ``run_trial`` that an engine overrides):

1. load the space, open the tracking store, load the data;
2. open the engine's study (create or resume) and check that the space, data and Training subset are the study's own;
3. find or create the study's parent MLflow run (once, under the engine's set-up lock);
4. let the engine run its loop; each trial goes through ``SearchRun.trial``: one child run (``search.trial``), the
   progress line, the epochs-vs-best curve, the consecutive-failure limit, the timeout and the epoch budget;
5. refit (when the space has ``refit:`` and ``--no-refit`` is not given): retrain the top-K COMPLETE trials'
   configurations on all of Training (PublicTest still picks the epoch), each a child run tagged ``fer.kind=refit``
   and ``fer.refit_of=<trial run>``; a refit is done once its run is FINISHED, so an interrupted one is redone by
   the next command;
6. end the parent run with an honest status, write the engine's summary, register the best refit (else the study's
   best COMPLETE trial) as ``challenger`` when it is a new best.

``--budget`` bounds the whole command by wall time: trials stop starting when what is left is what the refits need
(estimated from the images/s the top trials measured, at most ``refit.budget_share`` of the budget), every training
is bounded by time (``TrainParams.time_budget_s``: it stops at the step past which only its PublicTest pass fits,
keeping the best epoch), and the refits share what is left.

An engine (``fer_experiments.search.engines``) only says how its study is stored and how it picks the next trial.
The pieces live beside this module: ``search.run`` (the settings, the outcome, the engine protocol and ``SearchRun``),
``search.trial`` (one trial as a child run) and ``search.refit``; this module runs the command and registers.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from fer_experiments.config import DEFAULT_CHALLENGER_ALIAS, DataConfig, SearchConfig
from fer_experiments.errors import ConfigError, FatalError
from fer_experiments.search.progress import Progress
from fer_experiments.search.refit import DEFAULT_REFIT, refit
from fer_experiments.search.run import (  # noqa: F401 - re-exported: the lifecycle's public names
    TIMED_PHASES,
    Engine,
    InterruptHold,
    Interruption,
    SearchOutcome,
    SearchRun,
    StudySettings,
    check_identity,
    estimate_refit_seconds,
    no_lock,
)
from fer_experiments.tracking import tags

if TYPE_CHECKING:
    from fer_experiments.data import TrainingData
    from fer_experiments.spaces import SearchSpace
    from fer_experiments.tracking import TrackedRun


def run_search(cfg: SearchConfig, engine: Engine, *, space: "SearchSpace | None" = None,
               epoch_budget: int | None = None, register: bool = True, progress_stream: Any = None) -> SearchOutcome:
    """Run the search ``cfg`` describes with ``engine``; see the module docstring.

    ``space`` replaces the YAML file (engine comparisons vary its sampler and pruner); ``epoch_budget`` stops the
    search once its trials have trained that many epochs; ``register=False`` leaves the registry alone.
    Raises FatalError after ``max_consecutive_failures`` failed trials in a row or when no trial could finish.
    """
    if space is None and cfg.space_path is not None:
        from fer_experiments.spaces import load_space, resolve_space_path

        # Before the engine's session: a space with an error must leave nothing behind (no lock file, no store).
        space = load_space(resolve_space_path(cfg.space_path))
    if space is not None and isinstance(space.trial_budget, str) and cfg.budget_deadline is None:
        # Without it every trial would run to its max_epochs (a budgeted space sets those high).
        raise ConfigError(f"{space.source}: trial_budget {space.trial_budget!r} is a share of --budget: give --budget "
                          "(e.g. --budget 60m), or a space whose trial_budget is in seconds")
    _check_stores_writable(cfg)
    with engine.session(cfg):
        return _run(cfg, engine, space, epoch_budget, register, progress_stream)


def _check_stores_writable(cfg: SearchConfig) -> None:
    """Both stores writable before anything is written to either (one line naming the store, exit 5)."""
    from fer_experiments.locks import sqlite_write_problem
    from fer_experiments.tracking.store import check_store_writable, redact_uri

    check_store_writable(cfg.tracking_uri)
    problem = sqlite_write_problem(cfg.storage)
    if problem:
        raise FatalError(f"the Optuna storage {redact_uri(cfg.storage)} cannot be written: {problem}")


def _run(cfg: SearchConfig, engine: Engine, space: "SearchSpace | None", epoch_budget: int | None, register: bool,
         progress_stream: Any) -> SearchOutcome:
    from fer_experiments.data import load_dataset, load_training_data
    from fer_experiments.tracking import TrackedRun, prepare_store, set_status
    from fer_experiments.tracking.runs import heartbeat, process_tags

    started = time.perf_counter()
    # The first ~30 s (decoding the data, opening the stores, importing TensorFlow) say what they do.
    early = Progress(cfg.n_trials or 0, progress_stream)
    early.header(command_header(cfg, engine.name, space))
    with early.step(f"loading data {cfg.data.path}"):
        dataset = load_dataset(cfg.data.path, cache_dir=cfg.data.cache_dir)
    with early.step("opening the MLflow and Optuna stores"):
        prepare_store(cfg.tracking_uri)
        settings = engine.open(cfg, space, dataset.digest)
    check_identity(cfg.study, settings, space=space, data_digest=dataset.digest, limit=cfg.data.limit,
                   experiment=cfg.experiment)
    n_trials = cfg.n_trials if cfg.n_trials is not None else settings.n_trials
    if n_trials is None:
        raise ConfigError(f"study {cfg.study!r} has no --n-trials target yet; give --n-trials")
    data = load_training_data(DataConfig(path=cfg.data.path, limit=settings.limit, subset_seed=cfg.data.subset_seed,
                                         cache_dir=cfg.data.cache_dir), dataset)
    plan = (space or settings.space).refit
    refit_planned = cfg.refit is not False and (plan is not None or bool(cfg.refit))
    _check_budget_fits(cfg, (plan or DEFAULT_REFIT)["budget_share"] if refit_planned else 0.0,
                       sum(engine.counts()[:2]))
    parent_id = _ensure_parent_run(cfg, engine, settings)
    outcome = SearchOutcome(study=cfg.study, engine=engine.name, parent_run_id=parent_id)
    parent = TrackedRun(parent_id, cfg.tracking_uri)
    progress = Progress(n_trials, progress_stream)
    best = best_trial_record(cfg.tracking_uri, cfg.study, engine.name)
    complete, pruned, failed = engine.counts()
    progress.header(search_header(cfg, engine.name, settings, data, n_trials, complete + pruned))
    with progress.step("starting TensorFlow"):
        import fer_experiments.training.trainer  # noqa: F401 - imports Keras: the first trial would sit silent
    progress.seed(complete + pruned, complete, pruned, failed, best.objective_value if best else None,
                  best.number if best else None)
    run = SearchRun(cfg=cfg, engine=engine, space=settings.space, settings=settings, data=data, parent=parent,
                    n_trials=n_trials, outcome=outcome, progress=progress, epoch_budget=epoch_budget,
                    deadline=None if cfg.timeout_seconds is None else time.monotonic() + cfg.timeout_seconds,
                    budget_deadline=cfg.budget_deadline)
    # The YAML's refit settings (not part of the study's identity) win over the ones stored with the study.
    if cfg.refit is not False and (plan is not None or cfg.refit):
        run.refit_plan = plan or dict(DEFAULT_REFIT)
    if cfg.budget_deadline is not None:
        run.budget_seconds = max(0.0, cfg.budget_deadline - time.time())
    # A share of the whole --budget as given (set-up has already used some of it), the same for every trial.
    run.trial_seconds = run.space.trial_seconds(cfg.budget_seconds or run.budget_seconds or None)
    if cfg.budget_deadline is not None:
        if run.refit_plan is not None:
            run.refit_need = estimate_refit_seconds(run)
    final = "FAILED"
    # From here on the parent run is RUNNING; every way out below gives it a terminal status.
    set_status(cfg.tracking_uri, parent_id, "RUNNING")
    parent.set_tags(process_tags())  # this command now keeps the parent run RUNNING: reconcile checks on it
    outcome.add_time("setup", time.perf_counter() - started)
    try:
        with heartbeat(cfg.tracking_uri, parent_id), run.interrupts.installed():
            engine.search(run)
            if run.refit_plan is not None and not outcome.stopped and not engine.others_running():
                refit(run)
        final = "FAILED" if outcome.stopped else "FINISHED"
    except KeyboardInterrupt as exc:
        final = "KILLED"
        exc.search_interruption = _on_interrupt(run, register)  # type: ignore[attr-defined]
        raise
    finally:
        if final != "FINISHED" or not engine.others_running():
            set_status(cfg.tracking_uri, parent_id, final)
    _finish(run, register)
    return outcome


#: Seconds a first trial needs at the least (build, tracing, one epoch, evaluation, logging; ``should_stop``'s
#: guess before any measurement) and importing TensorFlow takes before it.
_FIRST_TRIAL_SECONDS = 20.0
_BACKEND_START_SECONDS = 10.0


def _check_budget_fits(cfg: SearchConfig, refit_share: float, finished: int) -> None:
    """ConfigError, before anything is logged, when a --budget leaves no time for the first trial of a study that
    has none yet (it would run 0 trials and exit 0 without a word): what is left after set-up, the refit's share
    and the final reserve, against what a trial needs."""
    if cfg.budget_deadline is None or finished > 0:
        return
    left = cfg.budget_deadline - time.time()
    reserve = min(30.0, max(5.0, 0.03 * left))  # SearchRun.final_reserve
    # The first trial a refit needs may take half of what is left (SearchRun.trials_left).
    window = max(left * (1 - refit_share), (left - reserve) / 2) if refit_share else left
    for_trials = window - reserve - _BACKEND_START_SECONDS
    if for_trials <= _FIRST_TRIAL_SECONDS:
        need = (_FIRST_TRIAL_SECONDS + _BACKEND_START_SECONDS + 30.0) / (1 - refit_share)
        why = f"{refit_share:.0%} of it is kept for the refit, " if refit_share else ""
        raise ConfigError(f"--budget: too short to run a single trial ({left:.0f} s left after set-up; {why}"
                          f"{reserve:.0f} s for the summary, and a first trial needs ~{_FIRST_TRIAL_SECONDS:.0f} s "
                          f"after TensorFlow starts); give at least --budget {math.ceil(need / 60)}m")


def _on_interrupt(run: SearchRun, register: bool) -> Interruption:
    """Say what the interruption stopped, and register a new best found before it as challenger now rather than at
    the next resume (a failure to do so is a note: the interruption itself must go through)."""
    cfg, out = run.cfg, run.outcome
    info = Interruption(running_trial=run.running_trial)
    try:
        best = best_trial_record(cfg.tracking_uri, cfg.study, run.engine.name)
        if best is not None:
            info.best_trial, info.best_value = best.number, best.objective_value
            out.best_value, out.best_trial, out.best_run_id = best.objective_value, best.number, best.run_id
            if register:
                with run.engine.setup_lock():
                    info.registered_version = register_challenger(cfg, run.settings, out)
    except Exception as exc:  # noqa: BLE001 - housekeeping on the way out; the next run registers it
        info.note = f"challenger not registered: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return info


def _ensure_parent_run(cfg: SearchConfig, engine: Engine, settings: StudySettings) -> str:
    """The study's parent MLflow run, created once (under the engine's lock) by the first command."""
    from fer_experiments.tracking import TrackedRun, create_run, redact_uri
    from fer_experiments.tracking.runs import command_source, git_commit

    with engine.setup_lock():
        # Read under the lock: another worker may have created it since this one opened the study.
        known = engine.parent_run_id()
        if known:
            return known
        space = settings.space
        commit = git_commit()
        run_id = create_run(cfg.tracking_uri, settings.experiment, f"study-{cfg.study}", tags={
            tags.KIND: tags.KIND_STUDY, tags.ENGINE: engine.name, tags.STUDY: cfg.study,
            tags.STORAGE: redact_uri(cfg.storage), tags.SPACE_FILE: str(space.source),
            tags.SPACE_HASH: space.content_hash(), tags.SPACE_NAME: space.name, tags.DATA_DIGEST: settings.data_digest,
            tags.TRAIN_LIMIT: str(settings.limit), tags.GIT_COMMIT: commit, tags.MLFLOW_GIT_COMMIT: commit,
            tags.OBJECTIVE: space.objective, tags.MLFLOW_SOURCE_NAME: command_source(),
            tags.MLFLOW_SOURCE_TYPE: "LOCAL"} | engine.parent_tags() | (
            {tags.COST_OBJECTIVE: space.cost_objective} if space.cost_objective else {}))
        TrackedRun(run_id, cfg.tracking_uri).log_params(study_params(engine.name, settings))
        engine.remember_parent(run_id)
        return run_id


def _finish(run: SearchRun, register: bool) -> None:
    """Counts, best trial, summary and challenger after the loop (also after a fatal stop)."""
    from fer_experiments.tracking import TrackedRun

    cfg, out, engine = run.cfg, run.outcome, run.engine
    out.complete, out.pruned, out.failed = engine.counts()
    out.finished = out.complete + out.pruned
    best = best_trial_record(cfg.tracking_uri, cfg.study, engine.name)
    if best is not None:
        out.best_value, out.best_trial, out.best_run_id = best.objective_value, best.number, best.run_id
    parent = TrackedRun(out.parent_run_id, cfg.tracking_uri)
    started = time.perf_counter()
    chosen = best_trial_record(cfg.tracking_uri, cfg.study, engine.name, kinds=(tags.KIND_REFIT,)) or best
    if chosen is not None:
        out.challenger_run_id, out.challenger_trial = chosen.run_id, chosen.number
        out.challenger_value = chosen.objective_value
    try:
        out.notes += engine.summarise(parent, cfg.tracking_uri)
    except Exception as exc:  # noqa: BLE001 - a summary must never lose the trials already run
        out.notes.append(f"summary incomplete: {type(exc).__name__}: {exc}")
    out.add_time("summary", time.perf_counter() - started)
    if register:
        started = time.perf_counter()
        with engine.setup_lock():  # workers ending together register the new best once
            out.registered_version = register_challenger(cfg, run.settings, out)
        out.add_time("registration", time.perf_counter() - started)
    try:
        describe_parent(parent, cfg, run.settings, out)
    except Exception as exc:  # noqa: BLE001 - a description must never lose the trials already run
        out.notes.append(f"study description incomplete: {type(exc).__name__}: {exc}")
    try:
        from fer_experiments.search.report import log_study_report

        log_study_report(cfg.study, cfg.tracking_uri, cfg.storage if engine.name == "optuna" else None, parent)
    except Exception as exc:  # noqa: BLE001 - the report is a view; the study is what matters
        out.notes.append(f"study report not written: {type(exc).__name__}: {exc}")
    if out.stopped:
        raise FatalError(f"search stopped: {out.stopped} (last reason: {out.last_failure or 'none'}); "
                         f"{format_outcome(out)}")
    if out.ran and out.finished == 0 and out.failed:
        raise FatalError(f"{engine.name} study {cfg.study!r}: no trial finished ({out.failed} failed; last reason: "
                         f"{out.last_failure or 'unknown'})")


def command_header(cfg: SearchConfig, engine: str, space: "SearchSpace | None") -> list[tuple[str, str]]:
    """What a search command searches, printed before anything slow starts (storages without passwords)."""
    from fer_experiments.tracking import redact_uri

    lines = [("study", f"{cfg.study} ({engine})")]
    if space is not None:
        lines += [("space", f"{space.name} ({space.source}, hash {space.content_hash()[:12]})"),
                  ("target", f"maximise {space.objective} on PublicTest; up to {space.max_epochs} epochs a trial"
                             + (f"; {cfg.n_trials} finished trials" if cfg.n_trials else ""))]
    lines.append(("MLflow", redact_uri(cfg.tracking_uri)))
    if engine == "optuna":
        lines.append(("storage", redact_uri(cfg.storage)))
    return lines


def search_header(cfg: SearchConfig, engine: str, settings: StudySettings, data: "TrainingData", n_trials: int,
                  finished: int) -> list[tuple[str, str]]:
    """What the study holds once opened: its data (digest, subset), experiment and progress so far."""
    limit = f"{len(data.train.y)} Training rows" + (f" (limit {settings.limit})" if settings.limit else " (all)")
    return [
        ("data", f"{data.dataset.source} (digest {data.dataset.digest[:12]}); {limit}, "
                 f"{len(data.val.y)} PublicTest rows"),
        ("experiment", f"{settings.experiment} (space {settings.space.name}, hash {settings.space_hash[:12]})"),
        ("trials", f"{finished} of {n_trials} finished so far"),
    ]


def study_params(engine: str, settings: StudySettings) -> dict[str, Any]:
    """The study's settings as its parent run's params (fixed for the study's life, as MLflow params must be)."""
    space = settings.space
    params: dict[str, Any] = {tags.PARAM_ENGINE: engine, tags.PARAM_SPACE: space.name,
                              tags.SPACE_FILE: settings.space_source, tags.OBJECTIVE: space.objective,
                              tags.PARAM_MAX_EPOCHS: space.max_epochs, tags.TRAIN_LIMIT: settings.limit,
                              tags.DATA_DIGEST: settings.data_digest[:12]}
    if engine == "optuna":
        params |= {tags.PARAM_SAMPLER: space.sampler, tags.PARAM_PRUNER: space.pruner}
    for spec in space.params:
        params[tags.PARAM_SPACE_PREFIX + spec.name] = spec.describe() + (
            f" when {', '.join(f'{k} in {list(v)}' for k, v in spec.when)}" if spec.when else "")
    return params


def describe_parent(parent: "TrackedRun", cfg: SearchConfig, settings: StudySettings, out: SearchOutcome) -> None:
    """The parent run's description (MLflow's note) with the outcome, and the best trial's params.

    MLflow params cannot change once logged: the best trial's params (``best.<name>``) are logged with the first
    best; the ``best_trial`` tag and the description always name the current best.
    """
    from fer_experiments.models.labels import run_name
    from fer_experiments.tracking import get_run

    space = settings.space
    lines = [f"**Study {cfg.study}** ({out.engine}): space `{space.name}`, maximise `{space.objective}` on "
             f"PublicTest, up to {space.max_epochs} epochs a trial, Training limit {settings.limit}.", "",
             f"{out.finished} finished ({out.complete} complete, {out.pruned} pruned), {out.failed} failed."]
    if out.best_run_id is not None and out.best_value is not None:
        best = get_run(cfg.tracking_uri, out.best_run_id)
        values = {k: v for k, v in best.params.items() if k in _hyperparameter_names()}
        searched = {k: v for k, v in values.items() if k in space.names}
        lines += ["", f"Best: **{space.objective} {out.best_value:.4f}**, trial {out.best_trial} "
                      f"(`{run_name(out.best_trial or 0, values)}`, run {out.best_run_id})."]
        info = parent.info()
        best_key = tags.PARAM_BEST_PREFIX + "trial"
        logged = {k: v for k, v in info.params.items() if k.startswith(tags.PARAM_BEST_PREFIX)}
        if not logged:
            parent.log_params({tags.PARAM_BEST_PREFIX + k: v for k, v in searched.items()} | {best_key: out.best_trial})
        elif logged.get(best_key) != str(out.best_trial):
            lines.append(f"(The `best.*` params are trial {logged.get(best_key)}'s, the first best; MLflow params "
                         "cannot change.)")
        parent.set_tags({tags.BEST_TRIAL: out.best_trial})
    version = out.registered_version or None
    if version:
        lines.append(f"Registered as {cfg.model_name} version {version} (alias `{DEFAULT_CHALLENGER_ALIAS}`).")
    if out.stopped:
        lines.append(f"Stopped early: {out.stopped}.")
    lines += ["", "Report: `summary/report.html` in this run's artifacts."]
    parent.set_tags({tags.MLFLOW_NOTE: "\n".join(lines)})


def _hyperparameter_names() -> set[str]:
    """The names of the family's model and training parameters (what a trial's params hold besides bookkeeping)."""
    import dataclasses

    from fer_experiments.params import ModelParams, TrainParams

    return {f.name for f in (*dataclasses.fields(ModelParams), *dataclasses.fields(TrainParams))}


def best_trial_record(tracking_uri: str, study: str, engine: str | None = None,
                      kinds: tuple[str, ...] = (tags.KIND_TRIAL,)) -> "tags.TrialRecord | None":
    """The study's best COMPLETE trial (or refit, with ``kinds``) as its MLflow runs record it (pruned and failed
    trials never qualify)."""
    from fer_experiments.tracking import find_trial_records

    complete = [r for r in find_trial_records(tracking_uri, study, engine=engine, state="COMPLETE", kinds=kinds)
                if r.objective_value is not None]
    return max(complete, key=lambda r: (r.objective_value, -r.number)) if complete else None


def register_challenger(cfg: SearchConfig, settings: StudySettings, out: SearchOutcome) -> str | None:
    """Register the study's challenger (its best refit, else its best COMPLETE trial) as a new version with the
    ``challenger`` alias, once per new challenger run."""
    from fer_experiments.tracking import get_run
    from fer_experiments.tracking.model_registry import register_with_alias

    run_id = out.challenger_run_id or out.best_run_id
    if run_id is None:
        return None
    parent = get_run(cfg.tracking_uri, out.parent_run_id)
    if parent.tags.get(tags.CHALLENGER_RUN) == run_id:
        return None
    trial = out.challenger_trial if out.challenger_run_id else out.best_trial
    value = out.challenger_value if out.challenger_run_id else out.best_value
    version = register_with_alias(cfg.tracking_uri, cfg.model_name, run_id, DEFAULT_CHALLENGER_ALIAS, tags={
        tags.VERSION_STUDY: cfg.study, tags.VERSION_TRIAL: trial, tags.VERSION_ENGINE: out.engine,
        tags.OBJECTIVE: settings.space.objective, tags.OBJECTIVE_VALUE: value,
        tags.DATA_DIGEST: settings.data_digest})
    from fer_experiments.tracking import TrackedRun

    TrackedRun(out.parent_run_id, cfg.tracking_uri).set_tags({tags.CHALLENGER_RUN: run_id})
    return version


def format_outcome(o: SearchOutcome) -> str:
    """One line: the study's trial counts and its best trial (and best refit)."""
    best = "none" if o.best_value is None else f"{o.best_value:.4f} (trial {o.best_trial})"
    line = (f"study {o.study}: {o.finished} finished ({o.complete} complete, {o.pruned} pruned), {o.failed} failed; "
            f"best {best}")
    if o.challenger_run_id and o.challenger_run_id != o.best_run_id and o.challenger_value is not None:
        line += f"; best refit {o.challenger_value:.4f} (of trial {o.challenger_trial})"
    return line
