"""``fer-exp distill``: train one student network against an ensemble's probabilities, logged and registered like
any training (``fer.kind=distilled``, the teacher's run ID as a param), so one model's latency ships close to the
ensemble's accuracy.

The student is a preset, or by default the architecture and training settings of the ensemble's best member, with
``--set`` overrides either way. The teacher's probabilities are computed once for the Training images the student
trains on (the same stratified subset under ``--limit``); the student selects its best epoch on PublicTest like
every training does.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from fer_experiments.config import DEFAULT_CHALLENGER_ALIAS, DEFAULT_MODEL_NAME, DataConfig
from fer_experiments.errors import ConfigError, DataError, FatalError
from fer_experiments.params import ALL_FIELDS, ModelParams, TrainParams
from fer_experiments.tracking import tags


@dataclass(frozen=True)
class DistillConfig:
    """One ``fer-exp distill`` command."""

    tracking_uri: str
    teacher_run_id: str
    #: None: the data set the teacher's run recorded as its source
    data_path: str | None = None
    #: None: the teacher's best member's architecture and training settings
    student_preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    temperature: float = 4.0
    alpha: float = 0.3
    epochs: int | None = None
    limit: int | None = None
    model_name: str = DEFAULT_MODEL_NAME
    alias: str = DEFAULT_CHALLENGER_ALIAS
    register: bool = True
    experiment: str | None = None
    run_name: str | None = None
    cache_dir: str | None = None
    speed_faces: int = 200


@dataclass
class DistillOutcome:
    run_id: str
    student: str
    result: Any  # TrainResult
    n_params: int
    faces_per_second: float | None
    teacher_public_accuracy: float | None
    version: str | None = None


def student_params(cfg: DistillConfig, teacher: Any) -> tuple[str, ModelParams, TrainParams]:
    """(description, model params, train params) of the student: preset or best member, then overrides."""
    from fer_experiments.models.presets import get_preset
    from fer_experiments.params import split_params
    from fer_experiments.tracking import get_run

    if cfg.student_preset is not None:
        preset = get_preset(cfg.student_preset)
        label, base_model, base_train = f"preset {preset.name}", preset.model, preset.train
        values: dict[str, Any] = {}
    else:
        source = teacher.params.get(tags.ENSEMBLE_BEST_MEMBER) or teacher.run_id
        params = get_run(cfg.tracking_uri, source).params
        values = {k: v for k, v in params.items() if k in ALL_FIELDS}
        if not values:
            raise ConfigError(f"run {source} records no network parameters to copy; give --student PRESET")
        label, base_model, base_train = f"architecture of run {source}", None, None
    values |= cfg.overrides
    if cfg.epochs is not None:
        values["epochs"] = cfg.epochs
    model_params, train_params = split_params(values, base_model, base_train)
    return label, model_params, train_params


def distill_ensemble(cfg: DistillConfig, on_epoch: Callable[[int, dict[str, float]], None] | None = None,
                     echo: Callable[[str], None] = lambda s: None) -> DistillOutcome:
    """Train, log and (unless ``cfg.register`` is False) register the student; see the module docstring."""
    from fer_experiments.data import load_dataset, load_training_data
    from fer_experiments.models.builder import count_params
    from fer_experiments.models.predict import faces_per_second, predict_proba
    from fer_experiments.tracking import get_run, prepare_store, start_run
    from fer_experiments.tracking.model_io import load_keras_model
    from fer_experiments.tracking.runs import experiment_name
    from fer_experiments.tracking.training_run import base_tags, tracked_training
    from fer_experiments.training.distill import distill_model
    from fer_experiments.tracking.model_registry import register_with_alias

    prepare_store(cfg.tracking_uri)
    try:
        teacher = get_run(cfg.tracking_uri, cfg.teacher_run_id)
    except Exception as exc:  # noqa: BLE001 - mlflow raises its own type for an unknown run
        if "not found" in str(exc).lower() or "RESOURCE_DOES_NOT_EXIST" in str(exc):
            raise ConfigError(f"run {cfg.teacher_run_id}: not found in the tracking store") from exc
        raise FatalError(f"run {cfg.teacher_run_id}: cannot be read: {str(exc).splitlines()[0][:200]}") from exc
    if not tags.has_model(teacher.tags):
        raise ConfigError(f"run {cfg.teacher_run_id} has no logged model to distil")
    data_path = cfg.data_path or teacher.tags.get(tags.DATA_SOURCE)
    if not data_path:
        raise ConfigError("--data is needed (the teacher's run records no data source)")
    dataset = load_dataset(data_path, cache_dir=cfg.cache_dir)
    digest = teacher.tags.get(tags.DATA_DIGEST)
    if digest and digest != dataset.digest:
        raise DataError(f"{data_path}: digest {dataset.digest[:12]} differs from the teacher's data ({digest[:12]}); "
                        "point --data at the same data set")
    label, model_params, train_params = student_params(cfg, teacher)
    data = load_training_data(DataConfig(path=data_path, limit=cfg.limit, cache_dir=cfg.cache_dir), dataset)
    echo(f"teacher {cfg.teacher_run_id}: probabilities for {len(data.train.y)} Training images")
    teacher_proba = predict_proba(load_keras_model(f"runs:/{cfg.teacher_run_id}/model", cfg.tracking_uri), data.train.x)
    echo(f"student: {label}, {train_params.epochs} epoch(s), temperature {cfg.temperature}, alpha {cfg.alpha}")
    fit = functools.partial(distill_model, teacher_proba=teacher_proba, temperature=cfg.temperature, alpha=cfg.alpha)
    study = tags.study_of(teacher.tags)
    experiment = cfg.experiment or experiment_name(cfg.tracking_uri, teacher.experiment_id)
    started = time.time()
    run_tags = base_tags(data) | {tags.KIND: tags.KIND_DISTILLED, tags.STUDY: study,
                                  tags.PRESET: cfg.student_preset or "custom"}
    with start_run(cfg.tracking_uri, experiment, run_name=cfg.run_name or "distilled", tags=run_tags) as run:
        result = tracked_training(run, model_params, train_params, data, extra_params={
            tags.TEACHER_RUN: cfg.teacher_run_id, tags.DISTILL_TEMPERATURE: cfg.temperature,
            tags.DISTILL_ALPHA: cfg.alpha, "student": label, "preset": cfg.student_preset},
            observers=[on_epoch] if on_epoch else [], fit=fit)
        fps = faces_per_second(result.model, cfg.speed_faces) if cfg.speed_faces else None
        n_params = count_params(result.model)
        run.log_metrics({tags.N_PARAMS: n_params, tags.FACES_PER_SECOND: fps})
        run.set_tags({tags.WALL_SECONDS: f"{time.time() - started:.1f}"})
    out = DistillOutcome(run_id=run.run_id, student=label, result=result, n_params=n_params, faces_per_second=fps,
                         teacher_public_accuracy=teacher.metrics.get(tags.PUBLIC_ACCURACY))
    if cfg.register:
        ev = result.evaluation
        out.version = register_with_alias(cfg.tracking_uri, cfg.model_name, run.run_id, cfg.alias, {
            tags.VERSION_STUDY: study, tags.VERSION_KIND: tags.KIND_DISTILLED, tags.DATA_DIGEST: dataset.digest,
            tags.VERSION_PUBLIC_ACCURACY: ev.accuracy, tags.VERSION_PUBLIC_MACRO_F1: ev.macro_f1})
    return out
