"""Micro-batching: faces from requests that arrive within a short window are classified in one call.

A request's worker thread hands its faces to ``MicroBatcher.classify`` and blocks until its own rows come back.
One batching thread (started on demand, gone after a second without work) takes the first waiting job, then keeps
collecting jobs until ``window`` seconds have passed since that job arrived or ``max_batch`` faces are gathered,
classifies them in one call and hands each job its rows. A job is never split, so an image with more faces than
``max_batch`` is classified alone. Each answer is the same as an unbatched one: the rows of a batch do not
interact (the exported graph gives bit-identical rows whatever the batch; tests/unit/test_batching.py checks it).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

#: Default collection window (seconds) and batch bound (faces) of ``fer-exp serve``.
DEFAULT_WINDOW_MS = 3.0
DEFAULT_MAX_BATCH = 64
#: The batching thread ends after this long without work (a new one starts with the next job).
IDLE_SECONDS = 1.0


@dataclass(eq=False)
class _Job:
    faces: np.ndarray
    arrived: float = field(default_factory=time.perf_counter)
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None


class MicroBatcher:
    """Batches calls of ``fn`` ((N, 48, 48) uint8 -> (N, 7)) across threads; ``window`` 0 calls it directly."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], window: float = DEFAULT_WINDOW_MS / 1000,
                 max_batch: int = DEFAULT_MAX_BATCH) -> None:
        if window < 0 or window > 1:
            raise ValueError(f"batch window must be in [0, 1] s, got {window}")
        if max_batch < 1:
            raise ValueError(f"max batch must be >= 1, got {max_batch}")
        self.fn = fn
        self.window = window
        self.max_batch = max_batch
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        # Figures for /metrics: calls made and faces classified through the batcher.
        self.batches = 0
        self.batched_faces = 0

    def classify(self, faces: np.ndarray) -> np.ndarray:
        """The (N, 7) probabilities of ``faces``, computed in a batch shared with concurrent callers."""
        if self.window <= 0 or len(faces) == 0:
            return self._call(faces)
        job = _Job(faces)
        with self._lock:
            self._queue.put(job)
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="fer-microbatch", daemon=True)
                self._worker.start()
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _call(self, faces: np.ndarray) -> np.ndarray:
        out = self.fn(faces)
        with self._lock:
            self.batches += 1
            self.batched_faces += len(faces)
        return out

    def _run(self) -> None:
        carry: _Job | None = None  # a job that did not fit in the previous batch starts the next one
        while True:
            first = carry
            if first is None:
                try:
                    first = self._queue.get(timeout=IDLE_SECONDS)
                except queue.Empty:
                    with self._lock:  # a job put after this check starts a new worker
                        if self._queue.empty():
                            self._worker = None
                            return
                    continue
            carry = None
            jobs, n = [first], len(first.faces)
            deadline = first.arrived + self.window
            while n < self.max_batch:
                remaining = deadline - time.perf_counter()
                try:
                    job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if n + len(job.faces) > self.max_batch:
                    carry = job
                    break
                jobs.append(job)
                n += len(job.faces)
            self._process(jobs)

    def _process(self, jobs: list[_Job]) -> None:
        try:
            batch = jobs[0].faces if len(jobs) == 1 else np.concatenate([j.faces for j in jobs])
            out = self._call(batch)
        except BaseException as exc:  # noqa: BLE001 - every waiting request gets the error, the thread lives on
            for job in jobs:
                job.error = exc
                job.done.set()
            return
        start = 0
        for job in jobs:
            job.result = out[start:start + len(job.faces)]
            start += len(job.faces)
            job.done.set()
