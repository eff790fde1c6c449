"""Search engines: small adapters that plug into ``search.lifecycle`` (a third engine is one more module here).

Each is imported only when chosen: Optuna and keras-tuner (and through it TensorFlow) load lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fer_experiments.search.run import Engine

ENGINES: tuple[str, ...] = ("optuna", "keras-tuner")


def make_engine(name: str, **options: Any) -> "Engine":
    """The engine called ``name``; ``options`` go to its constructor (``enqueue`` for Optuna; ``tuner``, ``seed``,
    ``overwrite`` for keras-tuner)."""
    from fer_experiments.errors import ConfigError

    if name == "optuna":
        from fer_experiments.search.engines.optuna import OptunaEngine

        return OptunaEngine(**options)
    if name == "keras-tuner":
        from fer_experiments.search.engines.keras_tuner import KerasTunerEngine

        if options.get("enqueue"):
            raise ConfigError("--enqueue works with the Optuna engine only")
        options.pop("enqueue", None)
        return KerasTunerEngine(**options)
    raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}; got {name!r}")
