"""Console log rotation by copy-truncate under a writer that keeps the file open (as QEMU)."""

from __future__ import annotations

import os
from pathlib import Path

from nubes.storage.consolelog import read_tail, rotate, rotated


def test_rotate_under_an_appending_writer(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # like QEMU's logappend
    try:
        os.write(fd, b"boot 1\n" + b"x" * 200)
        assert not rotate(log, limit=1000)
        os.write(fd, b"y" * 1000 + b"\nend of boot 1\n")
        assert rotate(log, limit=1000)
        assert log.stat().st_size == 0
        assert rotated(log).read_bytes().endswith(b"end of boot 1\n")
        os.write(fd, b"boot 2\n")  # lands at the start of the truncated file, no hole
        assert log.read_bytes() == b"boot 2\n"
    finally:
        os.close(fd)
    both = read_tail(log, 1 << 20)
    assert both.startswith(b"boot 1\n") and both.endswith(b"end of boot 1\nboot 2\n")
    assert read_tail(log, 7) == b"boot 2\n"
    assert not rotate(tmp_path / "missing.log")
