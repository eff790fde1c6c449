"""Optuna studies: storage, create-or-resume with the settings a study keeps, samplers, pruners, listing."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import optuna
from optuna.trial import TrialState

from fer_experiments.errors import ConfigError, FatalError, TrialFailed
from fer_experiments.io import file_lock
from fer_experiments.locks import (
    STUDY_SETUP_KEY,
    TRIAL_GATE_KEY,
    advisory_lock,
    is_postgres,
    lock_file_beside,
    setup_lock,
    sqlite_file,
    sqlite_write_problem,
)
from fer_experiments.search.run import StudySettings
from fer_experiments.tracking import tags
from fer_experiments.tracking.store import redact_uri

if TYPE_CHECKING:
    from fer_experiments.spaces import SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)


class _NoInterruptionWarnings(logging.Filter):
    """Drop Optuna's "Trial N failed ... KeyboardInterrupt()" warning (with its traceback) and the "Trial N failed
    with value None" line after it: the command says once, in its own words, what the interruption stopped. A
    failed trial keeps Optuna's one-line warning without the traceback."""

    def __init__(self) -> None:
        super().__init__()
        self._trial: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        raised = record.exc_info[0] if record.exc_info else None
        if raised is not None and issubclass(raised, TrialFailed):
            # An expected outcome whose reason the message already gives: Optuna's line stays, the traceback (of
            # this package's own frames) goes.
            record.exc_info, record.exc_text = None, None
            return True
        if raised is not None and issubclass(raised, KeyboardInterrupt):
            words = record.getMessage().split()
            self._trial = words[1] if len(words) > 1 else None
            return False
        if self._trial is not None and record.getMessage().startswith(f"Trial {self._trial} failed with value"):
            self._trial = None
            return False
        return True


# The records are made by this logger, so a filter on it applies (one on "optuna" would miss propagated records).
logging.getLogger("optuna.study._optimize").addFilter(_NoInterruptionWarnings())


def storage_lock(storage: str) -> contextlib.AbstractContextManager[None]:
    """Serialise study creation (tables, study, parent run) across processes sharing ``storage``: workers on
    different hosts starting at the same moment create one study and one parent run."""
    return setup_lock(storage, STUDY_SETUP_KEY)


class TrialGate:
    """A cross-process lock around "count the study's trials, then start one" (PostgreSQL advisory lock).

    Unlike ``storage_lock`` it is acquired and released in different places: the runner acquires it before
    asking for a trial and the trial releases it once it exists. SQLite needs none (one worker process per file).
    """

    def __init__(self, storage: str) -> None:
        self._lock: contextlib.ExitStack | None = None
        self._url = storage if is_postgres(storage) else None

    def acquire(self) -> None:
        if self._url is None or self._lock is not None:
            return
        stack = contextlib.ExitStack()
        stack.enter_context(advisory_lock(self._url, TRIAL_GATE_KEY))
        self._lock = stack

    def release(self) -> None:
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.close()

    def close(self) -> None:
        self.release()


@contextlib.contextmanager
def sole_sqlite_writer(storage: str) -> Iterator[None]:
    """Refuse a second search/worker process on one SQLite file instead of failing later with "database is locked".

    SQLite takes one writer at a time; Optuna's heartbeats and trial updates from several processes collide.
    """
    db = sqlite_file(storage)
    if db is None:
        yield
        return
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(lock_file_beside(db, ".workers"), blocking=False))
        except BlockingIOError:
            raise ConfigError(
                f"another fer-exp search or worker is already using the SQLite storage {storage}; SQLite takes one "
                "worker process at a time. For several workers use PostgreSQL (--storage postgresql://user@host/db) "
                "or Optuna's journal storage.") from None
        yield


def check_storage_writable(storage: str) -> None:
    """FatalError naming the storage when a SQLite Optuna storage cannot be written, before any work starts."""
    problem = sqlite_write_problem(storage)
    if problem:
        raise FatalError(f"the Optuna storage {redact_uri(storage)} cannot be written: {problem}")


def retry_callback() -> Any:
    """Optuna's retry of a trial whose worker died or was stopped: the same params queued again, once.

    One retry: a worker lost with its host (or stopped by ``docker stop``) deserves a second chance, but a trial that
    killed its worker (the kernel's OOM killer) would kill the next one too; its retry failing as well ends it FAIL.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)


def open_storage(storage: str, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 ) -> optuna.storages.BaseStorage:
    """An Optuna RDB storage for ``storage``, tables created once under a lock.

    With a heartbeat, a trial whose worker died (SIGKILL, lost host) is marked FAIL once its heartbeat is older than
    the grace period, and Optuna's retry callback enqueues a new trial with the same params, once.
    """
    if "://" not in storage:
        raise ConfigError(f"--storage {storage!r} is not a storage URL (e.g. sqlite:///mlruns/optuna.db or "
                          "postgresql://user@host/db)")
    check_storage_writable(storage)
    kwargs: dict[str, Any] = {}
    if heartbeat_interval:
        retry = retry_callback()
        kwargs = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period or 3 * heartbeat_interval,
                  "heartbeat_stale_trial_callback": retry}
    try:
        with storage_lock(storage), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat API "experimental"
            return optuna.storages.RDBStorage(storage, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure means the storage is unusable
        raise FatalError(f"cannot open the Optuna storage {redact_uri(storage)}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc


def resumed_seed(seed: int | None, trials_so_far: int) -> int | None:
    """The sampler seed of a command that opens a study holding ``trials_so_far`` trials.

    Optuna does not store a sampler's state: rebuilding it from the space's seed on every command replays the same
    suggestions, so a resumed study would repeat trial 0. A fresh study uses the space's seed as it is (the same
    space gives the same first trials); a resumed one derives a new seed from it and the study's trial count, so
    each command continues the sequence instead of restarting it, and reruns stay reproducible.
    """
    if seed is None or trials_so_far == 0:
        return seed
    digest = hashlib.sha256(f"fer-exp sampler {seed} after {trials_so_far}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def make_sampler(space: "SearchSpace", trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
    """The space's sampler, seeded (see ``resumed_seed`` for a study that already holds trials)."""
    cfg = dict(space.sampler)
    name = cfg.pop("name", "tpe")
    seed = resumed_seed(cfg.pop("seed", 42), trials_so_far)
    options = dict(cfg.pop("options", {}) or {})
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **options)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        try:
            import torch  # noqa: F401 - GPSampler needs it
        except ImportError:
            raise ConfigError(f"{space.source}: sampler.name: 'gp' needs PyTorch, which is not installed; "
                              "use tpe or random, or `pip install torch`") from None
        return optuna.samplers.GPSampler(seed=seed, **options)
    raise ConfigError(f"{space.source}: sampler.name: unknown sampler {name!r}")


def directions(space: "SearchSpace") -> list[str]:
    """Optuna's directions: the PublicTest metric up, the serving-cost figure (a two-objective space) down."""
    return ["maximize"] + (["minimize"] if space.cost_objective is not None else [])


def first_value(trial: optuna.trial.FrozenTrial) -> float | None:
    """A trial's PublicTest objective (the first value of a two-objective study), None if it has none."""
    return None if not trial.values else float(trial.values[0])


def make_pruner(space: "SearchSpace") -> optuna.pruners.BasePruner:
    """The space's pruner; Hyperband's max resource is the space's max_epochs. A two-objective study gets none:
    Optuna's pruners do not support one, so the engine prunes against trials of similar cost
    (``search.pareto.similar_cost_prune``)."""
    cfg = dict(space.pruner)
    name = cfg.pop("name", "median")
    if space.cost_objective is not None:
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(**cfg)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(max_resource=space.max_epochs, **cfg)
    if name == "threshold":
        return optuna.pruners.ThresholdPruner(**cfg)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"{space.source}: pruner.name: unknown pruner {name!r}")


def _open_for_reading(storage_url: str) -> optuna.storages.BaseStorage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(storage_url, skip_table_creation=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the storage is unusable
        raise FatalError(f"cannot open the Optuna storage {redact_uri(storage_url)}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc


def study_exists(storage: optuna.storages.BaseStorage, name: str) -> bool:
    try:
        storage.get_study_id_from_name(name)
        return True
    except KeyError:
        return False


def study_in_storage(storage_url: str, name: str) -> bool:
    """Whether ``storage_url`` holds study ``name``; a SQLite file that does not exist is not created."""
    db = sqlite_file(storage_url)
    if db is not None and not db.exists():
        return False
    try:
        return study_exists(open_storage(storage_url), name)
    except (FatalError, ConfigError):
        return False


def create_or_resume(storage: optuna.storages.BaseStorage, storage_url: str, name: str, space: "SearchSpace | None",
                     *, data_digest: str, limit: int | None, experiment: str | None, n_trials: int | None = None,
                     ) -> tuple[optuna.Study, StudySettings, bool]:
    """Create study ``name`` with ``space`` or resume it; returns (study, the settings it stores, created).

    The caller checks the settings against the command's (``search.lifecycle.check_identity``). The sampler and
    pruner are rebuilt from the study's own space, since Optuna does not store them.
    """
    from fer_experiments.spaces import SearchSpace

    with storage_lock(storage_url):
        created = False
        if not study_exists(storage, name):
            if space is None:
                raise ConfigError(f"study {name!r} does not exist in {redact_uri(storage_url)}; create it with "
                                  "`fer-exp search --space ...` first")
            study = optuna.create_study(study_name=name, storage=storage, directions=directions(space),
                                        sampler=make_sampler(space), pruner=make_pruner(space))
            study.set_user_attr(tags.ATTR_SPACE, space.to_dict())
            study.set_user_attr(tags.ATTR_SPACE_HASH, space.content_hash())
            study.set_user_attr(tags.ATTR_SPACE_FILE, str(space.source))
            study.set_user_attr(tags.ATTR_DATA_DIGEST, data_digest)
            # An explicit --limit wins over the space's train_limit; later commands must agree with it.
            study.set_user_attr(tags.ATTR_LIMIT, limit if limit is not None else space.train_limit)
            study.set_user_attr(tags.ATTR_EXPERIMENT, experiment or name)
            study.set_user_attr(tags.ATTR_N_TRIALS, n_trials)
            study.set_user_attr(tags.ATTR_CREATED, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
            created = True
        loaded = optuna.load_study(study_name=name, storage=storage)
        stored = (loaded.user_attrs.get(tags.ATTR_SPACE) or {}).get("objective") or ""
        objective = [str(o) for o in stored] if isinstance(stored, list) else [str(stored)] if stored else []
        if objective and loaded.metric_names != objective:
            # optuna-dashboard and Optuna's plots label the value with it (instead of "Objective 0"); older
            # studies get it on resume.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                loaded.set_metric_names(objective)
        if not created and n_trials is not None and loaded.user_attrs.get(tags.ATTR_N_TRIALS) != n_trials:
            loaded.set_user_attr(tags.ATTR_N_TRIALS, n_trials)  # a search command sets the study's target for all workers
        attrs = loaded.user_attrs
        trials_so_far = len(loaded.get_trials(deepcopy=False))
    source = attrs.get(tags.ATTR_SPACE_FILE, "<study>")
    stored_space = SearchSpace.from_dict(attrs[tags.ATTR_SPACE], source=source)
    study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(stored_space, trials_so_far),
                              pruner=make_pruner(stored_space))
    settings = StudySettings(space=stored_space, data_digest=str(attrs.get(tags.ATTR_DATA_DIGEST)),
                             limit=attrs.get(tags.ATTR_LIMIT), experiment=attrs.get(tags.ATTR_EXPERIMENT, name),
                             n_trials=attrs.get(tags.ATTR_N_TRIALS), space_hash=attrs[tags.ATTR_SPACE_HASH],
                             space_source=source)
    return study, settings, created


def finished_count(study: optuna.Study) -> int:
    """Trials that count towards --n-trials: COMPLETE and PRUNED (failed ones are replaced)."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


@dataclass(frozen=True)
class StudyRow:
    """One line of ``fer-exp studies``."""

    name: str
    complete: int
    pruned: int
    failed: int
    running: int
    waiting: int
    best_value: float | None
    best_trial: int | None
    objective: str
    space_file: str
    created: str


def list_studies(storage_url: str) -> list[StudyRow]:
    """Every study in the storage with its trial counts by state and its best COMPLETE trial.

    Reads only: a SQLite storage that does not exist is a ConfigError saying where it was looked for.
    """
    import os

    db = sqlite_file(storage_url)
    if db is not None and not db.is_file():
        raise ConfigError(f"no Optuna storage at {db.resolve()} (--storage {storage_url}, from {os.getcwd()}); "
                          "run from the folder that holds it or give --storage")
    storage = _open_for_reading(storage_url)
    rows: list[StudyRow] = []
    for summary in optuna.study.get_all_study_summaries(storage, include_best_trial=False):
        study_id = storage.get_study_id_from_name(summary.study_name)
        trials = storage.get_all_trials(study_id, deepcopy=False)
        counts = {s: 0 for s in TrialState}
        best: Any = None
        for t in trials:
            counts[t.state] += 1
            if t.state == TrialState.COMPLETE and first_value(t) is not None and (
                    best is None or first_value(t) > first_value(best)):  # type: ignore[operator]
                best = t
        attrs = summary.user_attrs
        space = attrs.get(tags.ATTR_SPACE) or {}
        rows.append(StudyRow(
            name=summary.study_name, complete=counts[TrialState.COMPLETE], pruned=counts[TrialState.PRUNED],
            failed=counts[TrialState.FAIL], running=counts[TrialState.RUNNING], waiting=counts[TrialState.WAITING],
            best_value=None if best is None else first_value(best), best_trial=None if best is None else best.number,
            objective=str(space.get("objective", "?")) if not isinstance(space.get("objective"), list) else
            " + ".join(map(str, space["objective"])), space_file=str(attrs.get(tags.ATTR_SPACE_FILE, "")),
            created=str(attrs.get(tags.ATTR_CREATED, "")),
        ))
    return rows


logging.getLogger("optuna").setLevel(logging.WARNING)
