"""Named network namespaces (the `ip netns` kind, under /run/netns) and a way to step into one.

`inside(name)` moves only the calling thread: the kernel keeps the namespace per thread, and
subprocesses started from that thread inherit it. It checks the switch really happened before
yielding, so code under it never acts on the root namespace by mistake.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
_libc = ctypes.CDLL(None, use_errno=True)


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid network namespace name {name!r}")
    return name


def exists(name: str) -> bool:
    return (NETNS_DIR / check_name(name)).exists()


def list_names(prefix: str = "") -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def create(name: str) -> bool:
    """Create the namespace if missing, with lo up. True if it was created."""
    if exists(name):
        return False
    _ip("netns", "add", name)
    _ip("-n", name, "link", "set", "lo", "up")
    return True


def delete(name: str) -> None:
    """Delete the namespace if present. Its processes must be gone first, or it lives on."""
    if exists(name):
        _ip("netns", "delete", name)


def pids(name: str) -> list[int]:
    """Processes living in the namespace (whatever started them)."""
    if not exists(name):
        return []
    out = subprocess.run(
        ["ip", "netns", "pids", check_name(name)], capture_output=True, text=True, check=False
    ).stdout
    return sorted(int(p) for p in out.split() if p.isdigit())


def _ns_inode(path: str | Path) -> int:
    return os.stat(path).st_ino


def current_inode() -> int:
    """Inode of the calling thread's network namespace."""
    return _ns_inode("/proc/thread-self/ns/net")


def root_inode() -> int:
    return _ns_inode("/proc/1/ns/net")


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def inside(name: str) -> Iterator[None]:
    """Run the body with the calling thread in namespace `name`; always switch back."""
    target = NETNS_DIR / check_name(name)
    if not target.exists():
        raise FileNotFoundError(errno.ENOENT, "no such network namespace", name)
    orig_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target_fd = os.open(target, os.O_RDONLY)
    try:
        _setns(target_fd)
        try:
            if current_inode() != os.fstat(target_fd).st_ino:
                raise RuntimeError(f"failed to enter network namespace {name}")
            yield
        finally:
            _setns(orig_fd)
    finally:
        os.close(target_fd)
        os.close(orig_fd)


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def attach_endpoint(
    host_ns: str,
    bridge: str | None,
    endpoint_ns: str,
    host_ifname: str,
    cidr: str | None = None,
    mac: str | None = None,
    mtu: int = 1500,
) -> None:
    """A stand-in guest NIC: namespace endpoint_ns whose eth0 is a veth plugged into `bridge`
    of namespace host_ns (as `host_ifname`; no bridge: left for the caller to plug, e.g. into
    OVS). Delete endpoint_ns to remove it all."""
    create(endpoint_ns)
    _ip(
        "-n", check_name(host_ns), "link", "add", host_ifname, "mtu", str(mtu),
        "type", "veth", "peer", "name", "eth0", "netns", check_name(endpoint_ns),
    )  # fmt: skip
    if bridge is not None:
        _ip("-n", host_ns, "link", "set", host_ifname, "master", bridge)
    _ip("-n", host_ns, "link", "set", host_ifname, "up")
    if mac:
        _ip("-n", endpoint_ns, "link", "set", "eth0", "address", mac)
    _ip("-n", endpoint_ns, "link", "set", "eth0", "mtu", str(mtu), "up")
    if cidr:
        _ip("-n", endpoint_ns, "addr", "add", cidr, "dev", "eth0")
