"""The only package that imports mlflow: stores, runs, nesting, artifacts, models, registry calls.

Everything else talks to MLflow through these functions, so the tracking backend can be reasoned about (and
replaced) in one place.
"""

from fer_experiments.tracking.runs import (
    RunInfo,
    TrackedRun,
    create_run,
    end_run,
    find_runs,
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
    "DEFAULT_STORE_DIR", "RunInfo", "TrackedRun", "create_run", "default_tracking_uri", "end_run", "set_status", "find_runs", "get_run",
    "prepare_store", "redact_uri", "start_run", "ui_command",
]
