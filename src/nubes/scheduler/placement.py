"""Choose hosts and claim their resources in the caller's transaction."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    DateTime,
    Float,
    Integer,
    Select,
    String,
    bindparam,
    cast,
    func,
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
    Host.runtimes,
)
# the candidates are up and enabled (SQL checked): no need to read those (nor to parse the time)
CANDIDATE_COLUMNS = tuple(c for c in COLUMNS if c not in (Host.last_heartbeat, Host.enabled))


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
        runtimes=_overlays(row.runtimes or ""),
    )


def host_states(conn: Connection, s: Settings) -> list[HostState]:
    """Every host (for --explain and "no valid host" messages)."""
    cutoff = _cutoff(s)
    return [_state(r, cutoff) for r in conn.execute(select(*COLUMNS).order_by(Host.name))]


# The statements are built once, with bound parameters (SQLAlchemy's compiled cache then skips
# compiling them too): building these expressions took longer than running them.
def _param(name: str) -> BindParameter[int]:
    return bindparam(name, type_=Integer)


def _ratio(name: str) -> ColumnElement[float]:
    """Ratios as double precision: psycopg2 sends a float as numeric, whose arithmetic over
    every host made PostgreSQL's scan several times slower."""
    return cast(bindparam(name, type_=Float), Float)


def _usable() -> list[ColumnElement[bool]]:
    """What SQL checks of the filters but for RAM: up, enabled, room for vCPUs and disk."""
    return [
        Host.enabled.is_(True),
        Host.last_heartbeat >= bindparam("cutoff", type_=DateTime),
        Host.used_vcpus + _param("need_vcpus") <= Host.vcpus * _ratio("cpu_ratio"),
        Host.used_disk_gb + _param("need_disk_gb") <= Host.disk_gb * _ratio("disk_ratio"),
    ]


@functools.cache
def candidates_query(
    pack: bool, ram_ratio_one: bool, forced: bool, limited: bool
) -> Select[*tuple[Any, ...]]:
    """Hosts that pass what SQL checks, by free RAM (as weighers.free_ram: most first, or least
    for `pack`), ties by name. At RAM ratio 1 the order is an index's (models.py, migration
    0005), and the room for RAM is stated in its terms too: the database walks the index from
    the first host with room and stops after LIMIT hosts. At another ratio it sorts them."""
    capacity = Host.ram_mb if ram_ratio_one else Host.ram_mb * _ratio("ram_ratio")
    if pack:
        key = capacity - Host.used_ram_mb  # ascending: least free first
        room = key >= _param("need_ram_mb")
    else:
        key = Host.used_ram_mb - capacity  # ascending: most free first
        room = key <= -_param("need_ram_mb")
    query = select(*CANDIDATE_COLUMNS).where(*_usable(), room).order_by(key, Host.name)
    if forced:
        forced_host = bindparam("force_host", type_=String)
        query = query.where(or_(Host.name == forced_host, Host.id == forced_host))
    return query.limit(_param("limit")) if limited else query


# the claim: room re-checked inside the write
_TAKE = (
    update(Host)
    .where(
        Host.id == bindparam("host_id"),
        *_usable(),
        Host.used_ram_mb + _param("need_ram_mb") <= Host.ram_mb * _ratio("ram_ratio"),
    )
    .values(
        used_vcpus=Host.used_vcpus + _param("need_vcpus"),
        used_ram_mb=Host.used_ram_mb + _param("need_ram_mb"),
        used_disk_gb=Host.used_disk_gb + _param("need_disk_gb"),
    )
)


def _params(req: Request, s: Settings) -> dict[str, Any]:
    return {
        "cutoff": _cutoff(s),
        "need_vcpus": req.vcpus,
        "need_ram_mb": req.ram_mb,
        "need_disk_gb": req.disk_gb,
        "cpu_ratio": s.cpu_allocation_ratio,
        "ram_ratio": s.ram_allocation_ratio,
        "disk_ratio": s.disk_allocation_ratio,
    }


def candidates_for(
    req: Request, s: Settings, limit: int | None
) -> tuple[Select[*tuple[Any, ...]], dict[str, Any]]:
    """The candidates' query for this request and its parameters."""
    query = candidates_query(
        s.scheduler_weigher == "pack",
        s.ram_allocation_ratio == 1,
        bool(req.force_host),
        limit is not None,
    )
    return query, _params(req, s) | {"force_host": req.force_host, "limit": limit}


def candidates(
    conn: Connection, req: Request, s: Settings, limit: int | None = None
) -> list[HostState]:
    """Hosts that pass the filters SQL can check (up, enabled, room, forced host), best first
    by free RAM, ties by name; with `limit`, only that many. A pre-filter: Python's filters
    still decide."""
    query, params = candidates_for(req, s, limit)
    return [
        HostState(
            r[0],
            r[1],
            True,
            True,
            r[2],
            r[3],
            r[4],
            r[5],
            r[6],
            r[7],
            _overlays(r[8] or ""),
            _overlays(r[9] or ""),
        )  # fmt: skip
        for r in conn.execute(query, params)
    ]


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
    taken = conn.execute(_TAKE, _params(req, s) | {"host_id": host.id})
    return bool(taken.rowcount == 1)


def passes(host: HostState, req: Request, s: Settings) -> bool:
    return all(f(host, req, s) is None for _, f in DEFAULT_FILTERS)


def _best_first(hosts: list[HostState], req: Request, s: Settings) -> Iterator[HostState]:
    """The hosts that pass every filter, best first. With free RAM the only weigher that is
    SQL's order already (and the filters run only until a claim is taken); otherwise the
    weighers rank them."""
    if len(weighers_for(req, s)) == 1:
        return (h for h in hosts if passes(h, req, s))
    by_id = {h.id: h for h in hosts}
    return iter([by_id[v.host_id] for v in explain(hosts, req, s) if v.weight is not None])


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


def released(vcpus: int, ram_mb: int, disk_gb: int) -> dict[str, Any]:
    """The SET of a release, for an UPDATE of the host's row that may set more (its
    generation: control/compute.py `finish_delete`, one statement)."""
    return {
        "used_vcpus": Host.used_vcpus - vcpus,
        "used_ram_mb": Host.used_ram_mb - ram_mb,
        "used_disk_gb": Host.used_disk_gb - disk_gb,
    }


def release(session: Session, host_id: str, vcpus: int, ram_mb: int, disk_gb: int) -> None:
    session.execute(
        update(Host)
        .where(Host.id == host_id)
        .values(released(vcpus, ram_mb, disk_gb))
        .execution_options(synchronize_session=False)
    )
