"""Searching the CNN family: one engine-neutral lifecycle (``lifecycle``) and the engines that plug into it
(``engines.optuna``, ``engines.keras_tuner``); Optuna's study storage (``study``), reconciling dead workers
(``reconcile``), the live progress line (``progress``), the end-of-search summary (``summary``) and the engine
comparison (``compare``). The only package that imports optuna or keras_tuner (besides the ``spaces`` adapters).
"""
