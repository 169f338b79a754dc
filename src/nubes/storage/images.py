"""Image import and inspection.

Uploaded images are hostile until proven otherwise. Before anything else touches them:
- the declared format must be qcow2 or raw, and the bytes must agree with it (we read the magic
  ourselves: letting qemu-img probe an untrusted file is how raw images turn into qcow2 with a
  backing file pointing at the host's disks);
- qcow2 headers must not name a backing file, an external data file or encryption (checked in the
  header first, so qemu-img never even opens such a file, then again in qemu-img's report);
- the virtual size must be within bounds;
- qemu-img itself runs under memory/CPU limits with a timeout (crafted images can make it
  allocate or loop).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import struct
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from nubes.errors import ImageRejected, InvalidInput
from nubes.storage.rootfs import Limits, flatten
from nubes.storage.tools import INSPECT_LIMITS, ToolError, run_limited

SUPPORTED_FORMATS = frozenset({"qcow2", "raw", "iso"})
# an installer CD: given to QEMU as raw bytes on a read-only CD-ROM, never as a disk
ISO_FORMAT = "iso"
ISO_BLOCK = 2048
ISO_PVD_OFFSET = 16 * ISO_BLOCK  # ISO 9660: the system area (16 blocks), then descriptors
STORED_FORMATS = SUPPORTED_FORMATS | {"rootfs"}  # rootfs: a container image (storage/rootfs.py)
HEAD_SIZE = 4096
CHUNK_SIZE = 1 << 20
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")

# (offset, magic, format) for every format qemu can probe from its header.
_MAGICS: tuple[tuple[int, bytes, str], ...] = (
    (0, b"QFI\xfb", "qcow2"),
    (0, b"QED\x00", "qed"),
    (0, b"KDMV", "vmdk"),
    (0, b"COWD", "vmdk"),
    (0, b"# Disk DescriptorFile", "vmdk"),
    (0, b"vhdxfile", "vhdx"),
    (0, b"conectix", "vpc"),
    (0x40, b"\x7f\x10\xda\xbe", "vdi"),
    (0, b"LUKS\xba\xbe", "luks"),
    (0, b"WithoutFreeSpace", "parallels"),
    (0, b"WithouFreSpacExt", "parallels"),
    (0, b"Bochs Virtual HD Image", "bochs"),
    (0, b"#!/bin/sh\n#V2.0 Format", "cloop"),
)

# qcow2 incompatible feature bits (docs/interop/qcow2.txt)
_QCOW2_CORRUPT = 1 << 1
_QCOW2_EXTERNAL_DATA = 1 << 2
_QCOW2_SNAPSHOT_MIN = 40  # bytes of a snapshot table entry without its id, name and extras
_QCOW2_MAX_SNAPSHOTS = 256  # cloud images have none; qemu allows 65536, each parsed by qemu-img


@dataclass(frozen=True)
class ImageInfo:
    format: str
    virtual_size: int
    actual_size: int


@dataclass(frozen=True)
class StoredImage:
    path: Path
    format: str
    sha256: str
    size: int  # bytes on disk
    virtual_size: int


def _reject(message: str) -> ImageRejected:
    return ImageRejected(message, field="file")


def sniff_format(head: bytes) -> str | None:
    """The image format the first bytes announce, or None when they look like raw data."""
    for offset, magic, fmt in _MAGICS:
        if head[offset : offset + len(magic)] == magic:
            return fmt
    if _vmdk_descriptor(head):
        return "vmdk"
    return None


def _vmdk_descriptor(head: bytes) -> bool:
    """qemu's vmdk_probe for text descriptors: comment and blank lines, then `version=N`. Such
    a file names its extents (any host file) and must never pass for raw data."""
    for line in head.split(b"\n"):
        if line.startswith(b"#") or not line.strip(b" \r"):
            continue
        return line.rstrip(b"\r") in (b"version=1", b"version=2", b"version=3")
    return False


def _check_qcow2_header(head: bytes, max_virtual_size: int) -> None:
    if len(head) < 72:
        raise _reject("the file is too short to be a qcow2 image")
    _magic, version, backing_offset, _bsize, cluster_bits, size, crypt = struct.unpack(
        ">4sIQIIQI", head[:36]
    )
    if version not in (2, 3):
        raise _reject(f"unsupported qcow2 version {version}")
    if not 9 <= cluster_bits <= 21:  # what qemu supports (512 B to 2 MiB clusters)
        raise _reject(f"invalid qcow2 cluster size 2^{cluster_bits}")
    if backing_offset != 0:
        raise _reject("the image has a backing file; upload a self-contained image")
    if crypt != 0:
        raise _reject("encrypted qcow2 images are not supported")
    if version >= 3 and len(head) >= 80:
        (incompatible,) = struct.unpack(">Q", head[72:80])
        if incompatible & _QCOW2_EXTERNAL_DATA:
            raise _reject("the image uses an external data file; upload a self-contained image")
        if incompatible & _QCOW2_CORRUPT:
            raise _reject("the qcow2 image is marked corrupt")
    _check_virtual_size(size, max_virtual_size)


def _check_virtual_size(size: int, max_virtual_size: int) -> None:
    if size <= 0:
        raise _reject("the image is empty (virtual size 0)")
    if size > max_virtual_size:
        raise _reject(f"virtual size {size} bytes exceeds the limit of {max_virtual_size} bytes")


def check_header(head: bytes, declared_format: str, max_virtual_size: int) -> None:
    """Reject a file whose first bytes contradict the declared format. Raises ImageRejected."""
    if declared_format not in SUPPORTED_FORMATS:
        raise _reject(
            f"unsupported disk format {declared_format!r}; use one of "
            + ", ".join(sorted(SUPPORTED_FORMATS))
        )
    found = sniff_format(head)
    if declared_format in ("raw", ISO_FORMAT) and found is not None:
        raise _reject(f"declared {declared_format}, but the file is a {found} image")
    if declared_format == "qcow2":
        if found is None:
            raise _reject("declared qcow2, but the file has no qcow2 header (is it raw?)")
        if found != "qcow2":
            raise _reject(f"declared qcow2, but the file is a {found} image")
        _check_qcow2_header(head, max_virtual_size)


def _check_qcow2_tables_fit(head: bytes, file_size: int) -> None:
    """The L1, refcount and snapshot tables the header announces lie inside the file. A small
    file announcing huge tables is a qemu-img bomb (it would allocate and walk them), not an
    image qemu-img wrote."""
    cluster_bits, size = struct.unpack(">I", head[20:24])[0], struct.unpack(">Q", head[24:32])[0]
    l1_size, l1_offset, rc_offset, rc_clusters, snapshots, snap_offset = struct.unpack(
        ">IQQIIQ", head[36:72]
    )
    cluster = 1 << cluster_bits
    entries_per_l2 = cluster // 8
    l1_needed = -(-size // (cluster * entries_per_l2))
    if l1_size > 2 * l1_needed + 64:  # qemu grows it 1.5x at a resize; this is far beyond
        raise _reject(f"the qcow2 image is crafted: {l1_size} L1 entries for {size} bytes")
    tables = (
        ("L1", l1_offset, l1_size * 8),
        ("refcount", rc_offset, rc_clusters * cluster),
        ("snapshot", snap_offset, snapshots * _QCOW2_SNAPSHOT_MIN),
    )
    for name, offset, length in tables:
        if length and (offset % cluster or offset + length > file_size):
            raise _reject(f"the qcow2 image is corrupt or crafted: its {name} table is not in it")
    if snapshots > _QCOW2_MAX_SNAPSHOTS:
        raise _reject(f"{snapshots} internal snapshots (at most {_QCOW2_MAX_SNAPSHOTS})")


def _read_head(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not _is_regular(fd):
            raise _reject("not a regular file")
        return os.read(fd, HEAD_SIZE)
    finally:
        os.close(fd)


def _is_regular(fd: int) -> bool:
    return stat.S_ISREG(os.fstat(fd).st_mode)


def qemu_img_info(path: Path, fmt: str) -> dict[str, Any]:
    """`qemu-img info` of a file in a named format, under limits. Raises ToolError."""
    # An absolute path can never be taken for a protocol ("nbd:", "json:") by qemu.
    out = run_limited(
        ["qemu-img", "info", "-f", fmt, "--output=json", str(path.resolve())], INSPECT_LIMITS
    )
    info = json.loads(out)
    if not isinstance(info, dict):
        raise ToolError("qemu-img info returned no object", returncode=0, stderr="")
    return info


def _check_report(info: dict[str, Any], declared_format: str, max_virtual_size: int) -> None:
    if info.get("format") != declared_format:
        raise _reject(f"declared {declared_format}, but qemu-img sees {info.get('format')}")
    for key in ("backing-filename", "full-backing-filename", "backing-filename-format"):
        if key in info:
            raise _reject("the image has a backing file; upload a self-contained image")
    specific = info.get("format-specific") or {}
    data = specific.get("data") or {}
    if "data-file" in data:
        raise _reject("the image uses an external data file; upload a self-contained image")
    if data.get("corrupt"):
        raise _reject("the qcow2 image is marked corrupt")
    if info.get("encrypted"):
        raise _reject("encrypted images are not supported")
    size = info.get("virtual-size")
    if not isinstance(size, int):
        raise _reject("qemu-img reported no virtual size")
    _check_virtual_size(size, max_virtual_size)


def _check_qcow2_tables(path: Path) -> None:
    """Walk the qcow2 metadata (`qemu-img check`): a broken table would fail guests' I/O later."""
    try:
        run_limited(["qemu-img", "check", "-q", "-f", "qcow2", str(path.resolve())], INSPECT_LIMITS)
    except ToolError as exc:
        if exc.returncode == 3:  # leaked clusters only: wasted space, harmless
            return
        if exc.returncode == 2:
            raise _reject("the qcow2 image is corrupt (qemu-img check)") from exc
        raise _reject(f"the image could not be inspected: {exc.message}") from exc


def _check_iso(path: Path, max_virtual_size: int) -> ImageInfo:
    """An ISO 9660 image: a primary volume descriptor where the standard puts it, a volume that
    fits in the file, whole 2 KiB blocks. QEMU reads it as raw bytes on a CD-ROM, so nothing
    in it is ever interpreted by the host; these checks only keep non-CDs out."""
    size = path.stat().st_size
    if size < ISO_PVD_OFFSET + ISO_BLOCK or size % ISO_BLOCK:
        raise _reject(f"not an ISO 9660 image: {size} bytes is not a whole number of 2 KiB blocks")
    _check_virtual_size(size, max_virtual_size)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        pvd = os.pread(fd, ISO_BLOCK, ISO_PVD_OFFSET)
    finally:
        os.close(fd)
    if pvd[:7] != b"\x01CD001\x01":
        raise _reject("not an ISO 9660 image: no primary volume descriptor at 32 KiB")
    (blocks,) = struct.unpack("<I", pvd[80:84])
    (block_size,) = struct.unpack("<H", pvd[128:130])
    if block_size not in (512, 1024, 2048) or blocks * block_size > size:
        raise _reject("the ISO 9660 image is truncated or crafted: its volume is not in it")
    return ImageInfo(format=ISO_FORMAT, virtual_size=size, actual_size=size)


def inspect_image(path: Path, declared_format: str, max_virtual_size: int) -> ImageInfo:
    """Check an untrusted image file. Raises ImageRejected with a message for the user."""
    head = _read_head(path)
    check_header(head, declared_format, max_virtual_size)
    if declared_format == ISO_FORMAT:
        return _check_iso(path, max_virtual_size)
    if declared_format == "qcow2":
        _check_qcow2_tables_fit(head, path.stat().st_size)
    try:
        info = qemu_img_info(path, declared_format)
    except ToolError as exc:
        raise _reject(f"the image could not be inspected: {exc.message}") from exc
    except ValueError as exc:  # bad JSON
        raise _reject("the image could not be inspected: unreadable qemu-img report") from exc
    _check_report(info, declared_format, max_virtual_size)
    if declared_format == "qcow2":
        _check_qcow2_tables(path)
    actual = info.get("actual-size")
    return ImageInfo(
        format=declared_format,
        virtual_size=int(info["virtual-size"]),
        actual_size=int(actual) if isinstance(actual, int) else path.stat().st_size,
    )


def default_max_bytes(max_virtual_size: int) -> int:
    """How big an image file may be: its data plus generous room for qcow2 metadata."""
    return max_virtual_size + max_virtual_size // 16 + (64 << 20)


def iter_file(src: Path, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Chunks of a regular file (symlinks and devices refused)."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidInput(f"cannot open {src}: {exc.strerror}", field="file") from exc
    with os.fdopen(fd, "rb") as f:
        if not _is_regular(f.fileno()):
            raise _reject(f"{src} is not a regular file")
        while chunk := f.read(chunk_size):
            yield chunk


class ImageStore:
    """Images of one host (or one API server), stored as `<root>/<image_id>.<format>`."""

    _PARTIAL_PREFIX = ".import-"

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, image_id: str, fmt: str) -> Path:
        if not _ID_RE.match(image_id):
            raise InvalidInput(f"invalid image id {image_id!r}", field="image_id")
        if fmt not in STORED_FORMATS:
            raise InvalidInput(f"unsupported disk format {fmt!r}", field="disk_format")
        return self.root / f"{image_id}.{fmt}"

    def find(self, image_id: str) -> Path | None:
        """The stored file of an image, whatever its format, or None."""
        for fmt in sorted(STORED_FORMATS):
            path = self.path_for(image_id, fmt)
            if path.exists():
                return path
        return None

    def import_file(
        self, image_id: str, src: Path, declared_format: str, max_virtual_size: int
    ) -> StoredImage:
        """Copy a local (operator-supplied) file into the store, checking it on the way."""
        return self.import_stream(image_id, iter_file(src), declared_format, max_virtual_size)

    def import_stream(
        self,
        image_id: str,
        chunks: Iterable[bytes],
        declared_format: str,
        max_virtual_size: int,
        max_bytes: int | None = None,
    ) -> StoredImage:
        """Store an image from byte chunks (upload body, URL download). Raises ImageRejected.

        Nothing is left behind on failure; on success the file appears atomically.
        """
        final = self.path_for(image_id, declared_format)
        limit = default_max_bytes(max_virtual_size) if max_bytes is None else max_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=self._PARTIAL_PREFIX, suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                digest, size = _copy_checked(chunks, out, declared_format, max_virtual_size, limit)
            info = inspect_image(tmp, declared_format, max_virtual_size)
            os.chmod(tmp, 0o644)  # QEMU may run as an unprivileged user and must read bases
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.root)
        self._remove_other_formats(image_id, declared_format)
        return StoredImage(final, declared_format, digest, size, info.virtual_size)

    def adopt(
        self, image_id: str, src: Path, declared_format: str, max_virtual_size: int, digest: str
    ) -> StoredImage:
        """Store a file already received beside the store (same filesystem) and hashed on the
        way in: checked as an import, then renamed into place, not copied. Raises
        ImageRejected; src is gone either way."""
        final = self.path_for(image_id, declared_format)
        try:
            size = src.stat().st_size
            check_header(_read_head(src), declared_format, max_virtual_size)
            if size > default_max_bytes(max_virtual_size):
                raise _reject(
                    f"the file is larger than {default_max_bytes(max_virtual_size)} bytes"
                )
            info = inspect_image(src, declared_format, max_virtual_size)
            fd = os.open(src, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(src, 0o644)  # QEMU may run as an unprivileged user and must read bases
            os.replace(src, final)
        finally:
            src.unlink(missing_ok=True)
        _fsync_dir(self.root)
        self._remove_other_formats(image_id, declared_format)
        return StoredImage(final, declared_format, digest, size, info.virtual_size)

    def import_archive(self, image_id: str, src: Path, fmt: str, limits: Limits) -> StoredImage:
        """Store a container image from an OCI/docker archive or a rootfs tar, flattened and
        checked (storage/rootfs.py). Raises ImageRejected; nothing is left behind on failure."""
        final = self.path_for(image_id, "rootfs")
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=self._PARTIAL_PREFIX, suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                flatten(src, fmt, out, limits)
                out.flush()
                os.fsync(out.fileno())
            digest = hashlib.sha256()
            for chunk in iter_file(tmp):
                digest.update(chunk)
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.root)
        size = final.stat().st_size
        return StoredImage(final, "rootfs", digest.hexdigest(), size, size)

    def delete(self, image_id: str) -> None:
        """Remove the image in any format. Idempotent."""
        for fmt in STORED_FORMATS:
            self.path_for(image_id, fmt).unlink(missing_ok=True)

    def cleanup_partial(self) -> int:
        """Remove temp files left by imports interrupted by a crash; returns how many."""
        count = 0
        for path in self.root.glob(f"{self._PARTIAL_PREFIX}*.part"):
            path.unlink(missing_ok=True)
            count += 1
        return count

    def _remove_other_formats(self, image_id: str, keep: str) -> None:
        for fmt in STORED_FORMATS - {keep}:
            self.path_for(image_id, fmt).unlink(missing_ok=True)


def _copy_checked(
    chunks: Iterable[bytes], out: BinaryIO, declared_format: str, max_virtual_size: int, limit: int
) -> tuple[str, int]:
    """Write chunks to out; hash them; reject early on a bad header or too many bytes."""
    digest = hashlib.sha256()
    size = 0
    head = b""
    head_checked = False
    for chunk in chunks:
        if not chunk:
            continue
        size += len(chunk)
        if size > limit:
            raise _reject(f"the file is larger than the limit of {limit} bytes")
        if not head_checked:
            head += chunk[: HEAD_SIZE - len(head)]
            if len(head) >= HEAD_SIZE:
                # fail fast, before downloading gigabytes of a wrong-format file
                check_header(head, declared_format, max_virtual_size)
                head_checked = True
        digest.update(chunk)
        out.write(chunk)
    out.flush()
    os.fsync(out.fileno())
    return digest.hexdigest(), size


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
