"""The browser's VNC console (the dashboard's noVNC): a one-time ticket, then a WebSocket.

`POST /v1/servers/{ref}/console-ticket` (bearer token, the caller's own servers) sets a new
one-time VNC password on the instance and issues a ticket (control/console_tickets.py); the
WebSocket `/v1/console/vnc?ticket=…` carries only that ticket. It must come from a page of the
API's own origin: a browser sends any site's cookies-free WebSocket with that site's `Origin`,
so a page elsewhere holding a leaked ticket is still refused (close codes 4000 + HTTP status).
"""

from __future__ import annotations

from fastapi import APIRouter, Query, WebSocket
from starlette.concurrency import run_in_threadpool

from nubes.api.deps import CallerDep, SessionDep, StateDep
from nubes.api.routes.console import VNC_PASSWORD_SECONDS, host_of, set_vnc_password, splice
from nubes.control import consoles, lookup
from nubes.control.caller import Caller
from nubes.control.state import AppState
from nubes.db.models import Instance
from nubes.errors import NubesError
from nubes.schemas.console import ConsoleTicket

router = APIRouter(tags=["consoles"])


@router.post("/v1/servers/{ref}/console-ticket")
def console_ticket(ref: str, session: SessionDep, who: CallerDep, state: StateDep) -> ConsoleTicket:
    """A one-time ticket for the server's VNC console in a browser, and its VNC password."""
    inst = lookup.owned(session, Instance, ref, who, "server")
    instance_id, ep = inst.id, host_of(session, inst)
    session.commit()  # no transaction held across the call to the host
    password = set_vnc_password(state, instance_id, ep)
    ticket = state.tickets.issue(instance_id, who.project_id)
    return ConsoleTicket(
        websocket=f"/v1/console/vnc?ticket={ticket}",
        expires_in=min(int(state.tickets.ttl), VNC_PASSWORD_SECONDS),
        password=password,
    )


def own_origin(ws: WebSocket) -> bool:
    """The page's Origin is the API's own: the scheme and host:port the browser dialled."""
    scheme = "https" if ws.url.scheme == "wss" else "http"
    return ws.headers.get("origin", "") == f"{scheme}://{ws.headers.get('host', '')}"


def _endpoint(state: AppState, instance_id: str, project_id: str) -> consoles.Endpoint:
    with state.sessions() as session:
        who = Caller(project_id=project_id, role="member")
        return host_of(session, lookup.owned(session, Instance, instance_id, who, "server"))


@router.websocket("/v1/console/vnc")
async def browser_vnc(websocket: WebSocket, ticket: str = Query(default="")) -> None:
    """The VNC (RFB) stream, as binary frames, for the holder of a console ticket."""
    state: AppState = websocket.app.state.nubes
    await websocket.accept()
    if not own_origin(websocket):
        # checked before the ticket is spent: a foreign page cannot burn the user's ticket
        await websocket.close(code=4403, reason="the Origin is not this API's own")
        return
    grant = state.tickets.take(ticket)
    if grant is None:
        await websocket.close(code=4401, reason="console ticket unknown, used or expired")
        return
    try:
        ep = await run_in_threadpool(_endpoint, state, grant.instance_id, grant.project_id)
    except NubesError as exc:
        await websocket.close(code=4000 + exc.status, reason=exc.message[:120])
        return
    await splice(websocket, grant.instance_id, ep, "vnc")
