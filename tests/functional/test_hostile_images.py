"""The hostile-image set, uploaded through the API: each is refused with a 4xx naming the field,
nothing is stored, and no host file is ever opened (an inotify watch on the file they name)."""

from __future__ import annotations

import ctypes
import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from nubes.client import ApiError
from nubes.schemas import resources as s
from tests.cloud import Cloud

_IN_ACCESS, _IN_OPEN = 0x1, 0x20


class OpenWatch:
    """Counts every open and read of one file, by anyone (inotify)."""

    def __init__(self, path: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0
        assert libc.inotify_add_watch(self.fd, bytes(path), _IN_OPEN | _IN_ACCESS) >= 0

    def events(self) -> int:
        count = 0
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return count
            count += len(data) // 16  # struct inotify_event without a name: 16 bytes

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    c = Cloud(tmp_path, hosts=0)  # SQLite; image checks need no database variety
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[tuple[Path, OpenWatch]]:
    """A host file the hostile images point at, watched for opens."""
    path = tmp_path / "canary"
    path.write_bytes(b"host secret\n" * 4096)
    watch = OpenWatch(path)
    try:
        yield path, watch
    finally:
        watch.close()


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def renamed(path: Path, made_as: Path, target: Path) -> Path:
    """Point the file name stored in an image at target, without qemu-img ever touching target
    (made_as and target have names of the same length)."""
    assert len(str(made_as)) == len(str(target))
    path.write_bytes(path.read_bytes().replace(str(made_as).encode(), str(target).encode()))
    return path


def patch_qcow2(src: Path, dest: Path, **fields: int) -> Path:
    """A copy of a qcow2 image with header fields changed (offsets: docs/interop/qcow2.txt)."""
    offsets = {"l1_size": (36, ">I"), "nb_snapshots": (60, ">I"), "snapshots_offset": (64, ">Q")}
    data = bytearray(src.read_bytes())
    for name, value in fields.items():
        offset, fmt = offsets[name]
        data[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    dest.write_bytes(bytes(data))
    return dest


def hostile_set(tmp: Path, canary: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, declared format)"""
    decoy = canary.with_name("canarz")  # same length as the canary's path
    good = tmp / "good.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(good), "1G")
    backing = tmp / "backing.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", str(decoy), "-F", "raw", str(backing), "1G")
    data_file = tmp / "datafile.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={decoy}", str(data_file), "1G")
    descriptor = (
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        f'createType="monolithicFlat"\nRW 2048 FLAT "{canary}" 0\n'
    )
    vmdk = tmp / "extent.raw"
    vmdk.write_text(descriptor + "\0" * 4096)
    vmdk_commented = tmp / "extent2.raw"  # what qemu's probe also takes for a descriptor
    vmdk_commented.write_text("# nothing to see\n\n" + descriptor.split("\n", 1)[1] + "\0" * 4096)
    raw = tmp / "plain.raw"
    raw.write_bytes(b"\xeb\x63\x90" + b"\0" * (1 << 20))
    petabyte = tmp / "petabyte.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(petabyte), "1P")
    padded = tmp / "padded.qcow2"  # room for a long snapshot table: it lies in the file
    padded.write_bytes(good.read_bytes() + b"\0" * (4 << 20))
    return {
        "backing file naming a host file": (renamed(backing, decoy, canary), "qcow2"),
        "external data file naming a host file": (renamed(data_file, decoy, canary), "qcow2"),
        "VMDK descriptor naming a host file, declared raw": (vmdk, "raw"),
        "VMDK descriptor after comments, declared raw": (vmdk_commented, "raw"),
        "VMDK descriptor declared qcow2": (vmdk, "qcow2"),
        "raw declared qcow2": (raw, "qcow2"),
        "qcow2 declared raw": (good, "raw"),
        "1 PB virtual size": (petabyte, "qcow2"),
        "bomb: 4M-entry L1 table in a 196 KiB file": (
            patch_qcow2(good, tmp / "l1.qcow2", l1_size=(32 << 20) // 8 - 1),
            "qcow2",
        ),
        "bomb: 65535 snapshots in a small file": (
            patch_qcow2(good, tmp / "snap.qcow2", nb_snapshots=65535, snapshots_offset=1 << 16),
            "qcow2",
        ),
        "bomb: 60000 snapshots whose table fits": (
            patch_qcow2(padded, tmp / "snap2.qcow2", nb_snapshots=60000, snapshots_offset=1 << 18),
            "qcow2",
        ),
    }


def upload(cloud: Cloud, name: str, path: Path, fmt: str) -> s.Image:
    image = cloud.client.create_image(s.ImageCreate(name=name, disk_format=fmt))  # type: ignore[arg-type]
    return cloud.client.upload_image_part(image.id, "file", iter([path.read_bytes()]))


def test_hostile_images_are_refused_without_reading_host_files(
    cloud: Cloud, tmp_path: Path, canary: tuple[Path, OpenWatch]
) -> None:
    target, watch = canary
    made = hostile_set(tmp_path, target)
    assert watch.events() == 0, "building the set opened the canary"
    store = cloud.settings.images_dir
    for n, (what, (path, fmt)) in enumerate(made.items()):
        with pytest.raises(ApiError) as err:
            upload(cloud, f"hostile-{n}", path, fmt)
        assert 400 <= err.value.status < 500, (what, err.value.status, err.value.detail)
        assert err.value.field == "file", (what, err.value.detail)
        assert str(tmp_path) not in err.value.detail, (what, err.value.detail)
        assert cloud.client.image(f"hostile-{n}").status != "active", what
        print(f"{what}: {err.value.status} {err.value.detail}")
    assert watch.events() == 0, "a hostile image made something open the host file"
    leftovers = [p.name for p in store.iterdir() if not p.name.endswith((".kernel", ".initrd"))]
    assert leftovers == [], leftovers
    target.read_bytes()  # and the watch does see an open
    assert watch.events() > 0


def test_a_good_image_still_passes(cloud: Cloud, tmp_path: Path) -> None:
    good = tmp_path / "good.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(good), "1G")
    grown = tmp_path / "grown.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(grown), "1G")
    qemu_img("resize", "-q", "-f", "qcow2", str(grown), "300G")  # its L1 table grew
    for name, path in (("good", good), ("grown", grown)):
        assert upload(cloud, name, path, "qcow2").status == "active"
