"""keras-tuner as a search engine: its tuners (Hyperband, Bayesian, random) pick the trials, the lifecycle trains
and tracks them exactly as it does Optuna's.

keras-tuner's own project folder lives under the MLflow store folder (``mlruns/keras-tuner/<study>``); running the
command again resumes it. The study's identity (space hash, data digest, Training subset) is kept on its parent
MLflow run. keras-tuner marks a trial whose ``run_trial`` raised as FAILED/INVALID and still names a "best" when
every trial failed: the lifecycle counts finished trials itself and fails loudly when there are none.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager

import keras_tuner

from fer_experiments.config import SearchConfig
from fer_experiments.errors import ConfigError, FatalError
from fer_experiments.search.run import SearchRun, StudySettings, no_lock
from fer_experiments.search.trial import OutOfTheRunning
from fer_experiments.tracking import tags

if TYPE_CHECKING:
    from fer_experiments.spaces import SearchSpace
    from fer_experiments.tracking import TrackedRun

TUNERS: tuple[str, ...] = ("hyperband", "bayesian", "random")
NAME = "keras-tuner"

# keras-tuner prints every failed trial's traceback while this is on (its default); fer-exp reports failures
# itself, one line each, in MLflow and in the summary.
from keras_tuner.src import config as _kt_config  # noqa: E402 - no public switch for it

_kt_config.DEBUG = False


class BudgetSpent(keras_tuner.errors.FatalError):
    """Raised from run_trial to end ``tuner.search`` once the trial count, epoch budget or timeout is used up."""


def project_dir(tracking_uri: str) -> Path:
    """keras-tuner's folder: beside the MLflow SQLite store, else ``mlruns/keras-tuner``."""
    from fer_experiments.config import DEFAULT_STORE_DIR
    from fer_experiments.locks import sqlite_file

    db = sqlite_file(tracking_uri)
    return (db.parent if db is not None else Path(DEFAULT_STORE_DIR)) / "keras-tuner"


class _SpaceHyperModel(keras_tuner.HyperModel):
    """Declares the YAML space on keras-tuner's ``hp``; the model itself is built by fer-exp's trainer."""

    def __init__(self, space: "SearchSpace") -> None:
        super().__init__(name=space.name)
        self.space = space

    def build(self, hp: keras_tuner.HyperParameters) -> None:
        from fer_experiments.spaces import define_kt

        define_kt(self.space, hp)


def _tuner_class(name: str) -> type:
    base = {"hyperband": keras_tuner.Hyperband, "bayesian": keras_tuner.BayesianOptimization,
            "random": keras_tuner.RandomSearch}[name]

    class FerTuner(base):  # type: ignore[misc, valid-type]
        """``run_trial`` hands the trial to the lifecycle and returns the objective."""

        def __init__(self, engine: "KerasTunerEngine", **kwargs: Any) -> None:
            self.fer_engine = engine
            super().__init__(**kwargs)

        def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> dict[str, float]:
            return self.fer_engine.run_trial(trial)

    return FerTuner


class KerasTunerEngine:
    """keras-tuner's ``search()`` loop behind the lifecycle's ``Engine`` protocol."""

    name = NAME

    def __init__(self, tuner: str = "hyperband", *, seed: int | None = None, overwrite: bool = False) -> None:
        if tuner not in TUNERS:
            raise ConfigError(f"--tuner must be one of {', '.join(TUNERS)}; got {tuner!r}")
        self.tuner_name = tuner
        self.seed = seed
        self.overwrite = overwrite
        self.cfg: SearchConfig | None = None
        self.parent: str | None = None
        self.kt: Any = None
        self.run: SearchRun | None = None
        self.started = 0
        #: keras-tuner trial id -> the ``start_from`` point it runs.
        self.start_names: dict[str, str] = {}

    def session(self, cfg: SearchConfig) -> ContextManager[None]:
        return no_lock()

    def open(self, cfg: SearchConfig, space: "SearchSpace | None", data_digest: str) -> StudySettings:
        from fer_experiments.tracking import find_runs

        if space is None:
            raise ConfigError("--space is required with --engine keras-tuner")
        if space.cost_objective is not None:
            raise ConfigError(f"{space.source}: objective: a two-objective study ({', '.join(space.objectives)}) "
                              "needs --engine optuna (keras-tuner's oracles optimise one objective)")
        self.cfg = cfg
        experiment = cfg.experiment or cfg.study
        limit = cfg.data.limit if cfg.data.limit is not None else space.train_limit
        found = find_runs(cfg.tracking_uri, None, filter_string=tags.study_filter(
            cfg.study, kind=tags.KIND_STUDY, engine=NAME))
        if not found:
            return StudySettings(space=space, data_digest=data_digest, limit=limit, experiment=experiment,
                                 n_trials=cfg.n_trials)
        parent = found[0]
        self.parent = parent.run_id
        stored_limit = parent.tags.get(tags.TRAIN_LIMIT)
        return StudySettings(space=space, data_digest=parent.tags.get(tags.DATA_DIGEST, ""),
                             limit=None if stored_limit in (None, "None") else int(stored_limit),
                             experiment=experiment, n_trials=cfg.n_trials,
                             space_hash=parent.tags.get(tags.SPACE_HASH, ""),
                             space_source=parent.tags.get(tags.SPACE_FILE, ""))

    def setup_lock(self) -> ContextManager[None]:
        return no_lock()

    def parent_run_id(self) -> str | None:
        return self.parent

    def remember_parent(self, run_id: str) -> None:
        self.parent = run_id

    def parent_tags(self) -> dict[str, Any]:
        return {tags.KERAS_TUNER: self.tuner_name}

    def search(self, run: SearchRun) -> None:
        cfg, space = run.cfg, run.space
        self.run = run
        seed = self.seed
        if seed is None:
            seed = space.sampler.get("seed")
            seed = 42 if seed is None else int(seed)
        common: dict[str, Any] = dict(
            hypermodel=_SpaceHyperModel(space), objective=keras_tuner.Objective(space.objective, direction="max"),
            seed=seed, directory=str(project_dir(cfg.tracking_uri)), project_name=cfg.study, overwrite=self.overwrite,
            max_consecutive_failed_trials=cfg.max_consecutive_failures)
        if self.tuner_name == "hyperband":
            # Many Hyperband iterations: the trial or epoch budget, not the bracket schedule, ends the search.
            self.kt = _tuner_class("hyperband")(self, max_epochs=space.max_epochs, factor=3,
                                                hyperband_iterations=1000, **common)
        else:
            max_trials = run.n_trials if run.n_trials < 10**6 else 100
            self.kt = _tuner_class(self.tuner_name)(self, max_trials=max_trials, **common)
        before = self._count()
        self.started = before["COMPLETED"] + before["FAILED"] + before["INVALID"]
        self._start_points_first(run)
        try:
            self.kt.search(verbose=0)
        except BudgetSpent:
            pass
        except keras_tuner.errors.FatalError as exc:
            run.outcome.notes.append(f"keras-tuner stopped: {str(exc).splitlines()[0][:300]}")
        except RuntimeError as exc:
            if "consecutive failures" not in str(exc):
                raise
            # keras-tuner's own consecutive-failure limit: report it as ours (a fatal stop with the reason).
            raise FatalError(f"keras-tuner search {cfg.study!r} stopped after {cfg.max_consecutive_failures} "
                             f"consecutive failed trials (last reason: {run.outcome.last_failure})") from None

    def run_trial(self, trial: Any) -> dict[str, float]:
        """One keras-tuner trial through the lifecycle; raising tells keras-tuner it failed."""
        from fer_experiments.spaces import define_kt, epochs_for

        run = self.run
        assert run is not None
        if self.started >= run.n_trials or run.should_stop():
            raise BudgetSpent("budget spent")
        self.started += 1
        hp = trial.hyperparameters
        values = define_kt(run.space, hp)
        # Hyperband hands each trial its epochs; fer-exp trains from scratch rather than from a checkpoint.
        epochs = int(hp.values.get("tuner/epochs", epochs_for(run.space, values)))
        start = self.start_names.get(trial.trial_id)
        done = run.trial(int(trial.trial_id), values, epochs, extra_tags={tags.KERAS_TUNER_TRIAL_ID: trial.trial_id}
                         | ({tags.START_FROM: start} if start else {}))
        if done.skipped is not None:
            # keras-tuner has no pruned state: a configuration past the serving limits scores the worst value, so
            # its tuners learn to avoid it without counting it as a failure.
            return {run.space.objective: 0.0}
        if isinstance(done.stopped, OutOfTheRunning):
            # keras-tuner has no pruned state either: the trial scores the best value it reached.
            return {run.space.objective: done.stopped.value}
        if done.result is None:
            raise keras_tuner.errors.FailedTrialError(f"trial {done.number}: {done.failure}")
        return {run.space.objective: done.result.objective_value}

    def _start_points_first(self, run: SearchRun) -> None:
        """The space's ``start_from`` points become the tuner's first trials: its oracle hands them out before its
        own picks (those a resumed project already ran are not repeated). Hyperband's brackets decide their own
        configurations and epochs, so with ``--tuner hyperband`` the points are skipped with a note."""
        points = run.space.start_points()
        if not points:
            return
        if self.tuner_name == "hyperband":
            run.progress.note("start_from: keras-tuner's Hyperband picks every bracket's configurations itself; the "
                              "start points are not run (use --tuner random or bayesian, or the Optuna engine)")
            return
        oracle = self.kt.oracle
        done = [dict(t.hyperparameters.values) for t in oracle.trials.values()]
        pending = []
        for name, values in points:
            if not any(all(old.get(k) == v for k, v in values.items()) for old in done):
                pending.append((name, values))
        own = oracle.populate_space

        def populate_space(trial_id: str) -> dict[str, Any]:
            if not pending:
                return own(trial_id)
            name, values = pending.pop(0)
            hp = oracle.get_space()
            hp.values.update(values)
            self.start_names[trial_id] = name
            return {"status": keras_tuner.engine.trial.TrialStatus.RUNNING,
                    "values": {p.name: hp.values[p.name] for p in hp.space if hp.is_active(p)}}

        oracle.populate_space = populate_space

    def _count(self) -> dict[str, int]:
        counts = {"COMPLETED": 0, "FAILED": 0, "INVALID": 0, "RUNNING": 0, "IDLE": 0, "STOPPED": 0}
        if self.kt is not None:
            for t in self.kt.oracle.trials.values():
                counts[str(t.status)] = counts.get(str(t.status), 0) + 1
        return counts

    def counts(self) -> tuple[int, int, int]:
        if self.kt is None:  # before the search: the study's trials as MLflow records them
            from fer_experiments.tracking import find_trial_records

            assert self.cfg is not None
            records = find_trial_records(self.cfg.tracking_uri, self.cfg.study, engine=NAME, kinds=(tags.KIND_TRIAL,))
            return (sum(r.state == "COMPLETE" for r in records), 0, sum(r.state == "FAIL" for r in records))
        c = self._count()
        return c["COMPLETED"], 0, c["FAILED"] + c["INVALID"]

    def others_running(self) -> bool:
        return False

    def summarise(self, parent: "TrackedRun", tracking_uri: str) -> list[str]:
        complete, _, failed = self.counts()
        epochs = self.run.outcome.epochs_spent if self.run is not None else 0
        parent.log_metrics({"complete_trials": complete, "failed_trials": failed, "epochs_spent": epochs})
        return []
