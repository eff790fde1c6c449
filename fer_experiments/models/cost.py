"""What a network costs to serve, measured before it trains: its parameters, the size of its exported graph and its
latency one face at a time in ONNX Runtime, as ``serve`` and ``predict`` run it.

A network's inference cost, unlike its accuracy, does not depend on its training: an untrained network of the same
parameters is exported (``exported``: the float graph; ``int8``: its static INT8 quantization, calibrated on random
faces, which changes the figures' accuracy not the speed) and timed. The figure depends on the machine, so the
cache (one JSON file, written atomically) is keyed by the architecture, the runtime and the machine's CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fer_experiments import IMAGE_SIZE
from fer_experiments.errors import ConfigError
from fer_experiments.models.export import RUNTIME_EXPORTED, RUNTIME_INT8
from fer_experiments.params import ModelParams

#: Runtimes a cost can be measured for (``keras`` is no serving runtime worth a budget: ~75 ms of overhead a call).
COST_RUNTIMES: tuple[str, ...] = (RUNTIME_EXPORTED, RUNTIME_INT8)
#: The limits a space's ``constraints:`` may set, each with the cost figure it bounds and its direction.
LIMITS: dict[str, tuple[str, str]] = {
    "max_latency_ms": ("latency_ms", "max"),
    "min_faces_per_second": ("faces_per_second", "min"),
    "max_params": ("params", "max"),
    "max_model_bytes": ("model_bytes", "max"),
}
#: Bump when the way a cost is measured changes, so older cached figures are measured again.
COST_VERSION = 1


@dataclass(frozen=True)
class ServingCost:
    """One network's serving cost on this machine."""

    params: int
    model_bytes: int
    #: Median wall milliseconds of one face through the graph (after warm-up).
    latency_ms: float
    runtime: str
    #: Seconds the measurement took (0 when it came from the cache).
    seconds: float = 0.0
    cached: bool = False

    @property
    def faces_per_second(self) -> float:
        return 1000.0 / self.latency_ms if self.latency_ms > 0 else float("inf")

    def figures(self) -> dict[str, float]:
        """The figures as MLflow metrics: params, model_bytes, latency_ms, faces_per_second."""
        return {"params": float(self.params), "model_bytes": float(self.model_bytes),
                "latency_ms": self.latency_ms, "faces_per_second": self.faces_per_second}


def violations(cost: ServingCost, limits: Mapping[str, Any]) -> tuple[list[float], list[str]]:
    """For each limit in ``limits`` (``LIMITS`` keys; others ignored): how far the cost is past it (<= 0 within,
    in the figure's own unit, Optuna's trial-constraint convention) and a line for each one broken."""
    figures = cost.figures()
    amounts, broken = [], []
    for key, (figure, kind) in LIMITS.items():
        if key not in limits:
            continue
        value, limit = figures[figure], float(limits[key])
        over = value - limit if kind == "max" else limit - value
        amounts.append(over)
        if over > 0:
            shown = f"{value:.3f}" if figure in ("latency_ms", "faces_per_second") else f"{int(value):,}"
            broken.append(f"{figure} {shown} {'>' if kind == 'max' else '<'} {key} {limit:g}")
    return amounts, broken


def architecture_key(model: ModelParams, runtime: str) -> str:
    """The cache key: the architecture (every ModelParams field), the runtime, the CPU and its count."""
    cpu = _cpu_model()
    body = json.dumps({"model": dataclasses.asdict(model), "runtime": runtime, "cpu": cpu, "cores": os.cpu_count(),
                       "version": COST_VERSION}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:24]


def serving_cost(model: ModelParams, runtime: str = RUNTIME_EXPORTED, *, cache_file: str | os.PathLike[str] | None
                 = None, repeats: int = 100) -> ServingCost:
    """The cost of ``model`` on ``runtime``, from ``cache_file`` when it holds it, else measured (and stored)."""
    if runtime not in COST_RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(COST_RUNTIMES)} for a serving cost, got {runtime!r}")
    key = architecture_key(model, runtime)
    cache = _read(cache_file)
    if key in cache:
        try:
            return dataclasses.replace(ServingCost(**cache[key]), seconds=0.0, cached=True)
        except TypeError:
            pass  # an entry of another shape: measured again below
    cost = measure(model, runtime, repeats=repeats)
    if cache_file is not None:
        cache = _read(cache_file)  # another process may have added figures meanwhile
        cache[key] = {k: v for k, v in dataclasses.asdict(cost).items() if k not in ("seconds", "cached")}
        from fer_experiments.io import atomic_write_text

        atomic_write_text(cache_file, json.dumps(cache, indent=1, sort_keys=True))
    return cost


def measure(model: ModelParams, runtime: str = RUNTIME_EXPORTED, *, repeats: int = 100) -> ServingCost:
    """Build ``model`` untrained with its test-time augmentation (what is exported), export it for ``runtime``, and
    time one face at a time: the median of ``repeats`` calls after a warm-up."""
    from fer_experiments.models.builder import build_network, count_params, with_tta
    from fer_experiments.models.export import ExportedModel, export_onnx, quantize_int8

    started = time.perf_counter()
    network = build_network(model)
    exported = with_tta(network, model.tta)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="fer-cost-") as tmp:
        path = export_onnx(exported, Path(tmp) / "model.onnx")
        if runtime == RUNTIME_INT8:
            faces = rng.integers(0, 256, (64, IMAGE_SIZE, IMAGE_SIZE, 1)).astype(np.float32)
            path = quantize_int8(path, Path(tmp) / "model.int8.onnx", faces)
        graph = ExportedModel(path)
        face = rng.integers(0, 256, (1, IMAGE_SIZE, IMAGE_SIZE, 1)).astype(np.float32)
        for _ in range(10):
            graph(face)
        times = []
        for _ in range(max(5, repeats)):
            t0 = time.perf_counter()
            graph(face)
            times.append(time.perf_counter() - t0)
        size = path.stat().st_size
    return ServingCost(params=count_params(exported), model_bytes=size, latency_ms=1000.0 * float(np.median(times)),
                       runtime=runtime, seconds=time.perf_counter() - started)


def _read(cache_file: str | os.PathLike[str] | None) -> dict[str, dict[str, Any]]:
    if cache_file is None or not Path(cache_file).is_file():
        return {}
    try:
        data = json.loads(Path(cache_file).read_text())
    except (OSError, ValueError):
        return {}  # an unreadable cache is measured again and rewritten whole
    return data if isinstance(data, dict) else {}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        return platform.processor()
