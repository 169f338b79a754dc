"""Rebuild, resize and snapshot of an instance on this host (control/lifecycle.py says when).

Each is carried out once per generation the API bumps (recorded in the instance's agent
record, so an agent restarted midway does it again rather than never)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from nubes.agent.instances import InstanceReconciler
from nubes.agent.layout import LocalState
from nubes.agent.reverter import Reverter
from nubes.hypervisor.base import PowerState
from nubes.schemas.agent import DesiredInstance
from nubes.storage import disks
from nubes.storage.seed import write_seed
from nubes.storage.tools import COPY_LIMITS, run_limited

log = logging.getLogger("nubes.agent")
Upload = Callable[[str, Path], None]  # (image id, file): sends it to the API


def _running(rec: InstanceReconciler, instance_id: str) -> bool:
    return rec.hypervisor.info(instance_id).state in (PowerState.RUNNING, PowerState.PAUSED)


def rebuild(rec: InstanceReconciler, want: DesiredInstance, state: LocalState) -> None:
    """The new disk and seed are made beside the old ones first: a failure there leaves the
    guest as it was. Then the guest is stopped, the files swapped, and it starts again."""
    layout = rec.layout
    disk, seed = layout.disk(want.id), layout.seed(want.id)
    new_disk, new_seed = disk.with_name("disk.rebuild.qcow2"), seed.with_name("seed.rebuild.iso")
    revert = Reverter()
    try:
        base = rec.images.ensure(want.image_id, "file", want.image_format, want.image_sha256)
        rec.guest.share(base, 0o640)
        disks.delete_disk(new_disk)
        disks.create_overlay(
            base,
            want.image_format,
            new_disk,
            want.disk_gb,
            want.image_virtual_size or None,
            template=True,
        )
        revert.add("new disk", lambda: disks.delete_disk(new_disk))
        rec.guest.own(new_disk, 0o600)
        write_seed(rec.seed_data(want), new_seed)  # a new instance-id: see seed_data
        revert.add("new seed", lambda: new_seed.unlink(missing_ok=True))
        rec.guest.share(new_seed, 0o640)
        rec.spec(want, state)  # the new image's kernel and initrd cached before the stop
        rec.hypervisor.destroy(want.id)
    except Exception:
        revert.fail()
        raise
    revert.success()
    new_disk.replace(disk)
    new_seed.replace(seed)
    state.rebuild_gen = want.rebuild_gen
    state.running_expected = False
    layout.save_state(want.id, state)
    if want.desired_state == "running":
        rec._start(want, state)


def resize(rec: InstanceReconciler, want: DesiredInstance, state: LocalState) -> None:
    """Cold: stop (ACPI, then hard), grow the disk, start with the new vCPUs and RAM."""
    if _running(rec, want.id):
        state.running_expected = False
        rec.layout.save_state(want.id, state)
        rec.hypervisor.power_off(want.id, timeout=10.0)
    disks.resize_disk(rec.layout.disk(want.id), want.disk_gb)
    state.resize_gen = want.resize_gen
    rec.layout.save_state(want.id, state)
    if want.desired_state == "running":
        rec._start(want, state)


def snapshot(rec: InstanceReconciler, want: DesiredInstance, image_id: str, upload: Upload) -> None:
    """Flatten the disk chain (overlay + cached image) into one qcow2 while the guest is
    paused (its disks flushed), resume it, then upload the copy."""
    inst_dir = rec.layout.instance_dir(want.id)
    out = inst_dir / f".snapshot-{image_id}.qcow2"
    out.unlink(missing_ok=True)
    try:
        with rec.hypervisor.paused(want.id):
            convert(rec.layout.disk(want.id), out)
        upload(image_id, out)
    finally:
        out.unlink(missing_ok=True)


def convert(disk: Path, out: Path) -> None:
    """`-U`: the running QEMU holds the image's write lock; it is paused and flushed."""
    argv = ["qemu-img", "convert", "-q", "-U", "-f", "qcow2", "-O", "qcow2"]
    run_limited([*argv, str(disk), str(out)], COPY_LIMITS)
