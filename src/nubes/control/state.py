"""Process-wide API state: settings, database, and the watcher agents long-poll."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from nubes.conf import Settings
from nubes.control import events, generations
from nubes.control.console_tickets import ConsoleTickets
from nubes.control.metrics import Metrics
from nubes.control.watch import Notifier
from nubes.db.engine import read_only, session_factory
from nubes.db.models import Host, Meta

EVENTS = "~events"  # the watcher's key for the event streams


def read_meta(session: Session, key: str) -> int:
    return int(session.scalar(select(Meta.value).where(Meta.key == key)) or 0)


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    # each host's latest report of what it has that nothing wants (`nubes gc --dry-run`)
    leftovers: dict[str, list[str]] = field(default_factory=dict)
    notifier: Notifier = field(init=False)
    # when each host was last sent a changed desired state (api/routes/agent.py's ANSWER_GAP)
    answered: dict[str, float] = field(default_factory=dict)
    # sessions that only read (every GET, credential checks, desired states): no write lock
    reads: sessionmaker[Session] = field(init=False)
    metrics: Metrics = field(default_factory=Metrics)
    # one-time tickets of the browser's VNC consoles (control/console_tickets.py)
    tickets: ConsoleTickets = field(default_factory=ConsoleTickets)

    def __post_init__(self) -> None:
        self.reads = session_factory(read_only(self.engine))
        self.notifier = Notifier(self.read_watched)
        generations.install(self.sessions, self.engine, self.notifier.notify, self.notifier.own)
        # the event streams wait on the same watcher, under a key no host id can be
        events.install(self.sessions, lambda: self.notifier.notify({EVENTS}))
        self.metrics.install(self.sessions, self.reads)

    def read_watched(self) -> dict[str, int]:
        """What the watcher compares: the hosts' generations, and the newest event's id
        (another API server's events wake this one's streams within a period)."""
        with self.reads() as session:
            return self.read_generations() | {EVENTS: events.newest(session)}

    def read_generations(self) -> dict[str, int]:
        with self.reads() as session:
            return {h: g for h, g in session.execute(select(Host.id, Host.generation))}
