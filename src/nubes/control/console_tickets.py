"""One-time, expiring tickets that let a browser open a VNC console.

A browser cannot put an `Authorization` header on a WebSocket, and a bearer token in a URL ends
up in logs and history; so the page asks for a ticket with its bearer token (a POST), and the
WebSocket URL carries only the ticket: good once, for a few seconds, for one instance (the
shape of Nova's console tokens). Only its sha256 is kept, in this API process's memory: the
browser's WebSocket must reach the API server that issued it (one API server, or sticky
routing in front of several).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

TICKET_SECONDS = 30.0


@dataclass(frozen=True)
class Ticket:
    instance_id: str
    project_id: str
    expires: float


def _digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


@dataclass
class ConsoleTickets:
    ttl: float = TICKET_SECONDS
    clock: Callable[[], float] = time.monotonic
    _tickets: dict[str, Ticket] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def issue(self, instance_id: str, project_id: str) -> str:
        ticket = "nc_" + secrets.token_urlsafe(24)
        now = self.clock()
        with self._lock:
            # expired tickets go as new ones come: the dict stays as small as the live ones
            for key in [k for k, t in self._tickets.items() if t.expires <= now]:
                del self._tickets[key]
            self._tickets[_digest(ticket)] = Ticket(instance_id, project_id, now + self.ttl)
        return ticket

    def take(self, ticket: str) -> Ticket | None:
        """The ticket's grant, once: a second use, an unknown or an expired ticket is None."""
        with self._lock:
            grant = self._tickets.pop(_digest(ticket), None)
        if grant is None or grant.expires <= self.clock():
            return None
        return grant
