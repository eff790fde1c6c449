"""The error taxonomy: each kind maps to one exit code (CLI) and one trial state (search).

Modelled on keras-tuner's errors: a failed trial is recorded and the search goes on; a fatal error stops it.
Messages name the file, row or key at fault so that one line is enough to fix the problem.
"""

from __future__ import annotations


class FerError(Exception):
    """Base of every error fer-exp raises on purpose; the CLI prints its message in one line."""

    exit_code = 1


class ConfigError(FerError):
    """A bad option, search space, preset or parameter combination (fix the configuration)."""

    exit_code = 2


class DataError(FerError):
    """Bad or missing input data: names the file and the row or image at fault."""

    exit_code = 3


class TrialFailed(FerError):
    """One training run failed (NaN loss, out of memory, invalid combination); a search records it and goes on."""

    exit_code = 4


class FatalError(FerError):
    """Stop everything: too many consecutive failed trials, unreachable store, broken invariant."""

    exit_code = 5


class Refused(FerError):
    """A guarded action was refused (e.g. promoting a worse model without --force); nothing was changed."""

    exit_code = 6


# Exit codes for signals follow the shell convention 128 + signal number.
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into an exception (a KeyboardInterrupt, so Optuna marks the running trial FAIL and MLflow's
    run ends KILLED on the way out, exactly as for Ctrl-C); the CLI exits 143."""


#: How much of a user's value a message quotes: enough to recognise it, never a whole file or an expanded bomb.
MAX_QUOTED = 60


def short_repr(value: object, limit: int = MAX_QUOTED) -> str:
    """``repr(value)`` cut to ``limit`` characters, computed without building the full repr of a huge value."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring = r.maxother = limit
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = 8
    r.maxlevel = 3
    text = r.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
