"""The Python API: what the ``fer-exp`` commands do, as functions for notebooks and scripts.

```python
import fer_experiments as fx

result = fx.search("fer2013.csv.gz", "cpu-quick", "demo", n_trials=8)
promotion = fx.promote(study="demo")
model = fx.load_model()                      # models:/fer-cnn@champion
predictions = fx.predict(["photo.jpg"], model)
```

Every function returns a frozen result object and prints nothing (``search`` shows its live progress only when
given a ``progress`` stream). Errors are those of `fer_experiments.errors`: ``ConfigError`` (a bad argument,
space or parameter), ``DataError`` (bad data), ``TrialFailed``, ``FatalError`` (a store that cannot be used) and
``Refused`` (e.g. promoting a worse model without ``force=True``); the CLI maps them to its exit codes 2-6.

The stores default to the CLI's: MLflow at ``MLFLOW_TRACKING_URI`` or ``sqlite:///mlruns/mlflow.db``, Optuna at
``sqlite:///mlruns/optuna.db``, both relative to the current folder. Heavy libraries (TensorFlow, MLflow, Optuna) are
imported on the first call, not when ``fer_experiments`` is imported.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, TextIO, Union

from fer_experiments.config import (
    DEFAULT_ALIAS,
    DEFAULT_EXPERIMENT,
    DEFAULT_MODEL_NAME,
    DEFAULT_MODEL_URI,
    DEFAULT_STORAGE,
)
from fer_experiments.errors import ConfigError, DataError

if TYPE_CHECKING:
    import numpy as np

    from fer_experiments.evaluation.metrics import Evaluation
    from fer_experiments.registry.evaluate import SplitPredictions
    from fer_experiments.registry.promote import VersionRow
    from fer_experiments.search.lifecycle import SearchOutcome
    from fer_experiments.serving.predictor import Face, LoadedModel

__all__ = [
    "Evaluated", "ImagePrediction", "Promotion", "Rollback", "SearchResult", "TrainPlan", "TrainResult",
    "evaluate", "load_model", "models", "predict", "promote", "rollback", "search", "train",
]

#: What `predict` takes as one image: a file path, the encoded bytes of a file, or decoded pixels
#: (a (H, W) grayscale or (H, W, 3) RGB uint8 array).
ImageInput = Union[str, os.PathLike, bytes, "np.ndarray"]


def _tracking(tracking_uri: str | None) -> str:
    """The URI given, else MLFLOW_TRACKING_URI, else the embedded SQLite store (as the CLI's ``--tracking-uri``)."""
    from fer_experiments.tracking import default_tracking_uri

    _library_defaults()
    return tracking_uri or default_tracking_uri()


def _library_defaults() -> None:
    """MLflow's per-download progress bars and telemetry off, as in the CLI, unless the caller set them."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


# --------------------------------------------------------------------------------------------------------- train
@dataclass(frozen=True)
class TrainPlan:
    """What `train` is about to do, given to its `on_start` callback once the data is loaded.

    Attributes:
        preset: The network trained.
        train_rows: Training rows it trains on (the `limit` subset, or all).
        val_rows: PublicTest rows that select the epoch.
        epochs: Epochs it will train at most.
        notes: Remarks about the data set (e.g. duplicates across splits).
    """

    preset: str
    train_rows: int
    val_rows: int
    epochs: int
    notes: tuple[str, ...]


@dataclass(frozen=True)
class TrainResult:
    """One finished, tracked training (`fer-exp train`).

    Attributes:
        run_id: The MLflow run.
        model_uri: `runs:/<run_id>/model`: give it to `evaluate` or `load_model`, or its run to `promote(run=...)`.
        experiment_id: The run's MLflow experiment.
        tracking_uri: The MLflow store it was logged to.
        best_epoch: The epoch whose weights were kept (best on PublicTest).
        epochs_run: Epochs trained.
        images_per_second: Training speed.
        evaluation: PublicTest metrics of the kept weights.
        history: Per-epoch values of loss, accuracy, val_loss, val_accuracy, val_macro_f1, lr.
    """

    run_id: str
    model_uri: str
    experiment_id: str
    tracking_uri: str
    best_epoch: int
    epochs_run: int
    images_per_second: float
    evaluation: "Evaluation"
    history: Mapping[str, tuple[float, ...]] = field(repr=False)

    @property
    def accuracy(self) -> float:
        """PublicTest accuracy of the kept weights."""
        return self.evaluation.accuracy


def train(data: str | os.PathLike, preset: str = "seed-base", *, params: Mapping[str, Any] | None = None,
          epochs: int | None = None, batch_size: int | None = None, learning_rate: float | None = None,
          seed: int | None = None, limit: int | None = None, objective: str = "val_accuracy",
          experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None, tracking_uri: str | None = None,
          cache_dir: str | None = None, on_start: Callable[[TrainPlan], None] | None = None,
          on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Train one network as one MLflow run; PublicTest selects the epoch whose weights are kept.

    Args:
        data: The FER2013 CSV (``.csv`` / ``.csv.gz``, Kaggle format) or an image-folder tree.
        preset: The network to start from (``fer-exp presets`` lists them).
        params: Any model or training parameter, e.g. ``{"batchnorm": "after_activation", "augment_flip": True}``
            (``fer_experiments.params`` lists them); the CLI's ``--set``.
        epochs: Override the preset's epochs.
        batch_size: Override the preset's batch size.
        learning_rate: Override the preset's initial learning rate.
        seed: Training seed (same seed, same metrics on a CPU).
        limit: Train on a stratified subset of this many Training rows.
        objective: The PublicTest metric that selects the epoch: ``val_accuracy`` or ``val_macro_f1``.
        experiment: MLflow experiment name.
        run_name: MLflow run name (default: MLflow's generated one).
        tracking_uri: MLflow store (default: ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlruns/mlflow.db``).
        cache_dir: Folder of the decoded-array cache (default ``FER_EXP_CACHE`` or ``~/.cache/fer-exp``).
        on_start: Called once the data is loaded, before training.
        on_epoch: Called after each epoch with its number and metrics (``loss``, ``val_accuracy``, ...).

    Returns:
        The run, its model URI and the PublicTest evaluation.

    Raises:
        ConfigError: An unknown preset or parameter, or a value out of range.
        DataError: The data cannot be read.
        TrialFailed: The training failed (NaN loss, out of memory).
    """
    from fer_experiments.config import DataConfig, TrackingConfig, TrainConfig
    from fer_experiments.data import load_training_data
    from fer_experiments.models.presets import get_preset
    from fer_experiments.params import split_params
    from fer_experiments.tracking import get_run
    from fer_experiments.tracking.training_run import run_training

    if objective not in ("val_accuracy", "val_macro_f1"):
        raise ConfigError(f"objective {objective!r}: expected val_accuracy or val_macro_f1")
    p = get_preset(preset)
    values = dict(params or {})
    values |= {k: v for k, v in (("epochs", epochs), ("batch_size", batch_size), ("learning_rate", learning_rate),
                                 ("seed", seed)) if v is not None}
    model_params, train_params = split_params(values, p.model, p.train)
    uri = _tracking(tracking_uri)
    cfg = TrainConfig(data=DataConfig(path=os.fspath(data), limit=limit, cache_dir=cache_dir),
                      tracking=TrackingConfig(tracking_uri=uri, experiment=experiment),
                      model=model_params, train=train_params, preset=preset, objective=objective, run_name=run_name)
    loaded = load_training_data(cfg.data)
    if on_start is not None:
        on_start(TrainPlan(preset, len(loaded.train.y), len(loaded.val.y), train_params.epochs,
                           tuple(loaded.dataset.notes)))
    run_id, result = run_training(cfg, loaded, on_epoch)
    return TrainResult(run_id=run_id, model_uri=f"runs:/{run_id}/model",
                       experiment_id=get_run(uri, run_id).experiment_id, tracking_uri=uri,
                       best_epoch=result.best_epoch, epochs_run=result.epochs_run,
                       images_per_second=result.images_per_second, evaluation=result.evaluation,
                       history={k: tuple(v) for k, v in result.history.items()})


# -------------------------------------------------------------------------------------------------------- search
@dataclass(frozen=True)
class SearchResult:
    """What one `search` call did and where its study stands.

    Attributes:
        study: The study's name.
        engine: `optuna` or `keras-tuner`.
        parent_run_id: The study's MLflow run; its trials are its child runs.
        ran: Trials this call ran.
        finished: The whole study's finished (complete + pruned) trials.
        complete: COMPLETE trials of the study.
        pruned: PRUNED trials of the study.
        failed: FAILED trials of the study.
        best_value: The best objective value (PublicTest), or None.
        best_trial: The best COMPLETE trial's number.
        best_run_id: The best COMPLETE trial's MLflow run.
        registered_version: The version of the registered model that got the `challenger` alias, when this call
            registered one.
        challenger_run_id: The run registered as challenger: the best refit, else the best trial.
        refits: (trial number, refit run id, state, objective value) of each refit this call ran.
        stopped: Why the search stopped early, or None.
        notes: Remarks printed by the command (e.g. about the data).
        outcome: The engine-level outcome, for `format_outcome` and engine comparisons.
    """

    study: str
    engine: str
    parent_run_id: str
    ran: int
    finished: int
    complete: int
    pruned: int
    failed: int
    best_value: float | None
    best_trial: int | None
    best_run_id: str | None
    registered_version: str | None
    challenger_run_id: str | None
    refits: tuple[tuple[int, str, str, float | None], ...]
    stopped: str | None
    notes: tuple[str, ...]
    outcome: "SearchOutcome" = field(repr=False, compare=False)

    @property
    def best_model_uri(self) -> str | None:
        """``runs:/<run>/model`` of the study's best COMPLETE trial, or None."""
        return f"runs:/{self.best_run_id}/model" if self.best_run_id else None


def search(data: str | os.PathLike, space: str | os.PathLike, study: str, *, n_trials: int | None = None,
           timeout: float | None = None, budget: float | None = None, refit: bool | None = None,
           enqueue: Iterable[str] = (), limit: int | None = None, max_consecutive_failures: int = 5,
           model_name: str = DEFAULT_MODEL_NAME, experiment: str | None = None, storage: str = DEFAULT_STORAGE,
           tracking_uri: str | None = None, cache_dir: str | None = None, engine: str = "optuna",
           tuner: str = "hyperband", gpu: int | None = None, heartbeat_interval: int = 60, grace_period: int = 180,
           progress: TextIO | None = None) -> SearchResult:
    """Search the CNN family; every trial is an MLflow child run of the study's run (``fer-exp search``).

    Calling it again with the same study resumes it: it adds trials until the study holds ``n_trials`` finished
    ones. A new best COMPLETE trial (or the best refit) is registered as a version of ``model_name`` with the
    alias ``challenger``.

    Args:
        data: The FER2013 CSV or image-folder tree.
        space: A search-space YAML file, or the name of a shipped space (``cpu-quick``, ``seed-family``, ...).
        study: The study's name; the same name resumes it.
        n_trials: Finished (complete + pruned) trials the study should hold. Required unless ``budget`` is given.
        timeout: Stop starting new trials after this many seconds.
        budget: Wall-clock seconds for the whole call, refit included; every training is bounded by time.
        refit: Retrain the best trials on all of Training afterwards (default: when the space has ``refit:``).
        enqueue: Presets to start the study from.
        limit: Train every trial on a stratified subset of this many Training rows (replaces the space's).
        max_consecutive_failures: Stop (``FatalError``) after this many failed trials in a row.
        model_name: The registered model that gets the challenger.
        experiment: MLflow experiment (default: the study's name).
        storage: Optuna storage URL (PostgreSQL for many workers).
        tracking_uri: MLflow store (default: ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlruns/mlflow.db``).
        cache_dir: Folder of the decoded-array cache.
        engine: ``optuna`` or ``keras-tuner``.
        tuner: keras-tuner's tuner: ``hyperband``, ``bayesian`` or ``random``.
        gpu: Pin this process to one GPU (sets ``CUDA_VISIBLE_DEVICES``; before TensorFlow is first imported).
        heartbeat_interval: Seconds between a running trial's heartbeats in the Optuna storage.
        grace_period: Seconds without a heartbeat before a trial's worker counts as dead.
        progress: Where to write the live progress lines (e.g. ``sys.stdout``); None: nowhere.

    Returns:
        The study's counts, its best trial and what was registered.

    Raises:
        ConfigError: A bad space, study name or argument; a changed space or different data for an existing study.
        FatalError: A store that cannot be written, or too many failed trials in a row.
    """
    import time

    from fer_experiments.config import DataConfig, SearchConfig
    from fer_experiments.search.engines import make_engine
    from fer_experiments.search.lifecycle import run_search

    started = time.time()  # the budget counts from here: data loading and logging are part of it
    # NaN and infinity fail these too: a search that could never end is refused (as the CLI's Duration does).
    if budget is not None and not 0 < budget < math.inf:
        raise ConfigError(f"budget {budget!r}: must be a finite positive number of seconds")
    if timeout is not None and not 0 < timeout < math.inf:
        raise ConfigError(f"timeout {timeout!r}: must be a finite positive number of seconds")
    if n_trials is None and budget is None:
        raise ConfigError("give n_trials, budget or both")
    if engine not in ("optuna", "keras-tuner"):
        raise ConfigError(f"engine {engine!r}: expected optuna or keras-tuner")
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # read when the backend initialises its devices
    cfg = SearchConfig(data=DataConfig(path=os.fspath(data), limit=limit, cache_dir=cache_dir),
                       tracking_uri=_tracking(tracking_uri), study=study, storage=storage,
                       space_path=os.fspath(space), n_trials=n_trials if n_trials is not None else BUDGET_TRIALS,
                       experiment=experiment, timeout_seconds=timeout, enqueue=tuple(enqueue),
                       max_consecutive_failures=max_consecutive_failures, model_name=model_name, gpu=gpu,
                       heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                       budget_deadline=None if budget is None else started + budget, budget_seconds=budget,
                       refit=refit)
    options: dict[str, Any] = {"enqueue": cfg.enqueue} | ({"tuner": tuner} if engine == "keras-tuner" else {})
    outcome = run_search(cfg, make_engine(engine, **options),
                         progress_stream=progress if progress is not None else _Discard())
    return SearchResult(study=outcome.study, engine=outcome.engine, parent_run_id=outcome.parent_run_id,
                        ran=outcome.ran, finished=outcome.finished, complete=outcome.complete,
                        pruned=outcome.pruned, failed=outcome.failed, best_value=outcome.best_value,
                        best_trial=outcome.best_trial, best_run_id=outcome.best_run_id,
                        registered_version=outcome.registered_version,
                        challenger_run_id=outcome.challenger_run_id, refits=tuple(outcome.refits),
                        stopped=outcome.stopped, notes=tuple(outcome.notes), outcome=outcome)


#: The trial target of a budget-bounded search without ``n_trials``: as many as the budget allows.
BUDGET_TRIALS = 10**6


class _Discard:
    """A text stream that keeps nothing: a search's progress lines when the caller asked for none."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


# ------------------------------------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class Promotion:
    """The outcome of `promote`: the candidate, the champion it was compared with, and what changed.

    Attributes:
        decision: `promote` (the alias moved), `already` (the run is the alias's version already) or `dry-run`.
        model_name: The registered model.
        alias: The alias (`champion`).
        version: The candidate's registered version (None on a dry run of an unregistered run).
        created_version: Whether this call registered a new version.
        run_id: The candidate's run.
        study: The candidate's study, if any.
        trial: Its trial number, if any.
        public_accuracy: The candidate's PublicTest accuracy (what the guard compares).
        private_accuracy: Its PrivateTest accuracy (reported, never used to choose).
        champion_version: The alias's version before this call.
        champion_public_accuracy: That version's PublicTest accuracy.
        champion_private_accuracy: That version's PrivateTest accuracy.
        notes: Remarks (e.g. which data set was used).
    """

    decision: str
    model_name: str
    alias: str
    version: str | None
    created_version: bool
    run_id: str
    study: str | None
    trial: int | None
    public_accuracy: float
    private_accuracy: float | None
    champion_version: str | None
    champion_public_accuracy: float | None
    champion_private_accuracy: float | None
    notes: tuple[str, ...]

    @property
    def model_uri(self) -> str:
        """``models:/<name>@<alias>``: what consumers load."""
        return f"models:/{self.model_name}@{self.alias}"


def _sync_service(uri: str, name: str, alias: str) -> None:
    """Keep ``<name>-service@<alias>`` (MLflow serving's wrapper) on the wrapper of ``<name>@<alias>``."""
    from fer_experiments.serving.mlflow_service import sync_service_alias

    sync_service_alias(uri, name, alias)


def promote(study: str | None = None, run: str | None = None, *, data: str | os.PathLike | None = None,
            model_name: str = DEFAULT_MODEL_NAME, alias: str = DEFAULT_ALIAS, force: bool = False,
            dry_run: bool = False, min_accuracy: float | None = None, tracking_uri: str | None = None,
            cache_dir: str | None = None, max_latency_ms: float | None = None,
            runtime: str = "exported") -> Promotion:
    """Register the best model of a study (or one run) and move the champion alias to it (``fer-exp promote``).

    The guard compares PublicTest accuracy (the selection split) with the current champion's; PrivateTest is
    evaluated once and reported, never used to choose. Running it again after a crash completes the promotion.

    Args:
        study: Promote the best COMPLETE trial (or refit) of this study.
        run: Promote this MLflow run instead (e.g. a `TrainResult`'s ``run_id``).
        data: The data set for the PrivateTest report (default: the one logged with the run, when it is here).
        model_name: The registered model.
        alias: The alias to move.
        force: Move the alias even if the candidate is worse.
        dry_run: Compare only; change nothing.
        min_accuracy: Refuse candidates below this PublicTest accuracy.
        tracking_uri: MLflow store (default: ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlruns/mlflow.db``).
        cache_dir: Folder of the decoded-array cache (and of the serving-cost cache).
        max_latency_ms: With ``study``: the most accurate trial or refit whose network serves one face within this
            many milliseconds on ``runtime`` (measured on this machine, cached by architecture).
        runtime: The serving runtime ``max_latency_ms`` is measured on: ``exported`` or ``int8``.

    Raises:
        Refused: The candidate is not better than the champion (and ``force`` is False), is below
            ``min_accuracy``, its model files are gone, or no trial of the study is within ``max_latency_ms``.
        ConfigError: Neither or both of ``study`` and ``run``, or an unknown study or run.
    """
    from fer_experiments.registry.promote import PromoteConfig
    from fer_experiments.registry.promote import promote as do_promote

    cfg = PromoteConfig(tracking_uri=_tracking(tracking_uri), data_path=None if data is None else os.fspath(data),
                        study=study, run_id=run, model_name=model_name, alias=alias, force=force, dry_run=dry_run,
                        min_accuracy=min_accuracy, cache_dir=cache_dir, max_latency_ms=max_latency_ms,
                        runtime=runtime)
    r = do_promote(cfg, on_alias_moved=_sync_service)
    c = r.candidate
    return Promotion(decision=r.decision, model_name=model_name, alias=alias, version=r.version,
                     created_version=r.created_version, run_id=c.run_id, study=c.study, trial=c.trial,
                     public_accuracy=c.public_accuracy, private_accuracy=c.private_accuracy,
                     champion_version=r.champion_version, champion_public_accuracy=r.champion_public_accuracy,
                     champion_private_accuracy=r.champion_private_accuracy, notes=tuple(r.notes))


@dataclass(frozen=True)
class Rollback:
    """The outcome of `rollback`: the alias moved from one version to another.

    Attributes:
        model_name: The registered model.
        alias: The alias moved.
        from_version: The version it pointed at.
        to_version: The version it points at now.
    """

    model_name: str
    alias: str
    from_version: str
    to_version: str


def rollback(model_name: str = DEFAULT_MODEL_NAME, alias: str = DEFAULT_ALIAS, *,
             tracking_uri: str | None = None) -> Rollback:
    """Point the alias back at the version it pointed at before (``fer-exp rollback``).

    Raises:
        Refused: There is no earlier version to go back to, or its model files are gone.
    """
    from fer_experiments.registry.promote import rollback as do_rollback

    old, new = do_rollback(_tracking(tracking_uri), model_name, alias, on_alias_moved=_sync_service)
    return Rollback(model_name, alias, old, new)


def models(model_name: str | None = None, *, tracking_uri: str | None = None) -> list["VersionRow"]:
    """Registered versions with their aliases, source study/trial and PublicTest/PrivateTest numbers
    (``fer-exp models``); every model but the serving wrappers unless ``model_name`` is given.

    Raises:
        ConfigError: A SQLite store that does not exist (nothing is created).
    """
    from fer_experiments.registry.promote import list_models
    from fer_experiments.tracking import prepare_store
    from fer_experiments.tracking.store import require_existing_store

    uri = _tracking(tracking_uri)
    require_existing_store(uri)  # a reading call never creates a store
    prepare_store(uri)
    return list_models(uri, model_name)


# ---------------------------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class Evaluated:
    """A model's metrics on one split, and what they came from (`fer-exp evaluate`).

    Attributes:
        model_uri: The model evaluated.
        data_digest: The data set's digest.
        evaluation: Accuracy, loss, macro-F1, per-class precision/recall/F1 and the confusion matrix.
        predictions: The split's faces (`.split.x`), labels (`.split.y`) and the model's (N, 7) `.probabilities`.
    """

    model_uri: str
    data_digest: str
    evaluation: "Evaluation"
    predictions: "SplitPredictions" = field(repr=False, compare=False)

    @property
    def accuracy(self) -> float:
        """Accuracy on the split."""
        return self.evaluation.accuracy

    @property
    def macro_f1(self) -> float:
        """Macro-averaged F1 on the split."""
        return self.evaluation.macro_f1


def evaluate(model: str, data: str | os.PathLike, split: str = "PrivateTest", *, tracking_uri: str | None = None,
             cache_dir: str | None = None) -> Evaluated:
    """Accuracy, macro-F1 and per-class precision/recall/F1 of a model on one split.

    Args:
        model: ``runs:/<run_id>/model``, ``models:/<name>/<version>``, ``models:/<name>@<alias>`` or a local path.
        data: The FER2013 CSV or image-folder tree.
        split: ``Training``, ``PublicTest`` or ``PrivateTest``.
        tracking_uri: MLflow store for ``runs:/`` and ``models:/`` URIs.
        cache_dir: Folder of the decoded-array cache.
    """
    from fer_experiments import SPLITS
    from fer_experiments.data import load_dataset
    from fer_experiments.registry.evaluate import predict_split

    _library_defaults()
    if split not in SPLITS:
        raise ConfigError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    ds = load_dataset(os.fspath(data), cache_dir=cache_dir)
    found = predict_split(model, ds, split, tracking_uri)
    return Evaluated(model_uri=model, data_digest=ds.digest, evaluation=found.evaluation, predictions=found)


# ------------------------------------------------------------------------------------------------------- serving
@dataclass(frozen=True)
class ImagePrediction:
    """The faces found in one image, each with its box, label and 7 probabilities.

    Attributes:
        source: The file name, or `<bytes>` / `<array>` for an image given in memory.
        faces: One `Face` per face found (`.box`, `.label`, `.probabilities` in the order of `fx.EXPRESSIONS`).
        width: The image's width in pixels.
        height: Its height.
        model_version: The registered version that answered (None for a run or a local file).
    """

    source: str
    faces: tuple["Face", ...]
    width: int
    height: int
    model_version: str | None

    @property
    def labels(self) -> tuple[str, ...]:
        """The label of each face, in the order of ``faces``."""
        return tuple(f.label for f in self.faces)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form ``fer-exp predict --json`` prints (without timing)."""
        return {"file": self.source, "faces": [f.to_dict() for f in self.faces],
                "image": {"width": self.width, "height": self.height}}


def load_model(model: str = DEFAULT_MODEL_URI, *, tracking_uri: str | None = None, runtime: str = "exported",
               detector: str | None = "yunet", detect_size: int | None = None, min_face: int = 32,
               margin: float | None = None) -> "LoadedModel":
    """Load a model with its face detector, ready for `predict` (what ``fer-exp predict`` loads).

    Args:
        model: ``models:/<name>@<alias>`` (default: the champion), ``models:/<name>/<version>``,
            ``runs:/<run_id>/model`` or a local ``.keras`` file / MLflow model folder.
        tracking_uri: MLflow store for ``runs:/`` and ``models:/`` URIs.
        runtime: ``exported`` (the ONNX graph in ONNX Runtime), ``int8`` (that graph quantized) or ``keras``.
        detector: ``yunet`` (the CNN detector, default; Haar when it cannot load, with one warning), ``haar``,
            ``haar-alt`` or the path of a Haar cascade XML; None: no detector (whole images are faces).
        detect_size: Detect on a copy whose longer side is at most this many pixels (default: the detector's,
            320 for YuNet and 280 for Haar; 0: full size).
        min_face: Smallest face to look for, in pixels of the original image.
        margin: Widen each box by this fraction per side before cropping (default 0.03, FER2013's framing).

    Returns:
        The loaded version: ``.name``, ``.version``, ``.runtime``, and ``.predictor`` for `predict`.

    Raises:
        ConfigError: An alias with no version behind it yet, or a bad detector setting.
        FatalError: A version whose model files are gone.
    """
    from fer_experiments.models.export import RUNTIMES
    from fer_experiments.serving.detector import DEFAULT_MARGIN, DetectorConfig, FaceDetector
    from fer_experiments.serving.predictor import load_model as load

    _library_defaults()
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    det = None if detector is None else FaceDetector(DetectorConfig(spec=detector, detect_size=detect_size,
                                                                    min_face=min_face))
    return load(model, tracking_uri, det, DEFAULT_MARGIN if margin is None else margin, runtime)


def predict(images: ImageInput | Iterable[ImageInput], model: "str | LoadedModel" = DEFAULT_MODEL_URI, *,
            detect: bool = True, tracking_uri: str | None = None, runtime: str = "exported",
            max_pixels: int | None = None) -> list[ImagePrediction]:
    """Find the faces in each image and classify them (``fer-exp predict`` on photos).

    Args:
        images: One image or several: file paths, encoded bytes (JPEG, PNG, ...) or uint8 arrays
            ((H, W) grayscale or (H, W, 3) RGB).
        model: A model URI (loaded with `load_model`) or a model `load_model` returned (faster when
            called many times).
        detect: False: classify each whole image as one face (for 48x48 crops).
        tracking_uri: MLflow store, when ``model`` is a URI.
        runtime: ``exported``, ``int8`` or ``keras``, when ``model`` is a URI.
        max_pixels: Refuse images with more pixels than this (default 40,000,000).

    Returns:
        One `ImagePrediction` per image, in order; an image without a face has ``faces == ()``.

    Raises:
        DataError: A file that cannot be read or is not an image (the message names it).
    """
    import numpy as np

    from fer_experiments.serving.images import DEFAULT_MAX_PIXELS, decode_image

    loaded = load_model(model, tracking_uri=tracking_uri, runtime=runtime) if isinstance(model, str) else model
    if isinstance(images, (str, os.PathLike, bytes, np.ndarray)):
        images = [images]
    out: list[ImagePrediction] = []
    for item in images:
        if isinstance(item, np.ndarray):
            source, gray = "<array>", _gray(item)
        else:
            source = "<bytes>" if isinstance(item, bytes) else os.fspath(item)
            try:
                raw = item if isinstance(item, bytes) else Path(item).read_bytes()
            except OSError as exc:
                raise DataError(f"{source}: cannot read ({exc.strerror or exc})") from None
            try:
                gray = decode_image(raw, max_bytes=max(len(raw), 1),
                                    max_pixels=max_pixels or DEFAULT_MAX_PIXELS).gray
            except DataError as exc:
                raise DataError(f"{source}: {exc}") from None
        faces = loaded.predictor.faces(gray, detect)
        out.append(ImagePrediction(source, tuple(faces), int(gray.shape[1]), int(gray.shape[0]), loaded.version))
    return out


def _gray(pixels: "np.ndarray") -> "np.ndarray":
    """(H, W) or (H, W, 3) RGB uint8 -> (H, W) uint8 gray, with the weights OpenCV uses for decoded images."""
    import cv2
    import numpy as np

    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise DataError(f"<array>: expected (H, W) or (H, W, 3) uint8 pixels, got {pixels.dtype} {pixels.shape}")
    return np.ascontiguousarray(pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY))
