"""The Model Registry workflow: promote a candidate behind a guard, list versions, roll back (``promote``), and
evaluate any logged or registered model on a split (``evaluate``). A study's best model is found through its MLflow
runs, so studies of every engine promote alike."""
