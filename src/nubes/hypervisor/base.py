"""The hypervisor driver seam. The agent is the only caller; specs are frozen dataclasses."""

from __future__ import annotations

import abc
import contextlib
import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nubes.errors import DriverError


def volume_device(volume_id: str) -> str:
    """The guest device id (and, with an `n` in front, the block node) of a volume."""
    return "vol-" + volume_id.replace("-", "")[:24]


class PowerState(enum.StrEnum):
    RUNNING = "running"
    SHUTOFF = "shutoff"
    PAUSED = "paused"
    CRASHED = "crashed"
    NOSTATE = "nostate"


@dataclass(frozen=True)
class NicSpec:
    tap: str  # host device name, derived from the port id (<= 15 chars)
    mac: str
    mtu: int = 1500
    # False on a switch that forwards frames as read (OVS's userspace datapath): the guest
    # computes its own checksums and segments, or its TCP never arrives whole
    offloads: bool = True


@dataclass(frozen=True)
class BootSpec:
    """Direct kernel boot when kernel is set; otherwise the disk's own bootloader."""

    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""


@dataclass(frozen=True)
class InstanceSpec:
    id: str
    vcpus: int
    ram_mb: int
    disk: Path  # qcow2 overlay
    seed: Path | None  # NoCloud ISO
    instance_dir: Path  # pidfile, sockets, console log live here
    nics: tuple[NicSpec, ...] = ()
    boot: BootSpec = field(default_factory=BootSpec)
    vnc_password: str = ""
    run_as: str = ""  # unprivileged user for QEMU ("" = same user as the agent)
    cdrom: Path | None = None  # an installer ISO: booted first, before the disk
    # with cdrom: a guest reboot ends QEMU (-no-reboot), seen as the installer's end
    cdrom_once: bool = False
    # set for a container (hypervisor/runc): instance_dir is its bundle, disk is unused
    container: ContainerSpec | None = None


@dataclass(frozen=True)
class ContainerNic:
    """A veth end waiting in the host's namespace, moved into the container's as it starts."""

    peer: str  # its name here
    name: str  # its name there (eth0...)
    mac: str
    cidr: str
    gateway: str | None = None  # the default route (the first NIC's)


@dataclass(frozen=True)
class ContainerSpec:
    hostname: str
    uid_base: int  # host uid of root in the container (its user namespace)
    nics: tuple[ContainerNic, ...] = ()


@dataclass(frozen=True)
class InstanceInfo:
    id: str
    state: PowerState
    pid: int | None = None
    reason: str = ""  # why it is not running, when known


@dataclass(frozen=True)
class Capabilities:
    accel: str  # "kvm" or "tcg"
    accel_note: str = ""  # e.g. why KVM is not used


@dataclass(frozen=True)
class HostResources:
    vcpus: int
    ram_mb: int
    disk_gb: int


@dataclass(frozen=True)
class HypervisorEvent:
    instance_id: str
    state: PowerState
    reason: str = ""


class HypervisorDriver(abc.ABC):
    @abc.abstractmethod
    def capabilities(self) -> Capabilities: ...

    @abc.abstractmethod
    def host_resources(self) -> HostResources: ...

    @abc.abstractmethod
    def list_instances(self) -> list[InstanceInfo]:
        """Every instance this driver manages on the host, running or not."""

    @abc.abstractmethod
    def info(self, instance_id: str) -> InstanceInfo: ...

    @abc.abstractmethod
    def spawn(self, spec: InstanceSpec) -> InstanceInfo:
        """Start the guest. Raises DriverError; leaves no process behind on failure."""

    @abc.abstractmethod
    def destroy(self, instance_id: str) -> None:
        """Kill the guest and remove its runtime files (not its disk). Idempotent."""

    @abc.abstractmethod
    def power_on(self, spec: InstanceSpec) -> InstanceInfo: ...

    @abc.abstractmethod
    def power_off(self, instance_id: str, timeout: float = 10.0) -> None:
        """ACPI shutdown, then hard stop after timeout. Idempotent."""

    @abc.abstractmethod
    def reboot(self, instance_id: str, hard: bool = False) -> None: ...

    def exec_argv(self, instance_id: str, argv: list[str], tty: bool = False) -> list[str]:
        """The command line that runs argv inside the instance (tty: on a pseudo-terminal of
        its own). Raises DriverError."""
        raise DriverError("exec runs commands in containers only; use SSH or the console")

    def runtimes(self) -> tuple[str, ...]:
        """What the host runs instances with: qemu, and runc where it runs containers."""
        return ("qemu",)

    def events(self) -> Iterator[HypervisorEvent]:
        """Power-state changes seen since the last call (polling drivers may return nothing)."""
        return iter(())

    def console_socket(self, instance_id: str, kind: str) -> Path | None:
        """The UNIX socket of the instance's `serial` or `vnc` console; None: there is none."""
        return None

    def set_vnc_password(self, instance_id: str, password: str, expires_in: int) -> None:
        """A VNC password new connections may use for expires_in seconds. Raises DriverError."""
        raise DriverError("this hypervisor has no VNC console")

    def eject_cdrom(self, instance_id: str) -> None:
        """Take the CD out of a running guest's drive (the next boot finds the disk), and out
        of the spec a restart uses. Idempotent; nothing to do for a guest not running."""
        return None  # a driver without removable media has nothing to eject

    # -- volumes (hot) and snapshots: a driver without them refuses -------------------------
    def attached_volumes(self, instance_id: str) -> set[str]:
        """The devices (volume_device ids) attached to the running guest; empty if not."""
        return set()

    def volume_ports(self, instance_id: str) -> dict[str, str]:
        """attached_volumes, each with the hotplug port it is on ("" if the driver has none):
        a live migration's target must put each volume on the same one."""
        return {device: "" for device in self.attached_volumes(instance_id)}

    def attach_volume(self, instance_id: str, volume_id: str, path: Path) -> None:
        """Hot-add a qcow2 file to the running guest as a virtio disk. Raises DriverError."""
        raise DriverError("this hypervisor cannot attach volumes")

    def detach_volume(self, instance_id: str, volume_id: str, timeout: float = 30.0) -> None:
        """Ask the guest to release the disk and wait up to timeout for it. Raises
        DriverError (the disk stays attached) when it did not."""
        raise DriverError("this hypervisor cannot detach volumes")

    @contextlib.contextmanager
    def paused(self, instance_id: str) -> Iterator[None]:
        """The guest's vCPUs stopped and its disks flushed for the duration (a consistent
        point to copy them at); nothing for a guest that is not running."""
        yield
