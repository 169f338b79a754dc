"""Small JSON records an agent keeps on its host: read without guessing, written durably.

A record that cannot be read as written is never taken for a missing one: the caller is told
it is damaged and why, with whatever fields could be read, and decides what is safe.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

VERSION = 1  # records carry it; older agents' records (no version) read as version 1


@dataclass(frozen=True)
class Read:
    """What a record file held. `exists` False: no file at all (nothing was ever written)."""

    values: dict[str, Any] = field(default_factory=dict)  # the fields understood and valid
    damage: str = ""  # why the file is not a record of ours as written ("" = it is)
    exists: bool = False


def read_record(path: Path, known: type[Any]) -> Read:
    """Read a JSON record meant for the dataclass `known`; never raises for a bad file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Read()
    except OSError as exc:
        return Read(damage=f"unreadable ({exc.strerror or exc})", exists=True)
    if not raw.strip():
        return Read(damage="empty", exists=True)
    try:
        data = json.loads(raw)
    except ValueError:  # also UnicodeDecodeError
        return Read(damage="truncated or invalid JSON", exists=True)
    if not isinstance(data, dict):
        return Read(damage="not a JSON object", exists=True)
    return _check(data, known)


def _check(data: dict[str, Any], known: type[Any]) -> Read:
    problems = []
    version = data.get("version", VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        problems.append("invalid version")
    elif version > VERSION:
        problems.append(f"written by a newer agent (version {version} > {VERSION})")
    defaults = {f.name: f.default for f in fields(known)}
    unknown = sorted(set(data) - set(defaults) - {"version"})
    if unknown:
        problems.append("unknown field " + ", ".join(unknown)[:200])
    values = {}
    for name, default in defaults.items():
        if name in data and name != "version":
            if type(data[name]) is type(default):  # bool is not int here, on purpose
                values[name] = data[name]
            else:
                problems.append(f"invalid {name}")
    return Read(values=values, damage="; ".join(problems), exists=True)


def write_record(path: Path, data: dict[str, Any]) -> None:
    """Atomic and durable: the file's data is on disk before the rename, the rename after."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"version": VERSION, **data}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def keep_copy(path: Path) -> str:
    """Copy a damaged record beside it before it is repaired (a newer agent's fields, or what
    an operator wants to look at, stay); returns the copy's name."""
    copy = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
    try:
        raw = path.read_bytes()
    except OSError:
        return ""
    fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(raw)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_dir(path.parent)
    return copy.name


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
