"""Server events: every change of a server's status or task state (and its create and delete)
is a row of `server_events`, written in the transaction that made the change, with an id that
only grows. `GET /v1/events` streams them (api/routes/events.py) and a client resumes after its
last id: it gets every event after it, none twice.

Why ids follow commit order: a reader that has seen id 11 must never find a 10 committed later.
SQLite lets one writer at a time, so its ids commit in order. On PostgreSQL a sequence hands
ids out of commit order, so the events are written last, just before the commit, under a
transaction-scoped advisory lock that is released by that commit: an event-writing transaction
holds it only from its events' INSERT to its COMMIT, and takes no other lock meanwhile (no
deadlock with the hosts' claims). A change that never commits leaves a gap, never a late id.

Found by a `before_flush` hook (an Instance's status, task_state or ready_at changed through
the ORM), plus `record` where code writes without the ORM's history (the create's INSERT, a
delete's conditional UPDATE)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, event, func, insert, inspect, select, text
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from nubes.db.models import Instance, ServerEvent, utcnow

PENDING = "nubes.server_events"  # session.info key: the rows to insert at commit
WROTE = "nubes.server_events_written"  # session.info key: this commit wrote events
WATCHED = ("status", "task_state", "ready_at")  # ready_at: the guest said it is ready
LOCK_KEY = 0x6E75626573  # "nubes": the advisory lock that orders the events' ids


def _row(inst: Instance, kind: str) -> dict[str, Any]:
    return dict(
        project_id=inst.project_id,
        server_id=inst.id,
        name=inst.name,
        kind=kind,
        status=inst.status,
        task_state=inst.task_state or "",
        ready=inst.ready_at is not None,
        at=utcnow(),
    )


def record(session: Session, inst: Instance, kind: str) -> None:
    """A change the ORM does not see as one (`create`, `delete`): an event for it."""
    session.info.setdefault(PENDING, []).append(_row(inst, kind))


def _changed(inst: Instance) -> bool:
    attrs = inspect(inst).attrs
    return any(attrs[name].history.has_changes() for name in WATCHED)


def _flush(session: Session, *_: Any) -> None:
    for obj in session.dirty:
        if isinstance(obj, Instance) and _changed(obj):
            record(session, obj, "update")


def _write(session: Session) -> None:
    session.flush()  # what is still pending adds its events (before_flush)
    rows = session.info.pop(PENDING, [])
    if not rows:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
    session.execute(insert(ServerEvent), rows)
    session.info[WROTE] = True


def install(sessions: sessionmaker[Session], notify: Callable[[], None]) -> None:
    """The hooks on every writing session; `notify` after a commit that wrote events."""
    event.listen(sessions, "before_flush", _flush)
    event.listen(sessions, "before_commit", _write)

    @event.listens_for(sessions, "after_commit")
    def _committed(session: Session) -> None:
        if session.info.pop(WROTE, False):
            notify()

    @event.listens_for(sessions, "after_transaction_end")
    def _ended(session: Session, transaction: SessionTransaction) -> None:
        if transaction.parent is None:
            session.info.pop(PENDING, None)
            session.info.pop(WROTE, None)


def after(
    session: Session, last_id: int, project_id: str | None, limit: int
) -> tuple[list[ServerEvent], int]:
    """Up to `limit` events after `last_id` (a project's, or all for None), and the newest id
    of all (what a waiter compares with to know something new came). The newest is read
    first: an event committed after that read has a larger id and wakes the waiter, one
    committed before it is in the rows (PostgreSQL's READ COMMITTED takes a snapshot per
    statement: read the other way round, an event could fall between the two)."""
    top = newest(session)
    query = select(ServerEvent).where(ServerEvent.id > last_id)
    if project_id is not None:
        query = query.where(ServerEvent.project_id == project_id)
    rows = list(session.scalars(query.order_by(ServerEvent.id).limit(limit)))
    return rows, top


def newest(session: Session) -> int:
    return int(session.scalar(select(func.max(ServerEvent.id))) or 0)


def prune(session: Session, keep_seconds: float) -> int:
    """Bounded retention: events older than `keep_seconds` go (a client away longer than that
    resumes from the oldest kept, and has missed what went)."""
    cutoff = utcnow() - timedelta(seconds=keep_seconds)
    done = session.execute(delete(ServerEvent).where(ServerEvent.at < cutoff))
    return int(done.rowcount)  # type: ignore[attr-defined]
