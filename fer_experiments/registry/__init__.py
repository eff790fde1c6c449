"""The Model Registry workflow: promote a candidate behind a guard, list versions, roll back."""
