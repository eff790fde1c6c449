"""Ensembles of a study's best models, and distillation of an ensemble back to one network.

Sits between ``search`` and ``registry`` in the flow: it reads a study through its MLflow runs (any engine), loads
the members' logged models, builds one Keras model (``models.ensemble``), weighs it (``evaluation.ensemble_selection``)
and logs and registers it like a trial's model (``tracking``); ``distill`` trains a student against it
(``training.distill``). Imports tracking, models, training, evaluation and data only.
"""

from fer_experiments.ensembles.build import EnsembleConfig, EnsembleOutcome, make_ensemble
from fer_experiments.ensembles.distill import DistillConfig, DistillOutcome, distill_ensemble
from fer_experiments.ensembles.members import Member, find_members

__all__ = ["DistillConfig", "DistillOutcome", "EnsembleConfig", "EnsembleOutcome", "Member", "distill_ensemble",
           "find_members", "make_ensemble"]
