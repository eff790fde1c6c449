"""Metrics and plots of a model's predictions: pure numpy / scikit-learn (``metrics``) and matplotlib (``plots``);
no model loading and no tracking here."""
