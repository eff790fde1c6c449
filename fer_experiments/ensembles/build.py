"""``fer-exp ensemble``: one Keras model from a study's best K models, logged and registered like a trial's model.

Steps: find the members (``members.find_members``) -> load their logged models -> their PublicTest probabilities
-> weights (``mean``: equal; ``greedy``: ensemble selection with replacement on PublicTest) -> ``build_ensemble``
-> evaluate the built model on PublicTest (the same metrics and artifacts as a trial, ``best_val_accuracy`` being
what the promote guard reads) -> size and one-face speed next to the best member's -> one MLflow run
(``fer.kind=ensemble``, nested under the study's parent run) with the logged model -> a new version of the
registered model with the ``challenger`` alias. PrivateTest is never looked at here (``promote`` reports it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from fer_experiments.config import DEFAULT_CHALLENGER_ALIAS, DEFAULT_MODEL_NAME, DataConfig
from fer_experiments.errors import ConfigError, DataError
from fer_experiments.ensembles.members import Member, find_members
from fer_experiments.tracking import tags

if TYPE_CHECKING:
    import keras
    import numpy as np

    from fer_experiments.data import FerDataset
    from fer_experiments.evaluation.metrics import Evaluation

METHODS = ("mean", "greedy")


@dataclass(frozen=True)
class EnsembleConfig:
    """One ``fer-exp ensemble`` command."""

    tracking_uri: str
    study: str
    data_path: str
    top: int = 3
    method: str = "mean"
    model_name: str = DEFAULT_MODEL_NAME
    alias: str = DEFAULT_CHALLENGER_ALIAS
    #: False: log the run, leave the registry alone
    register: bool = True
    #: MLflow experiment of the ensemble run; None = the best member's (the study's)
    experiment: str | None = None
    run_name: str | None = None
    cache_dir: str | None = None
    #: faces classified one at a time to measure speed (0: skip)
    speed_faces: int = 200


@dataclass
class MemberResult:
    member: Member
    weight: float
    public_accuracy: float
    n_params: int


@dataclass
class EnsembleOutcome:
    run_id: str
    method: str
    kind: str
    #: every candidate (the top K), best first, with its weight (0 when greedy left it out)
    candidates: list[MemberResult]
    evaluation: "Evaluation"
    n_params: int
    faces_per_second: float | None
    best: MemberResult
    best_faces_per_second: float | None
    version: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def members(self) -> list[MemberResult]:
        """The candidates inside the model (weight > 0), in the model's order."""
        return [c for c in self.candidates if c.weight > 0]


def choose_weights(method: str, probas: list, y, top: int) -> list[float]:
    """Weights of the candidates: equal (``mean``) or from greedy selection with up to ``top`` additions."""
    from fer_experiments.evaluation.ensemble_selection import greedy_selection, mean_selection

    if method == "mean":
        return list(mean_selection(probas, y).weights)
    if method == "greedy":
        return list(greedy_selection(probas, y, max_additions=top).weights)
    raise ConfigError(f"--method must be one of {', '.join(METHODS)}; got {method!r}")


def make_ensemble(cfg: EnsembleConfig, echo: Callable[[str], None] = lambda s: None) -> EnsembleOutcome:
    """Build, evaluate, log and (unless ``cfg.register`` is False) register the ensemble; see the module docstring."""
    from fer_experiments.data import load_dataset, load_training_data
    from fer_experiments.evaluation.metrics import evaluate_probabilities
    from fer_experiments.models.builder import count_params
    from fer_experiments.models.ensemble import build_ensemble
    from fer_experiments.models.predict import faces_per_second, predict_proba
    from fer_experiments.tracking.model_io import load_keras_model
    from fer_experiments.tracking.model_registry import register_with_alias

    if cfg.method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}; got {cfg.method!r}")
    candidates, kind = find_members(cfg.tracking_uri, cfg.study, cfg.top)
    notes = []
    if len(candidates) < cfg.top:
        notes.append(f"study {cfg.study!r} has only {len(candidates)} {kind} model(s); asked for {cfg.top}")
    dataset = load_dataset(cfg.data_path, cache_dir=cfg.cache_dir)
    check_digest(dataset, candidates, cfg.data_path)
    val = dataset.split("PublicTest")
    echo(f"loading {len(candidates)} {kind} model(s) of study {cfg.study}: "
         + ", ".join(f"{c.label()} ({c.score:.4f})" for c in candidates))
    models = [load_keras_model(c.model_uri, cfg.tracking_uri) for c in candidates]
    candidates, models = _usable(candidates, models, val.x, notes)
    probas = [predict_proba(m, val.x) for m in models]
    weights = choose_weights(cfg.method, probas, val.y, cfg.top)
    results = [MemberResult(member=c, weight=w, public_accuracy=evaluate_probabilities(val.y, p, "PublicTest").accuracy,
                            n_params=count_params(m)) for c, m, p, w in zip(candidates, models, probas, weights)]
    best_i = max(range(len(results)), key=lambda i: (results[i].public_accuracy, -i))
    best_model = models[best_i]
    ensemble = build_ensemble([m for m, w in zip(models, weights) if w > 0], [w for w in weights if w > 0],
                              name=f"fer_ensemble_{cfg.method}")
    ev = evaluate_probabilities(val.y, predict_proba(ensemble, val.x), "PublicTest")
    fps = faces_per_second(ensemble, cfg.speed_faces) if cfg.speed_faces else None
    best_fps = faces_per_second(best_model, cfg.speed_faces) if cfg.speed_faces else None
    outcome = EnsembleOutcome(run_id="", method=cfg.method, kind=kind, candidates=results, evaluation=ev,
                              n_params=count_params(ensemble), faces_per_second=fps, best=results[best_i],
                              best_faces_per_second=best_fps, notes=notes)
    data = load_training_data(DataConfig(path=cfg.data_path, cache_dir=cfg.cache_dir), dataset)
    outcome.run_id = _log_run(cfg, outcome, ensemble, data)
    if cfg.register:
        outcome.version = register_with_alias(cfg.tracking_uri, cfg.model_name, outcome.run_id, cfg.alias, {
            tags.VERSION_STUDY: cfg.study, tags.VERSION_KIND: tags.KIND_ENSEMBLE, tags.DATA_DIGEST: dataset.digest,
            tags.VERSION_PUBLIC_ACCURACY: ev.accuracy, tags.VERSION_PUBLIC_MACRO_F1: ev.macro_f1})
    return outcome


def _input_problem(model: "keras.Model", x: "np.ndarray") -> str | None:
    """Why ``model`` cannot take the faces ``x`` (N, H, W; the channel is added when predicting): its input is not
    (None, H, W, 1). None when it can."""
    shape = getattr(model, "input_shape", None)
    wanted = (*x.shape[1:3], 1)
    if not isinstance(shape, tuple) or len(shape) != 4 or any(
            s is not None and s != d for s, d in zip(shape[1:], wanted)):
        return f"its input is {shape}, the faces are {wanted}"
    return None


def _usable(candidates: list[Member], models: list, x: "np.ndarray",
            notes: list[str]) -> tuple[list[Member], list]:
    """The candidates whose model takes these faces; each one left out is named in a note (a forged or foreign run
    in the study must not break the ensemble of the others). ConfigError when none is left."""
    kept_c, kept_m = [], []
    for c, m in zip(candidates, models):
        problem = _input_problem(m, x)
        if problem is None:
            kept_c.append(c)
            kept_m.append(m)
        else:
            notes.append(f"left out {c.label()} (run {c.run_id}): {problem}")
    if not kept_c:
        raise ConfigError("no candidate model takes the data set's faces: " + "; ".join(notes))
    return kept_c, kept_m


def check_digest(dataset: "FerDataset", members: list[Member], data_path: str) -> None:
    """DataError unless every member was trained on this data set (PublicTest numbers would not compare)."""
    other = sorted({m.data_digest for m in members if m.data_digest and m.data_digest != dataset.digest})
    if other:
        raise DataError(f"{data_path}: digest {dataset.digest[:12]} differs from the members' training data "
                        f"({', '.join(d[:12] for d in other)}); point --data at the same data set")


def _log_run(cfg: EnsembleConfig, out: EnsembleOutcome, ensemble: "keras.Model", data) -> str:
    from fer_experiments.tracking import find_runs, start_run
    from fer_experiments.tracking.exported import log_exported_model
    from fer_experiments.tracking.runs import experiment_name
    from fer_experiments.tracking.training_run import base_tags, log_selection_evaluation

    experiment = cfg.experiment or experiment_name(cfg.tracking_uri, out.best.member.experiment_id)
    parents = find_runs(cfg.tracking_uri, None, filter_string=tags.study_filter(cfg.study, kind=tags.KIND_STUDY))
    members = out.members
    started = time.time()
    with start_run(cfg.tracking_uri, experiment, run_name=cfg.run_name or f"ensemble-{cfg.method}-top{cfg.top}",
                   tags=base_tags(data) | {tags.KIND: tags.KIND_ENSEMBLE, tags.STUDY: cfg.study},
                   parent_run_id=parents[0].run_id if parents else None) as run:
        run.log_params({
            tags.ENSEMBLE_MEMBERS: ",".join(m.member.run_id for m in members),
            tags.ENSEMBLE_WEIGHTS: ",".join(f"{m.weight:.6g}" for m in members),
            tags.ENSEMBLE_METHOD: cfg.method, tags.ENSEMBLE_TOP: cfg.top,
            tags.ENSEMBLE_CANDIDATES: ",".join(c.member.run_id for c in out.candidates),
            tags.ENSEMBLE_BEST_MEMBER: out.best.member.run_id, "member_kind": out.kind, "n_members": len(members)})
        best = log_selection_evaluation(run, out.evaluation, {
            tags.N_PARAMS: out.n_params, tags.FACES_PER_SECOND: out.faces_per_second,
            "best_member_val_accuracy": out.best.public_accuracy})
        run.log_dict([{"run_id": c.member.run_id, "kind": c.member.kind, "number": c.member.number,
                       "weight": c.weight, "public_accuracy": c.public_accuracy, "n_params": c.n_params}
                      for c in out.candidates], "ensemble/members.json")
        run.log_keras_model(ensemble, metrics=best)
        log_exported_model(run, ensemble)  # the ONNX graph serving runs, beside the Keras model, as for a trial
        run.set_tags({tags.WALL_SECONDS: f"{time.time() - started:.1f}"})
    return run.run_id
