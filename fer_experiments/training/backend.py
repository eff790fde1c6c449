"""The few backend-specific switches (seeds, determinism, log level), kept out of model and training code."""

from __future__ import annotations


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and the Keras backend; on TensorFlow also ask for deterministic ops.

    Determinism lets two CPU runs with the same seed give the same metrics (JAX and torch on CPU are
    deterministic for these layers already).
    """
    import keras

    keras.utils.set_random_seed(seed)
    # fer-exp prints its own progress; a library's predict() with Keras's default verbosity (seen on the JAX backend,
    # after training) would draw a progress bar into the user's terminal.
    keras.utils.disable_interactive_logging()
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # backend-specific, on purpose and only here

        tf.config.experimental.enable_op_determinism()
        # Each trial's new model retraces predict once; TF warns about it every time, which is noise here.
        tf.get_logger().setLevel("ERROR")


def backend_name() -> str:
    """The Keras backend in use (tensorflow, jax or torch)."""
    import keras

    return str(keras.backend.backend())


def available_memory_bytes() -> int | None:
    """Memory a new model may use now: ``FER_EXP_MEMORY_LIMIT`` (bytes, or with a K/M/G suffix) if set, else the
    smaller of the kernel's MemAvailable and the cgroup's (container's) limit minus its usage; None if unknown."""
    import os
    from pathlib import Path

    raw = os.environ.get("FER_EXP_MEMORY_LIMIT", "").strip()
    if raw:
        units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
        factor = units.get(raw[-1].upper(), 1)
        try:
            return int(float(raw[:-1] if factor != 1 else raw) * factor)
        except ValueError:
            pass
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text().strip()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None
