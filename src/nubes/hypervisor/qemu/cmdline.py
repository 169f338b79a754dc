"""Pure QEMU argv builder: InstanceSpec in, argv list out. No I/O, so it is golden-tested.

Choices that are not obvious:
- No `-no-shutdown`: a guest poweroff must end the QEMU process, so the host observes SHUTOFF
  from the process being gone, with no QMP polling needed and nothing left holding the disk.
- QMP via `-chardev socket` + `-mon`, not `-qmp unix:...`: one option syntax for every socket,
  and paths go through the QemuOpts escaping below.
- No `-daemonize`: QEMU 7.2 installs the `-sandbox` filter before its daemonize fork, so
  `spawn=deny` kills it there (SIGSYS). The driver starts QEMU as a child in its own session
  instead, with stderr on qemu.log, and waits for QMP to answer; `-pidfile` is kept so a
  restarted agent finds the process again.
- Disk cache=writeback: survives a QEMU crash (the host page cache keeps it) and works on
  every filesystem; cache=none needs O_DIRECT, which tmpfs and some overlays refuse.
- VNC on a UNIX socket (0600: the driver starts QEMU with umask 077) with password=on: nothing
  listens on TCP; the driver sets the per-instance password over QMP after start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from nubes.hypervisor.base import InstanceSpec, NicSpec

# Ids end up in file names, `-name guest=` and QemuOpts values: keep them boring.
INSTANCE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
TAP_RE = re.compile(r"^[A-Za-z0-9_-]{1,15}$")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")

SANDBOX = "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"


# UNIX socket paths must stay under 108 bytes, and state directories can be deep: sockets
# live in a short per-instance directory instead (instance ids are unique across hosts).
SOCKET_ROOT = Path("/run/nubes")


@dataclass(frozen=True)
class RuntimePaths:
    """Where one instance's runtime files live: spec.instance_dir, sockets under SOCKET_ROOT."""

    instance_dir: Path
    socket_root: Path = SOCKET_ROOT

    @property
    def socket_dir(self) -> Path:
        return self.socket_root / self.instance_dir.name

    @property
    def pidfile(self) -> Path:
        return self.instance_dir / "qemu.pid"

    @property
    def qmp_sock(self) -> Path:
        return self.socket_dir / "qmp.sock"

    @property
    def serial_sock(self) -> Path:
        return self.socket_dir / "serial.sock"

    @property
    def vnc_sock(self) -> Path:
        return self.socket_dir / "vnc.sock"

    @property
    def console_log(self) -> Path:
        return self.instance_dir / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.instance_dir / "qemu.log"

    def ephemeral(self) -> tuple[Path, ...]:
        """Files that mean nothing once QEMU is gone (logs are kept)."""
        return (self.pidfile, self.qmp_sock, self.serial_sock, self.vnc_sock)


def guest_name_arg(instance_id: str) -> str:
    """The `-name` value; the driver also looks for it in /proc/<pid>/cmdline."""
    return f"guest={instance_id},debug-threads=on"


_GUEST_NAME = re.compile(r"guest=([A-Za-z0-9-]+),debug-threads=on")


def guest_id(argv: list[str]) -> str | None:
    """The instance id a QEMU command line runs (see guest_name_arg), or None."""
    for arg, value in zip(argv, argv[1:], strict=False):
        if arg == "-name" and (m := _GUEST_NAME.fullmatch(value)):
            return m.group(1)
    return None


def _esc(value: object) -> str:
    """Escape a QemuOpts value: a comma is written as two commas."""
    return str(value).replace(",", ",,")


def validate(spec: InstanceSpec, accel: str) -> None:
    """Raise ValueError on a spec that would make an unsafe or broken command line."""
    if not INSTANCE_ID_RE.match(spec.id):
        raise ValueError(f"invalid instance id {spec.id!r}")
    if accel not in ("kvm", "tcg"):
        raise ValueError(f"unknown accelerator {accel!r}")
    if spec.vcpus < 1 or spec.ram_mb < 16:
        raise ValueError("vcpus must be >= 1 and ram_mb >= 16")
    for nic in spec.nics:
        if not TAP_RE.match(nic.tap):
            raise ValueError(f"invalid tap name {nic.tap!r}")
        if not MAC_RE.match(nic.mac):
            raise ValueError(f"invalid MAC {nic.mac!r} (want lower-case aa:bb:cc:dd:ee:ff)")
        if not 68 <= nic.mtu <= 65535:
            raise ValueError(f"invalid MTU {nic.mtu}")
    if spec.run_as and not USER_RE.match(spec.run_as):
        raise ValueError(f"invalid user name {spec.run_as!r}")
    if spec.boot.initrd and not spec.boot.kernel:
        raise ValueError("an initrd needs a kernel")


def _machine(spec: InstanceSpec, accel: str, paths: RuntimePaths) -> list[str]:
    return [
        "-name", guest_name_arg(spec.id),
        "-machine", f"q35,accel={accel}",
        "-cpu", "host" if accel == "kvm" else "max",
        "-smp", str(spec.vcpus),
        "-m", str(spec.ram_mb),
        "-nodefaults", "-no-user-config", "-display", "none",
        "-msg", "timestamp=on",
        "-pidfile", str(paths.pidfile),
    ]  # fmt: skip


def _control(paths: RuntimePaths) -> list[str]:
    serial = (
        f"socket,id=serial0,path={_esc(paths.serial_sock)},server=on,wait=off,"
        f"logfile={_esc(paths.console_log)},logappend=on"
    )
    return [
        "-chardev", f"socket,id=qmp,path={_esc(paths.qmp_sock)},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-chardev", serial,
        "-serial", "chardev:serial0",
        "-vnc", f"unix:{_esc(paths.vnc_sock)},password=on",
        # a display for VNC to show (-nodefaults removed the default one)
        "-device", "VGA",
    ]  # fmt: skip


def _disks(spec: InstanceSpec) -> list[str]:
    argv = [
        "-drive",
        f"file={_esc(spec.disk)},format=qcow2,if=none,id=disk0,"
        "cache=writeback,discard=unmap",
        # bootindex only matters for firmware boot; harmless with -kernel.
        "-device", "virtio-blk-pci,drive=disk0,id=virtio-disk0,bootindex=1",
    ]  # fmt: skip
    if spec.cdrom is not None:
        # An installer CD on the q35's AHCI, booted before the disk (bootindex 0, then 1);
        # raw bytes, read-only: nothing probes or writes it. `eject` removes it by its id.
        # With -kernel, QEMU's own boot ROM holds bootindex 0: the CD is then only a drive.
        first = ",bootindex=0" if spec.boot.kernel is None else ""
        argv += [
            "-drive", f"file={_esc(spec.cdrom)},format=raw,if=none,id=cd0,media=cdrom,readonly=on",
            "-device", f"ide-cd,drive=cd0,id={CDROM_DEVICE}{first}",
        ]  # fmt: skip
    if spec.seed is not None:
        # The guest finds its NoCloud seed as a read-only virtio disk labelled cidata.
        argv += ["-drive", f"if=virtio,format=raw,readonly=on,file={_esc(spec.seed)}"]
    return argv


CDROM_DEVICE = "cdrom0"

# the guest's tx offloads, off: csum (and the segmentation offloads that need it)
NO_OFFLOADS = ",csum=off,gso=off,host_tso4=off,host_tso6=off,host_ufo=off"


def _nic(index: int, nic: NicSpec) -> list[str]:
    extra = "" if nic.offloads else NO_OFFLOADS
    return [
        "-netdev", f"tap,id=net{index},ifname={nic.tap},script=no,downscript=no",
        "-device",
        f"virtio-net-pci,netdev=net{index},id=nic{index},mac={nic.mac},host_mtu={nic.mtu}{extra}",
    ]  # fmt: skip


def _boot(spec: InstanceSpec) -> list[str]:
    if spec.boot.kernel is None:
        return []  # firmware boots the disk (bootindex=1)
    # -kernel/-initrd/-append are taken verbatim, not QemuOpts: no escaping.
    argv = ["-kernel", str(spec.boot.kernel)]
    if spec.boot.initrd is not None:
        argv += ["-initrd", str(spec.boot.initrd)]
    if spec.boot.cmdline:
        argv += ["-append", spec.boot.cmdline]
    return argv


HOTPLUG_PORTS = 4  # volumes a guest can have at once


def hotplug_ports() -> list[str]:
    """Empty PCIe root ports for volumes to be hot-added to (q35's root bus takes no hotplug).
    Last on the command line: the devices before them keep their PCI addresses."""
    argv = []
    for i in range(HOTPLUG_PORTS):
        argv += ["-device", f"pcie-root-port,id=hp{i},bus=pcie.0,chassis={i + 1}"]
    return argv


def build_argv(spec: InstanceSpec, accel: str, qemu_binary: str) -> list[str]:
    """The full QEMU command line for spec. Raises ValueError on an invalid spec."""
    validate(spec, accel)
    paths = RuntimePaths(spec.instance_dir)
    argv = [qemu_binary]
    argv += _machine(spec, accel, paths)
    argv += _control(paths)
    argv += _disks(spec)
    for index, nic in enumerate(spec.nics):
        argv += _nic(index, nic)
    argv += ["-device", "virtio-rng-pci"]  # guest entropy (sshd host keys at first boot)
    argv += hotplug_ports()
    argv += _boot(spec)
    if spec.cdrom is not None and spec.cdrom_once:
        # the installer's reboot ends QEMU like a poweroff: the API then ejects the CD and
        # starts the server again, from its disk
        argv += ["-no-reboot"]
    if spec.run_as:
        # elevateprivileges must stay "allow": -runas calls setuid after the filter is
        # installed, and "deny" kills QEMU with "Bad system call".
        argv += ["-runas", spec.run_as, "-sandbox", SANDBOX]
    return argv
