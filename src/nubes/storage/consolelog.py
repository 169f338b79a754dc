"""Bounded serial console logs.

QEMU appends to console.log (chardev logfile, logappend=on) and keeps it open with O_APPEND, so
the log survives reboots and the file can be rotated under it by copy-truncate: copy to
console.log.1, then truncate; QEMU's next write lands at the new end of the file. A few bytes
written between the copy and the truncate can be lost; that is the price of not restarting QEMU.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

LIMIT = 1 << 20  # rotate past 1 MiB: at most ~2 MiB of console per instance


def rotated(path: Path) -> Path:
    return path.with_name(path.name + ".1")


def rotate(path: Path, limit: int = LIMIT) -> bool:
    """Copy-truncate path to path.1 when it is larger than limit. True if it rotated."""
    try:
        if path.stat().st_size <= limit:
            return False
    except FileNotFoundError:
        return False
    old = rotated(path)
    tmp = old.with_name(old.name + ".tmp")
    shutil.copyfile(path, tmp)
    os.chmod(tmp, 0o600)
    os.replace(tmp, old)
    os.truncate(path, 0)
    return True


def read_tail(path: Path, max_bytes: int) -> bytes:
    """The last max_bytes of the log, the rotated part included."""
    chunks = []
    for p in (rotated(path), path):
        try:
            chunks.append(p.read_bytes()[-max_bytes:])
        except OSError:
            continue
    return b"".join(chunks)[-max_bytes:]
