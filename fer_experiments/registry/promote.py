"""``fer-exp promote`` / ``models`` / ``rollback``: move the ``champion`` alias safely.

Order of operations, chosen so that a crash anywhere is completed by simply running the command again:
evaluate on PrivateTest (skipped if the run already holds that evaluation) -> register (idempotent: one version
per run) -> record the previous target -> move the alias (one atomic registry update, so readers of
``models:/fer-cnn@champion`` always see the old or the new version).
The guard compares PublicTest accuracy, the selection split; PrivateTest is reported, never used to choose.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Callable

from fer_experiments.config import DEFAULT_ALIAS, DEFAULT_MODEL_NAME
from fer_experiments.errors import ConfigError, DataError, FatalError, Refused
from fer_experiments.tracking import tags

PUBLIC_ACC = tags.PUBLIC_ACCURACY
PUBLIC_F1 = tags.PUBLIC_MACRO_F1
HISTORY_TAG = tags.ALIAS_HISTORY

#: Called with (tracking URI, model name, alias) after an alias moved (or was found in place), e.g. to keep the
#: MLflow-serving wrapper in step (``fer_experiments.serving.mlflow_service.sync_service_alias``).
AliasHook = Callable[[str, str, str], object]


@dataclass(frozen=True)
class PromoteConfig:
    tracking_uri: str
    data_path: str | None
    study: str | None = None
    run_id: str | None = None
    model_name: str = DEFAULT_MODEL_NAME
    alias: str = DEFAULT_ALIAS
    force: bool = False
    dry_run: bool = False
    min_accuracy: float | None = None
    cache_dir: str | None = None
    #: With ``study``: the most accurate trial or refit whose serving latency (one face, ``runtime``) is within this.
    max_latency_ms: float | None = None
    runtime: str = "exported"


@dataclass
class Candidate:
    run_id: str
    study: str | None
    trial: int | None
    public_accuracy: float
    public_macro_f1: float | None
    data_digest: str | None
    private_accuracy: float | None = None
    private_macro_f1: float | None = None


@dataclass
class PromoteResult:
    candidate: Candidate
    champion_version: str | None
    champion_public_accuracy: float | None
    decision: str
    champion_private_accuracy: float | None = None
    champion_private_macro_f1: float | None = None
    version: str | None = None
    created_version: bool = False
    notes: list[str] = field(default_factory=list)


def _metric(metrics: dict[str, float], key: str, run_id: str) -> float:
    value = metrics.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise ConfigError(f"run {run_id}: metric {key!r} is missing or NaN; cannot compare it with the champion")
    return float(value)


def resolve_candidate(cfg: PromoteConfig) -> Candidate:
    """The run to promote: ``--run`` or the best COMPLETE trial of ``--study``, with its PublicTest metrics."""
    from fer_experiments.tracking import get_run, prepare_store

    prepare_store(cfg.tracking_uri)
    if (cfg.study is None) == (cfg.run_id is None):
        raise ConfigError("give exactly one of --study and --run")
    study = trial = None
    run_id = cfg.run_id
    if cfg.max_latency_ms is not None and cfg.study is None:
        raise ConfigError("--max-latency-ms picks within a study: give --study")
    if cfg.study is not None:
        study, trial, run_id = best_of_study(cfg.tracking_uri, cfg.study, max_latency_ms=cfg.max_latency_ms,
                                             runtime=cfg.runtime, cache_dir=cfg.cache_dir)
    assert run_id is not None
    try:
        run = get_run(cfg.tracking_uri, run_id)
    except FatalError:
        raise
    except Exception as exc:  # noqa: BLE001 - mlflow raises its own type for an unknown run
        if "not found" in str(exc).lower() or "RESOURCE_DOES_NOT_EXIST" in str(exc):
            raise ConfigError(f"run {run_id}: not found in the tracking store") from exc
        raise FatalError(f"run {run_id}: cannot be read from the tracking store: {str(exc).splitlines()[0][:200]}") from exc
    if not tags.has_model(run.tags):
        raise ConfigError(f"run {run_id} has no logged model (nothing to register)")
    return Candidate(run_id=run_id, study=study or tags.study_of(run.tags),
                     trial=trial if trial is not None else tags.trial_number_of(run.tags),
                     public_accuracy=_metric(run.metrics, PUBLIC_ACC, run_id),
                     public_macro_f1=run.metrics.get(PUBLIC_F1), data_digest=run.tags.get(tags.DATA_DIGEST),
                     private_accuracy=run.metrics.get(tags.PRIVATE_ACCURACY),
                     private_macro_f1=run.metrics.get(tags.PRIVATE_MACRO_F1))


def best_of_study(tracking_uri: str, study: str, *, max_latency_ms: float | None = None, runtime: str = "exported",
                  cache_dir: str | None = None) -> tuple[str, int, str]:
    """(study, trial, run_id) of the study's best COMPLETE trial or refit, from its runs (any engine tags them
    alike); with ``max_latency_ms``, the best one serving a face within it on ``runtime`` (Refused if none)."""
    from fer_experiments.tracking import find_runs, find_trial_records

    records = find_trial_records(tracking_uri, study)
    if not records and not find_runs(tracking_uri, None, filter_string=tags.study_filter(study, kind=tags.KIND_STUDY)):
        known = sorted({tags.study_of(r.tags) or "" for r in find_runs(
            tracking_uri, None, filter_string=f"tags.`{tags.KIND}` = '{tags.KIND_STUDY}'")} - {""})
        raise ConfigError(f"unknown study {study!r} in the tracking store (studies: {', '.join(known) or 'none'})")
    complete = [r for r in records if r.state == "COMPLETE" and r.objective_value is not None]
    if not complete:
        raise ConfigError(f"study {study!r} has no COMPLETE trial to promote")
    if max_latency_ms is not None:
        complete = _within_latency(tracking_uri, study, complete, max_latency_ms, runtime, cache_dir)
    best = max(complete, key=lambda r: (r.objective_value, -r.number))
    return study, best.number, best.run_id


def _within_latency(tracking_uri: str, study: str, records: list["tags.TrialRecord"], max_latency_ms: float,
                    runtime: str, cache_dir: str | None) -> list["tags.TrialRecord"]:
    """The records whose network serves one face within ``max_latency_ms`` on ``runtime``: the latency its trial
    measured on that runtime, else measured now from the run's parameters (cached by architecture)."""
    from fer_experiments.data import default_cache_dir
    from fer_experiments.models.cost import serving_cost
    from fer_experiments.params import MODEL_FIELDS, split_params
    from fer_experiments.tracking import get_run

    cache = f"{cache_dir or default_cache_dir()}/serving_cost.json"
    within, fastest = [], None
    for record in records:
        run = get_run(tracking_uri, record.run_id)
        latency = run.metrics.get("latency_ms")
        if latency is None or run.tags.get(tags.COST_RUNTIME) != runtime:
            try:
                model, _ = split_params({k: v for k, v in run.params.items() if k in MODEL_FIELDS})
            except ConfigError:
                continue  # not a network of the family (an ensemble): no single architecture to measure
            latency = serving_cost(model, runtime, cache_file=cache).latency_ms
        if fastest is None or latency < fastest[0]:
            fastest = (latency, record)
        if latency <= max_latency_ms:
            within.append(record)
    if not within:
        shown = (f"; the fastest is trial {fastest[1].number} (run {fastest[1].run_id}) at {fastest[0]:.3f} ms"
                 if fastest else "")
        raise Refused(f"study {study!r}: no COMPLETE trial or refit serves a face within --max-latency-ms "
                      f"{max_latency_ms:g} on the {runtime} runtime{shown}; nothing changed")
    return within


def logged_data_path(cfg: PromoteConfig, cand: Candidate, notes: list[str]) -> str:
    """``--data``, else the data set logged with the candidate's run when that file is here with the same digest."""
    from fer_experiments.data import load_dataset
    from fer_experiments.tracking import get_run

    if cfg.data_path is not None:
        return cfg.data_path
    source = get_run(cfg.tracking_uri, cand.run_id).tags.get(tags.DATA_SOURCE)
    if not source:
        raise ConfigError(f"run {cand.run_id} does not record its data set: give --data to evaluate it on PrivateTest")
    from pathlib import Path

    if not Path(source).exists():
        raise ConfigError(f"the data set logged with run {cand.run_id} ({source}) is not on this machine: give --data "
                          "(the same data set) to evaluate it on PrivateTest")
    digest = load_dataset(source, cache_dir=cfg.cache_dir).digest
    if cand.data_digest and digest != cand.data_digest:
        raise ConfigError(f"the data set logged with run {cand.run_id} ({source}) changed since (digest {digest[:12]}, "
                          f"the run trained on {cand.data_digest[:12]}): give --data with the original data set")
    notes.append(f"PrivateTest from the data set logged with the run: {source} (digest {digest[:12]}, the same)")
    return source


def evaluate_on_private_test(cfg: PromoteConfig, cand: Candidate, notes: list[str] | None = None) -> None:
    """Evaluate the candidate once on PrivateTest and log ``test_*`` metrics and the per-class table to its run."""
    from fer_experiments.data import load_dataset
    from fer_experiments.registry.evaluate import evaluate_model
    from fer_experiments.tracking import TrackedRun, get_run
    from fer_experiments.tracking.training_run import log_evaluation_artifacts

    run = get_run(cfg.tracking_uri, cand.run_id)
    if tags.PRIVATE_ACCURACY in run.metrics and run.tags.get(tags.TEST_DATA_DIGEST) == cand.data_digest:
        return  # already evaluated (a rerun after a crash): do not look at PrivateTest twice
    data_path = logged_data_path(cfg, cand, notes if notes is not None else [])
    ds = load_dataset(data_path, cache_dir=cfg.cache_dir)
    if cand.data_digest and ds.digest != cand.data_digest:
        raise DataError(f"{data_path}: digest {ds.digest[:12]} differs from the candidate's training data "
                        f"({cand.data_digest[:12]}); point --data at the same data set")
    ev = evaluate_model(f"runs:/{cand.run_id}/model", ds, "PrivateTest", cfg.tracking_uri)
    tracked = TrackedRun(cand.run_id, cfg.tracking_uri)
    log_evaluation_artifacts(tracked, ev, prefix="evaluation/test")
    # Linked to the logged model too: MLflow's Models tab then shows its PrivateTest numbers.
    tracked.log_metrics({**ev.summary_metrics("test"), **ev.per_class_metrics("test")},
                        model_id=run.tags.get(tags.model_id_tag()))
    tracked.set_tags({tags.TEST_DATA_DIGEST: ds.digest})
    cand.private_accuracy, cand.private_macro_f1 = ev.accuracy, ev.macro_f1


def promote(cfg: PromoteConfig, on_alias_moved: AliasHook | None = None) -> PromoteResult:
    """Promote the candidate behind the guard; see the module docstring. ``on_alias_moved`` runs after the alias
    points at the candidate (also when it already did, so a crashed promotion is completed).

    Guard, registration, alias moves and the hook run as one critical section per registered model
    (``registry_lock``): concurrent promotes end as some serial order of them would.
    """
    from fer_experiments.tracking import prepare_store
    from fer_experiments.tracking.model_registry import registry_lock
    from fer_experiments.tracking.store import require_existing_store

    # The candidate is read from the store first: a mistyped SQLite path is an error, never a new empty store.
    require_existing_store(cfg.tracking_uri)
    if cfg.dry_run:
        return _promote(cfg, on_alias_moved)  # reads only
    prepare_store(cfg.tracking_uri)
    with registry_lock(cfg.tracking_uri, cfg.model_name):
        return _promote(cfg, on_alias_moved)


def _promote(cfg: PromoteConfig, on_alias_moved: AliasHook | None) -> PromoteResult:
    from fer_experiments.tracking import get_run
    from fer_experiments.tracking.model_registry import alias_version, register_run_model, versions_of_run

    cand = resolve_candidate(cfg)
    champion = alias_version(cfg.tracking_uri, cfg.model_name, cfg.alias)
    champ_acc = champ_metrics = None
    if champion is not None and champion.run_id:
        champ_metrics = get_run(cfg.tracking_uri, champion.run_id).metrics
        champ_acc = champ_metrics.get(PUBLIC_ACC)
    result = PromoteResult(candidate=cand, champion_version=champion.version if champion else None,
                           champion_public_accuracy=champ_acc, decision="promote",
                           champion_private_accuracy=(champ_metrics or {}).get(tags.PRIVATE_ACCURACY),
                           champion_private_macro_f1=(champ_metrics or {}).get(tags.PRIVATE_MACRO_F1))
    if champion is not None and champion.run_id == cand.run_id:
        result.decision = "already"
        result.version = champion.version
        _after_move(on_alias_moved, cfg.tracking_uri, cfg.model_name, cfg.alias, result.notes)  # completes a crash
        return result
    if cfg.min_accuracy is not None and cand.public_accuracy < cfg.min_accuracy and not cfg.force:
        result.decision = "refused"
        raise Refused(f"candidate run {cand.run_id}: PublicTest accuracy {cand.public_accuracy:.4f} is below "
                      f"--min-accuracy {cfg.min_accuracy:.4f}; nothing changed")
    if champ_acc is not None and cand.public_accuracy <= champ_acc and not cfg.force:
        result.decision = "refused"
        raise Refused(f"candidate run {cand.run_id} (PublicTest accuracy {cand.public_accuracy:.4f}) is not better "
                      f"than {cfg.model_name}@{cfg.alias} version {champion.version} ({champ_acc:.4f}); "  # type: ignore[union-attr]
                      "nothing changed (use --force to promote anyway)")
    if cfg.dry_run:
        result.decision = "dry-run"
        registered = versions_of_run(cfg.tracking_uri, cfg.model_name, cand.run_id)
        result.version = registered[0].version if registered else None
        return result
    _refuse_unloadable_run(cfg.tracking_uri, cand.run_id)
    evaluate_on_private_test(cfg, cand, result.notes)
    version, created = register_run_model(cfg.tracking_uri, cfg.model_name, cand.run_id, tags={
        tags.VERSION_STUDY: cand.study, tags.VERSION_TRIAL: cand.trial, tags.DATA_DIGEST: cand.data_digest,
        tags.VERSION_PUBLIC_ACCURACY: cand.public_accuracy, tags.VERSION_PUBLIC_MACRO_F1: cand.public_macro_f1,
        tags.VERSION_PRIVATE_ACCURACY: cand.private_accuracy, tags.VERSION_PRIVATE_MACRO_F1: cand.private_macro_f1})
    move_alias(cfg.tracking_uri, cfg.model_name, cfg.alias, version.version,
               previous=champion.version if champion else None)
    result.version, result.created_version = version.version, created
    _after_move(on_alias_moved, cfg.tracking_uri, cfg.model_name, cfg.alias, result.notes)
    return result


def _refuse_unloadable_run(uri: str, run_id: str) -> None:
    from fer_experiments.tracking.model_registry import run_model_problem

    problem = run_model_problem(uri, run_id)
    if problem:
        raise Refused(f"candidate run {run_id} cannot be loaded: {problem}; nothing changed")


def _after_move(hook: AliasHook | None, uri: str, name: str, alias: str, notes: list[str] | None) -> None:
    """Run the alias hook; its failure is a note, since the alias itself has moved."""
    if hook is None:
        return
    try:
        hook(uri, name, alias)
    except Exception as exc:  # noqa: BLE001 - the promotion itself has succeeded; say what is missing
        if notes is not None:
            notes.append(f"after moving {name}@{alias}: {type(exc).__name__}: {exc}")


def move_alias(uri: str, name: str, alias: str, version: str, previous: str | None) -> None:
    """Record the alias's history and previous target, then point it at ``version``."""
    from fer_experiments.tracking.model_registry import get_model_tag, set_alias, set_model_tag

    history = json.loads(get_model_tag(uri, name, HISTORY_TAG.format(alias=alias)) or "[]")
    if previous is not None and (not history or history[-1] != previous):
        history.append(previous)  # a champion set by hand, outside promote
    if not history or history[-1] != version:
        history.append(version)
    set_model_tag(uri, name, HISTORY_TAG.format(alias=alias), json.dumps(history[-100:]))
    if previous is not None:
        set_alias(uri, name, f"previous-{alias}", previous)
    set_alias(uri, name, alias, version)


def rollback(uri: str, name: str, alias: str = DEFAULT_ALIAS,
             on_alias_moved: AliasHook | None = None) -> tuple[str, str]:
    """Point ``alias`` back at the version it pointed at before; returns (from, to). Runs under the same
    per-model lock as promote."""
    from fer_experiments.tracking import prepare_store
    from fer_experiments.tracking.model_registry import registry_lock
    from fer_experiments.tracking.store import require_existing_store

    require_existing_store(uri)  # nothing to roll back in a store that does not exist: never create one
    prepare_store(uri)
    with registry_lock(uri, name):
        return _rollback(uri, name, alias, on_alias_moved)


def _rollback(uri: str, name: str, alias: str, on_alias_moved: AliasHook | None) -> tuple[str, str]:
    from fer_experiments.tracking.model_registry import (
        alias_version,
        delete_alias,
        get_model_tag,
        model_artifact_problem,
        set_alias,
        set_model_tag,
    )

    current = alias_version(uri, name, alias)
    if current is None:
        raise ConfigError(f"{name}@{alias} does not exist: nothing to roll back")
    history = json.loads(get_model_tag(uri, name, HISTORY_TAG.format(alias=alias)) or "[]")
    while history and history[-1] == current.version:
        history.pop()
    if not history:
        raise ConfigError(f"{name}@{alias} (version {current.version}) has no earlier version to roll back to")
    target = history[-1]
    problem = model_artifact_problem(uri, name, target)
    if problem:
        raise Refused(f"{name} version {target} cannot be loaded: {problem}; {name}@{alias} stays on version "
                      f"{current.version}")
    set_model_tag(uri, name, HISTORY_TAG.format(alias=alias), json.dumps(history))
    if len(history) >= 2:
        set_alias(uri, name, f"previous-{alias}", history[-2])
    else:
        delete_alias(uri, name, f"previous-{alias}")
    set_alias(uri, name, alias, target)
    _after_move(on_alias_moved, uri, name, alias, None)
    return current.version, target


@dataclass(frozen=True)
class VersionRow:
    name: str
    version: str
    aliases: tuple[str, ...]
    study: str
    trial: str
    public_accuracy: float | None
    public_macro_f1: float | None
    private_accuracy: float | None
    private_macro_f1: float | None
    run_id: str | None
    #: Why this version cannot be loaded (its model files are gone), or None.
    missing: str | None = None


def list_models(uri: str, name: str | None = None) -> list[VersionRow]:
    """Registered versions with aliases, source study/trial and PublicTest / PrivateTest numbers."""
    from fer_experiments.tracking import get_run
    from fer_experiments.tracking.model_registry import list_versions, model_artifact_problem

    rows = []
    for v in list_versions(uri, name):
        if name is None and v.name.endswith("-service"):
            continue  # the serving wrappers mirror their model's aliases; list them with --model-name
        metrics: dict[str, float] = {}
        if v.run_id:
            try:
                metrics = get_run(uri, v.run_id).metrics
            except Exception:  # noqa: BLE001 - a deleted run still lists its version
                metrics = {}
        rows.append(VersionRow(name=v.name, version=v.version, aliases=v.aliases,
                               study=v.tags.get(tags.VERSION_STUDY, ""), trial=v.tags.get(tags.VERSION_TRIAL, ""),
                               public_accuracy=metrics.get(PUBLIC_ACC), public_macro_f1=metrics.get(PUBLIC_F1),
                               private_accuracy=metrics.get(tags.PRIVATE_ACCURACY),
                               private_macro_f1=metrics.get(tags.PRIVATE_MACRO_F1), run_id=v.run_id,
                               missing=model_artifact_problem(uri, v.name, v.version)))
    return rows
