"""What a container instance needs on the host beyond what a VM does: its rootfs (unpacked
with its user namespace's uids), the NoCloud seed as files in that rootfs, and a network
namespace whose NICs are veths: the host end is named and plugged exactly like a VM's tap
(same bridge, anti-spoofing and security group code), the other end is configured here with
the port's MAC, address and routes."""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

from nubes.errors import DriverError
from nubes.network.netlink import Netlink
from nubes.network.ovs import tx_checksum_off
from nubes.schemas.agent import DesiredInstance
from nubes.storage import rootfs
from nubes.storage.seed import SeedData, render_meta_data, render_network_config, render_user_data

UID_FIRST = 1_000_000  # host uids below are the machine's own
UID_SLOTS = 16_000  # 65536 ids each: up to ~2^30


def uid_base(instance_id: str) -> int:
    """The host uid of root in this container: a slot of 65536 ids picked by its id, so two
    containers rarely share uids (and never with the host's users)."""
    slot = int(hashlib.sha256(instance_id.encode()).hexdigest()[:8], 16) % UID_SLOTS
    return UID_FIRST + slot * rootfs_id_range()


def rootfs_id_range() -> int:
    from nubes.hypervisor.runc.bundle import ID_RANGE

    return ID_RANGE


def peer_name(port_id: str) -> str:
    """The container's end of a port's veth while it waits in the host's namespace."""
    return "nc" + port_id.replace("-", "")[:11]


def unpack(stored: Path, bundle: Path, want: DesiredInstance) -> None:
    """rootfs/ and image.json in the bundle directory (the instance directory)."""
    os.chmod(bundle, 0o711)  # the container's root walks through it to its rootfs
    for parent in bundle.parents:  # and through the state directory above
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, (mode & 0o7777) | 0o111)
    rootfs.unpack(stored, bundle / "rootfs", uid_base(want.id), want.disk_gb << 30)
    with tarfile.open(stored, mode="r:") as tar:
        fh = tar.extractfile("image.json")
        if fh is None:
            raise DriverError("the stored container image has no image.json")
        (bundle / "image.json").write_bytes(fh.read())


def write_seed(bundle: Path, data: SeedData, uid: int) -> None:
    """meta-data, user-data and network-config in the rootfs's /etc/nubes/seed, for the
    image's init to read (the tiny one does; cloud-init's NoCloud reads a seedfrom path). No
    host mount: the files are the container's. Written before its first start, through no
    symlink the image may hold."""
    path = bundle / "rootfs"
    for part in ("etc", "nubes", "seed"):
        path = path / part
        if path.is_symlink():
            raise DriverError(f"/{path.relative_to(bundle / 'rootfs')} is a symlink in the image")
        if not path.exists():
            path.mkdir(mode=0o755)
            os.lchown(path, uid, uid)
    files = {
        "meta-data": render_meta_data(data),
        "user-data": render_user_data(data),
        "network-config": render_network_config(data),
    }
    for name, text in files.items():
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path / name, flags, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.lchown(path / name, uid, uid)


def link_exists(name: str) -> bool:
    with Netlink() as nl:
        return nl.get_link(name) is not None


def make_veth(tap: str, peer: str, mtu: int, offloads: bool = True) -> None:
    """The veth of one port, both ends here: `tap` is plugged by the network driver like a
    VM's tap; runc's hook moves `peer` into the container as it starts (bundle.py). A stopped
    container's namespace is gone and its veth with it: each start makes it again."""
    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        with Netlink() as nl:
            nl.ensure_veth(tap, peer, fd, mtu)
    finally:
        os.close(fd)
    if not offloads:  # OVS's userspace datapath passes frames on as read (see guest_offloads)
        tx_checksum_off(peer)
