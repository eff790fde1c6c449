"""The live progress display of a search: a header, what the slow start is doing, trial i of n, the running trial's
epoch (and, on a terminal, its batches), best so far, state counts and an ETA from the trials so far."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator, Sequence, TextIO


def format_seconds(seconds: float) -> str:
    """90 -> '1m30s', 4000 -> '1h07m', 12 -> '12s'."""
    s = int(round(max(seconds, 0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Progress:
    """Prints one status line per event; on a terminal the epoch line is redrawn in place."""

    def __init__(self, n_trials: int, stream: TextIO | None = None) -> None:
        self.n_trials = n_trials
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.counts = {"complete": 0, "pruned": 0, "failed": 0}
        self.best: float | None = None
        self.best_trial: int | None = None
        self.finished = 0
        self._started = time.monotonic()
        #: Wall seconds of each trial this command ran to its end (complete or pruned): the ETA's basis.
        self._durations: list[float] = []
        self._trial_started: float | None = None
        self._epoch_line = ""

    def seed(self, finished: int, complete: int, pruned: int, failed: int, best: float | None, best_trial: int | None) -> None:
        """Start from the study's existing counts (a resumed study)."""
        self.finished, self.best, self.best_trial = finished, best, best_trial
        self.counts = {"complete": complete, "pruned": pruned, "failed": failed}

    @property
    def total(self) -> str:
        """The trial target as shown, '?' when an epoch budget bounds the search."""
        # An epoch budget rather than a trial count bounds some searches (engine comparisons).
        return str(self.n_trials) if self._bounded else "?"

    @property
    def _bounded(self) -> bool:
        return bool(self.n_trials) and self.n_trials < 10**6

    def header(self, lines: Sequence[tuple[str, str]]) -> None:
        """What is being searched, one ``name: value`` per line, before anything slow starts."""
        width = max((len(k) for k, _ in lines), default=0)
        for key, value in lines:
            self.stream.write(f"{key + ':':<{width + 1}} {value}\n")
        self.stream.flush()

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[None]:
        """``loading data... 3.2s``: say what a slow start-up step does while it runs (a terminal sees it at once)."""
        self.stream.write(f"{text}...")
        self.stream.flush()
        t0 = time.monotonic()
        try:
            yield
        except BaseException:
            self.stream.write(" failed\n")
            self.stream.flush()
            raise
        self.stream.write(f" {time.monotonic() - t0:.1f}s\n")
        self.stream.flush()

    def eta(self) -> str | None:
        """Time left for the trials still to finish, from the mean wall time of this command's trials so far."""
        if not self._bounded or not self._durations:
            return None
        left = max(self.n_trials - self.finished, 0)
        if left == 0:
            return None
        running = time.monotonic() - self._trial_started if self._trial_started is not None else 0.0
        mean = sum(self._durations) / len(self._durations)
        return format_seconds(max(mean * left - min(running, mean), 0))

    def status(self) -> str:
        """Best so far and the counts of complete, pruned and failed trials (and the ETA once known)."""
        best = "-" if self.best is None else f"{self.best:.4f} (trial {self.best_trial})"
        c = self.counts
        eta = self.eta()
        return (f"best {best} | complete {c['complete']} pruned {c['pruned']} failed {c['failed']}"
                + (f" | ETA {eta}" if eta else ""))

    def trial_start(self, trial: int) -> None:
        self._trial_started = time.monotonic()

    def epoch(self, trial: int, epoch: int, epochs: int, metrics: dict[str, float], objective: str) -> None:
        line = (f"trial {trial} ({self.finished + 1}/{self.total}) epoch {epoch}/{epochs}: "
                f"{objective} {metrics[objective]:.4f} | {self.status()}")
        self._epoch_line = line
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def batch(self, trial: int, epoch: int, epochs: int, step: int, steps: int) -> None:
        """On a terminal only: the running epoch's batches, redrawn in place (a log file gets epoch lines only)."""
        if not self.tty:
            return
        width = 20
        done = int(width * step / max(steps, 1))
        line = (f"trial {trial} ({self.finished + 1}/{self.total}) epoch {epoch}/{epochs} "
                f"[{'=' * done}{' ' * (width - done)}] {step}/{steps} | {self.status()}")
        self.stream.write("\r\x1b[2K" + line)
        self.stream.flush()

    def note(self, text: str) -> None:
        self.stream.write(("\r\x1b[2K" if self.tty else "") + f"note: {text}\n")
        self.stream.flush()

    def trial_end(self, trial: int, state: str, value: float | None, note: str = "") -> None:
        key = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}.get(state)
        if key:
            self.counts[key] += 1
        if state in ("COMPLETE", "PRUNED"):
            self.finished += 1
            if self._trial_started is not None:
                self._durations.append(time.monotonic() - self._trial_started)
        self._trial_started = None
        if state == "COMPLETE" and value is not None and (self.best is None or value > self.best):
            self.best, self.best_trial = value, trial
        shown = "" if value is None or state == "FAIL" else f" value {value:.4f}"
        prefix = "\r\x1b[2K" if self.tty else ""
        elapsed = time.monotonic() - self._started
        self.stream.write(f"{prefix}trial {trial} {state}{shown}{(' - ' + note) if note else ''} "
                          f"[{self.finished}/{self.total} finished, {format_seconds(elapsed)}] | {self.status()}\n")
        self.stream.flush()
