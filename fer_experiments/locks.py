"""Cross-process locks for first-time store set-up: flock on a file for SQLite, advisory locks for PostgreSQL.

Several processes creating the same fresh database at once (MLflow's or Optuna's migrations, one study) race and
leave duplicate-key errors or a broken schema; whoever holds the lock creates it, the others then find it made.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from fer_experiments.io import file_lock

# Fixed 64-bit keys; only fer-exp takes these advisory locks.
STORE_SETUP_KEY = 0x0FE2E3B1
STUDY_SETUP_KEY = 0x0FE2E3B2
TRIAL_GATE_KEY = 0x0FE2E3B3
#: Promote / rollback of one registered model (combined with a hash of the model's name).
REGISTRY_KEY = 0x0FE2E3B4
#: Exporting (or quantizing) one run's graph (combined with a hash of the run id).
EXPORT_KEY = 0x0FE2E3B5


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql", "postgres"))


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL, or None for other URLs."""
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def unwritable(path: Path) -> str | None:
    """Why files cannot be written at ``path`` (a file, or a folder to create files in), or None.

    ``os.access`` also reports a read-only file system (EROFS), also for root. A path that does not exist yet is
    judged by its nearest existing parent folder, where it would be created.
    """
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return None
        probe = probe.parent
    if probe.is_dir() and not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is read-only" if probe == path else f"{probe} is read-only (cannot create {path})"
    if probe.is_file() and not os.access(probe, os.W_OK):
        return f"{probe} is read-only"
    return None


def sqlite_write_problem(url: str, extra_dirs: tuple[Path, ...] = ()) -> str | None:
    """Why the SQLite database of ``url`` cannot be written (the file, or its folder, where SQLite writes its journal
    and fer-exp its lock files), or None; None for other URLs."""
    db = sqlite_file(url)
    if db is None:
        return None
    for path in (db, db.parent, *extra_dirs):
        problem = unwritable(path)
        if problem:
            return problem
    return None


def lock_file_beside(db: Path, suffix: str = ".lock") -> Path:
    """The lock file kept next to a SQLite database file (``optuna.db`` -> ``optuna.db.lock``)."""
    return db.with_name(db.name + suffix)


@contextlib.contextmanager
def advisory_lock(url: str, key: int) -> Iterator[None]:
    """A PostgreSQL session advisory lock on ``key`` for the block (released when the session ends, even if the
    process dies)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        engine.dispose()


@contextlib.contextmanager
def setup_lock(url: str, key: int) -> Iterator[None]:
    """Serialise set-up on the database at ``url``: a file lock beside a SQLite file, an advisory lock on
    PostgreSQL, nothing for other stores (a tracking server sets up its own database)."""
    db = sqlite_file(url)
    if db is not None:
        with file_lock(lock_file_beside(db)):
            yield
    elif is_postgres(url):
        with advisory_lock(url, key):
            yield
    else:
        yield
