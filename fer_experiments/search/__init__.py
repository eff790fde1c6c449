"""The only package that imports optuna: studies, the trial objective, pruning, progress and summaries."""
