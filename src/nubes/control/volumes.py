"""Volumes: local qcow2 disks of one host, attached hot to a server of that same host.

The API writes what is wanted (a volume to make, attach, detach or delete) and bumps the
volume's host; its agent converges (agent/volumes.py) and reports each volume's status.
Transitional statuses (creating, attaching, detaching, deleting) end with the host's report.
"""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from nubes.conf import Settings
from nubes.control import generations, lookup, quotas
from nubes.control.caller import Caller
from nubes.control.runtimes import vm_only
from nubes.db.models import Host, Image, Instance, Migration, Volume, utcnow
from nubes.errors import Conflict, Forbidden, InvalidInput, NoValidHost
from nubes.schemas import agent as a
from nubes.schemas import volumes as v

GIB = 1024**3
# what a host still has to do: its report ends these
BUSY = ("creating", "attaching", "detaching", "deleting")


def host_up(host: Host | None, down_after: float) -> bool:
    """As compute.host_up (which imports this module)."""
    if host is None or host.last_heartbeat is None:
        return False
    return host.last_heartbeat >= utcnow() - timedelta(seconds=down_after)


def to_wire(session: Session, vol: Volume) -> v.Volume:
    host = session.get(Host, vol.host_id) if vol.host_id else None
    inst = session.get(Instance, vol.instance_id) if vol.instance_id else None
    image = session.get(Image, vol.image_id) if vol.image_id else None
    return v.Volume(
        id=vol.id,
        name=vol.name,
        size_gb=vol.size_gb,
        status=vol.status,
        host=host.name if host else None,
        server=inst.name if inst else None,
        image=image.name if image else None,
        fault=vol.fault,
        created_at=vol.created_at,
    )


def _volumes_on(session: Session, host_id: str) -> int:
    """Its volumes' GiB, and those of the volumes migrating to it (already being written)."""
    total = session.scalar(select(func.sum(Volume.size_gb)).where(Volume.host_id == host_id))
    incoming = session.scalars(
        select(Migration.volumes).where(
            Migration.target_host_id == host_id, Migration.phase.in_(("preparing", "migrating"))
        )
    )
    carried = sum(int(v["size_gb"]) for text in incoming for v in json.loads(text or "[]"))
    return int(total or 0) + carried


def free_disk(session: Session, host: Host, settings: Settings) -> float:
    """Disk left for a volume: the overcommitted capacity less servers' and volumes' GiB
    (volumes are not in the host's claims, which `nubes gc` checks against its servers)."""
    capacity = host.disk_gb * settings.disk_allocation_ratio
    return capacity - host.used_disk_gb - _volumes_on(session, host.id)


def _place(session: Session, settings: Settings, size_gb: int, forced: Host | None) -> Host:
    """The forced host if it has room, else the up and enabled host with the most disk left."""
    if forced is not None:
        if not host_up(forced, settings.host_down_after) or not forced.enabled:
            raise NoValidHost(f"host {forced.name} is down or disabled", field="host")
        if free_disk(session, forced, settings) < size_gb:
            raise NoValidHost(f"host {forced.name} has no room for {size_gb} GiB", field="host")
        return forced
    hosts = [
        h
        for h in session.scalars(select(Host).where(Host.enabled.is_(True)).order_by(Host.name))
        if host_up(h, settings.host_down_after)
    ]
    room = sorted(((free_disk(session, h, settings), h.name, h) for h in hosts), reverse=True)
    if not room or room[0][0] < size_gb:
        raise NoValidHost(f"no host has room for a volume of {size_gb} GiB", field="size_gb")
    return room[0][2]


def create(session: Session, settings: Settings, body: v.VolumeCreate, who: Caller) -> v.Volume:
    if body.host and not who.is_admin:
        raise Forbidden("host: only an admin may choose the host", field="host")
    forced = lookup.host(session, body.host) if body.host else None
    image = None
    if body.image:
        image = lookup.owned(session, Image, body.image, who, "image")
        if image.status != "active" or image.kernel_sha256:
            why = "is not active" if image.status != "active" else "boots a kernel of its own"
            raise InvalidInput(f"image: {image.name} {why}", field="image")
        if image.virtual_size > body.size_gb * GIB:
            need = -(-image.virtual_size // GIB)
            raise InvalidInput(f"size_gb: the image needs {need} GiB", field="size_gb")
    taken = select(Volume.id).where(Volume.project_id == who.project_id, Volume.name == body.name)
    if session.scalar(taken):
        raise Conflict(f"volume {body.name!r} already exists", field="name")
    quotas.check(session, settings, who.project_id, {"volumes": 1})
    host = _place(session, settings, body.size_gb, forced)
    vol = Volume(
        project_id=who.project_id,
        name=body.name,
        size_gb=body.size_gb,
        image_id=image.id if image else None,
        host_id=host.id,
        status="creating",
        fault="",
    )
    session.add(vol)
    session.flush()
    generations.bump(session, [host.id])
    answer = to_wire(session, vol)
    session.commit()
    return answer


def delete(session: Session, settings: Settings, vol: Volume) -> v.Volume:
    if vol.instance_id is not None or vol.status in ("attaching", "in-use", "detaching"):
        raise Conflict(f"volume {vol.name} is attached; detach it first", field="volume")
    host = session.get(Host, vol.host_id) if vol.host_id else None
    if host is None or not host_up(host, settings.host_down_after):
        # nothing on a host to wait for (a down host's file is its leftover: `nubes gc`)
        answer = to_wire(session, vol).model_copy(update={"status": "deleted"})
        session.delete(vol)
    else:
        vol.status = "deleting"
        generations.bump(session, [vol.host_id])
        answer = to_wire(session, vol)
    session.commit()
    return answer


def attach(session: Session, inst: Instance, vol: Volume) -> v.Volume:
    if inst.desired_state == "deleted":
        raise Conflict("server is being deleted", field="server")
    vm_only(session, inst, "attaching a volume")
    if inst.task_state == "migrating":  # it would stay behind: the migration took its list
        raise Conflict(f"server {inst.name} is migrating; attach after", field="server")
    if vol.instance_id == inst.id:
        raise Conflict(f"volume {vol.name} is already attached to {inst.name}", field="volume")
    if vol.status != "available" or vol.instance_id is not None:
        raise Conflict(f"volume {vol.name} is {vol.status}, not available", field="volume")
    if vol.host_id != inst.host_id:
        vhost = session.get(Host, vol.host_id) if vol.host_id else None
        shost = session.get(Host, inst.host_id) if inst.host_id else None
        raise Conflict(
            f"volume {vol.name} is on host {vhost.name if vhost else '-'} and server "
            f"{inst.name} on {shost.name if shost else '-'}: volumes are local to their host",
            field="volume",
        )
    vol.instance_id, vol.status, vol.fault = inst.id, "attaching", ""
    generations.bump(session, [vol.host_id])
    answer = to_wire(session, vol)
    session.commit()
    return answer


def detach(session: Session, inst: Instance, vol: Volume) -> v.Volume:
    if vol.instance_id != inst.id:
        raise Conflict(f"volume {vol.name} is not attached to {inst.name}", field="volume")
    if inst.task_state == "migrating":
        raise Conflict(f"server {inst.name} is migrating; detach after", field="server")
    vol.instance_id, vol.status = None, "detaching"
    generations.bump(session, [vol.host_id])
    answer = to_wire(session, vol)
    session.commit()
    return answer


def release_from(session: Session, instance_id: str) -> None:
    """Its server is gone (QEMU with it): its volumes are kept, detached and available."""
    session.execute(
        update(Volume)
        .where(Volume.instance_id == instance_id)
        .values(instance_id=None, status="available")
        .execution_options(synchronize_session=False)
    )


def lost_with_host(session: Session, host: Host, instance_id: str | None) -> list[str]:
    """An evacuated host's volumes: their files stayed on it and are lost with it, so they are
    errors, detached (the server is rebuilt elsewhere without them), never quietly available.
    `instance_id`: those of that server; None: the detached ones. Their names."""
    attached = (
        Volume.instance_id.is_(None) if instance_id is None else Volume.instance_id == instance_id
    )
    rows = session.scalars(select(Volume).where(Volume.host_id == host.id, attached)).all()
    for vol in rows:
        vol.instance_id, vol.status, vol.port = None, "error", ""
        vol.fault = f"lost with host {host.name} (evacuated): its file stayed there"
    return [vol.name for vol in rows]


def desired(session: Session, host: Host) -> list[a.DesiredVolume]:
    rows = session.execute(
        select(Volume, Image)
        .outerjoin(Image, Image.id == Volume.image_id)
        .where(Volume.host_id == host.id)
        .order_by(Volume.created_at, Volume.id)
    ).all()
    return [
        a.DesiredVolume(
            id=vol.id,
            size_gb=vol.size_gb,
            status=vol.status,
            instance_id=vol.instance_id,
            image_id=image.id if image else None,
            image_format=image.disk_format if image else "",
            image_sha256=image.sha256 if image else "",
            port=vol.port,
        )
        for vol, image in rows
    ]


def fold(session: Session, host: Host, observed: list[a.ObservedVolume], dry: bool) -> bool:
    """A host's report of its volumes; True if it changes anything."""
    changed = False
    for obs in observed:
        vol = session.get(Volume, obs.id)
        if vol is None or vol.host_id != host.id:
            continue
        if obs.status == "deleted":
            if vol.status == "deleting":
                changed = True
                if not dry:
                    session.delete(vol)
            continue
        want = _settled(vol, obs.status)
        port = obs.port if want == "in-use" else ""
        if want is not None and (vol.status, vol.fault, vol.port) != (want, obs.fault, port):
            changed = True
            vol.status, vol.fault, vol.port = want, obs.fault, port
    return changed


def _settled(vol: Volume, seen: str) -> str | None:
    """The status a report settles; None: the report is older than what is asked."""
    if vol.status == "deleting":
        return None
    if seen == "error":
        return "error"
    if vol.instance_id is not None:
        return "in-use" if seen == "in-use" else None
    return "available" if seen == "available" else None
