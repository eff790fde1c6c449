"""Micro-batching: faces from requests that arrive within a short window are classified in one call.

A request's worker thread hands its faces to ``MicroBatcher.classify`` and blocks until its own rows come back.
One batching thread (started on demand, gone after a second without work) takes every job waiting, then waits for
more only while a request it was told about (``expecting()``: one that is still detecting faces) may still
join, at most ``window`` seconds after the first job arrived and until ``max_batch`` faces are gathered. A request
alone is therefore classified at once (no window added to a sequential client's latency), and jobs that queue while
the classifier is busy form the next batch. A job is never split, so an image with more faces than ``max_batch``
is classified alone. Each answer is the same as an unbatched one: the rows of a batch do not interact (the
exported graph gives bit-identical rows whatever the batch; tests/unit/test_batching.py checks it).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

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
        self._jobs: list[_Job] = []
        self._expected = 0  # requests inside expecting(): they may still bring faces
        self._cond = threading.Condition()
        self._local = threading.local()  # .expected: this thread is inside expecting() and has not classified yet
        self._worker: threading.Thread | None = None
        # Figures for /metrics: calls made and faces classified through the batcher.
        self.batches = 0
        self.batched_faces = 0

    @contextmanager
    def expecting(self) -> Iterator[None]:
        """Around a request's face detection and its ``classify`` call: until that call queues its faces (or the
        request ends without any), the batcher waits, within its window, for them instead of classifying what it
        has. The expectation ends in the same step that queues the faces, so no batch starts in between."""
        with self._cond:
            self._expected += 1
        self._local.expected = True
        try:
            yield
        finally:
            with self._cond:
                self._end_expectation()

    def _end_expectation(self) -> None:
        """Under the lock: this thread's expectation (if any is left) ends."""
        if getattr(self._local, "expected", False):
            self._local.expected = False
            self._expected -= 1
            self._cond.notify_all()

    def classify(self, faces: np.ndarray) -> np.ndarray:
        """The (N, 7) probabilities of ``faces``, computed in a batch shared with concurrent callers."""
        if self.window <= 0 or len(faces) == 0:
            return self._call(faces)
        job = _Job(faces)
        with self._cond:
            self._jobs.append(job)
            self._end_expectation()
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="fer-microbatch", daemon=True)
                self._worker.start()
            self._cond.notify_all()
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _call(self, faces: np.ndarray) -> np.ndarray:
        out = self.fn(faces)
        with self._cond:
            self.batches += 1
            self.batched_faces += len(faces)
        return out

    def _take(self) -> list[_Job] | None:
        """The next batch (the jobs' order kept, none split), or None when the thread should end (idle)."""
        with self._cond:
            if not self._jobs and not self._cond.wait_for(lambda: bool(self._jobs), timeout=IDLE_SECONDS):
                self._worker = None  # under the lock: a job put after this starts a new worker
                return None
            deadline = self._jobs[0].arrived + self.window
            while self._expected > 0 and sum(len(j.faces) for j in self._jobs) < self.max_batch:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            jobs, n = [self._jobs[0]], len(self._jobs[0].faces)
            for job in self._jobs[1:]:
                if n + len(job.faces) > self.max_batch:
                    break
                jobs.append(job)
                n += len(job.faces)
            del self._jobs[:len(jobs)]
            return jobs

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
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
