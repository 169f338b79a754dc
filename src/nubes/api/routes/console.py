"""Interactive consoles through the API: the serial port over a websocket, and VNC.

The API runs on the same machine as the hosts' QEMU sockets (/run/nubes/<id>/), as it does
for console logs: it proxies the instance's serial socket (and VNC socket) to a websocket of
raw bytes. Authentication is the bearer token, and a caller reaches only its own servers.

A VNC password is one-time: each request sets a new random one over QMP that new connections
may use for a minute only (QMP `expire_password`); sessions already open stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from pathlib import Path

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from nubes.api.deps import CallerDep, SessionDep, authenticate
from nubes.control import lookup
from nubes.control.state import AppState
from nubes.db.models import Instance
from nubes.errors import Conflict, Forbidden, NubesError
from nubes.hypervisor.qemu.cmdline import SOCKET_ROOT
from nubes.hypervisor.qemu.monitor import Monitor, MonitorError
from nubes.schemas.console import VncAccess

router = APIRouter(prefix="/v1/servers", tags=["consoles"])
VNC_PASSWORD_SECONDS = 60
CHUNK = 64 * 1024


def socket_path(instance_id: str, kind: str) -> Path:
    """`serial`, `vnc` or `qmp`: the UNIX sockets the QEMU driver makes per instance."""
    return SOCKET_ROOT / instance_id / f"{kind}.sock"


def _instance_id(state: AppState, header: str, ref: str) -> str:
    who = authenticate(state, header)
    if who.role == "host":
        raise Forbidden("a host credential may use only the agent API")
    with state.sessions() as session:
        return lookup.owned(session, Instance, ref, who, "server").id


async def _pump_in(ws: WebSocket, writer: asyncio.StreamWriter) -> None:
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes") or (message.get("text") or "").encode()
        if data:
            writer.write(data)
            await writer.drain()


async def _pump_out(ws: WebSocket, reader: asyncio.StreamReader) -> None:
    while data := await reader.read(CHUNK):
        await ws.send_bytes(data)


async def _proxy(ws: WebSocket, ref: str, kind: str) -> None:
    state: AppState = ws.app.state.nubes
    await ws.accept()
    try:
        header = ws.headers.get("authorization", "")
        instance_id = await run_in_threadpool(_instance_id, state, header, ref)
    except NubesError as exc:
        await ws.close(code=4000 + exc.status, reason=exc.message[:120])
        return
    try:
        reader, writer = await asyncio.open_unix_connection(str(socket_path(instance_id, kind)))
    except OSError:
        await ws.close(code=4409, reason=f"no {kind} console: is the server running here?")
        return
    tasks = [
        asyncio.create_task(_pump_in(ws, writer)),
        asyncio.create_task(_pump_out(ws, reader)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        with contextlib.suppress(Exception, WebSocketDisconnect):
            await ws.close()


@router.websocket("/{ref}/console")
async def serial_console(websocket: WebSocket, ref: str) -> None:
    """The serial port: raw bytes both ways (binary frames). One client at a time."""
    await _proxy(websocket, ref, "serial")


@router.websocket("/{ref}/vnc")
async def vnc_console(websocket: WebSocket, ref: str) -> None:
    """The VNC (RFB) stream of the instance, as binary frames."""
    await _proxy(websocket, ref, "vnc")


@router.post("/{ref}/vnc")
def vnc_password(ref: str, session: SessionDep, who: CallerDep) -> VncAccess:
    """A new one-time VNC password, valid for new connections during a minute."""
    inst = lookup.owned(session, Instance, ref, who, "server")
    instance_id = inst.id
    session.commit()  # no transaction held across QMP
    password = secrets.token_urlsafe(6)[:8]  # VNC authentication uses 8 characters
    monitor = Monitor(socket_path(instance_id, "qmp"), timeout=5.0)
    try:
        monitor.set_vnc_password(password)
        monitor.expire_password("vnc", f"+{VNC_PASSWORD_SECONDS}")
    except MonitorError as exc:
        raise Conflict(f"server {inst.name} has no VNC console now: {exc}") from exc
    return VncAccess(
        password=password,
        expires_in=VNC_PASSWORD_SECONDS,
        websocket=f"/v1/servers/{instance_id}/vnc",
    )
