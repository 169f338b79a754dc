"""Instance disks: qcow2 overlays on top of stored images, via qemu-img.

Bases come from the ImageStore, so they were inspected on import; we still name every format
(`-f`, `-F`) so qemu-img never probes, and run it under limits.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from nubes.errors import Conflict, DriverError, InvalidInput
from nubes.storage.images import ISO_FORMAT, SUPPORTED_FORMATS, qemu_img_info
from nubes.storage.tools import COPY_LIMITS, INSPECT_LIMITS, GiB, ToolError, run_limited

DISK_FORMATS = SUPPORTED_FORMATS - {ISO_FORMAT}  # an ISO is a CD, never a disk's base


@dataclass(frozen=True)
class DiskInfo:
    format: str
    virtual_size: int
    actual_size: int
    backing_file: Path | None
    backing_format: str | None


def _check_format(fmt: str) -> None:
    if fmt not in DISK_FORMATS:
        raise InvalidInput(f"unsupported disk format {fmt!r}", field="disk_format")


def disk_info(path: Path, fmt: str = "qcow2") -> DiskInfo:
    """What qemu-img says about one of our disks (overlays included). Raises DriverError."""
    _check_format(fmt)
    try:
        info = qemu_img_info(path, fmt)
    except ValueError as exc:
        raise DriverError(f"unreadable qemu-img report for {path}") from exc
    backing = info.get("full-backing-filename") or info.get("backing-filename")
    return DiskInfo(
        format=str(info.get("format")),
        virtual_size=int(info.get("virtual-size", 0)),
        actual_size=int(info.get("actual-size", 0)),
        backing_file=Path(backing) if backing else None,
        backing_format=info.get("backing-filename-format"),
    )


def _tmp_for(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.{os.getpid()}.tmp")


def _publish(tmp: Path, dest: Path) -> None:
    """Move tmp to dest without ever replacing an existing disk (it may hold user data)."""
    try:
        os.link(tmp, dest)
    except FileExistsError as exc:
        raise Conflict(f"disk {dest} already exists") from exc
    finally:
        tmp.unlink(missing_ok=True)


def create_overlay(
    base: Path,
    base_format: str,
    dest: Path,
    size_gb: int,
    base_virtual_size: int | None = None,
    template: bool = False,
) -> None:
    """Create dest as a qcow2 overlay of base, size_gb large but never smaller than base.

    base_virtual_size, when the caller knows it from the image's inspection at import, saves
    a qemu-img run on the hot path of every create.

    template: copy a template overlay made once per base and size (next to base, so it goes
    when base goes) instead of running qemu-img each time. A new overlay holds nothing of its
    own, so every copy is the very file qemu-img would write; the copy costs a fraction of a
    millisecond where qemu-img's start-up alone costs ~10 ms. Only for a base nothing writes
    to and that is removed, never replaced, under its name (the agent's image cache).

    The API refuses flavors whose disk is smaller than the image; here we only guarantee the
    guest never sees a truncated base. Raises Conflict if dest exists, DriverError on failure.
    """
    _check_format(base_format)
    if size_gb <= 0:
        raise InvalidInput("disk size must be positive", field="disk_gb")
    if dest.exists():
        raise Conflict(f"disk {dest} already exists")
    base = base.resolve()  # qemu-img stores the backing path as given; relative would break
    if base_virtual_size is None:
        base_virtual_size = disk_info(base, base_format).virtual_size
    size = max(size_gb * GiB, base_virtual_size)
    tmp = _tmp_for(dest.resolve())
    try:
        if template:
            _copy_synced(_overlay_template(base, base_format, size), tmp)
        else:
            _qemu_img_overlay(base, base_format, tmp, size)
        _publish(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_blank(dest: Path, size_gb: int) -> None:
    """An empty qcow2 disk of size_gb (what an installer CD installs onto). Raises Conflict if
    dest exists, DriverError on failure."""
    if size_gb <= 0:
        raise InvalidInput("disk size must be positive", field="disk_gb")
    if dest.exists():
        raise Conflict(f"disk {dest} already exists")
    tmp = _tmp_for(dest.resolve())
    try:
        run_limited(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(tmp), str(size_gb * GiB)],
            INSPECT_LIMITS,
        )
        _publish(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _qemu_img_overlay(base: Path, base_format: str, path: Path, size: int) -> None:
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(base)]
    run_limited([*argv, str(path), str(size)], INSPECT_LIMITS)


def _overlay_template(base: Path, base_format: str, size: int) -> Path:
    """The template overlay of base at size, made by qemu-img the first time it is asked for."""
    path = base.with_name(f"{base.name}.overlay-{size}")
    if not path.exists():
        tmp = _tmp_for(path)
        try:
            _qemu_img_overlay(base, base_format, tmp, size)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def _copy_synced(source: Path, dest: Path) -> None:
    """Copy, then fsync as qemu-img would: a crash never leaves a disk with a torn header."""
    shutil.copyfile(source, dest)
    fd = os.open(dest, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def delete_disk(path: Path) -> None:
    """Remove a disk file. Idempotent."""
    path.unlink(missing_ok=True)


def resize_disk(path: Path, size_gb: int, fmt: str = "qcow2") -> None:
    """Grow a disk to size_gb. Shrinking is refused (it would cut the guest's filesystem)."""
    _check_format(fmt)
    new = size_gb * GiB
    current = disk_info(path, fmt).virtual_size
    if new < current:
        raise InvalidInput(
            f"cannot shrink a disk from {current // GiB} GiB to {size_gb} GiB", field="disk_gb"
        )
    if new == current:
        return
    run_limited(["qemu-img", "resize", "-q", "-f", fmt, str(path.resolve()), str(new)])


def copy_and_resize(base: Path, base_format: str, dest: Path, size_gb: int) -> None:
    """A full independent qcow2 copy of base, grown to size_gb (the slow way, for comparison)."""
    _check_format(base_format)
    if dest.exists():
        raise Conflict(f"disk {dest} already exists")
    tmp = _tmp_for(dest.resolve())
    src = str(base.resolve())
    try:
        size = max(size_gb * GiB, disk_info(base, base_format).virtual_size)
        run_limited(
            ["qemu-img", "convert", "-q", "-f", base_format, "-O", "qcow2", src, str(tmp)],
            COPY_LIMITS,
        )
        run_limited(["qemu-img", "resize", "-q", "-f", "qcow2", str(tmp), str(size)])
        _publish(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


__all__ = [
    "DiskInfo",
    "ToolError",
    "copy_and_resize",
    "create_overlay",
    "delete_disk",
    "disk_info",
    "resize_disk",
]
