"""A study's best K models, found through MLflow: its refit runs where it has them, else its COMPLETE trials."""

from __future__ import annotations

from dataclasses import dataclass

from fer_experiments.errors import ConfigError
from fer_experiments.tracking import tags

#: The most members an ensemble may be built from (``--top``; for greedy also the most additions): each is a whole
#: network loaded, run on PublicTest and nested in the model.
MAX_TOP = 50


@dataclass(frozen=True)
class Member:
    """One candidate member: its run, what it is, and the PublicTest numbers its run logged."""

    run_id: str
    kind: str
    number: int
    #: the study's objective value (or PublicTest accuracy where the run has none): what ranks the candidates
    score: float
    public_accuracy: float | None
    data_digest: str | None
    experiment_id: str

    @property
    def model_uri(self) -> str:
        return f"runs:/{self.run_id}/model"

    def label(self) -> str:
        return f"{self.kind} {self.number}" if self.number >= 0 else self.kind


def find_members(tracking_uri: str, study: str, top: int) -> tuple[list[Member], str]:
    """The study's best ``top`` models, best first, and which kind they are (refit or trial).

    Refit runs (finished, with a model) are used when the study has any; otherwise COMPLETE trials with a model,
    from any engine (Optuna or keras-tuner: both tag their runs alike). ConfigError if there is none.
    """
    from fer_experiments.tracking import find_runs, find_trial_records, get_run, prepare_store
    from fer_experiments.tracking.store import require_existing_store

    if not 1 <= top <= MAX_TOP:
        raise ConfigError(f"--top must be between 1 and {MAX_TOP}; got {top}")
    require_existing_store(tracking_uri)  # the study's runs are read first: a mistyped store path creates nothing
    prepare_store(tracking_uri)
    for kind in (tags.KIND_REFIT, tags.KIND_TRIAL):
        records = find_trial_records(tracking_uri, study, kinds=(kind,))
        if kind == tags.KIND_TRIAL:
            records = [r for r in records if r.state == "COMPLETE"]
        found: list[Member] = []
        for record in records:
            run = get_run(tracking_uri, record.run_id)
            if run.status != "FINISHED" or not tags.has_model(run.tags):
                continue
            public = run.metrics.get(tags.PUBLIC_ACCURACY)
            score = record.objective_value if record.objective_value is not None else public
            if score is None:
                continue
            found.append(Member(run_id=record.run_id, kind=kind, number=record.number, score=float(score),
                                public_accuracy=public, data_digest=run.tags.get(tags.DATA_DIGEST),
                                experiment_id=run.experiment_id))
        if found:
            found.sort(key=lambda m: (-m.score, m.number, m.run_id))
            return found[:top], kind
    if not find_runs(tracking_uri, None, filter_string=tags.study_filter(study)):
        raise ConfigError(f"unknown study {study!r} in the tracking store")
    raise ConfigError(f"study {study!r} has no COMPLETE trial or refit run with a logged model to ensemble")
