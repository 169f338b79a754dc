"""`nubes host evacuate`: the servers of a host that is down, rebuilt on other hosts.

Fencing first, in a transaction of its own: the host is marked fenced and disabled, and from
that commit on its credential authorizes nothing (api/deps.py answers `HostFenced`, problem
type errors.HOST_FENCED; heartbeats are refused too, control/heartbeat.py). Its agent, when it
comes back, hears that on its first request and destroys every guest it has (agent/fencing.py)
instead of running them: the copies that are rebuilt elsewhere are the only ones.

Then each live server is moved in its own transaction: the old claim released, a host claimed
by the scheduler (the fenced host is down and disabled, so it is never picked), the row pointed
at the new host with `status=BUILD`. Its id, ports (addresses, MACs) and security groups are
the same rows; the new host builds it from its image like a create (the disk's data is lost:
the disk stayed on the fenced host). A server no host has room for stays where it was, named in
the answer; evacuating again (the host is still down) tries those again.

Volumes are local files too: those on the fenced host are lost with it. They become `error`
with a fault saying so, detached (a moved server comes up without them; one that stays keeps
its own), and are named in the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from nubes.conf import Settings
from nubes.control import generations, operations, volumes
from nubes.control.compute import finish_delete, host_up
from nubes.control.runtimes import runtime_of
from nubes.db.models import Host, Instance, Network, Port, utcnow
from nubes.errors import Conflict, NoValidHost
from nubes.scheduler import placement
from nubes.scheduler.filters import Request


@dataclass
class Evacuated:
    moved: dict[str, str] = field(default_factory=dict)  # server id -> new host name
    failed: dict[str, str] = field(default_factory=dict)  # server id -> why
    volumes_lost: list[str] = field(default_factory=list)  # names of the host's volumes


def fence(session: Session, host: Host, settings: Settings) -> None:
    """Refuse a host that is up (409); fence it (committed before anything moves)."""
    if host_up(host, settings.host_down_after):
        raise Conflict(
            f"host {host.name} is up (heartbeat within {settings.host_down_after:g} s): "
            "evacuate only a host that is down; disable and drain a live one",
            field="host",
        )
    if host.fenced_at is None:
        host.fenced_at = utcnow()
    host.enabled = False
    session.commit()


def _overlay(session: Session, inst: Instance) -> str | None:
    overlays = session.scalars(
        select(Network.overlay)
        .join(Port, Port.network_id == Network.id)
        .where(Port.instance_id == inst.id)
    ).all()
    return max(overlays, key=lambda o: o == "geneve") if overlays else None


def _move(session: Session, inst: Instance, settings: Settings, lost: list[str]) -> str:
    """Claim another host for inst and point it there; returns the host's name. Its volumes
    on the dead host are added to `lost` (only if it moves: the caller rolls back otherwise)."""
    req = Request(
        inst.vcpus,
        inst.ram_mb,
        inst.disk_gb,
        overlay=_overlay(session, inst),
        runtime=runtime_of(session, inst),  # a container goes where runc runs
    )
    target = placement.claim(session.connection(), req, settings)
    old = inst.host_id
    if old is not None:
        placement.release(session, old, inst.vcpus, inst.ram_mb, inst.disk_gb)
        dead = session.get(Host, old)
        if dead is not None:
            lost += volumes.lost_with_host(session, dead, inst.id)
    inst.host_id = target.id
    # rebuilt from its image, running (a stopped server's disk is gone with its host too)
    # (no task state: BUILD is the transition, ended by the new host's ACTIVE as a create's)
    inst.status, inst.task_state, inst.desired_state = "BUILD", "", "running"
    inst.fault, inst.ready_at = "", None
    operations.begin(session, inst, "evacuate", f"scheduled on {target.name}")
    generations.instance_changed(session, inst, ports=True)  # its port is on another host now
    return target.name


def evacuate(session: Session, host: Host, settings: Settings) -> Evacuated:
    fence(session, host, settings)
    result = Evacuated()
    ids = session.scalars(
        select(Instance.id).where(Instance.host_id == host.id, Instance.deleted_at.is_(None))
    ).all()
    for instance_id in ids:
        inst = session.get(Instance, instance_id)
        if inst is None or inst.deleted_at is not None:
            continue
        if inst.desired_state == "deleted":  # its delete waited for the host: done now
            finish_delete(session, inst)
            session.commit()
            continue
        lost: list[str] = []
        try:
            result.moved[inst.id] = _move(session, inst, settings, lost)
            session.commit()
            result.volumes_lost += lost
        except NoValidHost as exc:
            session.rollback()
            result.failed[instance_id] = exc.message
    # the detached ones (and those of servers deleted above): nothing can attach them again
    result.volumes_lost += volumes.lost_with_host(session, host, None)
    session.commit()
    result.volumes_lost.sort()
    return result
