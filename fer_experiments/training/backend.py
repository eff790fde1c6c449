"""The few backend-specific switches (seeds, determinism, log level), kept out of model and training code."""

from __future__ import annotations


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and the Keras backend; on TensorFlow also ask for deterministic ops.

    Determinism lets two CPU runs with the same seed give the same metrics (JAX and torch on CPU are
    deterministic for these layers already).
    """
    import keras

    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # backend-specific, on purpose and only here

        tf.config.experimental.enable_op_determinism()
        # Each trial's new model retraces predict once; TF warns about it every time, which is noise here.
        tf.get_logger().setLevel("ERROR")


def backend_name() -> str:
    """The Keras backend in use (tensorflow, jax or torch)."""
    import keras

    return str(keras.backend.backend())
