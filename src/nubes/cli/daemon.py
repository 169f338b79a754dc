"""Start and stop the API and agents as background processes (for `nubes lab`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from nubes.client import ApiError, NubesClient


def _alive(pid: int) -> bool:
    """True for a live process; a zombie (exited, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def read_pid_alive(pid: int) -> bool:
    return _alive(pid)


def read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def python_argv(module: str) -> list[str]:
    return [sys.executable, "-m", module]


def start_api(state_dir: Path, env: dict[str, str], timeout: float = 30.0) -> int:
    """Idempotent: an API already running from this state directory is reused."""
    pidfile = state_dir / "api.pid"
    pid = read_pid(pidfile)
    if pid is None:
        state_dir.mkdir(parents=True, exist_ok=True)
        with (state_dir / "api.log").open("ab") as log:
            proc = subprocess.Popen(
                python_argv("nubes.api.server"),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        pid = proc.pid
        pidfile.write_text(str(pid))
    wait_api(state_dir, pid, timeout)
    return pid


def wait_api(state_dir: Path, pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    sock = state_dir / "api.sock"
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise ApiError(0, f"the API exited at start; see {state_dir / 'api.log'}")
        if sock.exists() and (state_dir / "client.json").exists():
            try:
                import json

                token = json.loads((state_dir / "client.json").read_text())["token"]
                NubesClient(f"unix://{sock}", token, timeout=2).request("GET", "/v1")
                return
            except (ApiError, ValueError, KeyError):
                pass
        time.sleep(0.1)
    raise ApiError(0, f"the API did not start within {timeout:.0f} s; see {state_dir / 'api.log'}")


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    stop_pids([pid], timeout)


def stop_pids(pids: list[int], timeout: float = 10.0) -> None:
    """SIGTERM to all, then SIGKILL to those still alive after `timeout`."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def stop_api(state_dir: Path) -> None:
    pid = read_pid(state_dir / "api.pid")
    if pid is not None:
        stop_pid(pid)
    (state_dir / "api.pid").unlink(missing_ok=True)
