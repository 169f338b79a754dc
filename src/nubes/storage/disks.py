"""Instance disks: qcow2 overlays on top of stored images, via qemu-img.

Bases come from the ImageStore, so they were inspected on import; we still name every format
(`-f`, `-F`) so qemu-img never probes, and run it under limits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nubes.errors import Conflict, DriverError, InvalidInput
from nubes.storage.images import SUPPORTED_FORMATS, qemu_img_info
from nubes.storage.tools import (
    COPY_LIMITS,
    INSPECT_LIMITS,
    GiB,
    LimitedRun,
    ToolError,
    run_limited,
)


@dataclass(frozen=True)
class DiskInfo:
    format: str
    virtual_size: int
    actual_size: int
    backing_file: Path | None
    backing_format: str | None


def _check_format(fmt: str) -> None:
    if fmt not in SUPPORTED_FORMATS:
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
    base: Path, base_format: str, dest: Path, size_gb: int, base_virtual_size: int | None = None
) -> None:
    """Create dest as a qcow2 overlay of base, size_gb large but never smaller than base.

    base_virtual_size, when the caller knows it from the image's inspection at import, saves
    a qemu-img run on the hot path of every create.

    The API refuses flavors whose disk is smaller than the image; here we only guarantee the
    guest never sees a truncated base. Raises Conflict if dest exists, DriverError on failure.
    """
    start_overlay(base, base_format, dest, size_gb, base_virtual_size).wait()


class OverlayJob:
    """An overlay being made by qemu-img in the background: `wait` publishes it, `cancel`
    leaves nothing. A build overlaps it with the seed and the ports (qemu-img's own start-up
    is most of its ~15 ms)."""

    def __init__(self, run: LimitedRun, tmp: Path, dest: Path) -> None:
        self._run, self._tmp, self.dest = run, tmp, dest
        self._published = False

    def wait(self) -> None:
        try:
            self._run.wait()
            _publish(self._tmp, self.dest)
            self._published = True
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise

    def cancel(self) -> None:
        """Undo: the run stopped, its file gone, and the disk too if this job made it."""
        self._run.kill()
        self._tmp.unlink(missing_ok=True)
        if self._published:
            self.dest.unlink(missing_ok=True)


def start_overlay(
    base: Path, base_format: str, dest: Path, size_gb: int, base_virtual_size: int | None = None
) -> OverlayJob:
    """create_overlay, started: the checks run now, qemu-img in the background."""
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
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(base)]
    return OverlayJob(LimitedRun([*argv, str(tmp), str(size)], INSPECT_LIMITS), tmp, dest)


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
    "start_overlay",
    "delete_disk",
    "disk_info",
    "resize_disk",
]
