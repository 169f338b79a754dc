"""Moving a QEMU guest to another host that shares no disk, as libvirt does without shared
storage: the target starts with `-incoming defer` on a blank overlay of the same image and
exports that disk over NBD; the source mirrors its disk into the export (`drive-mirror`,
write-blocking, so the copy is in step once ready), then migrates memory with
`pause-before-switchover`, ends the mirror while paused (the target's disk is then exact) and
lets the switch-over go. Every step is read back from QEMU first, so an agent that restarts
part way resumes where QEMU is, and a guest is never started twice: the source QEMU ends
paused in `postmigrate` and is only removed once the API has moved the instance.

Cold: the target QEMU waits paused (`-S`, its vCPUs never run) with the same NBD export; the
source stops its guest and `qemu-img convert`s the whole chain into it.

Volumes travel on the same channel: the target makes a blank qcow2 of each, of the same size,
exports it beside the disk (export name = the volume's device id) and, live, plugs it on the
same hotplug port as the source's guest has it (the migration stream's device sections must
match); the source mirrors each (sync=full: nothing beneath) or, cold, converts each into its
export. The switch-over waits until every mirror is ready.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nubes.errors import DriverError
from nubes.hypervisor.base import InstanceSpec, volume_device
from nubes.hypervisor.qemu.cmdline import RuntimePaths
from nubes.hypervisor.qemu.driver import QemuDriver
from nubes.hypervisor.qemu.monitor import Monitor, MonitorError

log = logging.getLogger("nubes.hypervisor")

JOB = "migrate-disk0"
JOB_PREFIX = "migrate-"  # + the export's name: disk0, or a volume's device id
EXPORT = "disk0"
# the target's devices share their disk with the NBD export until it is stopped
SHARE = ("-global", "virtio-blk-pci.share-rw=on")


@dataclass(frozen=True)
class Outcome:
    """The source's view of a migration, read from QEMU."""

    state: str  # none | active | completed | failed
    error: str = ""
    total_ms: int = 0
    downtime_ms: int = 0


@dataclass(frozen=True)
class VolumeDisk:
    """A volume that travels: its device id (= its export's name), file and hotplug port."""

    volume_id: str
    path: Path
    port: str = ""

    @property
    def device(self) -> str:
        return volume_device(self.volume_id)


def nbd_uri(host: str, port: int, export: str = EXPORT) -> str:
    return f"nbd:{host}:{port}:exportname={export}"


class QemuMigration:
    def __init__(self, driver: QemuDriver, step_timeout: float = 600.0) -> None:
        self.driver = driver
        self.step_timeout = step_timeout

    def _monitor(self, instance_id: str) -> Monitor:
        record = self.driver.registry.load(instance_id)
        if record is None:
            raise DriverError(f"instance {instance_id} is not on this host")
        return Monitor(RuntimePaths(record.spec.instance_dir).qmp_sock, timeout=10.0)

    # -- target ----------------------------------------------------------------------------

    def prepare_incoming(
        self,
        spec: InstanceSpec,
        listen: str,
        port: int,
        nbd_port: int,
        live: bool,
        volumes: tuple[VolumeDisk, ...] = (),
    ) -> None:
        """Start the target QEMU (waiting for memory, or paused for a cold copy) and export
        its disk and volumes (blank files, made by the caller) over NBD on listen:nbd_port.
        Raises DriverError; leaves no process on failure.
        """
        extra = ["-incoming", "defer"] if live else ["-S"]
        self.driver.spawn_with(spec, [*extra, *SHARE])
        try:
            mon = self._monitor(spec.id)
            for vol in volumes:
                node = "n" + vol.device  # the node name the driver's hot-add uses
                blockdev = {"driver": "file", "filename": str(vol.path)}
                mon.execute(
                    "blockdev-add", {"driver": "qcow2", "node-name": node, "file": blockdev}
                )
                if live:  # before migrate-incoming: the stream carries the device's state
                    device: dict[str, object] = {"driver": "virtio-blk-pci", "id": vol.device}
                    device |= {"drive": node}
                    device |= {"bus": vol.port, "serial": vol.volume_id[:20]}
                    mon.execute("device_add", device)
            if live:
                mon.execute("migrate-incoming", {"uri": f"tcp:{listen}:{port}"})
            addr = {"type": "inet", "data": {"host": listen, "port": str(nbd_port)}}
            mon.execute("nbd-server-start", {"addr": addr})
            mon.execute("nbd-server-add", {"device": "disk0", "writable": True, "name": EXPORT})
            for vol in volumes:
                export: dict[str, object] = {"device": "n" + vol.device, "writable": True}
                mon.execute("nbd-server-add", export | {"name": vol.device})
        except BaseException:
            self.driver.destroy(spec.id)
            raise

    def stop_export(self, instance_id: str) -> None:
        """The switch-over is behind us: nobody writes the disk but the guest. Idempotent."""
        with contextlib.suppress(MonitorError, DriverError):
            self._monitor(instance_id).execute("nbd-server-stop")

    def incoming_status(self, instance_id: str) -> str:
        """QEMU's run state of the target ("inmigrate", "running", "prelaunch"...); "" gone."""
        try:
            return self._monitor(instance_id).query_status()
        except DriverError:
            return ""

    # -- source ----------------------------------------------------------------------------

    def outcome(self, instance_id: str) -> Outcome:
        mon = self._monitor(instance_id)
        info = _dict(mon.execute("query-migrate"))
        status = str(info.get("status", "none"))
        if status == "completed" and "total-time" not in info:
            # a guest that came here by migration: that was its incoming one, long done
            return Outcome("none")
        if status == "completed":
            return Outcome(
                "completed",
                total_ms=int(info.get("total-time", 0)),
                downtime_ms=int(info.get("downtime", 0)),
            )
        if status in ("failed", "cancelled"):
            return Outcome("failed", error=str(info.get("error-desc", f"migration {status}")))
        return Outcome("none" if status == "none" else "active")

    def migrate_out(
        self,
        instance_id: str,
        peer: str,
        port: int,
        nbd_port: int,
        step: Callable[[str], None] = lambda name: None,
        volumes: tuple[str, ...] = (),
    ) -> Outcome:
        """Mirror the disk and the volumes (their device ids), migrate memory, switch over;
        resumes from whatever step QEMU is at. Returns the outcome (completed or failed);
        raises DriverError on a QMP failure (the caller then cancels). `step` is told each
        point reached (fault injection)."""
        mon = self._monitor(instance_id)
        # the root disk over the same image beneath; a volume has nothing beneath: all of it
        mirrors = [("disk0", EXPORT, "top")] + [("n" + d, d, "full") for d in volumes]
        if self.outcome(instance_id).state == "none":
            running = _job_ids(mon)
            for node, export, sync in mirrors:
                if JOB_PREFIX + export in running:
                    continue
                mon.execute(
                    "drive-mirror",
                    {
                        "device": node,
                        "job-id": JOB_PREFIX + export,
                        "target": nbd_uri(peer, nbd_port, export),
                        "sync": sync,
                        "mode": "existing",
                        "format": "raw",
                        "copy-mode": "write-blocking",
                    },
                )
            jobs = [JOB_PREFIX + export for _, export, _ in mirrors]
            # the switch-over only once every copy is in step
            self._until(lambda: all(_ready(mon, j) for j in jobs), "the disk mirrors to be ready")
            step("mirror-ready")
            caps = [{"capability": "pause-before-switchover", "state": True}]
            mon.execute("migrate-set-capabilities", {"capabilities": caps})
            mon.execute("migrate-set-parameters", {"downtime-limit": 50})
            mon.execute("migrate", {"uri": f"tcp:{peer}:{port}"})

        seen: list[str] = []

        def switch_point() -> bool:
            seen.append(str(_dict(mon.execute("query-migrate")).get("status", "")))
            return seen[-1] in ("pre-switchover", "completed", "failed", "cancelled")

        # the guest is paused from here to the switch-over: poll tightly, no extra calls
        self._until(switch_point, "the switch-over point", every=0.005)
        if seen[-1] == "pre-switchover":
            step("switch-over-point")
            for _, export, _ in mirrors:
                with contextlib.suppress(MonitorError):  # gone already after a restart: fine
                    mon.execute("block-job-cancel", {"device": JOB_PREFIX + export})  # in step
            self._until(lambda: not _ours(mon), "the disk mirrors to end", every=0.002)
            mon.execute("migrate-continue", {"state": "pre-switchover"})
            self._until(
                lambda: self.outcome(instance_id).state != "active", "the switch-over", every=0.01
            )
        return self.outcome(instance_id)

    def cancel_out(self, instance_id: str) -> None:
        """Give up before the switch-over: the guest runs on here. Idempotent."""
        with contextlib.suppress(DriverError):
            mon = self._monitor(instance_id)
            with contextlib.suppress(MonitorError):
                mon.execute("migrate_cancel")
            for job in _ours(mon):  # the disk's and every volume's mirror
                with contextlib.suppress(MonitorError):
                    mon.execute("block-job-cancel", {"device": job, "force": True})

    def copy_disk_out(self, disk: Path, peer: str, nbd_port: int, export: str = EXPORT) -> None:
        """Cold: the whole chain (or a volume: `export` its device id) into the target's
        export (the guest is stopped)."""
        argv = [
            "qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw", "-W",
            str(disk), f"nbd://{peer}:{nbd_port}/{export}",
        ]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=3600, check=False)  # noqa: S603
        if done.returncode != 0:
            raise DriverError(f"copying {export} failed: {done.stderr.strip()[-500:]}")

    def _until(self, check: Any, what: str, every: float = 0.05) -> None:
        deadline = time.monotonic() + self.step_timeout
        while not check():
            if time.monotonic() > deadline:
                raise DriverError(f"timed out waiting for {what}")
            time.sleep(every)


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _jobs(mon: Monitor) -> list[dict[str, Any]]:
    jobs = mon.execute("query-block-jobs")
    return [j for j in jobs if isinstance(j, dict)] if isinstance(jobs, list) else []


def _job_ids(mon: Monitor) -> set[str]:
    return {str(j.get("device")) for j in _jobs(mon)}


def _ours(mon: Monitor) -> list[str]:
    """The migration's mirror jobs still there."""
    return sorted(j for j in _job_ids(mon) if j.startswith(JOB_PREFIX))


def _ready(mon: Monitor, job: str) -> bool:
    jobs = [j for j in _jobs(mon) if j.get("device") == job]
    if not jobs:
        raise DriverError(f"the mirror {job} ended before it was ready")
    return bool(jobs[0].get("ready"))
