"""Per-host generations: a change bumps exactly the hosts whose desired state it alters, so an
agent's long-poll wakes only for changes that concern it (control/desired.py says what a host's
desired state holds; each helper here names the hosts one kind of change reaches).

Two ways to bump, for PostgreSQL's row locks:

- `bump`: in the change's own transaction, for hosts whose row it already holds or may take
  alone (the instance's host: a create has just claimed it). Crash-safe: the bump commits with
  the change.
- `bump_after_commit`: everyone else (the other hosts of a network, all hosts). A create holds
  its claimed host's row until it commits; if it also bumped another host in the transaction,
  two creates on one network would each wait for the other's claimed host (a deadlock). These
  go in a transaction of their own right after the change commits (an API that dies in
  between leaves those agents to their next periodic fetch). That transaction waits for no
  other: rows another one holds are skipped there and bumped by a thread once let go
  (`_bump_free`, `_Waiting`), so a user's request never waits for the agents' transactions.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Engine, event, select, union, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from nubes.db.engine import no_flush_wait
from nubes.db.models import Host, Instance, Network, Port

log = logging.getLogger("nubes.api")
LATER = "nubes.bump_after_commit"  # session.info key: host ids, or ALL
BUMPED = "nubes.bumped"  # session.info key: the host ids this transaction bumped
ECHOED = "nubes.echoed"  # session.info key: those of them bumped for their own report
ALL = "*"


def _statement(host_ids: Iterable[str] | None) -> Any:
    stmt = update(Host).values(generation=Host.generation + 1)
    if host_ids is not None:
        stmt = stmt.where(Host.id.in_(sorted(host_ids)))
    return stmt.execution_options(synchronize_session=False)


def bump(session: Session, host_ids: Iterable[str | None], echo: bool = False, **also: Any) -> None:
    """`also`: more columns of these rows set in the same UPDATE (a release's usage). `echo`:
    the hosts' own report caused it, no user waits for it (spaced by the answer gap)."""
    ids = {h for h in host_ids if h}
    if ids:
        session.execute(_statement(ids).values(**also))
        session.info.setdefault(BUMPED, set()).update(ids)
        if echo:
            session.info.setdefault(ECHOED, set()).update(ids)


def bump_after_commit(session: Session, host_ids: Iterable[str | None] | None) -> None:
    """`None`: every host (a `nubes gc`, say)."""
    pending: set[str] = session.info.setdefault(LATER, set())
    if host_ids is None:
        pending.add(ALL)
    else:
        pending.update(h for h in host_ids if h)


def network_hosts(session: Session, network_ids: Iterable[str]) -> set[str]:
    """The hosts whose desired state shows these networks: those with a live port on one (its
    peers and remote ports list every other) and the one serving it (reservations, metadata)."""
    ids = sorted(set(network_ids))
    if not ids:
        return set()
    with_ports = (
        select(Instance.host_id)
        .join(Port, Port.instance_id == Instance.id)
        .where(Port.network_id.in_(ids), Instance.deleted_at.is_(None))
    )
    serving = select(Network.dhcp_host_id).where(Network.id.in_(ids))
    return {h for h in session.scalars(union(with_ports, serving)) if h}


def instance_networks(session: Session, instance_id: str) -> set[str]:
    return set(session.scalars(select(Port.network_id).where(Port.instance_id == instance_id)))


def host_networks(session: Session, host_id: str) -> set[str]:
    """The networks a host shows up in: where it has live ports or serves the gateway."""
    with_ports = (
        select(Port.network_id)
        .join(Instance, Instance.id == Port.instance_id)
        .where(Instance.host_id == host_id, Instance.deleted_at.is_(None))
    )
    serving = select(Network.id).where(Network.dhcp_host_id == host_id)
    return set(session.scalars(union(with_ports, serving)))


def neighbours(session: Session, host_id: str) -> set[str]:
    """The other hosts whose desired state names this one (its address, its ports)."""
    return network_hosts(session, host_networks(session, host_id)) - {host_id}


def install(
    sessions: sessionmaker[Session],
    engine: Engine,
    notify: Callable[[set[str] | None], None],
    own: Callable[[set[str]], None] = lambda _: None,
) -> None:
    """After each commit: the deferred bumps, then wake this process's long-polls of exactly
    the hosts bumped (`None`: all of them). `own` first hears the hosts bumped in the change's
    own transaction: a change to one of their own servers, which their agent is sent at once
    (api/routes/agent.py's ANSWER_GAP spaces the others)."""

    waiting = _Waiting(engine, notify)

    @event.listens_for(sessions, "after_commit")
    def _committed(session: Session) -> None:
        pending: set[str] = session.info.pop(LATER, set())
        bumped: set[str] = session.info.pop(BUMPED, set())
        urgent = bumped - session.info.pop(ECHOED, set())
        if urgent:
            own(urgent)
        if ALL in pending:
            _bump_now(engine, None)
            notify(None)
            return
        if pending:
            locked = _bump_free(engine, pending)
            waiting.add(locked)
            pending -= locked
        if pending or bumped:
            notify(pending | bumped)

    @event.listens_for(sessions, "after_transaction_end")
    def _ended(session: Session, transaction: SessionTransaction) -> None:
        if transaction.parent is None:  # rolled back or closed: nothing of it was kept
            session.info.pop(LATER, None)
            session.info.pop(BUMPED, None)
            session.info.pop(ECHOED, None)


def _bump_now(engine: Engine, host_ids: set[str] | None) -> None:
    for attempt in range(3):
        try:
            with engine.begin() as conn:
                no_flush_wait(conn)  # lost in a crash like a dying API's: agents resync
                conn.execute(_statement(host_ids))
            return
        except OperationalError:  # a deadlock PostgreSQL broke, or a locked SQLite: again
            if attempt == 2:
                log.exception("could not bump the generation of %s", host_ids or "all hosts")


def _bump_free(engine: Engine, host_ids: set[str]) -> set[str]:
    """Bump the hosts whose rows no other transaction holds; the others' ids (PostgreSQL).

    A host's row is held by a create that claimed it, an agent's report that released it,
    a batch of heartbeats, another bump: waiting for each of those (their commits, their
    disk flushes) made a user's request wait for the agents' work. The held ones are bumped
    in `_Waiting`'s thread instead, off the request's path. On SQLite the write lock is the
    whole database's: nobody else holds a row, nothing is skipped."""
    if engine.dialect.name != "postgresql":
        _bump_now(engine, host_ids)
        return set()
    free = (
        select(Host.id)
        .where(Host.id.in_(sorted(host_ids)))
        .order_by(Host.id)
        .with_for_update(key_share=True, skip_locked=True)  # FOR NO KEY UPDATE, as an UPDATE
    )
    try:
        with engine.begin() as conn:
            no_flush_wait(conn)
            done = conn.scalars(
                update(Host)
                .where(Host.id.in_(free.scalar_subquery()))
                .values(generation=Host.generation + 1)
                .returning(Host.id)
            )
            return host_ids - set(done)
    except OperationalError:
        return host_ids  # the thread tries them all again


class _Waiting:
    """The deferred bumps whose rows were held: one thread bumps them as their holders let
    go (a burst's together, in one UPDATE), then wakes those hosts' long-polls."""

    def __init__(self, engine: Engine, notify: Callable[[set[str] | None], None]) -> None:
        self.engine, self.notify = engine, notify
        self.lock = threading.Lock()
        self.pending: set[str] = set()
        self.thread: threading.Thread | None = None

    def add(self, host_ids: set[str]) -> None:
        if not host_ids:
            return
        with self.lock:
            self.pending |= host_ids
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="nubes-bumps", daemon=True)
                self.thread.start()

    def _run(self) -> None:
        while True:
            with self.lock:
                ids, self.pending = self.pending, set()
                if not ids:
                    self.thread = None
                    return
            try:
                _bump_now(self.engine, ids)
                self.notify(ids)
            except Exception:  # the engine gone at shutdown, say: agents resync on their own
                log.exception("could not bump the generation of %s", ids)


def instance_changed(
    session: Session, inst: Instance, ports: bool = False, networks: set[str] | None = None
) -> None:
    """An instance's own fields changed: its host. `ports`: a port of it came or goes, which
    every host of its networks lists (remote ports, peers, the gateway host's reservations);
    `networks`: those networks, when the caller knows them (a create: no read)."""
    nets = (
        networks
        if networks is not None
        else instance_networks(session, inst.id)
        if ports
        else set()
    )
    bump(session, [inst.host_id])
    if nets:
        bump_after_commit(session, network_hosts(session, nets) - {inst.host_id})
