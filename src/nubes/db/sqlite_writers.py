"""SQLite's writers in one process queue on a Python lock, not in SQLite's busy handler.

SQLite lets one transaction write at a time; the others wait in its busy handler, which sleeps
and retries (1, 2, 5, 10 ... 25, 50, 100 ms apart) instead of being woken when the lock is
free. With a thousand agents' reports beside users' creates, a create that had to wait a little
often slept a lot: most of its p99 (bench/control_plane.py, figures in docs/architecture.md).
Here a write transaction first takes this process's lock for its database, which hands over
at once, then BEGIN IMMEDIATE as before; other processes (the CLI, a second API) still meet
SQLite's own lock and its busy handler."""

from __future__ import annotations

import sqlite3
import threading

_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def lock_for(database: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(database, threading.Lock())


class QueuedWriters(sqlite3.Connection):
    """A connection that holds its database's process lock from BEGIN IMMEDIATE to the end of
    the transaction (commit, rollback or close)."""

    writer_lock: threading.Lock | None = None  # set when the engine connects
    holding = False

    def take_write_lock(self, timeout: float) -> None:
        if self.writer_lock is None or self.holding:
            return
        if not self.writer_lock.acquire(timeout=timeout):
            raise sqlite3.OperationalError(
                f"database is locked (this process's other writers held it {timeout:g} s)"
            )
        self.holding = True

    def let_go(self) -> None:
        if self.holding and self.writer_lock is not None:
            self.holding = False
            self.writer_lock.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.let_go()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.let_go()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.let_go()
