"""Choose hosts and claim their resources in the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from nubes.conf import Settings
from nubes.db.models import Host, utcnow
from nubes.errors import NoValidHost
from nubes.scheduler.filters import DEFAULT_FILTERS, HostState, Request
from nubes.scheduler.weighers import weigh


@dataclass(frozen=True)
class Verdict:
    host: str
    reasons: tuple[str, ...]  # empty: passed every filter
    weight: float | None


def host_states(session: Session, s: Settings) -> list[HostState]:
    cutoff = utcnow() - timedelta(seconds=s.host_down_after)
    rows = session.scalars(select(Host).order_by(Host.name)).all()
    return [
        HostState(
            id=h.id,
            name=h.name,
            up=h.last_heartbeat is not None and h.last_heartbeat >= cutoff,
            enabled=h.enabled,
            vcpus=h.vcpus,
            ram_mb=h.ram_mb,
            disk_gb=h.disk_gb,
            used_vcpus=h.used_vcpus,
            used_ram_mb=h.used_ram_mb,
            used_disk_gb=h.used_disk_gb,
        )
        for h in rows
    ]


def explain(hosts: list[HostState], req: Request, s: Settings) -> list[Verdict]:
    """Every host's verdict, best candidate first."""
    reasons = {
        h.id: tuple(r for _, f in DEFAULT_FILTERS if (r := f(h, req, s)) is not None) for h in hosts
    }
    passed = [h for h in hosts if not reasons[h.id]]
    weights = dict(zip([h.id for h in passed], weigh(passed, req, s), strict=True))
    verdicts = [Verdict(h.name, reasons[h.id], weights.get(h.id)) for h in hosts]
    return sorted(verdicts, key=lambda v: (v.weight is None, -(v.weight or 0.0), v.host))


def no_host_message(verdicts: list[Verdict]) -> str:
    if not verdicts:
        return "no valid host: no hosts are registered"
    parts = [
        f"{v.host}: {'; '.join(v.reasons) or 'lost a race for its last room'}" for v in verdicts
    ]
    return "no valid host: " + " | ".join(parts)


def claim(session: Session, req: Request, s: Settings) -> Host:
    """Pick the best host and add the request to its usage, atomically.

    The conditional UPDATE re-checks capacity inside the write, so two racing creates can
    never both take the last room on a host, on SQLite or PostgreSQL alike.
    """
    hosts = host_states(session, s)
    verdicts = explain(hosts, req, s)
    by_name = {h.name: h for h in hosts}
    for v in verdicts:
        if v.reasons:
            continue
        h = by_name[v.host]
        result = session.execute(
            update(Host)
            .where(Host.id == h.id)
            .where(Host.used_vcpus + req.vcpus <= Host.vcpus * s.cpu_allocation_ratio)
            .where(Host.used_ram_mb + req.ram_mb <= Host.ram_mb * s.ram_allocation_ratio)
            .where(Host.used_disk_gb + req.disk_gb <= Host.disk_gb * s.disk_allocation_ratio)
            .values(
                used_vcpus=Host.used_vcpus + req.vcpus,
                used_ram_mb=Host.used_ram_mb + req.ram_mb,
                used_disk_gb=Host.used_disk_gb + req.disk_gb,
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            host = session.get(Host, h.id, populate_existing=True)
            assert host is not None
            return host
    # re-read after the failed claims so the message reflects the current usage
    raise NoValidHost(no_host_message(explain(host_states(session, s), req, s)), field="flavor")


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
