"""The only package that imports mlflow: stores, runs, nesting, artifacts, models, registry calls.

Everything else talks to MLflow through these modules, so the tracking backend can be reasoned about (and replaced)
in one place. ``tags`` is the vocabulary of every name written to MLflow and Optuna; ``store`` opens stores; ``runs``
starts, ends and searches runs; ``training_run`` logs one training; ``model_io`` loads models back;
``model_registry`` registers versions and moves aliases; ``pyfunc`` logs a generic MLflow pyfunc wrapper.
Nothing here imports ``search``, ``registry`` or ``serving``.
"""

from fer_experiments.tracking import tags
from fer_experiments.tracking.runs import (
    RunInfo,
    TrackedRun,
    create_run,
    end_run,
    find_runs,
    find_trial_records,
    get_run,
    set_status,
    start_run,
)
from fer_experiments.tracking.store import (
    DEFAULT_STORE_DIR,
    default_tracking_uri,
    prepare_store,
    redact_uri,
    ui_command,
)

__all__ = [
    "DEFAULT_STORE_DIR", "RunInfo", "TrackedRun", "create_run", "default_tracking_uri", "end_run", "find_runs",
    "find_trial_records", "get_run", "prepare_store", "redact_uri", "set_status", "start_run", "tags", "ui_command",
]
