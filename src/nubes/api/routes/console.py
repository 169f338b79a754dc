"""Interactive consoles through the API: the serial port over a websocket, and VNC.

The API dials the agent holding the instance over mutual TLS (control/consoles.py,
agent/consoles.py) and relays raw bytes between that channel and the websocket. The bearer
token authenticates the caller, who reaches only their own servers.

A VNC password is one-time: each request has the agent set a new random one over QMP, which
new connections may use for a minute only (QMP `expire_password`); sessions already open stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from nubes.api.deps import CallerDep, SessionDep, StateDep, authenticate
from nubes.control import consoles, lookup
from nubes.control.state import AppState
from nubes.db.models import Host, Instance
from nubes.errors import Conflict, Forbidden, NubesError, ServiceUnavailable
from nubes.schemas.console import (
    EXEC_OUTPUT_MAX,
    ChannelRequest,
    ExecRequest,
    ExecResult,
    VncAccess,
)

router = APIRouter(prefix="/v1/servers", tags=["consoles"])
VNC_PASSWORD_SECONDS = 60
CHUNK = 64 * 1024


def host_of(session: SessionDep, inst: Instance) -> consoles.Endpoint:
    host = session.get(Host, inst.host_id) if inst.host_id else None
    if host is None:
        raise Conflict(f"server {inst.name} is on no host", field="server")
    return consoles.endpoint(host)


def _target(state: AppState, header: str, ref: str) -> tuple[str, consoles.Endpoint]:
    who = authenticate(state, header)
    if who.role == "host":
        raise Forbidden("a host credential may use only the agent API")
    with state.sessions() as session:
        inst = lookup.owned(session, Instance, ref, who, "server")
        return inst.id, host_of(session, inst)


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


async def splice(ws: WebSocket, instance_id: str, ep: consoles.Endpoint, op: str) -> None:
    """Relays an accepted websocket and the agent's `serial` or `vnc` stream until one ends."""
    state: AppState = ws.app.state.nubes
    try:
        request = ChannelRequest(op="serial" if op == "serial" else "vnc", instance=instance_id)
        reader, writer = await consoles.open_stream(state.settings, ep, request)
    except NubesError as exc:
        await ws.close(code=4000 + exc.status, reason=exc.message[:120])
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


async def _proxy(ws: WebSocket, ref: str, kind: str) -> None:
    state: AppState = ws.app.state.nubes
    await ws.accept()
    try:
        header = ws.headers.get("authorization", "")
        instance_id, ep = await run_in_threadpool(_target, state, header, ref)
    except NubesError as exc:
        await ws.close(code=4000 + exc.status, reason=exc.message[:120])
        return
    await splice(ws, instance_id, ep, kind)


@router.websocket("/{ref}/console")
async def serial_console(websocket: WebSocket, ref: str) -> None:
    """The serial port: raw bytes both ways (binary frames). One client at a time."""
    await _proxy(websocket, ref, "serial")


@router.websocket("/{ref}/vnc")
async def vnc_console(websocket: WebSocket, ref: str) -> None:
    """The VNC (RFB) stream of the instance, as binary frames."""
    await _proxy(websocket, ref, "vnc")


@router.post("/{ref}/exec")
def exec_command(
    ref: str, body: ExecRequest, session: SessionDep, who: CallerDep, state: StateDep
) -> ExecResult:
    """Run a command in a container server (runc exec, as its root), to its end or its
    timeout; its exit status and output (the last MiB of each) come back."""
    inst = lookup.owned(session, Instance, ref, who, "server")
    ep = host_of(session, inst)
    session.commit()  # no transaction held across the call to the host
    request = ChannelRequest(
        op="exec",
        instance=inst.id,
        argv=body.command,
        timeout=body.timeout,
        max_bytes=8 * EXEC_OUTPUT_MAX,
    )
    data = consoles.call(state.settings, ep, request, wait=body.timeout + 30.0)
    try:
        return ExecResult.model_validate_json(data)
    except ValueError as exc:
        raise ServiceUnavailable(f"host {ep.host_name} ended the exec early") from exc


def set_vnc_password(state: AppState, instance_id: str, ep: consoles.Endpoint) -> str:
    """Has the agent set a new one-time VNC password, and returns it."""
    password = secrets.token_urlsafe(6)[:8]  # VNC authentication uses 8 characters
    request = ChannelRequest(
        op="vnc-password",
        instance=instance_id,
        password=password,
        expires_in=VNC_PASSWORD_SECONDS,
        max_bytes=0,
    )
    consoles.call(state.settings, ep, request)
    return password


@router.post("/{ref}/vnc")
def vnc_password(ref: str, session: SessionDep, who: CallerDep, state: StateDep) -> VncAccess:
    """A new one-time VNC password, valid for new connections during a minute."""
    inst = lookup.owned(session, Instance, ref, who, "server")
    instance_id, ep = inst.id, host_of(session, inst)
    session.commit()  # no transaction held across the call to the host
    return VncAccess(
        password=set_vnc_password(state, instance_id, ep),
        expires_in=VNC_PASSWORD_SECONDS,
        websocket=f"/v1/servers/{instance_id}/vnc",
    )
