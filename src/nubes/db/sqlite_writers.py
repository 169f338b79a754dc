"""SQLite's writers in one process queue on a Python lock, not in SQLite's busy handler.

SQLite lets one transaction write at a time; the others wait in its busy handler, which sleeps
and retries (1, 2, 5, 10 ... 25, 50, 100 ms apart) instead of being woken when the lock is
free. With a thousand agents' reports beside users' creates, a create that had to wait a little
often slept a lot: most of its p99 (bench/control_plane.py, figures in docs/architecture.md).
Here a write transaction first takes this process's lock for its database, which hands over
at once, then BEGIN IMMEDIATE as before; other processes (the CLI, a second API) still meet
SQLite's own lock and its busy handler.

Users' writers go first: a writer marked `background` (the agents' reports, the heartbeats'
group commit) waits while a user's writer waits, for `BACKGROUND_YIELD` seconds at most (so the
agents never starve), and a user's create waits for at most the one writer that holds the lock."""

from __future__ import annotations

import sqlite3
import threading
import time
from contextvars import ContextVar

# seconds a background writer lets waiting users' writers go first, at most: the agents' lane
# holds its one slot meanwhile, so this bounds its writes under a steady stream of users
BACKGROUND_YIELD = 0.05

# True where the writes are background work that users' requests should not wait behind
background: ContextVar[bool] = ContextVar("background_writer", default=False)


class WriterLock:
    """A lock that hands over to waiting foreground writers before background ones."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._foreground_waiting = 0

    def acquire(self, timeout: float) -> bool:
        now = time.monotonic()
        deadline, yield_until = now + timeout, now + BACKGROUND_YIELD
        foreground = not background.get()
        with self._cond:
            self._foreground_waiting += foreground
            try:
                while self._held or (
                    not foreground and self._foreground_waiting and now < yield_until
                ):
                    if now >= deadline:
                        return False
                    wake = deadline if foreground else min(deadline, yield_until)
                    self._cond.wait(max(0.0, wake - now))
                    now = time.monotonic()
                self._held = True
                return True
            finally:
                self._foreground_waiting -= foreground

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()


_LOCKS: dict[str, WriterLock] = {}
_LOCKS_GUARD = threading.Lock()


def lock_for(database: str) -> WriterLock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(database, WriterLock())


class QueuedWriters(sqlite3.Connection):
    """A connection that holds its database's process lock from BEGIN IMMEDIATE to the end of
    the transaction (commit, rollback or close)."""

    writer_lock: WriterLock | None = None  # set when the engine connects
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
