"""QEMU processes seen through pidfiles and /proc.

A guest adopted after an agent restart is not our child (it was reparented to init), so there
is no waitpid for it: we poll /proc. Before trusting or signalling a pid we check that
/proc/<pid>/cmdline carries this instance's `-name guest=<id>,...` argument, so a recycled pid
is never mistaken for, or killed as, a guest. A zombie counts as gone: on hosts whose init does
not reap, it lingers forever.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from nubes.hypervisor.qemu.cmdline import guest_id, guest_name_arg

PROC = Path("/proc")


def read_pidfile(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def is_guest_process(pid: int, instance_id: str, proc: Path = PROC) -> bool:
    """True when pid is alive (not a zombie) and is QEMU running instance_id."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
        cmdline = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False
    # The state follows the last ")" (the command name may itself contain parentheses).
    fields = stat.rpartition(")")[2].split()
    if not fields or fields[0] in ("Z", "X", "x"):
        return False
    return guest_name_arg(instance_id).encode() in cmdline.split(b"\0")


def guest_of(pid: int, proc: Path = PROC) -> str | None:
    """The instance whose QEMU pid is, from its command line; None for any other process."""
    try:
        cmdline = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    return guest_id(cmdline.decode(errors="replace").split("\0"))


def wait_gone(pid: int, instance_id: str, timeout: float, interval: float = 0.05) -> bool:
    """Poll until the guest process is gone; True if it went within timeout."""
    deadline = time.monotonic() + timeout
    while is_guest_process(pid, instance_id):
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def signal_guest(pid: int, instance_id: str, sig: signal.Signals) -> None:
    """Send sig only if pid is still this guest's QEMU; a vanished process is fine."""
    if not is_guest_process(pid, instance_id):
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def tail(path: Path, lines: int = 3, max_bytes: int = 4096) -> str:
    """The last non-empty lines of a log file, joined with " | " ("" if none)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in data.splitlines() if line.strip()]
    return " | ".join(kept[-lines:])
