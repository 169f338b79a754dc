from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import select

from nubes.api import redact
from nubes.api.deps import Caller, CallerDep, SessionDep, StateDep
from nubes.api.paging import PageDep, paginate
from nubes.control import compute, consoles, lookup
from nubes.control.compute import host_up
from nubes.control.idempotency import run_once
from nubes.db.models import Host, Instance
from nubes.schemas import resources as s
from nubes.schemas.console import ChannelRequest

router = APIRouter(prefix="/v1/servers", tags=["servers"])


def shown(server: s.Server, who: Caller) -> s.Server:
    """Faults quote host paths: tenants see them redacted (api/redact.py), admins whole."""
    fault = redact.for_caller(who, server.fault)
    return server if fault == server.fault else server.model_copy(update={"fault": fault})


@router.get("")
def list_servers(
    session: SessionDep, who: CallerDep, state: StateDep, page: PageDep
) -> list[s.Server]:
    """A page (api/paging.py: `limit`, `marker`, the next page in the `Link` header)."""
    query = select(Instance).where(
        Instance.project_id == who.project_id, Instance.deleted_at.is_(None)
    )
    rows = paginate(session, query, (Instance.created_at, Instance.id), page)
    wire = compute.to_wire_many(session, rows, state.settings.host_down_after)
    return [shown(server, who) for server in wire]


@router.post("", status_code=202, response_model=s.Server)
def create_server(
    body: s.ServerCreate, request: Request, who: CallerDep, state: StateDep
) -> s.Server | JSONResponse:
    """Send an `Idempotency-Key` header to make retries safe."""
    return run_once(
        state, who, request, body, 202, lambda store: compute.create(state, body, who, store)
    )


@router.post("/explain")
def explain_server(body: s.ServerCreate, who: CallerDep, state: StateDep) -> s.Explanation:
    """Run the scheduler on a create's body without placing anything: every host's verdict
    per filter and its weight (`nubes server create ... --explain`)."""
    return compute.explain(state, body, who)


@router.get("/{ref}")
def show_server(ref: str, session: SessionDep, who: CallerDep, state: StateDep) -> s.Server:
    inst = lookup.owned(session, Instance, ref, who, "server")
    return shown(compute.to_wire(session, inst, state.settings.host_down_after), who)


@router.delete("/{ref}", status_code=202)
def delete_server(ref: str, session: SessionDep, who: CallerDep, state: StateDep) -> s.Server:
    inst = lookup.owned(session, Instance, ref, who, "server")
    host = session.get(Host, inst.host_id) if inst.host_id else None
    up = host_up(host, state.settings.host_down_after)
    return shown(compute.request_delete(state, session, inst, up), who)


@router.post("/{ref}/action", status_code=202)
def server_action(
    ref: str, body: s.ServerAction, session: SessionDep, who: CallerDep, state: StateDep
) -> s.Server:
    inst = lookup.owned(session, Instance, ref, who, "server")
    return shown(compute.act(state, session, inst, body), who)


@router.get("/{ref}/console-log", response_class=PlainTextResponse)
def console_log(
    ref: str,
    session: SessionDep,
    who: CallerDep,
    state: StateDep,
    tail: int = Query(default=0, ge=0, le=100000, description="last N lines; 0 = all"),
) -> str:
    inst = lookup.owned(session, Instance, ref, who, "server")
    host = session.get(Host, inst.host_id) if inst.host_id else None
    if host is None or not host.console_port:
        return ""  # not placed yet, or on a host whose agent serves no consoles
    ep, request = consoles.endpoint(host), ChannelRequest(op="log", instance=inst.id)
    session.commit()  # no transaction held across the call to the host
    data = consoles.call(state.settings, ep, request)
    text = data.decode("utf-8", errors="replace")
    if tail:
        text = "\n".join(text.splitlines()[-tail:]) + "\n"
    return text
