"""A minimal writer of "newc" cpio archives, the format the kernel unpacks as an initramfs.

Written in Python rather than driving cpio(1) so the archive needs no staging tree, no root for
device nodes, and is reproducible (fixed owner and mtime).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import BinaryIO


@dataclass(frozen=True)
class _Entry:
    mode: int
    data: bytes
    rdev: tuple[int, int] = (0, 0)


class CpioWriter:
    """Collects entries (parents created implicitly), then writes them parents-first."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def _parents(self, name: str) -> None:
        for parent in reversed(PurePosixPath(name).parents):
            key = str(parent)
            if key not in (".", "/", "") and key not in self._entries:
                self._entries[key] = _Entry(stat.S_IFDIR | 0o755, b"")

    @staticmethod
    def _norm(name: str) -> str:
        norm = str(PurePosixPath("/", name).relative_to("/"))
        if norm in ("", ".") or ".." in PurePosixPath(norm).parts:
            raise ValueError(f"bad archive path {name!r}")
        return norm

    def add_dir(self, name: str, perm: int = 0o755) -> None:
        name = self._norm(name)
        self._parents(name)
        self._entries[name] = _Entry(stat.S_IFDIR | perm, b"")

    def add_file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        name = self._norm(name)
        self._parents(name)
        self._entries[name] = _Entry(stat.S_IFREG | perm, data)

    def add_symlink(self, name: str, target: str) -> None:
        name = self._norm(name)
        self._parents(name)
        self._entries[name] = _Entry(stat.S_IFLNK | 0o777, target.encode())

    def add_chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        name = self._norm(name)
        self._parents(name)
        self._entries[name] = _Entry(stat.S_IFCHR | perm, b"", (major, minor))

    def __contains__(self, name: str) -> bool:
        return self._norm(name) in self._entries

    def write(self, out: BinaryIO) -> None:
        # sorted() puts "a" before "a/b": every parent exists before its children
        for ino, name in enumerate(sorted(self._entries), start=1):
            _write_entry(out, ino, name, self._entries[name])
        _write_entry(out, 0, "TRAILER!!!", _Entry(0, b""))


def _pad(out: BinaryIO, length: int) -> None:
    out.write(b"\0" * (-length % 4))


def _write_entry(out: BinaryIO, ino: int, name: str, entry: _Entry) -> None:
    encoded = name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (
        ino, entry.mode, 0, 0, nlink, 0, len(entry.data),  # ino mode uid gid nlink mtime size
        0, 0, entry.rdev[0], entry.rdev[1], len(encoded), 0,  # dev, rdev, namesize, check
    )  # fmt: skip
    header = b"070701" + b"".join(b"%08x" % f for f in fields)
    out.write(header + encoded)
    _pad(out, len(header) + len(encoded))
    out.write(entry.data)
    _pad(out, len(entry.data))
