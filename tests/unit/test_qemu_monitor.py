"""Monitor against a tiny scripted QMP server on a UNIX socket (no QEMU needed)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nubes.errors import DriverError
from nubes.hypervisor.qemu.monitor import Monitor, MonitorError

GREETING = {
    "QMP": {
        "version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""},
        "capabilities": [],
    }
}


class FakeQmp:
    """Serves one client at a time, like QEMU. mode: "ok", "mute" (no greeting),
    "quit-eof" (drops the connection on quit without replying)."""

    def __init__(self, path: Path, mode: str = "ok") -> None:
        self.mode = mode
        self.received: list[tuple[str, dict[str, object]]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.sock.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                if self.mode == "mute":
                    conn.recv(1)  # hold the connection until the client gives up
                    continue
                self._session(conn)

    @staticmethod
    def _messages(conn: socket.socket) -> Iterator[dict[str, Any]]:
        # Like QEMU, parse a JSON stream: the client does not end messages with newlines.
        decoder, buf = json.JSONDecoder(), ""
        while chunk := conn.recv(4096):
            buf += chunk.decode()
            while buf.strip():
                try:
                    msg, end = decoder.raw_decode(buf.lstrip())
                except ValueError:
                    break
                buf = buf.lstrip()[end:]
                yield msg

    def _session(self, conn: socket.socket) -> None:
        conn.sendall(json.dumps(GREETING).encode() + b"\n")
        for msg in self._messages(conn):
            cmd, args = msg["execute"], msg.get("arguments", {})
            self.received.append((cmd, args))
            if cmd == "quit" and self.mode == "quit-eof":
                return
            reply: dict[str, object] = {"return": {}}
            if cmd == "query-status":
                reply = {"return": {"status": "paused", "running": False}}
            elif cmd == "system_reset":
                reply = {"error": {"class": "GenericError", "desc": "reset refused"}}
            if "id" in msg:
                reply["id"] = msg["id"]
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                return
            if cmd == "quit":
                return


@pytest.fixture
def sock_path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "qmp.sock"


def serve(path: Path, mode: str = "ok") -> FakeQmp:
    return FakeQmp(path, mode)


def test_commands_round_trip(sock_path: Path) -> None:
    server = serve(sock_path)
    try:
        monitor = Monitor(sock_path)
        assert monitor.query_status() == "paused"
        monitor.set_vnc_password("s3cret")
        monitor.cont()
        monitor.system_powerdown()
        commands = [c for c, _ in server.received if c != "qmp_capabilities"]
        assert commands == ["query-status", "set_password", "cont", "system_powerdown"]
        assert ("set_password", {"protocol": "vnc", "password": "s3cret"}) in server.received
    finally:
        server.close()


def test_refused_command_raises_monitor_error(sock_path: Path) -> None:
    server = serve(sock_path)
    try:
        with pytest.raises(MonitorError, match="reset refused"):
            Monitor(sock_path).system_reset()
    finally:
        server.close()


@pytest.mark.parametrize("mode", ["ok", "quit-eof"])
def test_quit_accepts_eof(sock_path: Path, mode: str) -> None:
    server = serve(sock_path, mode)
    try:
        Monitor(sock_path).quit()
        assert server.received[-1][0] == "quit"
    finally:
        server.close()


def test_missing_socket(tmp_path: Path) -> None:
    with pytest.raises(MonitorError, match="cannot connect"):
        Monitor(tmp_path / "none.sock").query_status()


def test_unresponsive_server_times_out(sock_path: Path) -> None:
    server = serve(sock_path, "mute")
    try:
        with pytest.raises(MonitorError):
            Monitor(sock_path, timeout=0.3).query_status()
    finally:
        server.close()


def test_monitor_error_is_a_driver_error() -> None:
    assert issubclass(MonitorError, DriverError)


def test_concurrent_callers_are_serialized(sock_path: Path) -> None:
    server = serve(sock_path)
    errors: list[Exception] = []

    def worker() -> None:
        try:
            for _ in range(5):
                Monitor(sock_path).query_status()
        except Exception as exc:  # noqa: BLE001 - collected for the assert
            errors.append(exc)

    try:
        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
    finally:
        server.close()


def test_works_inside_a_running_event_loop(sock_path: Path) -> None:
    import asyncio

    server = serve(sock_path)

    async def main() -> str:
        return Monitor(sock_path).query_status()

    try:
        assert asyncio.run(main()) == "paused"
    finally:
        server.close()
