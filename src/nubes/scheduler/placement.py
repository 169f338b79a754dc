"""Choose hosts and claim their resources in the caller's transaction."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Executable,
    Float,
    SQLColumnExpression,
    cast,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from nubes.conf import Settings
from nubes.db.models import Host, Instance, ServerGroup, utcnow
from nubes.errors import NoValidHost
from nubes.scheduler.filters import DEFAULT_FILTERS, GroupState, HostState, Request
from nubes.scheduler.weighers import weigh, weighers_for

# Hosts a first read returns, best first by SQL's order. Enough for the filters only Python has
# (overlay, hard groups) and for claims lost to racing creates; if none of them is taken, every
# candidate is read.
CANDIDATES = 8
MAX_LISTED = 50  # hosts named in a "no valid host" message; --explain shows them all

COLUMNS = (
    Host.id,
    Host.name,
    Host.last_heartbeat,
    Host.enabled,
    Host.vcpus,
    Host.ram_mb,
    Host.disk_gb,
    Host.used_vcpus,
    Host.used_ram_mb,
    Host.used_disk_gb,
    Host.overlays,
)


@dataclass(frozen=True)
class Verdict:
    host: str
    checks: tuple[tuple[str, str | None], ...]  # (filter, why it failed or None), in order
    weight: float | None  # None: failed a filter
    host_id: str = ""

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(r for _, r in self.checks if r is not None)


def _cutoff(s: Settings) -> datetime:
    return utcnow() - timedelta(seconds=s.host_down_after)


@functools.lru_cache(maxsize=64)
def _overlays(text: str) -> frozenset[str]:
    return frozenset(o for o in re.split(r"[,\s]+", text) if o)


def _state(row: Any, cutoff: datetime) -> HostState:
    return HostState(
        id=row.id,
        name=row.name,
        up=row.last_heartbeat is not None and row.last_heartbeat >= cutoff,
        enabled=row.enabled,
        vcpus=row.vcpus,
        ram_mb=row.ram_mb,
        disk_gb=row.disk_gb,
        used_vcpus=row.used_vcpus,
        used_ram_mb=row.used_ram_mb,
        used_disk_gb=row.used_disk_gb,
        overlays=_overlays(row.overlays or ""),
    )


def host_states(conn: Connection, s: Settings) -> list[HostState]:
    """Every host (for --explain and "no valid host" messages)."""
    cutoff = _cutoff(s)
    return [_state(r, cutoff) for r in conn.execute(select(*COLUMNS).order_by(Host.name))]


def _times(column: SQLColumnExpression[int], ratio: float) -> SQLColumnExpression[Any]:
    """`column * ratio`, left as the bare column at ratio 1: the form the indexes have. Ratios go
    as double precision: psycopg2 sends a float as numeric, whose arithmetic over every host made
    PostgreSQL's scan several times slower."""
    return column if ratio == 1 else column * cast(literal(ratio), Float)


def _free_ram_order(req: Request, s: Settings) -> tuple[ColumnElement[Any], ColumnElement[bool]]:
    """The weigher's order (free RAM, as weighers.free_ram: most first, or least for pack) as an
    ascending key, and the RAM filter in terms of that key. At RAM ratio 1 the key is the
    expression of an index (models.py, migration 0005), so the database walks the index from
    the first host with room and stops after LIMIT hosts; at another ratio it sorts them."""
    ram = _times(Host.ram_mb, s.ram_allocation_ratio)
    if s.scheduler_weigher == "pack":
        least_free = ram - Host.used_ram_mb
        return least_free, least_free >= req.ram_mb
    most_free = Host.used_ram_mb - ram
    return most_free, most_free <= -req.ram_mb


def _usable(req: Request, s: Settings, cutoff: datetime) -> list[ColumnElement[bool]]:
    """What SQL can check of the filters: up, enabled, room for vCPUs and disk (RAM: see
    _free_ram_order)."""
    return [
        Host.enabled.is_(True),
        Host.last_heartbeat >= cutoff,
        Host.used_vcpus + req.vcpus <= _times(Host.vcpus, s.cpu_allocation_ratio),
        Host.used_disk_gb + req.disk_gb <= _times(Host.disk_gb, s.disk_allocation_ratio),
    ]


def candidates_query(req: Request, s: Settings, limit: int | None) -> Executable:
    order, ram_fits = _free_ram_order(req, s)
    query = select(*COLUMNS).where(*_usable(req, s, _cutoff(s)), ram_fits)
    if req.force_host:
        query = query.where(or_(Host.name == req.force_host, Host.id == req.force_host))
    return query.order_by(order, Host.name).limit(limit)


def candidates(
    conn: Connection, req: Request, s: Settings, limit: int | None = None
) -> list[HostState]:
    """Hosts that pass the filters SQL can check (up, enabled, room, forced host), best first
    by free RAM, ties by name; with `limit`, only that many. A pre-filter: Python's filters
    still decide."""
    cutoff = _cutoff(s)
    return [_state(r, cutoff) for r in conn.execute(candidates_query(req, s, limit))]


def explain(hosts: list[HostState], req: Request, s: Settings) -> list[Verdict]:
    """Every host's verdict per filter and its weight, best candidate first."""
    checks = {h.id: tuple((name, f(h, req, s)) for name, f in DEFAULT_FILTERS) for h in hosts}
    passed = [h for h in hosts if all(r is None for _, r in checks[h.id])]
    weights = dict(zip([h.id for h in passed], weigh(passed, req, s), strict=True))
    verdicts = [Verdict(h.name, checks[h.id], weights.get(h.id), h.id) for h in hosts]
    return sorted(verdicts, key=lambda v: (v.weight is None, -(v.weight or 0.0), v.host))


def no_host_message(verdicts: list[Verdict]) -> str:
    if not verdicts:
        return "no valid host: no hosts are registered"
    parts = [
        f"{v.host}: {'; '.join(v.reasons) or 'lost a race for its last room'}"
        for v in verdicts[:MAX_LISTED]
    ]
    if len(verdicts) > MAX_LISTED:
        parts.append(f"and {len(verdicts) - MAX_LISTED} more hosts (see --explain)")
    return "no valid host: " + " | ".join(parts)


def row_locks(session: Session) -> bool:
    """Whether SELECT ... FOR UPDATE means anything: not on SQLite, whose transactions all
    begin IMMEDIATE and so already hold the database's one write lock."""
    return session.get_bind().dialect.name != "sqlite"


def group_state(session: Session, group: ServerGroup, lock: bool = True) -> GroupState:
    """Where the group's live members run.

    `lock` takes the group's row first (SELECT ... FOR UPDATE on PostgreSQL), so creates in one
    group are serialised and each sees the members the previous one placed. SQLite needs no
    row lock: every transaction there begins IMMEDIATE and so holds the database's write lock.
    """
    if lock and row_locks(session):
        session.execute(select(ServerGroup.id).where(ServerGroup.id == group.id).with_for_update())
    rows = session.execute(
        select(Host.name, func.count(Instance.id))
        .join(Host, Host.id == Instance.host_id)
        .where(Instance.group_id == group.id, Instance.deleted_at.is_(None))
        .group_by(Host.name)
    ).all()
    return GroupState(group.name, group.policy, {name: int(n) for name, n in rows})


def _take(conn: Connection, host: HostState, req: Request, s: Settings) -> bool:
    """Add the request to the host's usage if it still fits, in one conditional UPDATE: the
    WHERE re-checks inside the write (on PostgreSQL an UPDATE racing another for the row waits
    for it, then re-evaluates its WHERE on the committed row). False: the claim lost."""
    _, ram_fits = _free_ram_order(req, s)
    taken = conn.execute(
        update(Host)
        .where(Host.id == host.id, *_usable(req, s, _cutoff(s)), ram_fits)
        .values(
            used_vcpus=Host.used_vcpus + req.vcpus,
            used_ram_mb=Host.used_ram_mb + req.ram_mb,
            used_disk_gb=Host.used_disk_gb + req.disk_gb,
        )
    )
    return bool(taken.rowcount == 1)


def passes(host: HostState, req: Request, s: Settings) -> bool:
    return all(f(host, req, s) is None for _, f in DEFAULT_FILTERS)


def _best_first(hosts: list[HostState], req: Request, s: Settings) -> list[HostState]:
    """The hosts that pass every filter, best first. With free RAM the only weigher that is
    SQL's order already; otherwise the weighers rank them."""
    if len(weighers_for(req, s)) == 1:
        return [h for h in hosts if passes(h, req, s)]
    by_id = {h.id: h for h in hosts}
    return [by_id[v.host_id] for v in explain(hosts, req, s) if v.weight is not None]


def claim(conn: Connection, req: Request, s: Settings) -> HostState:
    """Pick the best host and add the request to its usage, atomically, in `conn`'s transaction
    (a session's: `session.connection()`).

    SQL returns the best few candidates (free RAM being the only weigher: soft groups have
    another, and read every candidate), Python's filters drop those they refuse, and the first
    one left is claimed; a claim lost to a racing create goes on to the next. If none of the
    few is taken, every candidate is read and tried the same way.
    """
    tried: set[str] = set()
    limit: int | None = CANDIDATES if len(weighers_for(req, s)) == 1 else None
    while True:
        hosts = candidates(conn, req, s, limit)
        for h in _best_first(hosts, req, s):
            if h.id not in tried:
                tried.add(h.id)
                if _take(conn, h, req, s):
                    return h  # its usage as before the claim
        if limit is None or len(hosts) < limit:
            break  # that read held every candidate
        limit = None
    # re-read after the failed claims so the message reflects the current usage
    raise NoValidHost(no_host_message(explain(host_states(conn, s), req, s)), field="flavor")


def release(session: Session, host_id: str, vcpus: int, ram_mb: int, disk_gb: int) -> None:
    session.execute(
        update(Host)
        .where(Host.id == host_id)
        .values(
            used_vcpus=Host.used_vcpus - vcpus,
            used_ram_mb=Host.used_ram_mb - ram_mb,
            used_disk_gb=Host.used_disk_gb - disk_gb,
        )
        .execution_options(synchronize_session=False)
    )
