"""In-memory HypervisorDriver for functional tests: same semantics as QemuDriver, no QEMU.

Thread-safe. Extras for tests: fail_spawn() injects a start failure, crash() simulates a guest
that exited on its own, and `calls` records what the agent asked for.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
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
from nubes.hypervisor.qemu.cmdline import validate


@dataclass
class _Guest:
    spec: InstanceSpec
    state: PowerState
    pid: int | None
    reason: str = ""
    boots: int = 1
    volumes: set[str] = field(default_factory=set)  # volume_device ids


class FakeHypervisorDriver(HypervisorDriver):
    def __init__(
        self,
        capabilities: Capabilities | None = None,
        resources: HostResources | None = None,
    ) -> None:
        self._caps = capabilities or Capabilities(accel="tcg", accel_note="fake driver")
        self._resources = resources or HostResources(vcpus=8, ram_mb=16384, disk_gb=200)
        self._guests: dict[str, _Guest] = {}
        self._failures: dict[str, str] = {}
        self._events: list[HypervisorEvent] = []
        self._pids = itertools.count(10_000)
        self._lock = threading.RLock()
        self.calls: list[tuple[str, str]] = []  # (method, instance id)

    # -- test controls --------------------------------------------------------------------

    def fail_spawn(self, instance_id: str, message: str = "injected spawn failure") -> None:
        """Make every spawn/power_on of instance_id raise DriverError until cleared.
        instance_id "*" makes every instance fail."""
        with self._lock:
            self._failures[instance_id] = message

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    def crash(self, instance_id: str, reason: str = "QEMU process exited") -> None:
        """Simulate QEMU exiting behind the driver's back (guest poweroff, crash)."""
        with self._lock:
            guest = self._get(instance_id)
            self._set(guest, PowerState.SHUTOFF, reason, pid=None)

    def spec(self, instance_id: str) -> InstanceSpec | None:
        with self._lock:
            guest = self._guests.get(instance_id)
            return guest.spec if guest else None

    def boots(self, instance_id: str) -> int:
        """How many times the guest has booted (spawn, power_on, reboots)."""
        with self._lock:
            return self._get(instance_id).boots

    # -- HypervisorDriver -----------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        return self._caps

    def host_resources(self) -> HostResources:
        return self._resources

    def list_instances(self) -> list[InstanceInfo]:
        with self._lock:
            return [self._info(g) for _, g in sorted(self._guests.items())]

    def info(self, instance_id: str) -> InstanceInfo:
        with self._lock:
            guest = self._guests.get(instance_id)
            if guest is None:
                return InstanceInfo(instance_id, PowerState.NOSTATE, reason="not on this host")
            return self._info(guest)

    def spawn(self, spec: InstanceSpec) -> InstanceInfo:
        with self._lock:
            self.calls.append(("spawn", spec.id))
            guest = self._guests.get(spec.id)
            if guest is not None and guest.state is not PowerState.SHUTOFF:
                raise DriverError(f"instance {spec.id} is already running")
            return self._start(spec)

    def power_on(self, spec: InstanceSpec) -> InstanceInfo:
        with self._lock:
            self.calls.append(("power_on", spec.id))
            guest = self._guests.get(spec.id)
            if guest is not None and guest.state is not PowerState.SHUTOFF:
                return self._info(guest)
            return self._start(spec)

    def destroy(self, instance_id: str) -> None:
        with self._lock:
            self.calls.append(("destroy", instance_id))
            if self._guests.pop(instance_id, None) is not None:
                self._events.append(
                    HypervisorEvent(instance_id, PowerState.NOSTATE, "no longer on this host")
                )

    def power_off(self, instance_id: str, timeout: float = 10.0) -> None:
        with self._lock:
            self.calls.append(("power_off", instance_id))
            guest = self._guests.get(instance_id)
            if guest is None:
                return
            if guest.state is PowerState.SHUTOFF:
                guest.reason = "powered off"  # state unchanged: no event, like QemuDriver
            else:
                self._set(guest, PowerState.SHUTOFF, "powered off", pid=None)

    def reboot(self, instance_id: str, hard: bool = False) -> None:
        with self._lock:
            self.calls.append(("reboot_hard" if hard else "reboot", instance_id))
            guest = self._guests.get(instance_id)
            if guest is None or guest.state is PowerState.SHUTOFF:
                raise DriverError(f"instance {instance_id} is not running")
            guest.boots += 1
            if guest.state is not PowerState.RUNNING:
                self._set(guest, PowerState.RUNNING, "", pid=guest.pid)

    def eject_cdrom(self, instance_id: str) -> None:
        with self._lock:
            self.calls.append(("eject", instance_id))
            guest = self._guests.get(instance_id)
            if guest is not None:
                guest.spec = dataclasses.replace(guest.spec, cdrom=None)

    def events(self) -> Iterator[HypervisorEvent]:
        with self._lock:
            events, self._events = self._events, []
        return iter(events)

    # -- internals ------------------------------------------------------------------------

    def attached_volumes(self, instance_id: str) -> set[str]:
        with self._lock:
            guest = self._guests.get(instance_id)
            running = guest is not None and guest.state is PowerState.RUNNING
            return set(guest.volumes) if guest is not None and running else set()

    def volume_ports(self, instance_id: str) -> dict[str, str]:
        return {d: f"hp{i}" for i, d in enumerate(sorted(self.attached_volumes(instance_id)))}

    def attach_volume(self, instance_id: str, volume_id: str, path: Path) -> None:
        with self._lock:
            self.calls.append(("attach_volume", instance_id))
            guest = self._guests.get(instance_id)
            if guest is None or guest.state is not PowerState.RUNNING:
                raise DriverError(f"instance {instance_id} is not running")
            if not path.exists():
                raise DriverError(f"volume file {path} is missing")
            guest.volumes.add(volume_device(volume_id))

    def detach_volume(self, instance_id: str, volume_id: str, timeout: float = 30.0) -> None:
        with self._lock:
            self.calls.append(("detach_volume", instance_id))
            guest = self._guests.get(instance_id)
            if guest is None or guest.state is not PowerState.RUNNING:
                raise DriverError(f"instance {instance_id} is not running")
            guest.volumes.discard(volume_device(volume_id))

    def _get(self, instance_id: str) -> _Guest:
        guest = self._guests.get(instance_id)
        if guest is None:
            raise DriverError(f"instance {instance_id} is not on this host")
        return guest

    @staticmethod
    def _info(guest: _Guest) -> InstanceInfo:
        return InstanceInfo(guest.spec.id, guest.state, guest.pid, guest.reason)

    def _set(self, guest: _Guest, state: PowerState, reason: str, pid: int | None) -> None:
        guest.state, guest.reason, guest.pid = state, reason, pid
        self._events.append(HypervisorEvent(guest.spec.id, state, reason))

    def _start(self, spec: InstanceSpec) -> InstanceInfo:
        try:
            validate(spec, "tcg")
        except ValueError as exc:
            raise DriverError(f"cannot start instance {spec.id}: {exc}") from exc
        failure = self._failures.get(spec.id) or self._failures.get("*")
        if failure is not None:
            self._guests.pop(spec.id, None)  # like QemuDriver: a failed start leaves nothing
            raise DriverError(f"QEMU failed to start instance {spec.id}: {failure}")
        previous = self._guests.get(spec.id)
        guest = _Guest(spec, PowerState.RUNNING, next(self._pids))
        guest.boots = previous.boots + 1 if previous else 1
        self._guests[spec.id] = guest
        self._events.append(HypervisorEvent(spec.id, PowerState.RUNNING))
        return self._info(guest)
