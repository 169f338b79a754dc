"""nubes console: the serial console (interactive), its log, and VNC access.

`nubes console NAME` attaches the terminal to the instance's serial port through the API's
websocket (raw mode; Ctrl-] detaches, as in telnet). `nubes console url NAME` prints a one-time
VNC password and how to reach the VNC stream; `nubes console vnc NAME` serves it on a local TCP
port for any VNC viewer.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import termios
import threading
import tty
from collections.abc import Iterator
from typing import Any

import typer
from typer.core import TyperGroup
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect, unix_connect

from nubes.cli.common import client, console, fail, handle_errors
from nubes.cli.servers import console_log
from nubes.client import load_config
from nubes.schemas.console import VncAccess

DETACH = b"\x1d"  # Ctrl-]


class _ConsoleGroup(TyperGroup):
    """`nubes console NAME` means `nubes console attach NAME`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # typer's vendored click
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["attach", *args]
        return super().parse_args(ctx, args)


console_app = typer.Typer(
    cls=_ConsoleGroup,
    help="Consoles: `nubes console NAME` (serial, Ctrl-] detaches), log, url, vnc.",
    no_args_is_help=True,
)
console_app.command("log")(console_log)


def open_websocket(path: str) -> ClientConnection:
    """A websocket to the API (its UNIX socket or TCP URL) with the bearer token."""
    url, token = load_config()
    headers = {"Authorization": f"Bearer {token}"}
    if url.startswith("unix://"):
        return unix_connect(url[len("unix://") :], f"ws://nubes{path}", additional_headers=headers)
    ws_url = url.replace("https://", "wss://", 1).replace("http://", "ws://", 1).rstrip("/")
    return connect(ws_url + path, additional_headers=headers)


def _closed_reason(exc: ConnectionClosed) -> str:
    frame = exc.rcvd
    if frame is not None and frame.code >= 4000:
        return frame.reason or f"closed by the API ({frame.code})"
    return ""


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _print_output(ws: ClientConnection, done: threading.Event, why: list[str]) -> None:
    out = sys.stdout.buffer
    try:
        for message in ws:
            out.write(message if isinstance(message, bytes) else message.encode())
            out.flush()
    except ConnectionClosed as exc:
        why.append(_closed_reason(exc))
    done.set()


@console_app.command("attach")
@handle_errors
def attach(name: str = typer.Argument(..., help="server name or id")) -> None:
    """Attach this terminal to the server's serial console (Ctrl-] detaches)."""
    server = client().server(name)
    fd = sys.stdin.fileno()
    done, why = threading.Event(), list[str]()
    with open_websocket(f"/v1/servers/{server.id}/console") as ws:
        if os.isatty(fd):
            console.print(f"[dim]{server.name}: serial console; Ctrl-] detaches[/dim]")
        reader = threading.Thread(target=_print_output, args=(ws, done, why), daemon=True)
        reader.start()
        with _raw_terminal(fd):
            _send_input(ws, fd, done)
        ws.close()
        reader.join(timeout=5)
    if why and why[0]:
        fail(why[0])


def _send_input(ws: ClientConnection, fd: int, done: threading.Event) -> None:
    while not done.is_set():
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        data = os.read(fd, 4096)
        if not data:  # end of piped input: let the answer arrive, then leave
            done.wait(2.0)
            return
        if DETACH in data:
            data = data.split(DETACH, 1)[0]
            if data:
                ws.send(data)
            return
        try:
            ws.send(data)
        except ConnectionClosed:
            return


def vnc_access(name: str) -> tuple[str, VncAccess]:
    c = client()
    server = c.server(name)
    resp = c.request("POST", f"/v1/servers/{server.id}/vnc")
    return server.name, VncAccess.model_validate(resp.json())


@console_app.command("url")
@handle_errors
def url(name: str = typer.Argument(..., help="server name or id")) -> None:
    """A one-time VNC password for the server and how to reach its VNC stream."""
    server_name, access = vnc_access(name)
    api_url, _ = load_config()
    console.print(f"server:    {server_name}")
    console.print(f"password:  {access.password}  (new connections for {access.expires_in} s)")
    console.print(f"websocket: {api_url} {access.websocket}  (binary RFB, bearer token)")
    console.print(f"viewer:    nubes console vnc {server_name}  then connect to 127.0.0.1:5901")


def _forward(conn: socket.socket, path: str) -> None:
    """One VNC viewer connection <-> one websocket to the API."""
    try:
        ws = open_websocket(path)
    except (OSError, ConnectionClosed):
        conn.close()
        return

    def upstream() -> None:
        with contextlib.suppress(OSError, ConnectionClosed):
            while data := conn.recv(65536):
                ws.send(data)
        ws.close()

    threading.Thread(target=upstream, daemon=True).start()
    with contextlib.suppress(OSError, ConnectionClosed):
        for message in ws:
            conn.sendall(message if isinstance(message, bytes) else message.encode())
    conn.close()


@console_app.command("vnc")
@handle_errors
def vnc(
    name: str = typer.Argument(..., help="server name or id"),
    port: int = typer.Option(5901, help="local TCP port (on 127.0.0.1 only)"),
) -> None:
    """Serve the server's VNC console on 127.0.0.1:PORT until Ctrl-C."""
    server_name, access = vnc_access(name)
    listener = socket.create_server(("127.0.0.1", port))
    console.print(
        f"VNC of {server_name} on 127.0.0.1:{port}, password {access.password} "
        f"(for {access.expires_in} s); Ctrl-C stops"
    )
    threads: list[Any] = []
    try:
        while True:
            conn, _ = listener.accept()
            t = threading.Thread(target=_forward, args=(conn, access.websocket), daemon=True)
            t.start()
            threads.append(t)
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()
