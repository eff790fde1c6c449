"""fer-exp: experiment tracking and hyperparameter search for facial expression recognition.

The Python API (``fer_experiments.api``) is re-exported here and imported on first use, so that
``import fer_experiments`` (and ``fer-exp --help``) stay fast: no TensorFlow, MLflow or Optuna until a function runs.

    import fer_experiments as fx
    fx.search("fer2013.csv.gz", "cpu-quick", "demo", n_trials=8)
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: FER2013 label ids 0-6, in order.
EXPRESSIONS: tuple[str, ...] = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
NUM_CLASSES = len(EXPRESSIONS)
IMAGE_SIZE = 48
#: The three FER2013 splits and their roles: train on the first, select/prune on the second, report the third.
SPLITS: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest")

#: The public API's names, each found in ``fer_experiments.api`` (functions, result types) or ``.errors``.
_API = ("train", "search", "promote", "rollback", "models", "evaluate", "load_model", "predict",
        "TrainPlan", "TrainResult", "SearchResult", "Promotion", "Rollback", "Evaluated", "ImagePrediction")
_ERRORS = ("FerError", "ConfigError", "DataError", "TrialFailed", "FatalError", "Refused")

__all__ = ["EXPRESSIONS", "NUM_CLASSES", "IMAGE_SIZE", "SPLITS", *_API, *_ERRORS]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on first use
    from fer_experiments.api import (  # noqa: F401
        Evaluated,
        ImagePrediction,
        Promotion,
        Rollback,
        SearchResult,
        TrainPlan,
        TrainResult,
        evaluate,
        load_model,
        models,
        predict,
        promote,
        rollback,
        search,
        train,
    )
    from fer_experiments.errors import (  # noqa: F401
        ConfigError,
        DataError,
        FatalError,
        FerError,
        Refused,
        TrialFailed,
    )


def __getattr__(name: str) -> Any:
    """PEP 562: import the API module the first time one of its names is asked for."""
    if name in _API:
        value = getattr(importlib.import_module("fer_experiments.api"), name)
    elif name in _ERRORS:
        value = getattr(importlib.import_module("fer_experiments.errors"), name)
    else:
        raise AttributeError(f"module 'fer_experiments' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The class of this package's module object: two API functions share their names with subpackages
    (``fx.search`` / ``fer_experiments.search``, ``fx.models`` / ``fer_experiments.models``).

    Importing a subpackage binds it as an attribute of its parent, which would hide the function after the first
    search. Properties on the module's class win over its ``__dict__``, so those names always give the functions;
    the subpackages are imported as usual (``from fer_experiments.search import study``), through ``sys.modules``.
    """


def _api_function(name: str) -> property:
    def get(module: types.ModuleType) -> Any:
        return getattr(importlib.import_module("fer_experiments.api"), name)

    def keep_subpackage(module: types.ModuleType, value: Any) -> None:
        module.__dict__[f"_{name}_subpackage"] = value  # the import system binding fer_experiments.<name>

    return property(get, keep_subpackage, doc=f"fer_experiments.api.{name}")


for _name in ("search", "models"):
    setattr(_Package, _name, _api_function(_name))
    sys.modules[__name__].__dict__.pop(_name, None)  # a subpackage bound before this line ran
sys.modules[__name__].__class__ = _Package
