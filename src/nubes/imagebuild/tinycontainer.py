"""The tiny container image: busybox-static and the tiny VM's seed handling, as a rootfs tar
(storage/rootfs.py's format: `image.json` + `rootfs/`), built in a second from the host's
busybox-static. Its init applies the NoCloud seed the agent writes into the rootfs and prints
the same ready line as the tiny VM."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from pathlib import Path

from nubes.errors import DriverError
from nubes.imagebuild.tiny import _ETC, BUSYBOX, READY_LINE, _busybox_applets, _file
from nubes.storage.rootfs import Process

__all__ = ["READY_LINE", "build_tiny_container"]

PROCESS = Process(["/sbin/init"], ["PATH=/bin:/sbin:/usr/bin:/usr/sbin", "HOME=/root"])
_DIRS = ("bin", "dev", "proc", "sys", "run", "tmp", "etc", "etc/nubes", "var", "var/log", "root")


def _add(
    tar: tarfile.TarFile, name: str, data: bytes | None = None, mode: int = 0o644, link: str = ""
) -> None:
    info = tarfile.TarInfo(name)
    info.mode = mode
    if link:
        info.type, info.linkname = tarfile.SYMTYPE, link
    elif data is None:
        info.type = tarfile.DIRTYPE
    else:
        info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if data is not None else None)


def write_rootfs(out: io.BufferedIOBase | io.BytesIO, busybox: Path = BUSYBOX) -> None:
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "image.json", PROCESS.to_json())
        _add(tar, "rootfs", mode=0o755)
        for d in _DIRS:
            _add(tar, f"rootfs/{d}", mode=0o700 if d == "root" else 0o755)
        _add(tar, "rootfs/bin/busybox", busybox.read_bytes(), 0o755)
        for applet in _busybox_applets(busybox):
            if applet not in ("busybox", "init"):
                _add(tar, f"rootfs/bin/{applet}", link="busybox")
        for alias in ("sbin", "usr"):  # relative: a link is never read against the host's /
            _add(tar, f"rootfs/{alias}", link="." if alias == "usr" else "bin")
        for name, text in _ETC.items():
            if name != "etc/inittab":
                _add(tar, f"rootfs/{name}", text.encode(), 0o600 if "shadow" in name else 0o644)
        _add(tar, "rootfs/etc/nubes/seed.awk", _file("tiny-seed.awk"))
        _add(tar, "rootfs/etc/nubes/udhcpc", _file("tiny-udhcpc"), 0o755)
        _add(tar, "rootfs/bin/init", _file("tiny-container-init"), 0o755)


def build_tiny_container(out_dir: Path) -> Path:
    """The rootfs tar (cached by busybox and the scripts). Raises DriverError."""
    if not BUSYBOX.is_file():
        raise DriverError(f"{BUSYBOX} not found: install busybox-static")
    h = hashlib.sha256(BUSYBOX.read_bytes())
    for name in ("tiny-container-init", "tiny-udhcpc", "tiny-seed.awk"):
        h.update(_file(name))
    final = out_dir / f"tiny-container-{h.hexdigest()[:16]}.tar"
    if final.is_file():
        return final
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".tiny-container-")
    try:
        with os.fdopen(fd, "wb") as fh:
            write_rootfs(fh)
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return final
