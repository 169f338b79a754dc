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
    DateTime,
    Executable,
    Float,
    Integer,
    String,
    and_,
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
from nubes.db.prepared import Prepared
from nubes.errors import NoValidHost
from nubes.scheduler import shortlist
from nubes.scheduler.filters import DEFAULT_FILTERS, GroupState, HostState, Request
from nubes.scheduler.weighers import weigh

# Without a group, the weighers rank by free RAM alone, which SQL can order: the claim then
# reads the best candidates and remembers them for the next placements (shortlist.py). With
# spread, a list of N equal hosts serves about N placements, and one that holds every candidate
# serves until it expires (1 s). A read asks for 64 hosts (~0.3 ms at 1,000 hosts), twice as
# many each time a list is used up before it expires, up to this many (~2 ms): a busy cloud of
# up to 1,024 hosts is then read about once a second, a quiet one reads little each create.
SHORTLIST = 1024
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
# candidates() passes only hosts SQL found up and enabled: those two need no reading (nor
# SQLite's datetime parsing, a good part of a shortlist read's cost)
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
    overlays = _overlays(row.overlays or "")
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
        overlays=overlays,
    )


def host_states(conn: Connection, s: Settings) -> list[HostState]:
    """Every host (for --explain and "no valid host" messages)."""
    cutoff = _cutoff(s)
    return [_state(r, cutoff) for r in conn.execute(select(*COLUMNS).order_by(Host.name))]


# The statements are built once with bound parameters: at 1,000 hosts and thousands of
# placements, building SQL expressions per call cost more than running them (bench/scheduler.py).
# Ratios are cast to double precision: psycopg2 sends a float as a numeric literal, and numeric
# arithmetic over every host made PostgreSQL's scan several times slower.
def _ratio(name: str) -> ColumnElement[float]:
    return cast(bindparam(name, type_=Float), Float)


_FITS = and_(
    Host.used_vcpus + bindparam("need_vcpus", type_=Integer) <= Host.vcpus * _ratio("cpu_ratio"),
    Host.used_ram_mb + bindparam("need_ram_mb", type_=Integer) <= Host.ram_mb * _ratio("ram_ratio"),
    Host.used_disk_gb + bindparam("need_disk_gb", type_=Integer)
    <= Host.disk_gb * _ratio("disk_ratio"),
)
# The claim: run for every create, on the driver (db/prepared.py). RETURNING gives the host's
# usage as it now is in the database, which the shortlist keeps (SQLite >= 3.35, PostgreSQL).
_TAKE = Prepared(
    update(Host)
    .where(
        Host.id == bindparam("host_id"),
        Host.enabled.is_(True),
        Host.last_heartbeat >= bindparam("cutoff", type_=DateTime),
        _FITS,
    )
    .values(
        used_vcpus=Host.used_vcpus + bindparam("need_vcpus", type_=Integer),
        used_ram_mb=Host.used_ram_mb + bindparam("need_ram_mb", type_=Integer),
        used_disk_gb=Host.used_disk_gb + bindparam("need_disk_gb", type_=Integer),
    )
    .returning(Host.used_vcpus, Host.used_ram_mb, Host.used_disk_gb)
)


def _params(req: Request, s: Settings) -> dict[str, Any]:
    return {
        "need_vcpus": req.vcpus,
        "need_ram_mb": req.ram_mb,
        "need_disk_gb": req.disk_gb,
        "cpu_ratio": s.cpu_allocation_ratio,
        "ram_ratio": s.ram_allocation_ratio,
        "disk_ratio": s.disk_allocation_ratio,
    }


@functools.cache
def _candidates_query(forced: bool, limited: bool, pack: bool, collate: bool) -> Executable:
    up = Host.last_heartbeat >= bindparam("cutoff", type_=DateTime)
    query = select(*CANDIDATE_COLUMNS).where(Host.enabled.is_(True), up, _FITS)
    if forced:
        forced_host = bindparam("force_host", type_=String)
        query = query.where(or_(Host.name == forced_host, Host.id == forced_host))
    if limited:
        free = Host.ram_mb * _ratio("ram_ratio") - Host.used_ram_mb
        # ties by name as Python compares them (code points): SQLite's default; PostgreSQL's
        # may follow a locale ("web-2" after "web10"), so ask for "C" there
        name = Host.name.collate("C") if collate else Host.name
        query = query.order_by(free.asc() if pack else free.desc(), name)
        query = query.limit(bindparam("limit", type_=Integer))
    return query


def candidates(
    conn: Connection, req: Request, s: Settings, limit: int | None = None
) -> list[HostState]:
    """Hosts that pass the filters SQL can check (up, enabled, room, forced host).

    A pre-filter only: the filters in Python still decide. With `limit`, the best `limit` hosts
    by free RAM in the direction the weigher wants.
    """
    cutoff = _cutoff(s)
    collate = conn.dialect.name == "postgresql"
    query = _candidates_query(
        bool(req.force_host), limit is not None, s.scheduler_weigher == "pack", collate
    )
    params = _params(req, s) | {"cutoff": cutoff, "force_host": req.force_host, "limit": limit}
    # Core, not ORM, execution: these are plain columns, and this runs on every create
    return [
        HostState(r[0], r[1], True, True, r[2], r[3], r[4], r[5], r[6], r[7], _overlays(r[8] or ""))
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


def _take(
    conn: Connection, host: HostState, req: Request, s: Settings,
    lists: shortlist.Shortlists | None = None,
) -> bool:  # fmt: skip
    """Add the request to the host's usage if it still fits (re-checked inside the write: on
    PostgreSQL a racing UPDATE of the row makes this one wait, then re-evaluate its WHERE on the
    committed row). False: the claim lost. `lists`: the engine's, if the caller has them."""
    params = _params(req, s)
    params["host_id"] = host.id
    params["cutoff"] = _cutoff(s)
    rows = _TAKE.execute(conn, params).fetchall()  # fetch all: ends the statement
    if rows:  # this process's shortlists take the host's usage as the database now has it
        lists = lists or shortlist.for_engine(conn.engine)
        lists.changed(host.id, host.name, host.ram_mb, rows[0])
    return bool(rows)


def passes(host: HostState, req: Request, s: Settings) -> bool:
    for _, f in DEFAULT_FILTERS:  # a loop, not all(...): this runs for every create
        if f(host, req, s) is not None:
            return False
    return True


def _ranked(hosts: list[HostState], req: Request, s: Settings) -> list[HostState]:
    """The hosts that pass every filter, best first."""
    by_id = {h.id: h for h in hosts}
    return [by_id[v.host_id] for v in explain(hosts, req, s) if v.weight is not None]


def _claim_shortlisted(
    conn: Connection, req: Request, s: Settings, tried: set[str]
) -> HostState | None:
    """The fast path, without a group or a forced host (free RAM the only weigher): claim the
    first host of a shortlist that passes the filters, remembered between placements while it
    provably still holds the best host (see shortlist.py). None: let the full path decide."""
    lists = shortlist.for_engine(conn.engine)
    key = lists.key(req, s)

    def ok(h: HostState) -> bool:
        return h.id not in tried and passes(h, req, s)

    for _ in range(3):
        best = lists.best(key, ok, s)
        if best is None:
            limit = lists.read_size(key, SHORTLIST)
            lists.remember(key, candidates(conn, req, s, limit), limit, s)
            best = lists.best(key, ok, s)  # from a fresh read: None only if none passes
            if best is None:
                return None
        tried.add(best.id)
        if _take(conn, best, req, s, lists):
            return best
        lists.forget(key)  # lost a race for it: read the hosts again
    return None


def claim(conn: Connection, req: Request, s: Settings) -> HostState:
    """Pick the best host and add the request to its usage, atomically, in `conn`'s transaction
    (a session's: `session.connection()`).

    The conditional UPDATE re-checks capacity inside the write, so two racing creates can
    never both take the last room on a host, on SQLite or PostgreSQL alike (PostgreSQL
    re-evaluates the WHERE on the row the other transaction committed). Without a group or a
    forced host the fast path picks from a remembered shortlist; otherwise, or when it finds
    nothing, every candidate is read and ranked by the whole pipeline.
    """
    tried: set[str] = set()
    if req.group is None and not req.force_host:
        host = _claim_shortlisted(conn, req, s, tried)
        if host is not None:
            return host
    hosts = candidates(conn, req, s)
    for h in _ranked(hosts, req, s):
        if h.id not in tried and _take(conn, h, req, s):
            return h  # its usage as before the claim
        tried.add(h.id)
    # re-read after the failed claims so the message reflects the current usage
    raise NoValidHost(no_host_message(explain(host_states(conn, s), req, s)), field="flavor")


def release(session: Session, host_id: str, vcpus: int, ram_mb: int, disk_gb: int) -> None:
    row = session.execute(
        update(Host)
        .where(Host.id == host_id)
        .values(
            used_vcpus=Host.used_vcpus - vcpus,
            used_ram_mb=Host.used_ram_mb - ram_mb,
            used_disk_gb=Host.used_disk_gb - disk_gb,
        )
        .returning(Host.name, Host.ram_mb, Host.used_vcpus, Host.used_ram_mb, Host.used_disk_gb)
        .execution_options(synchronize_session=False)
    ).first()
    if row is not None:  # the shortlists of this process see the room come back
        name, total_ram_mb, *used = row
        lists = shortlist.for_engine(session.get_bind())
        lists.changed(host_id, name, total_ram_mb, (used[0], used[1], used[2]))
