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
from nubes.hypervisor.base import InstanceSpec
from nubes.hypervisor.qemu.cmdline import RuntimePaths
from nubes.hypervisor.qemu.driver import QemuDriver
from nubes.hypervisor.qemu.monitor import Monitor, MonitorError

log = logging.getLogger("nubes.hypervisor")

JOB = "migrate-disk0"
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


def nbd_uri(host: str, port: int) -> str:
    return f"nbd:{host}:{port}:exportname={EXPORT}"


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
        self, spec: InstanceSpec, listen: str, port: int, nbd_port: int, live: bool
    ) -> None:
        """Start the target QEMU (waiting for memory, or paused for a cold copy) and export
        its disk over NBD on listen:nbd_port. Raises DriverError; leaves no process on failure.
        """
        extra = ["-incoming", "defer"] if live else ["-S"]
        self.driver.spawn_with(spec, [*extra, *SHARE])
        try:
            mon = self._monitor(spec.id)
            if live:
                mon.execute("migrate-incoming", {"uri": f"tcp:{listen}:{port}"})
            addr = {"type": "inet", "data": {"host": listen, "port": str(nbd_port)}}
            mon.execute("nbd-server-start", {"addr": addr})
            mon.execute("nbd-server-add", {"device": "disk0", "writable": True, "name": EXPORT})
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
    ) -> Outcome:
        """Mirror the disk, migrate memory, switch over; resumes from whatever step QEMU is
        at. Returns the outcome (completed or failed); raises DriverError on a QMP failure
        (the caller then cancels). `step` is told each point reached (fault injection)."""
        mon = self._monitor(instance_id)
        if self.outcome(instance_id).state == "none":
            if not _job(mon):
                mon.execute(
                    "drive-mirror",
                    {
                        "device": "disk0",
                        "job-id": JOB,
                        "target": nbd_uri(peer, nbd_port),
                        "sync": "top",  # the target has the same image beneath
                        "mode": "existing",
                        "format": "raw",
                        "copy-mode": "write-blocking",
                    },
                )
            self._until(lambda: _ready(mon), "the disk mirror to be ready")
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
            with contextlib.suppress(MonitorError):  # gone already after a restart: fine
                mon.execute("block-job-cancel", {"device": JOB})  # ready: ends in step
            self._until(lambda: not _job(mon), "the disk mirror to end", every=0.002)
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
            with contextlib.suppress(MonitorError):
                mon.execute("block-job-cancel", {"device": JOB, "force": True})

    def copy_disk_out(self, disk: Path, peer: str, nbd_port: int) -> None:
        """Cold: the whole chain into the target's export (the guest is stopped)."""
        argv = [
            "qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw", "-W",
            str(disk), f"nbd://{peer}:{nbd_port}/{EXPORT}",
        ]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=3600, check=False)  # noqa: S603
        if done.returncode != 0:
            raise DriverError(f"copying the disk failed: {done.stderr.strip()[-500:]}")

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


def _job(mon: Monitor) -> bool:
    return any(j.get("device") == JOB for j in _jobs(mon))


def _ready(mon: Monitor) -> bool:
    jobs = [j for j in _jobs(mon) if j.get("device") == JOB]
    if not jobs:
        raise DriverError("the disk mirror ended before it was ready")
    return bool(jobs[0].get("ready"))
