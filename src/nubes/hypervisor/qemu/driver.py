"""QemuDriver: one QEMU process per instance, found again through pidfiles.

The agent may restart at any time; guests must not notice. So the driver keeps no state that
matters in memory: every call re-reads the registry (runtime_root/<id>.json), the pidfile and
/proc, and asks QMP for the run state. A new driver object adopts running guests as they are.

Stopping escalates: QMP `quit` (clean exit, flushes the disk), SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from nubes.errors import DriverError
from nubes.hypervisor.base import (
    Capabilities,
    HostResources,
    HypervisorDriver,
    HypervisorEvent,
    InstanceInfo,
    InstanceSpec,
    PowerState,
    volume_device,
)
from nubes.hypervisor.qemu import process
from nubes.hypervisor.qemu.accel import Accel, host_accel
from nubes.hypervisor.qemu.cmdline import CDROM_DEVICE, HOTPLUG_PORTS, RuntimePaths, build_argv
from nubes.hypervisor.qemu.monitor import Monitor, MonitorError
from nubes.hypervisor.qemu.registry import Record, Registry

log = logging.getLogger("nubes.hypervisor")

# QMP run states (qapi RunState) -> power state. Anything unlisted reads as paused: the
# process is alive but the vCPUs are not running.
_RUN_STATES = {
    "running": PowerState.RUNNING,
    "shutdown": PowerState.SHUTOFF,  # transient: without -no-shutdown QEMU is exiting
    "internal-error": PowerState.CRASHED,
    "guest-panicked": PowerState.CRASHED,
}


class QemuDriver(HypervisorDriver):
    def __init__(
        self,
        runtime_root: Path,
        qemu_binary: str = "qemu-system-x86_64",
        *,
        accel: Accel | None = None,
        soft_reboot_timeout: float = 60.0,
        start_timeout: float = 60.0,
    ) -> None:
        """runtime_root holds the per-instance registry files; each instance's pidfile,
        sockets and logs live in its own spec.instance_dir."""
        self.runtime_root = Path(runtime_root)
        self.qemu_binary = qemu_binary
        self.accel = accel or host_accel()
        self.soft_reboot_timeout = soft_reboot_timeout
        self.start_timeout = start_timeout
        self.registry = Registry(self.runtime_root)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._last_states: dict[str, PowerState] = {}
        # QEMUs this object started: polled so they never linger as zombies, and so their
        # exit status can explain a death. Guests adopted after a restart are not children.
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._exit_codes: dict[str, int] = {}
        self._children_guard = threading.Lock()
        self._events_guard = threading.Lock()

    # -- host ---------------------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        return Capabilities(accel=self.accel.name, accel_note=self.accel.note)

    def host_resources(self) -> HostResources:
        ram_kb = 0
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_kb = int(line.split()[1])
                break
        disk = shutil.disk_usage(self.runtime_root)
        return HostResources(
            vcpus=os.cpu_count() or 1, ram_mb=ram_kb // 1024, disk_gb=disk.total // 2**30
        )

    # -- observe ------------------------------------------------------------------------------

    def list_instances(self) -> list[InstanceInfo]:
        infos = []
        for instance_id in self.registry.ids():
            record = self.registry.load(instance_id)
            if record is not None:
                infos.append(self._observe(record))
        return infos

    def info(self, instance_id: str) -> InstanceInfo:
        """Never raises for an unknown id: it reads as NOSTATE."""
        record = self._load(instance_id)
        if record is None:
            return InstanceInfo(instance_id, PowerState.NOSTATE, reason="not on this host")
        return self._observe(record)

    def events(self) -> Iterator[HypervisorEvent]:
        """State changes since the last call, found by polling; the first call reports every
        instance (what a restarted agent needs). A destroyed instance reports NOSTATE."""
        with self._events_guard:
            current = {i.id: i for i in self.list_instances()}
            events = [
                HypervisorEvent(i.id, i.state, i.reason)
                for i in current.values()
                if self._last_states.get(i.id) != i.state
            ]
            events += [
                HypervisorEvent(gone, PowerState.NOSTATE, "no longer on this host")
                for gone in self._last_states.keys() - current.keys()
            ]
            self._last_states = {i.id: i.state for i in current.values()}
        return iter(events)

    # -- act ----------------------------------------------------------------------------------

    def spawn(self, spec: InstanceSpec) -> InstanceInfo:
        """Start the guest. Raises DriverError (also when it is already running); on failure
        no process, pidfile, socket or registry record is left (logs are kept)."""
        with self._lock(spec.id):
            record = self._load(spec.id)
            if record is not None and self._live_pid(record) is not None:
                raise DriverError(f"instance {spec.id} is already running")
            return self._start(spec)

    def spawn_with(self, spec: InstanceSpec, extra: list[str]) -> InstanceInfo:
        """spawn, with more arguments for this run only (an incoming migration's)."""
        with self._lock(spec.id):
            record = self._load(spec.id)
            if record is not None and self._live_pid(record) is not None:
                raise DriverError(f"instance {spec.id} is already running")
            return self._start(spec, extra)

    def power_on(self, spec: InstanceSpec) -> InstanceInfo:
        """Start the guest unless it already runs (then its info). Raises DriverError."""
        with self._lock(spec.id):
            record = self._load(spec.id)
            if record is not None and self._live_pid(record) is not None:
                return self._observe(record)
            return self._start(spec)

    def destroy(self, instance_id: str) -> None:
        """Stop QEMU now and forget the instance. Keeps console.log, qemu.log and the disk
        (the caller removes the instance directory). Idempotent. Raises DriverError only
        when the process survives SIGKILL."""
        with self._lock(instance_id):
            record = self._load(instance_id)
            if record is None:
                return
            pid = self._live_pid(record)
            if pid is not None:
                self._hard_stop(record.spec, pid)
            self._remove_runtime_files(record.spec)
            self.registry.remove(instance_id)

    def power_off(self, instance_id: str, timeout: float = 10.0) -> None:
        """ACPI power button, then a hard stop if the guest is still up after timeout.
        The instance stays known (SHUTOFF, "powered off"). Idempotent. Raises DriverError."""
        with self._lock(instance_id):
            record = self._load(instance_id)
            if record is None:
                return
            pid = self._live_pid(record)
            if pid is not None and not self._acpi_shutdown(record.spec, pid, timeout):
                log.info(
                    "instance %s ignored ACPI shutdown for %.0fs; stopping it", instance_id, timeout
                )
                self._hard_stop(record.spec, pid)
            self._remove_runtime_files(record.spec)
            record.pid, record.stopped = None, True
            self.registry.save(record)

    def reboot(self, instance_id: str, hard: bool = False) -> None:
        """hard: QMP system_reset (same QEMU process, like a reset button).

        soft (what Nova does too): the ACPI power button, and once the guest has shut down,
        a fresh QEMU from the recorded spec (new pid). A guest that ignores ACPI for
        soft_reboot_timeout gets a hard reset instead. Raises DriverError when not running.
        """
        with self._lock(instance_id):
            record = self._load(instance_id)
            pid = self._live_pid(record) if record is not None else None
            if record is None or pid is None:
                raise DriverError(f"instance {instance_id} is not running")
            monitor = self._monitor(record.spec)
            if hard:
                monitor.system_reset()
                return
            if self._acpi_shutdown(record.spec, pid, self.soft_reboot_timeout):
                self._remove_runtime_files(record.spec)
                self._start(record.spec)
                return
            log.info("instance %s ignored ACPI shutdown; resetting it", instance_id)
            monitor.system_reset()

    def console_socket(self, instance_id: str, kind: str) -> Path | None:
        record = self._load(instance_id)
        if record is None or kind not in ("serial", "vnc"):
            return None
        paths = RuntimePaths(record.spec.instance_dir)
        return paths.serial_sock if kind == "serial" else paths.vnc_sock

    def set_vnc_password(self, instance_id: str, password: str, expires_in: int) -> None:
        record = self._load(instance_id)
        if record is None or self._live_pid(record) is None:
            raise DriverError(f"instance {instance_id} is not running")
        monitor = self._monitor(record.spec)
        try:
            monitor.set_vnc_password(password)
            monitor.expire_password("vnc", f"+{expires_in}")
        except MonitorError as exc:
            raise DriverError(f"no VNC console now: {exc}") from exc

    def eject_cdrom(self, instance_id: str) -> None:
        with self._lock(instance_id):
            record = self._load(instance_id)
            if record is None or record.spec.cdrom is None:
                return
            if self._live_pid(record) is not None:
                try:
                    self._monitor(record.spec).eject(CDROM_DEVICE)
                except MonitorError as exc:
                    raise DriverError(f"cannot eject the CD: {exc}") from exc
            # a soft reboot starts a new QEMU from the record: without the CD from now on
            record.spec = dataclasses.replace(record.spec, cdrom=None, cdrom_once=False)
            self.registry.save(record)

    # -- volumes and snapshots ------------------------------------------------------------------

    def _running_monitor(self, instance_id: str) -> Monitor:
        record = self._load(instance_id)
        if record is None or self._live_pid(record) is None:
            raise DriverError(f"instance {instance_id} is not running")
        return self._monitor(record.spec)

    def attached_volumes(self, instance_id: str) -> set[str]:
        record = self._load(instance_id)
        if record is None or self._live_pid(record) is None:
            return set()
        return {d for d in _peripherals(self._monitor(record.spec)) if d.startswith("vol-")}

    def volume_ports(self, instance_id: str) -> dict[str, str]:
        record = self._load(instance_id)
        if record is None or self._live_pid(record) is None:
            return {}
        monitor = self._monitor(record.spec)
        devices = sorted(d for d in _peripherals(monitor) if d.startswith("vol-"))
        return {d: _port_of(monitor, d) for d in devices}

    def attach_volume(self, instance_id: str, volume_id: str, path: Path) -> None:
        """blockdev-add, then device_add on a free hotplug port; the node goes again if the
        device cannot be added."""
        with self._lock(instance_id):
            monitor = self._running_monitor(instance_id)
            device = volume_device(volume_id)
            present = _peripherals(monitor)
            if device in present:
                return
            used = set()
            for other in (d for d in present if d.startswith("vol-")):
                with contextlib.suppress(MonitorError):
                    used.add(_port_of(monitor, other))
            node = "n" + device
            with contextlib.suppress(MonitorError):  # a node left by an attach cut short
                monitor.command("blockdev-del", {"node-name": node})
            blockdev = {"driver": "file", "filename": str(path)}
            monitor.command(
                "blockdev-add", {"driver": "qcow2", "node-name": node, "file": blockdev}
            )
            error: MonitorError | None = None
            for port in (f"hp{i}" for i in range(HOTPLUG_PORTS) if f"hp{i}" not in used):
                args: dict[str, object] = {"driver": "virtio-blk-pci", "id": device}
                try:  # a port taken by a device we could not place is refused: the next one
                    args |= {"drive": node, "bus": port, "serial": volume_id[:20]}
                    monitor.command("device_add", args)
                    return
                except MonitorError as exc:
                    error = exc
            with contextlib.suppress(MonitorError):
                monitor.command("blockdev-del", {"node-name": node})
            raise DriverError(
                f"instance {instance_id}: no free hotplug port for volume {volume_id} "
                f"({HOTPLUG_PORTS} at most): {error or 'all taken'}"
            )

    def detach_volume(self, instance_id: str, volume_id: str, timeout: float = 30.0) -> None:
        """device_del asks the guest (PCIe hot-unplug); the device is gone once QEMU has sent
        DEVICE_DELETED, which the one-command QMP sessions see as its absence. Then the node."""
        with self._lock(instance_id):
            monitor = self._running_monitor(instance_id)
            device = volume_device(volume_id)
            if device in _peripherals(monitor):
                with contextlib.suppress(MonitorError):  # already asked: keep waiting
                    monitor.command("device_del", {"id": device})
                deadline = time.monotonic() + timeout
                while device in _peripherals(monitor):
                    if time.monotonic() > deadline:
                        raise DriverError(
                            f"the guest did not release volume {volume_id} within {timeout:.0f} s"
                        )
                    time.sleep(0.2)
            _del_node(monitor, "n" + device, timeout)

    @contextlib.contextmanager
    def paused(self, instance_id: str) -> Iterator[None]:
        """QMP stop (vm_stop drains and flushes every disk), then cont, whatever happens."""
        record = self._load(instance_id)
        if record is None or self._live_pid(record) is None:
            yield
            return
        monitor = self._monitor(record.spec)
        was_running = monitor.query_status() == "running"
        if was_running:
            monitor.command("stop")
        try:
            yield
        finally:
            if was_running:
                monitor.cont()

    # -- internals ----------------------------------------------------------------------------

    def _lock(self, instance_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(instance_id, threading.Lock())

    def _load(self, instance_id: str) -> Record | None:
        try:
            return self.registry.load(instance_id)
        except ValueError as exc:  # malformed id
            raise DriverError(str(exc)) from exc

    @staticmethod
    def _monitor(spec: InstanceSpec) -> Monitor:
        return Monitor(RuntimePaths(spec.instance_dir).qmp_sock)

    @staticmethod
    def _live_pid(record: Record) -> int | None:
        """The guest's pid if its QEMU is alive. The recorded pid backs up the pidfile."""
        paths = RuntimePaths(record.spec.instance_dir)
        for pid in (process.read_pidfile(paths.pidfile), record.pid):
            if pid is not None and process.is_guest_process(pid, record.spec.id):
                return pid
        return None

    def _observe(self, record: Record) -> InstanceInfo:
        self._reap()
        spec = record.spec
        pid = self._live_pid(record)
        if pid is not None:
            try:
                status = self._monitor(spec).query_status()
            except MonitorError as exc:
                if process.is_guest_process(pid, spec.id):
                    return InstanceInfo(spec.id, PowerState.NOSTATE, pid, f"QMP: {exc}")
                pid = None  # exited while we asked
            else:
                state = _RUN_STATES.get(status, PowerState.PAUSED)
                reason = "" if state is PowerState.RUNNING else f"QEMU run state: {status}"
                return InstanceInfo(spec.id, state, pid, reason)
        if record.stopped:
            return InstanceInfo(spec.id, PowerState.SHUTOFF, reason="powered off")
        reason = "QEMU process exited"
        note = _exit_note(self._exit_codes.get(spec.id))  # known if it was our child
        if note:
            reason += f" ({note})"
        last = process.tail(RuntimePaths(spec.instance_dir).qemu_log)
        return InstanceInfo(
            spec.id, PowerState.SHUTOFF, reason=f"{reason}: {last}" if last else reason
        )

    def _start(self, spec: InstanceSpec, extra: list[str] | None = None) -> InstanceInfo:
        """Launch with the instance lock held; undo everything on failure."""
        try:
            argv = build_argv(spec, self.accel.name, self.qemu_binary) + (extra or [])
        except ValueError as exc:
            raise DriverError(f"cannot start instance {spec.id}: {exc}") from exc
        spec.instance_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._remove_runtime_files(spec)  # stale sockets/pidfile of an earlier run
        self._reap()
        self._exit_codes.pop(spec.id, None)
        record = Record(spec=spec, argv=argv)
        self.registry.save(record)  # first, so a crash from here on leaves a trace
        try:
            record.pid = self._launch(spec, argv)
            self.registry.save(record)
            if spec.vnc_password:
                self._monitor(spec).set_vnc_password(spec.vnc_password)
        except BaseException:
            self._undo_start(record)
            raise
        log.info("instance %s started, pid %d", spec.id, record.pid)
        return InstanceInfo(spec.id, PowerState.RUNNING, record.pid)

    def _launch(self, spec: InstanceSpec, argv: list[str]) -> int:
        """Start QEMU as a child in its own session (a signal to the agent's process group
        never reaches guests) and wait until QMP answers. Raises DriverError."""
        paths = RuntimePaths(spec.instance_dir)
        paths.socket_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Truncated at each start, so its tail is about this run. umask 077: the sockets and
        # logs QEMU creates are owner-only.
        log_fd = os.open(
            paths.qemu_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600
        )
        try:
            child = subprocess.Popen(  # noqa: S603 (argv list, values validated by build_argv)
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log_fd,
                umask=0o077, start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            raise DriverError(f"cannot run QEMU binary {argv[0]}: {exc.strerror}") from exc
        finally:
            os.close(log_fd)
        with self._children_guard:
            self._children[spec.id] = child
        self._wait_ready(spec, child)
        if process.read_pidfile(paths.pidfile) != child.pid:
            raise DriverError(f"QEMU for instance {spec.id} wrote no valid pidfile")
        for sock in (paths.qmp_sock, paths.serial_sock, paths.vnc_sock):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(sock, 0o600)  # umask 077 made them 0700; a socket needs no x bit
        return child.pid

    def _wait_ready(self, spec: InstanceSpec, child: subprocess.Popen[bytes]) -> None:
        paths = RuntimePaths(spec.instance_dir)
        monitor = Monitor(paths.qmp_sock)
        deadline = time.monotonic() + self.start_timeout
        while True:
            returncode = child.poll()
            if returncode is not None:
                why = process.tail(paths.qemu_log) or _exit_note(returncode)
                raise DriverError(f"QEMU failed to start instance {spec.id}: {why}")
            if paths.qmp_sock.exists():
                try:
                    monitor.query_status()
                    return
                except MonitorError:
                    pass  # socket bound, main loop not serving yet
            if time.monotonic() > deadline:
                raise DriverError(
                    f"QEMU for instance {spec.id} not ready after {self.start_timeout}s"
                )
            time.sleep(0.05)

    def _reap(self) -> None:
        """Collect our exited QEMU children (no zombies) and remember how they ended."""
        with self._children_guard:
            for instance_id, child in list(self._children.items()):
                returncode = child.poll()
                if returncode is not None:
                    del self._children[instance_id]
                    self._exit_codes[instance_id] = returncode

    def _undo_start(self, record: Record) -> None:
        spec = record.spec
        with self._children_guard:
            child = self._children.pop(spec.id, None)
        pid = child.pid if child else process.read_pidfile(RuntimePaths(spec.instance_dir).pidfile)
        try:
            if pid is not None and process.is_guest_process(pid, spec.id):
                self._hard_stop(spec, pid)
        finally:
            if child is not None and child.poll() is None:
                child.kill()
            if child is not None:
                child.wait(timeout=10)
            self._remove_runtime_files(spec)
            self.registry.remove(spec.id)

    def _acpi_shutdown(self, spec: InstanceSpec, pid: int, timeout: float) -> bool:
        """Press the power button; True if QEMU exited within timeout."""
        try:
            self._monitor(spec).system_powerdown()
        except MonitorError as exc:
            log.info("instance %s: ACPI shutdown not sent: %s", spec.id, exc)
        return process.wait_gone(pid, spec.id, timeout)

    def _hard_stop(self, spec: InstanceSpec, pid: int) -> None:
        """QMP quit, then SIGTERM, then SIGKILL. Raises DriverError if it all fails."""
        try:
            self._monitor(spec).quit()
        except MonitorError as exc:
            log.info("instance %s: QMP quit failed (%s); signalling pid %d", spec.id, exc, pid)
        if process.wait_gone(pid, spec.id, 3.0):
            self._reap()
            return
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            process.signal_guest(pid, spec.id, sig)
            if process.wait_gone(pid, spec.id, wait):
                self._reap()
                return
        raise DriverError(f"QEMU pid {pid} of instance {spec.id} survived SIGKILL")

    @staticmethod
    def _remove_runtime_files(spec: InstanceSpec) -> None:
        paths = RuntimePaths(spec.instance_dir)
        for path in paths.ephemeral():
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            paths.socket_dir.rmdir()


def _peripherals(monitor: Monitor) -> set[str]:
    """The ids of the devices added by id (command line and hotplug)."""
    items = monitor.command("qom-list", {"path": "/machine/peripheral"})
    if not isinstance(items, list):
        raise MonitorError(f"unexpected qom-list reply: {items!r}")
    return {str(i["name"]) for i in items if str(i.get("type", "")).startswith("child<")}


def _del_node(monitor: Monitor, node: str, timeout: float) -> None:
    """blockdev-del, retried while the node is still in use: the device's removal lets go of
    it a moment after the device has left the tree. Until then QEMU holds the file's lock."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            monitor.command("blockdev-del", {"node-name": node})
            return
        except MonitorError as exc:
            nodes = monitor.command("query-named-block-nodes", {"flat": True})
            if not isinstance(nodes, list) or node not in {n.get("node-name") for n in nodes}:
                return  # never added, or gone
            if time.monotonic() > deadline:
                raise DriverError(f"block node {node} still in use: {exc}") from exc
            time.sleep(0.2)


def _port_of(monitor: Monitor, device: str) -> str:
    """The hotplug port a device sits on (its parent bus is named after the port)."""
    bus = monitor.command(
        "qom-get", {"path": f"/machine/peripheral/{device}", "property": "parent_bus"}
    )
    return str(bus).rsplit("/", 1)[-1]


def _exit_note(returncode: int | None) -> str:
    if returncode is None or returncode == 0:
        return ""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"
