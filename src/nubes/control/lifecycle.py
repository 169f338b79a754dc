"""Rebuild, resize and snapshot of a server: written as desired state, carried out by its host.

- rebuild: a new disk from its (or another) image, the same id, ports and addresses; the guest's
  NoCloud instance-id changes (`<id>.r<n>`) so cloud-init runs again as on a new instance.
- resize: cold, on the same host: the claim moves by the difference at once (a conditional
  UPDATE, so a host without room refuses with 409), the host stops the guest, grows the disk
  and starts it with the new vCPUs and RAM. A smaller disk is refused: qcow2 cannot shrink
  under a filesystem.
- snapshot: a queued image of the project with `snapshot_of` set; the host copies the disk
  chain at one point (guest paused for it), flattens it with `qemu-img convert` and uploads
  it, and the API inspects it as any import.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from nubes.conf import Settings
from nubes.control import generations, images, lookup, operations, quotas
from nubes.control.caller import Caller
from nubes.control.runtimes import vm_only
from nubes.db.models import Flavor, Host, Image, Instance
from nubes.errors import Conflict, InvalidInput, NotFound, NoValidHost
from nubes.schemas import volumes as v
from nubes.schemas.agent import ObservedInstance
from nubes.storage.images import default_max_bytes

GIB = 1024**3


def _placed(inst: Instance) -> str:
    if inst.desired_state == "deleted":
        raise Conflict("server is being deleted", field="server")
    if inst.host_id is None or inst.status in ("BUILD", "ERROR"):
        raise Conflict(f"server is {inst.status}: it has no disk to work on yet", field="server")
    return inst.host_id


def rebuild(session: Session, inst: Instance, body: v.Rebuild, who: Caller) -> None:
    _placed(inst)
    vm_only(session, inst, "rebuild")
    image = session.get(Image, inst.image_id)
    if body.image:
        image = lookup.owned(session, Image, body.image, who, "image")
    if image is None or image.status != "active":
        raise InvalidInput("image: not active", field="image")
    if image.disk_format == "rootfs":
        raise InvalidInput(f"image: {image.name} is a container image", field="image")
    if image.disk_format == "iso" or image.virtual_size > inst.disk_gb * GIB:
        raise InvalidInput(
            f"image: {image.name} does not fit the server's {inst.disk_gb} GiB disk",
            field="image",
        )
    inst.image_id = image.id
    inst.rebuild_gen += 1
    inst.task_state = "rebuilding"
    inst.ready_at = None
    operations.begin(session, inst, "rebuild")
    generations.instance_changed(session, inst)


def resize(
    session: Session, settings: Settings, inst: Instance, body: v.Resize, who: Caller
) -> None:
    host_id = _placed(inst)
    vm_only(session, inst, "resize")
    flavor = lookup.flavor(session, body.flavor)
    if flavor.id == inst.flavor_id:
        raise Conflict(f"server already has flavor {flavor.name}", field="flavor")
    if flavor.disk_gb < inst.disk_gb:
        raise Conflict(
            f"flavor: {flavor.name} has {flavor.disk_gb} GiB of disk, the server has "
            f"{inst.disk_gb}: a disk cannot shrink",
            field="flavor",
        )
    d_cpu, d_ram, d_disk = (
        flavor.vcpus - inst.vcpus,
        flavor.ram_mb - inst.ram_mb,
        flavor.disk_gb - inst.disk_gb,
    )
    quotas.check(
        session,
        settings,
        inst.project_id,
        {k: n for k, n in (("vcpus", d_cpu), ("ram_mb", d_ram)) if n > 0},
    )
    _take(session, settings, host_id, d_cpu, d_ram, d_disk, flavor)
    inst.flavor_id = flavor.id
    inst.vcpus, inst.ram_mb, inst.disk_gb = flavor.vcpus, flavor.ram_mb, flavor.disk_gb
    inst.resize_gen += 1
    inst.task_state = "resizing"
    inst.ready_at = None
    operations.begin(session, inst, "resize")
    generations.instance_changed(session, inst)


def _take(
    session: Session, s: Settings, host_id: str, cpu: int, ram: int, disk: int, flavor: Flavor
) -> None:
    """Move the host's claim by the difference if it still fits (a shrinking part always does):
    the same conditional UPDATE as the scheduler's claim, so racing creates cannot overcommit."""
    fits = []
    if cpu > 0:
        fits.append(Host.used_vcpus + cpu <= Host.vcpus * s.cpu_allocation_ratio)
    if ram > 0:
        fits.append(Host.used_ram_mb + ram <= Host.ram_mb * s.ram_allocation_ratio)
    if disk > 0:
        fits.append(Host.used_disk_gb + disk <= Host.disk_gb * s.disk_allocation_ratio)
    taken = session.execute(
        update(Host)
        .where(Host.id == host_id, *fits)
        .values(
            used_vcpus=Host.used_vcpus + cpu,
            used_ram_mb=Host.used_ram_mb + ram,
            used_disk_gb=Host.used_disk_gb + disk,
        )
        .execution_options(synchronize_session=False)
    )
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        name = session.scalar(select(Host.name).where(Host.id == host_id))
        raise NoValidHost(
            f"flavor: host {name} has no room for {flavor.name} (a resize stays on its host)",
            field="flavor",
        )


def snapshot(
    session: Session, settings: Settings, inst: Instance, body: v.SnapshotCreate, who: Caller
) -> Image:
    _placed(inst)
    vm_only(session, inst, "snapshot")
    taken = select(Image.id).where(Image.project_id == inst.project_id, Image.name == body.name)
    if session.scalar(taken):
        raise Conflict(f"image {body.name!r} already exists", field="name")
    quotas.check(session, settings, inst.project_id, {"images": 1})
    source = session.get(Image, inst.image_id)
    assert source is not None  # a foreign key
    row = Image(
        project_id=inst.project_id,
        name=body.name,
        disk_format="qcow2",
        cmdline=source.cmdline,
        default_user=source.default_user,
        ready_pattern=source.ready_pattern,
        snapshot_of=inst.id,
    )
    # a guest booted by its own kernel needs it beside the disk: the API has both files
    for part in ("kernel", "initrd"):
        digest = getattr(source, f"{part}_sha256")
        if digest:
            session.add(row)
            session.flush()
            src = settings.images_dir / f"{source.id}.{part}"
            shutil.copyfile(src, settings.images_dir / f"{row.id}.{part}")
            setattr(row, f"{part}_sha256", digest)
    session.add(row)
    session.flush()
    operations.begin(session, inst, "snapshot")
    generations.instance_changed(session, inst)
    return row


def observed(session: Session, inst: Instance, obs: ObservedInstance) -> None:
    """A host's report that it carried out a rebuild or resize ends the task."""
    if obs.status not in ("ACTIVE", "SHUTOFF"):
        return
    for task, kind, gen, seen in (
        ("rebuilding", "rebuild", inst.rebuild_gen, obs.rebuild_gen),
        ("resizing", "resize", inst.resize_gen, obs.resize_gen),
    ):
        if inst.task_state == task and seen >= gen:
            inst.task_state = ""
            operations.finish(session, inst.id, kind)


def snapshot_target(session: Session, host_id: str, image_id: str) -> tuple[Image, Instance]:
    """The queued snapshot a host uploads: only of a server on that host."""
    row = session.get(Image, image_id)
    inst = session.get(Instance, row.snapshot_of) if row and row.snapshot_of else None
    if row is None or inst is None or inst.host_id != host_id:
        raise NotFound(f"no snapshot {image_id} of a server on this host", field="image")
    if row.status != "queued":
        raise Conflict(f"snapshot {row.name} is {row.status}", field="image")
    return row, inst


def snapshot_failed(session: Session, row: Image, inst: Instance, error: str) -> None:
    row.status, row.error = "error", error[:1000]
    for op in operations.running(session, inst.id):
        if op.kind == "snapshot":
            op.status, op.error = "failed", row.error
    generations.instance_changed(session, inst)


def snapshot_done(session: Session, inst: Instance) -> None:
    operations.finish(session, inst.id, "snapshot")
    generations.instance_changed(session, inst)


def upload_limit(settings: Settings) -> int:
    return default_max_bytes(settings.max_image_virtual_size_gb * GIB)


def store_snapshot(
    session: Session, settings: Settings, host_id: str, image_id: str, path: Path, digest: str
) -> None:
    """A host's upload: inspected as any import, then renamed into the store (no second copy
    of the file). A rejected file makes the image `error` and is raised (422)."""
    row, inst = snapshot_target(session, host_id, image_id)
    try:
        max_size = settings.max_image_virtual_size_gb * GIB
        stored = images.store(settings).adopt(row.id, path, "qcow2", max_size, digest)
        row.size, row.virtual_size, row.sha256 = stored.size, stored.virtual_size, stored.sha256
        row.status = "active"
    except Exception as exc:
        session.rollback()
        row, inst = snapshot_target(session, host_id, image_id)
        snapshot_failed(session, row, inst, getattr(exc, "message", str(exc)))
        session.commit()
        raise
    snapshot_done(session, inst)
    session.commit()
