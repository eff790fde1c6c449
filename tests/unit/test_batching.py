"""Micro-batching: concurrent callers share classifier calls and each gets exactly its own rows."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from fer_experiments.serving.batching import MicroBatcher


class RowWise:
    """A deterministic per-row 'classifier' that records the batch sizes it was called with."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[int] = []
        self.delay = delay
        self._lock = threading.Lock()

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        with self._lock:
            self.calls.append(len(faces))
        time.sleep(self.delay)
        x = faces.reshape(len(faces), -1).astype(np.float64)
        logits = np.stack([x[:, i::7].mean(axis=1) for i in range(7)], axis=1) / 50
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def _faces(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 48, 48), dtype=np.uint8)


def _concurrently(batcher: MicroBatcher, inputs: list[np.ndarray]) -> list[np.ndarray]:
    results: list[np.ndarray | None] = [None] * len(inputs)
    start = threading.Barrier(len(inputs))

    def one(i: int) -> None:
        start.wait()
        results[i] = batcher.classify(inputs[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def test_concurrent_requests_share_calls_and_get_their_own_rows() -> None:
    fn = RowWise(delay=0.01)
    batcher = MicroBatcher(fn, window=0.05, max_batch=64)
    inputs = [_faces(i, 1 + i % 3) for i in range(16)]
    got = _concurrently(batcher, inputs)
    for x, y in zip(inputs, got):
        np.testing.assert_array_equal(y, RowWise()(x))  # identical to an unbatched call
    assert sum(fn.calls) == sum(len(x) for x in inputs)
    assert len(fn.calls) < len(inputs)  # batched: fewer calls than requests
    assert max(fn.calls) > 3
    assert (batcher.batches, batcher.batched_faces) == (len(fn.calls), sum(fn.calls))


def test_batch_size_is_bounded_and_a_request_is_never_split() -> None:
    fn = RowWise(delay=0.005)
    batcher = MicroBatcher(fn, window=0.05, max_batch=5)
    inputs = [_faces(i, 2) for i in range(10)] + [_faces(99, 9)]  # one image with more faces than max_batch
    got = _concurrently(batcher, inputs)
    for x, y in zip(inputs, got):
        np.testing.assert_array_equal(y, RowWise()(x))
    assert all(n <= 5 for n in fn.calls if n != 9) and 9 in fn.calls
    assert all(n % 2 == 0 or n == 9 for n in fn.calls)  # pairs of one request stay together


def test_the_wait_is_bounded_by_the_window() -> None:
    fn = RowWise()
    batcher = MicroBatcher(fn, window=0.02, max_batch=64)
    t0 = time.perf_counter()
    batcher.classify(_faces(0, 1))  # alone: waits at most the window, then runs
    assert time.perf_counter() - t0 < 1.0
    assert fn.calls == [1]


def test_window_zero_calls_directly_and_errors_reach_every_caller() -> None:
    fn = RowWise()
    direct = MicroBatcher(fn, window=0.0)
    direct.classify(_faces(0, 3))
    assert fn.calls == [3]

    def broken(faces: np.ndarray) -> np.ndarray:
        raise RuntimeError("model exploded")

    batcher = MicroBatcher(broken, window=0.02)
    errors: list[str] = []

    def one() -> None:
        try:
            batcher.classify(_faces(1, 1))
        except RuntimeError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == ["model exploded"] * 4
    # The batcher still works afterwards.
    batcher.fn = RowWise()
    np.testing.assert_array_equal(batcher.classify(_faces(2, 2)), RowWise()(_faces(2, 2)))


@pytest.mark.parametrize("window, max_batch", [(-0.1, 8), (2.0, 8), (0.01, 0)])
def test_bad_settings_are_refused(window: float, max_batch: int) -> None:
    with pytest.raises(ValueError):
        MicroBatcher(RowWise(), window=window, max_batch=max_batch)


def test_a_request_alone_does_not_wait_for_the_window() -> None:
    # Nobody else is coming (no request inside expecting()): classified at once, well before the 1 s window.
    fn = RowWise()
    batcher = MicroBatcher(fn, window=1.0, max_batch=64)
    done = threading.Event()
    threading.Thread(target=lambda: (batcher.classify(_faces(0, 1)), done.set()), daemon=True).start()
    assert done.wait(0.9), "a lone request waited for the batch window"
    assert fn.calls == [1]


def test_the_batch_waits_for_an_expected_request_and_takes_its_faces() -> None:
    fn = RowWise()
    batcher = MicroBatcher(fn, window=1.0, max_batch=64)
    detecting, release = threading.Event(), threading.Event()
    results: dict[str, np.ndarray] = {}

    def slow_request() -> None:
        with batcher.expecting():  # as Predictor.faces: detect, then classify inside the expectation
            detecting.set()
            release.wait(5)  # still detecting faces
            results["slow"] = batcher.classify(_faces(1, 2))

    t = threading.Thread(target=slow_request)
    t.start()
    assert detecting.wait(5)
    first = threading.Thread(target=lambda: results.setdefault("first", batcher.classify(_faces(0, 1))))
    first.start()
    time.sleep(0.1)  # the batch is held open for the request that is still detecting
    assert fn.calls == []
    release.set()
    t.join(5)
    first.join(5)
    assert fn.calls == [3]  # one call with both requests' faces
    np.testing.assert_array_equal(results["first"], RowWise()(_faces(0, 1)))
    np.testing.assert_array_equal(results["slow"], RowWise()(_faces(1, 2)))


def test_an_expected_request_without_faces_releases_the_wait() -> None:
    fn = RowWise()
    batcher = MicroBatcher(fn, window=1.0, max_batch=64)
    entered, leave = threading.Event(), threading.Event()

    def no_face_request() -> None:
        with batcher.expecting():
            entered.set()
            leave.wait(5)
        # found no face: never calls classify

    t = threading.Thread(target=no_face_request)
    t.start()
    assert entered.wait(5)
    done = threading.Event()
    threading.Thread(target=lambda: (batcher.classify(_faces(0, 1)), done.set()), daemon=True).start()
    time.sleep(0.05)
    assert not done.is_set()  # held for the expected request
    leave.set()
    assert done.wait(0.9), "the batch kept waiting after the expected request left without faces"
    t.join(5)
    assert fn.calls == [1]
