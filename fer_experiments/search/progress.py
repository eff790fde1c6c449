"""The live progress display of a search: trial i of n, the running trial's epoch, best so far, state counts."""

from __future__ import annotations

import sys
import time
from typing import TextIO


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

    def seed(self, finished: int, complete: int, pruned: int, failed: int, best: float | None, best_trial: int | None) -> None:
        """Start from the study's existing counts (a resumed study)."""
        self.finished, self.best, self.best_trial = finished, best, best_trial
        self.counts = {"complete": complete, "pruned": pruned, "failed": failed}

    @property
    def total(self) -> str:
        """The trial target as shown, '?' when an epoch budget bounds the search."""
        # An epoch budget rather than a trial count bounds some searches (engine comparisons).
        return str(self.n_trials) if self.n_trials and self.n_trials < 10**6 else "?"

    def status(self) -> str:
        """Best so far and the counts of complete, pruned and failed trials."""
        best = "-" if self.best is None else f"{self.best:.4f} (trial {self.best_trial})"
        c = self.counts
        return f"best {best} | complete {c['complete']} pruned {c['pruned']} failed {c['failed']}"

    def epoch(self, trial: int, epoch: int, epochs: int, metrics: dict[str, float], objective: str) -> None:
        line = (f"trial {trial} ({self.finished + 1}/{self.total}) epoch {epoch}/{epochs}: "
                f"{objective} {metrics[objective]:.4f} | {self.status()}")
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
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
        if state == "COMPLETE" and value is not None and (self.best is None or value > self.best):
            self.best, self.best_trial = value, trial
        shown = "" if value is None or state == "FAIL" else f" value {value:.4f}"
        prefix = "\r\x1b[2K" if self.tty else ""
        elapsed = time.monotonic() - self._started
        self.stream.write(f"{prefix}trial {trial} {state}{shown}{(' - ' + note) if note else ''} "
                          f"[{self.finished}/{self.total} finished, {elapsed:.0f}s] | {self.status()}\n")
        self.stream.flush()
