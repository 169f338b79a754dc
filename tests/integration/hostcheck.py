"""What a lab host really has (QEMU processes, taps, instance directories, its agent), for the
fault-injection and soak tests to compare with what the database says."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nubes.cli.daemon import read_pid
from nubes.client import ApiError
from tests.integration.conftest import LabCloud


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def _cmdlines(cloud: LabCloud, index: int) -> dict[int, bytes]:
    found = {}
    for pid in cloud.host_pids(index):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue
            found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, IndexError):
            continue
    return found


def qemu_pids(cloud: LabCloud, index: int = 1) -> dict[str, int]:
    """Instance id -> pid of its QEMU, on one lab host."""
    guests = {}
    for pid, cmdline in _cmdlines(cloud, index).items():
        for arg in cmdline.split(b"\0"):
            if arg.startswith(b"guest="):
                guests[arg.split(b",")[0][len(b"guest=") :].decode()] = pid
    return guests


def agent_pid(cloud: LabCloud, index: int = 1) -> int | None:
    for pid, cmdline in _cmdlines(cloud, index).items():
        if b"nubes.agent.main" in cmdline.split(b"\0"):
            return pid
    return None


def kill_agent(cloud: LabCloud, index: int = 1) -> None:
    """kill -9 the host's agent and wait until it is gone."""
    pid = agent_pid(cloud, index)
    assert pid is not None, f"host {index} has no agent"
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: agent_pid(cloud, index) is None, 10, "the agent to die")


def taps(cloud: LabCloud, index: int = 1) -> list[str]:
    out = cloud.in_host(["ip", "-o", "link", "show"], index)
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    return sorted(n for n in names if n.startswith("tap"))


def host_dir(cloud: LabCloud, index: int = 1) -> Path:
    return cloud.host_dir(index)


def instance_dirs(cloud: LabCloud, index: int = 1) -> list[str]:
    root = host_dir(cloud, index) / "instances"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def assert_host_has(cloud: LabCloud, ids: set[str], index: int = 1) -> None:
    """The host runs exactly these instances: their QEMUs, one tap each, their directories."""
    assert set(qemu_pids(cloud, index)) == ids, qemu_pids(cloud, index)
    assert set(instance_dirs(cloud, index)) == ids, instance_dirs(cloud, index)
    assert len(taps(cloud, index)) == len(ids), taps(cloud, index)


def wait_status(cloud: LabCloud, ref: str, status: str, timeout: float = 120) -> Any:
    """Wait for a server to reach status with no task in flight; an ERROR fails at once."""

    def check() -> Any:
        server = cloud.client.server(ref)
        if server.status == "ERROR" and status != "ERROR":
            raise AssertionError(f"{ref} went to ERROR: {server.fault}")
        return server if server.status == status and not server.task_state else None

    return wait_for(check, timeout, f"{ref} to be {status}")


def wait_gone(cloud: LabCloud, ref: str, timeout: float = 120) -> None:
    def gone() -> bool:
        try:
            cloud.client.server(ref)
        except ApiError as exc:
            if exc.status == 404:
                return True
            raise
        return False

    wait_for(gone, timeout, f"{ref} to be deleted")


def api_pid(cloud: LabCloud) -> int | None:
    """The API's pid while it runs (a zombie counts as gone)."""
    return read_pid(cloud.state_dir / "api.pid")


def gc_clean(cloud: LabCloud) -> None:
    """`nubes gc --dry-run` finds nothing, on the hosts or in the database."""
    report = cloud.client.gc()
    assert not report.database, report.database
    assert not any(report.hosts.values()), report.hosts


def hosts_up(cloud: LabCloud, timeout: float = 30) -> None:
    """Every host heartbeats again (after the API was away, they read as down for a moment)."""
    wait_for(lambda: all(h.state == "up" for h in cloud.client.hosts()), timeout, "hosts up")


def restart_api(cloud: LabCloud, **env: str) -> None:
    cloud.nubes("lab", "restart-api", env=env)
    hosts_up(cloud)
