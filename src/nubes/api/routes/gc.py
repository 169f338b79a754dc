"""What is left over, on hosts and in the database; `POST` repairs the database side and asks
every host to remove its leftovers (agents never remove an instance on their own: see
docs/architecture.md, "GC")."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from nubes.api.deps import AdminDep, SessionDep, StateDep
from nubes.control import generations, migrations
from nubes.control.desired import GC_REQUEST
from nubes.db.models import Host, Instance, Meta, Port
from nubes.schemas import resources as s

router = APIRouter(prefix="/v1/gc", tags=["gc"])


def orphan_ports(session: Session) -> list[Port]:
    live = select(Instance.id).where(Instance.deleted_at.is_(None))
    return list(session.scalars(select(Port).where(Port.instance_id.not_in(live))))


def usage_drift(session: Session) -> list[tuple[Host, tuple[int, int, int]]]:
    """Hosts whose claimed usage differs from the sum of their live instances."""
    drift = []
    for host in session.scalars(select(Host)):
        sums = session.execute(
            select(
                func.coalesce(func.sum(Instance.vcpus), 0),
                func.coalesce(func.sum(Instance.ram_mb), 0),
                func.coalesce(func.sum(Instance.disk_gb), 0),
            ).where(Instance.host_id == host.id, Instance.deleted_at.is_(None))
        ).one()
        extra = migrations.incoming_claims(session, host.id)  # held for a server on its way
        want = (int(sums[0]) + extra[0], int(sums[1]) + extra[1], int(sums[2]) + extra[2])
        if (host.used_vcpus, host.used_ram_mb, host.used_disk_gb) != want:
            drift.append((host, want))
    return drift


def database_findings(session: Session) -> list[str]:
    found = [f"port {p.id} ({p.ip}) has no live server" for p in orphan_ports(session)]
    for host, want in usage_drift(session):
        have = (host.used_vcpus, host.used_ram_mb, host.used_disk_gb)
        found.append(f"host {host.name} usage {have} != sum of its servers {want}")
    return found


def request_host_gc(session: Session) -> None:
    """Bump the gc request every desired state carries (the row is made at bootstrap; one
    UPDATE, so racing API servers each count theirs)."""
    session.execute(update(Meta).where(Meta.key == GC_REQUEST).values(value=Meta.value + 1))
    generations.bump_after_commit(session, None)  # every host


@router.get("")
def gc_report(session: SessionDep, _: AdminDep, state: StateDep) -> s.GcReport:
    """A dry run: nothing is changed."""
    hosts = {name: items for name, items in sorted(state.leftovers.items())}
    return s.GcReport(hosts=hosts, database=database_findings(session))


@router.post("")
def gc_repair(session: SessionDep, _: AdminDep, state: StateDep) -> s.GcReport:
    """Repair the database side; hosts remove their leftovers on their next pass."""
    repaired = database_findings(session)
    for port in orphan_ports(session):
        session.delete(port)
    for host, (vcpus, ram, disk) in usage_drift(session):
        host.used_vcpus, host.used_ram_mb, host.used_disk_gb = vcpus, ram, disk
    request_host_gc(session)
    session.commit()
    state.notifier.notify()
    hosts = {name: items for name, items in sorted(state.leftovers.items())}
    return s.GcReport(hosts=hosts, database=database_findings(session), repaired=repaired)
