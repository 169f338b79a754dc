"""Converge this host's volumes: make their files, attach and detach them hot, remove them.

Level-triggered like the instances: every pass compares what the desired state wants attached
to each running guest with what QEMU has (QMP), so a guest restarted by a stop/start, a reboot
or a rebuild gets its volumes back on the next pass, and a restarted agent needs no journal.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from nubes.agent.guestuser import GuestUser
from nubes.agent.imagecache import ImageCache
from nubes.agent.layout import HostLayout
from nubes.hypervisor.base import HypervisorDriver, volume_device
from nubes.schemas.agent import DesiredInstance, DesiredVolume, ObservedVolume
from nubes.storage import disks
from nubes.storage.tools import COPY_LIMITS, run_limited

log = logging.getLogger("nubes.agent")
VOLUME_ID = re.compile(r"^[0-9a-f-]{36}$")
DETACH_TIMEOUT = 30.0  # the guest's time to release a disk (PCIe hot-unplug takes ~5 s)


@dataclass
class VolumeReconciler:
    layout: HostLayout
    hypervisor: HypervisorDriver
    images: ImageCache
    guest: GuestUser

    def converge(
        self, volumes: list[DesiredVolume], instances: list[DesiredInstance]
    ) -> list[ObservedVolume]:
        ports: dict[str, str] = {}  # device -> hotplug port, of every running guest here
        running = {
            i.id: self._attached(i.id, ports) for i in instances if i.desired_state != "deleted"
        }
        wanted: dict[str, set[str]] = {i: set() for i in running}
        for vol in volumes:
            if vol.instance_id in wanted and vol.status != "deleting":
                wanted[vol.instance_id].add(volume_device(vol.id))
        by_device = {volume_device(v.id): v for v in volumes}
        # detach first: a volume moving from one guest to another on this host leaves first
        faults: dict[str, str] = {}
        for inst_id, devices in running.items():
            for device in sorted(devices - wanted[inst_id]):
                gone = by_device.get(device)
                if gone is None:
                    continue  # not ours to say (a volume the API forgot): `nubes gc`
                try:
                    self.hypervisor.detach_volume(inst_id, gone.id, DETACH_TIMEOUT)
                    devices.discard(device)
                except Exception as exc:
                    log.warning("volume %s: detach from %s failed: %s", gone.id, inst_id, exc)
                    faults[gone.id] = f"detach from the guest failed: {exc}"
        return [self._one(vol, running, faults.get(vol.id, ""), ports) for vol in volumes]

    def _attached(self, instance_id: str, ports: dict[str, str]) -> set[str]:
        try:
            found = self.hypervisor.volume_ports(instance_id)
            ports.update(found)
            return set(found)
        except Exception as exc:
            log.warning("instance %s: cannot list its volumes: %s", instance_id, exc)
            return set()

    def _one(
        self, vol: DesiredVolume, running: dict[str, set[str]], fault: str, ports: dict[str, str]
    ) -> ObservedVolume:
        if not VOLUME_ID.match(vol.id):
            return ObservedVolume(id=vol.id[:64], status="error", fault="malformed volume id")
        path = self.layout.volume(vol.id)
        device = volume_device(vol.id)
        if vol.status == "deleting":
            if any(device in devices for devices in running.values()):
                return ObservedVolume(id=vol.id, status="in-use", fault=fault)
            disks.delete_disk(path)
            return ObservedVolume(id=vol.id, status="deleted")
        try:
            if not path.exists():
                self._make(vol)
            if vol.instance_id is None:
                attached = any(device in devices for devices in running.values())
                return ObservedVolume(
                    id=vol.id, status="in-use" if attached else "available", fault=fault
                )
            devices = running.get(vol.instance_id, set())
            if device not in devices and self._guest_runs(vol.instance_id):
                self.hypervisor.attach_volume(vol.instance_id, vol.id, path)
            # a stopped guest gets it when it starts again (the next pass after the start)
            port = ports.get(device, "")  # known from the pass after a hot-add on
            return ObservedVolume(id=vol.id, status="in-use", fault=fault, port=port)
        except Exception as exc:
            log.warning("volume %s failed: %s", vol.id, exc)
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            return ObservedVolume(id=vol.id, status="error", fault=message[:1000])

    def _guest_runs(self, instance_id: str) -> bool:
        return self.hypervisor.info(instance_id).state.value in ("running", "paused")

    def _make(self, vol: DesiredVolume) -> None:
        """Blank, or a full copy of the image (no backing file: a volume outlives the image
        cache's entries), grown to its size. Written beside, then linked in place."""
        path = self.layout.volume(vol.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.unlink(missing_ok=True)
        size = str(vol.size_gb * 1024**3)
        try:
            if vol.image_id:
                base = self.images.ensure(vol.image_id, "file", vol.image_format, vol.image_sha256)
                argv = ["qemu-img", "convert", "-q", "-f", vol.image_format, "-O", "qcow2"]
                run_limited([*argv, str(base), str(tmp)], COPY_LIMITS)
                run_limited(["qemu-img", "resize", "-q", "-f", "qcow2", str(tmp), size])
            else:
                run_limited(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp), size])
            self.guest.own(tmp, 0o600)
            tmp.rename(path)
        finally:
            tmp.unlink(missing_ok=True)

    def leftovers(self, volumes: list[DesiredVolume]) -> list[str]:
        wanted = {v.id for v in volumes}
        if not self.layout.volumes.exists():
            return []
        found = (p.name.removesuffix(".qcow2") for p in self.layout.volumes.glob("*.qcow2"))
        return [f"volume {v}" for v in sorted(found) if v not in wanted]
