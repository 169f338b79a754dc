"""Typed, synchronous adapter over qemu.qmp: the only module that imports it.

The agent is threaded, not async, so each call runs one short QMP session (connect, negotiate,
execute, disconnect) on its own event loop. That costs a few milliseconds and keeps no loop or
connection alive between calls, so nothing goes stale when QEMU restarts or exits under us.

QEMU serves one QMP client per socket at a time: a second client connects into the listen
backlog and never gets a greeting. Calls are therefore serialized per socket inside this
process (other processes must not hold the socket open for long).

Every public method raises MonitorError, and only MonitorError, on failure.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import ExecInterruptedError, ExecuteError, QMPClient, QMPError

from nubes.errors import DriverError

T = TypeVar("T")

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class MonitorError(DriverError):
    """A QMP call failed: socket missing or unresponsive, or QEMU refused the command."""


def _socket_lock(path: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(str(path), threading.Lock())


def _run_coro(coro: Coroutine[Any, Any, T]) -> T:
    """Run coro to completion on a fresh loop, even if the caller's thread already runs one."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


class Monitor:
    """One QEMU instance's QMP socket. Cheap to create; holds no connection."""

    def __init__(self, socket_path: Path, timeout: float = 2.0) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout

    def query_status(self) -> str:
        """The VM run state: "running", "paused", "shutdown", "inmigrate", "internal-error"...

        Raises MonitorError.
        """
        result = self._call("query-status")
        if not isinstance(result, dict) or not isinstance(result.get("status"), str):
            raise MonitorError(f"unexpected query-status reply: {result!r}")
        return result["status"]

    def system_powerdown(self) -> None:
        """Press the ACPI power button; the guest may ignore it. Raises MonitorError."""
        self._call("system_powerdown")

    def system_reset(self) -> None:
        """Hard reset, like the reset button: same QEMU process. Raises MonitorError."""
        self._call("system_reset")

    def cont(self) -> None:
        """Resume a paused guest. Raises MonitorError."""
        self._call("cont")

    def set_vnc_password(self, password: str) -> None:
        """Set the VNC password (VNC auth uses only its first 8 characters).

        Raises MonitorError, also when QEMU has no VNC server or password auth is off.
        """
        self._call("set_password", {"protocol": "vnc", "password": password})

    def expire_password(self, protocol: str, time: str) -> None:
        """When the password stops working for new connections: "now", "never", "+SECONDS"
        or an absolute UNIX time. Raises MonitorError."""
        self._call("expire_password", {"protocol": protocol, "time": time})

    def eject(self, device: str) -> None:
        """Remove the medium of a removable drive, even if the guest locked the tray.
        Raises MonitorError."""
        self._call("eject", {"id": device, "force": True})

    def command(self, cmd: str, args: dict[str, object] | None = None) -> object:
        """Any QMP command and its reply (volumes: blockdev-add, device_add...). Raises
        MonitorError."""
        return self._call(cmd, args)

    def execute(self, cmd: str, args: dict[str, object] | None = None) -> object:
        """Any QMP command (migration's, block jobs'): its return value. Raises MonitorError."""
        return self._call(cmd, args)

    def quit(self) -> None:
        """Make QEMU exit now (no guest shutdown). QEMU closes the socket right after it
        replies, sometimes before: a connection dropped after sending counts as success.

        Raises MonitorError when the command could not be sent at all.
        """
        self._call("quit", expect_eof=True)

    def _call(
        self, cmd: str, args: dict[str, object] | None = None, *, expect_eof: bool = False
    ) -> object:
        lock = _socket_lock(self.socket_path)
        # Wait for other in-process callers, each bounded by its own timeouts.
        if not lock.acquire(timeout=self.timeout * 3):
            raise MonitorError(f"QMP socket {self.socket_path} busy")
        try:
            return _run_coro(self._session(cmd, args, expect_eof))
        finally:
            lock.release()

    async def _session(self, cmd: str, args: dict[str, object] | None, expect_eof: bool) -> object:
        client = QMPClient(f"nubes:{self.socket_path.parent.name}")
        try:
            try:
                await asyncio.wait_for(client.connect(str(self.socket_path)), self.timeout)
            except (QMPError, OSError, TimeoutError) as exc:
                raise MonitorError(
                    f"cannot connect to QMP socket {self.socket_path}: {exc or 'timeout'}"
                ) from exc
            try:
                return await asyncio.wait_for(client.execute(cmd, args), self.timeout)
            except ExecuteError as exc:
                raise MonitorError(f"QMP {cmd} refused: {exc}") from exc
            except ExecInterruptedError as exc:
                if expect_eof:
                    return None
                raise MonitorError(f"QMP {cmd}: connection lost") from exc
            except (QMPError, OSError, TimeoutError) as exc:
                raise MonitorError(f"QMP {cmd} failed: {exc or 'timeout'}") from exc
        finally:
            # disconnect() re-raises whatever ended the session (EOF after quit included).
            with contextlib.suppress(Exception):
                await client.disconnect()
