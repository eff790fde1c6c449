"""Fitting one model of the family with plain Keras 3 (``trainer``) and the backend helpers it needs (``backend``):
no tracking here; ``tracking.training_run`` logs a training to MLflow."""
