"""Process-wide API state: settings, database, and the change notifier agents long-poll."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from nubes.conf import Settings
from nubes.db.models import Meta


class Notifier:
    """Wakes long-polling agents when this process commits a change.

    Changes made by another API server (shared PostgreSQL) are seen through the generation
    row instead, which waiters re-read every second.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._local = 0

    def notify(self) -> None:
        with self._cond:
            self._local += 1
            self._cond.notify_all()

    def wait(self, seen_local: int, timeout: float) -> int:
        with self._cond:
            self._cond.wait_for(lambda: self._local != seen_local, timeout=timeout)
            return self._local

    @property
    def local(self) -> int:
        return self._local


def bump_generation(session: Session) -> None:
    session.execute(update(Meta).where(Meta.key == "generation").values(value=Meta.value + 1))


def read_generation(session: Session) -> int:
    return read_meta(session, "generation")


def read_meta(session: Session, key: str) -> int:
    return int(session.scalar(select(Meta.value).where(Meta.key == key)) or 0)


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    notifier: Notifier = field(default_factory=Notifier)
    # each host's latest report of what it has that nothing wants (`nubes gc --dry-run`)
    leftovers: dict[str, list[str]] = field(default_factory=dict)
