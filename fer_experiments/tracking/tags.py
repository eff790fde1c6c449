"""The one vocabulary of names fer-exp writes to MLflow (run tags, params, metrics, registry tags) and to Optuna
(study and trial user attributes), with small typed readers and writers.

No other module spells one of these names: a rename happens here, and stores written by older versions keep
working because the readers below also accept the names those versions wrote.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

# ------------------------------------------------------------------------------------------------ run tags
#: What a run is: one of the KIND_* values.
KIND = "fer.kind"
KIND_STUDY = "study"
KIND_TRIAL = "trial"
KIND_TRAIN = "train"
KIND_REFIT = "refit"
KIND_ENSEMBLE = "ensemble"
KIND_DISTILLED = "distilled"
KIND_SERVICE = "service"
KIND_COMPARE = "compare-engines"
#: Kinds whose runs hold a model that was trained for a study (trials and their refits).
STUDY_MODEL_KINDS = (KIND_TRIAL, KIND_REFIT)

ENGINE = "fer.engine"
STUDY = "study"
TRIAL_NUMBER = "trial_number"
#: COMPLETE, PRUNED or FAIL: the trial's state in its engine's terms.
TRIAL_STATE = "trial_state"
OBJECTIVE = "objective"
OBJECTIVE_VALUE = "objective_value"
#: Why a run ended FAILED or KILLED (one line).
FAILURE_REASON = "failure_reason"
PRUNED_AT_EPOCH = "pruned_at_epoch"
#: Why the pruner stopped the trial, in its words (e.g. the similar-cost rule of a two-objective study).
PRUNE_REASON = "fer.prune_reason"
#: The trial a refit run retrains.
REFIT_OF = "fer.refit_of"
#: A refit that continues its trial's trained weights: that trial's run, its number and the epoch whose weights it
#: starts from (absent: the refit started from random weights).
WARM_START_OF = "fer.warm_start_of"
WARM_START_TRIAL = "fer.warm_start_trial"
WARM_START_EPOCH = "fer.warm_start_epoch"
#: On a refit run: why it refits this trial rather than the one with the best value (``search.ranking``: the study's
#: first start point is kept unless a trial also beats it at equal Training images); absent when the value decided.
REFIT_CHOICE = "fer.refit_choice"
#: A trial that runs one of its space's ``start_from`` points (a preset's name or the parameter set's name).
START_FROM = "fer.start_from"
#: Why a trial never trained: the serving limits of its space's ``constraints:`` it breaks, with the measured figures.
CONSTRAINT_VIOLATION = "fer.constraint_violation"
#: A two-objective study's second objective (a serving-cost figure, minimised), on its parent run.
COST_OBJECTIVE = "fer.cost_objective"
#: The runtime a trial's serving cost (metrics params, model_bytes, latency_ms, faces_per_second) was measured on.
COST_RUNTIME = "fer.cost_runtime"
#: Where a run's process runs: host name and pid (``fer-exp reconcile`` ends runs whose process is gone).
HOST = "host"
PID = "fer.pid"
#: Unix time of the last sign of life of a RUNNING run's process (renewed every HEARTBEAT_SECONDS).
HEARTBEAT = "fer.heartbeat"
GPU = "gpu"
PRESET = "preset"
WALL_SECONDS = "wall_seconds"
STORAGE = "optuna_storage"
KERAS_TUNER = "keras_tuner"
KERAS_TUNER_TRIAL_ID = "keras_tuner_trial_id"

SPACE_FILE = "space_file"
SPACE_HASH = "space_hash"
SPACE_NAME = "space_name"
TRAIN_LIMIT = "train_limit"
DATA_DIGEST = "data_digest"
DATA_SOURCE = "data_source"
TEST_DATA_DIGEST = "test_data_digest"
GIT_COMMIT = "git_commit"
MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"
KERAS_BACKEND = "keras_backend"
SELECTION_SPLIT = "selection_split"
REPORT_SPLIT = "report_split"
#: On a study's parent run: the run whose model is the study's registered challenger.
CHALLENGER_RUN = "fer.challenger_run"
#: On a study's parent run: the number of its best COMPLETE trial now.
BEST_TRIAL = "best_trial"
#: ``fer.model_id.<artifact>``: the MLflow 3 LoggedModel id of a run's logged model.
MODEL_ID_PREFIX = "fer.model_id."
#: MLflow's run description (shown as the run's "Description" in the UI) and the command that made a run.
MLFLOW_NOTE = "mlflow.note.content"
MLFLOW_SOURCE_NAME = "mlflow.source.name"
MLFLOW_SOURCE_TYPE = "mlflow.source.type"
MLFLOW_RUN_NAME = "mlflow.runName"
#: On a LoggedModel: the registered versions made from it (JSON list of {name, version}), which MLflow's Models tab
#: shows; MLflow's fluent register_model writes it, its client's create_model_version does not.
MLFLOW_MODEL_VERSIONS = "mlflow.modelVersions"
#: The query that opens MLflow 3.17's UI in its model-training view (it remembers a GenAI/Model training switch per
#: browser, GenAI by default, and reads the experiment's EXPERIMENT_KIND only without that switch).
UI_TRAINING_VIEW_QUERY = "workflowType=machine_learning"

# ------------------------------------------------------------------------------------------ experiment tags
#: The experiment tag MLflow 3's UI reads to choose its view; without it an experiment opens in the GenAI view
#: ("Traces"). Our experiments hold model-training runs.
EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"

#: On an ensemble run (params): its members' run IDs (comma-separated, in the model's order), their weights, the
#: method that chose them (mean or greedy) and the K asked for; the best member (highest PublicTest accuracy).
ENSEMBLE_MEMBERS = "ensemble_members"
ENSEMBLE_WEIGHTS = "ensemble_weights"
ENSEMBLE_METHOD = "method"
ENSEMBLE_TOP = "ensemble_top"
ENSEMBLE_CANDIDATES = "ensemble_candidates"
ENSEMBLE_BEST_MEMBER = "ensemble_best_member"
#: On a distilled run (params): the teacher's run ID, the temperature and the weight of the true labels.
TEACHER_RUN = "teacher_run_id"
DISTILL_TEMPERATURE = "distill_temperature"
DISTILL_ALPHA = "distill_alpha"
#: A run whose model was exported (``onnx``) beside the Keras model, or why it could not be; seconds it took.
EXPORTED = "fer.exported"
EXPORT_ERROR = "fer.export_error"
EXPORT_SECONDS = "fer.export_seconds"
#: On a run whose INT8 graph was made (``--runtime int8``): the share of check faces where its top class is the
#: float graph's.
INT8_AGREEMENT = "fer.int8_agreement"

# Names older versions wrote beside the ones above (read, never written).
_OLD_STUDY = "optuna_study"
_OLD_TRIAL_NUMBER = "optuna_trial_number"
_OLD_FAIL_REASON = "fail_reason"

# ---------------------------------------------------------------------------------------------------- params
# (besides every ModelParams/TrainParams field under its own name, and OBJECTIVE / TRIAL_NUMBER / PRESET above)
PARAM_SPACE = "space"
PARAM_ENGINE = "engine"
PARAM_LIMIT = "limit"
PARAM_N_TRAIN = "n_train"
PARAM_N_VAL = "n_val"
#: On a study's parent run: ``space.<name>`` (what each parameter was searched over) and ``best.<name>`` (the best
#: trial's values, ``best.trial`` its number), beside the study's settings (SPACE_FILE, TRAIN_LIMIT, ...).
PARAM_SPACE_PREFIX = "space."
PARAM_BEST_PREFIX = "best."
PARAM_MAX_EPOCHS = "max_epochs"
PARAM_SAMPLER = "sampler"
PARAM_PRUNER = "pruner"

# --------------------------------------------------------------------------------------------------- metrics
#: PublicTest accuracy / macro-F1 of the logged (best-epoch) model: what the promote guard compares.
PUBLIC_ACCURACY = "best_val_accuracy"
PUBLIC_MACRO_F1 = "best_val_macro_f1"
#: PrivateTest numbers, logged once per promoted candidate.
PRIVATE_ACCURACY = "test_accuracy"
PRIVATE_MACRO_F1 = "test_macro_f1"
#: On a study's parent run: the best objective value so far.
BEST_VALUE = "best_value"
#: Per training run: training throughput (fit only, no evaluation), images fitted, and seconds.
TRAIN_IMAGES_PER_SECOND = "train_images_per_second"
TRAIN_IMAGES_SEEN = "train_images_seen"
TRAIN_SECONDS = "train_seconds"
#: Params of a training run: its epochs and (a refit) the trial run it retrains (its Training rows: PARAM_N_TRAIN).
PARAM_EPOCHS = "epochs"
PARAM_REFIT_OF = "refit_of"
#: Size and serving speed of a logged model: weights, and faces/s classified one at a time (predict_on_batch).
N_PARAMS = "n_params"
FACES_PER_SECOND = "faces_per_second_one_at_a_time"

# ------------------------------------------------------------------------------------------ registry tags
VERSION_STUDY = "study"
VERSION_TRIAL = "trial"
VERSION_ENGINE = "engine"
#: What a version's run is (its ``fer.kind``: trial, refit, ensemble, distilled ...).
VERSION_KIND = "kind"
VERSION_PUBLIC_ACCURACY = "public_accuracy"
VERSION_PUBLIC_MACRO_F1 = "public_macro_f1"
VERSION_PRIVATE_ACCURACY = "private_accuracy"
VERSION_PRIVATE_MACRO_F1 = "private_macro_f1"
#: On a serving-wrapper version: the registered model and version it wraps, and that version's run.
SOURCE_MODEL = "source_model"
SOURCE_VERSION = "source_version"
SOURCE_RUN_ID = "source_run_id"
#: The serving wrapper's format version (older wrappers pickled a class that no longer exists).
WRAPPER_FORMAT = "fer.wrapper_format"
#: Registered-model tag: the JSON list of versions an alias pointed at, oldest first.
ALIAS_HISTORY = "fer.alias_history.{alias}"
#: Registered-model tag: who holds the promote lease on a tracking server ("owner expires-at"), see registry_lock.
PROMOTE_LEASE = "fer.promote_lease"

# ------------------------------------------------------------------------------ Optuna user attributes
ATTR_SPACE = "fer.space"
ATTR_SPACE_HASH = "fer.space_hash"
ATTR_SPACE_FILE = "fer.space_file"
ATTR_DATA_DIGEST = "fer.data_digest"
ATTR_LIMIT = "fer.limit"
ATTR_PARENT_RUN = "fer.mlflow_parent_run_id"
ATTR_EXPERIMENT = "fer.mlflow_experiment"
ATTR_N_TRIALS = "fer.n_trials"
ATTR_CREATED = "fer.created"
#: On a trial: its MLflow run and why it failed.
ATTR_RUN_ID = "mlflow_run_id"
ATTR_FAIL_REASON = "fail_reason"
#: On an enqueued trial: the ``start_from`` point it runs.
ATTR_START_FROM = "fer.start_from"
#: On a trial of a space with ``constraints:``: how far its serving cost is past each limit (<= 0: within).
ATTR_CONSTRAINTS = "fer.constraints"
#: A trial of a two-objective study: its PublicTest objective after each epoch, as {"epoch": value} (Optuna keeps
#: no intermediate values for such studies; the similar-cost pruner compares them), and its cost figure.
ATTR_CURVE = "fer.curve"
ATTR_COST = "fer.cost"


def model_id_tag(artifact: str = "model") -> str:
    """The run tag holding the LoggedModel id of the run's ``artifact`` model."""
    return f"{MODEL_ID_PREFIX}{artifact}"


def has_model(tags: Mapping[str, str]) -> bool:
    """Whether a run logged a model."""
    return any(k.startswith(MODEL_ID_PREFIX) for k in tags)


def study_of(tags: Mapping[str, str]) -> str | None:
    """The study a run belongs to (also from runs written before the tag names were unified)."""
    return tags.get(STUDY) or tags.get(_OLD_STUDY)


def trial_number_of(tags: Mapping[str, str]) -> int | None:
    """The trial number a run records, or None (also when the tag is not a number: anyone can edit a tag, and one
    bad run must not break the commands that read the whole study)."""
    raw = tags.get(TRIAL_NUMBER, tags.get(_OLD_TRIAL_NUMBER))
    try:
        return int(raw) if raw not in (None, "") else None
    except (TypeError, ValueError):
        return None


def float_of(raw: str | None) -> float | None:
    """A tag's value as a finite float, or None when it is missing or not a finite number (a hand-edited tag)."""
    try:
        value = float(raw) if raw not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and math.isfinite(value) else None


def failure_of(tags: Mapping[str, str]) -> str | None:
    """Why a run failed, if it says."""
    return tags.get(FAILURE_REASON) or tags.get(_OLD_FAIL_REASON)


@dataclass(frozen=True)
class TrialRecord:
    """A study's trial as its MLflow run records it (engine-neutral)."""

    run_id: str
    study: str
    engine: str
    number: int
    state: str
    objective_value: float | None
    kind: str

    @classmethod
    def from_run(cls, run_id: str, tags: Mapping[str, str]) -> "TrialRecord":
        value = tags.get(OBJECTIVE_VALUE)
        number = trial_number_of(tags)
        return cls(run_id=run_id, study=study_of(tags) or "", engine=tags.get(ENGINE, ""),
                   number=-1 if number is None else number, state=tags.get(TRIAL_STATE, ""),
                   objective_value=float_of(value), kind=tags.get(KIND, ""))


def trial_tags(*, study: str, engine: str, number: int, kind: str = KIND_TRIAL, **extra: Any) -> dict[str, Any]:
    """Tags a study's trial (or refit) run starts with."""
    return {KIND: kind, ENGINE: engine, STUDY: study, TRIAL_NUMBER: number} | extra


def study_filter(study: str, *, kind: str | None = None, engine: str | None = None, state: str | None = None,
                 status: str | None = None) -> str:
    """An MLflow search filter for the runs of ``study`` (quotes in names are escaped)."""
    parts = [f"tags.{STUDY} = {_quote(study)}"]
    if kind is not None:
        parts.append(f"tags.`{KIND}` = {_quote(kind)}")
    if engine is not None:
        parts.append(f"tags.`{ENGINE}` = {_quote(engine)}")
    if state is not None:
        parts.append(f"tags.{TRIAL_STATE} = {_quote(state)}")
    if status is not None:
        parts.append(f"attributes.status = {_quote(status)}")
    return " and ".join(parts)


def _quote(value: str) -> str:
    return "'" + str(value).replace("'", "\\'") + "'"
