"""Nova v2.1: discovery, microversion negotiation, servers and their actions."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any

from fastapi import Body, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from nubes.api.deps import SessionDep, StateDep
from nubes.api.routes import secgroups as v1_secgroups
from nubes.api.routes import servers as v1_servers
from nubes.control import compute
from nubes.control.caller import Caller
from nubes.control.state import AppState
from nubes.db.models import Host, Instance, Network
from nubes.errors import BadRequest, Conflict, NotFound
from nubes.openstack import servers_wire as wire
from nubes.openstack.http import (
    NotAcceptable,
    OsCaller,
    integer,
    last_segment,
    limit_of,
    make_router,
    page,
    section,
    text,
)
from nubes.schemas import resources as s

VERSION = "2.1"
VERSION_HEADERS = {
    "OpenStack-API-Version": f"compute {VERSION}",
    "X-OpenStack-Nova-API-Version": VERSION,
    "Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version",
}
_VERSION_RE = re.compile(r"^(\d+)\.(\d+)$")


def requested_version(request: Request) -> str | None:
    header = request.headers.get("openstack-api-version")
    if header:
        for part in header.split(","):
            service, _, value = part.strip().partition(" ")
            if service.lower() == "compute":
                return value.strip()
    return request.headers.get("x-openstack-nova-api-version")


def negotiate(request: Request) -> None:
    """Only 2.1 is served: `latest` means it; another version is 406, a malformed one 400.
    Every answer echoes the version headers."""
    request.state.os_headers = VERSION_HEADERS
    raw = requested_version(request)
    if raw is None or raw.strip().lower() == "latest":
        return
    match = _VERSION_RE.match(raw.strip())
    if match is None:
        raise BadRequest(f"Invalid API version request string: {raw!r}", field="version")
    if (int(match.group(1)), int(match.group(2))) != (2, 1):
        raise NotAcceptable(
            f"Version {raw.strip()} is not supported by the API. "
            f"Minimum is {VERSION} and maximum is {VERSION}."
        )


router = make_router("compute", "/compute", negotiate)


def version_doc(state: AppState) -> dict[str, Any]:
    return {
        "id": "v2.1",
        "status": "CURRENT",
        "version": VERSION,
        "min_version": VERSION,
        "updated": "2013-07-23T11:33:21Z",
        "links": [{"rel": "self", "href": f"{state.settings.public_url}/compute/v2.1/"}],
        "media-types": [
            {
                "base": "application/json",
                "type": "application/vnd.openstack.compute+json;version=2.1",
            }
        ],
    }


@router.get("")
def versions(state: StateDep) -> dict[str, Any]:
    return {"versions": [version_doc(state)]}


@router.get("/v2.1")
def version(state: StateDep) -> dict[str, Any]:
    return {"version": version_doc(state)}


# --- reading ---


def owned_server(session: Session, ident: str, who: Caller) -> Instance:
    """By id only, as Nova: a name answers 404 and the clients then list by name."""
    inst = session.get(Instance, ident)
    if inst is None or inst.project_id != who.project_id or inst.deleted_at is not None:
        raise NotFound(f"Instance {ident} could not be found.")
    return inst


def _filtered(rows: list[Instance], params: dict[str, str]) -> list[Instance]:
    if params.get("name"):
        try:
            pattern = re.compile(params["name"])
        except re.error:
            raise BadRequest("name: not a valid regular expression", field="name") from None
        rows = [r for r in rows if pattern.search(r.name)]
    if params.get("status"):
        rows = [r for r in rows if r.status == params["status"].upper()]
    for key, column in (("image", "image_id"), ("flavor", "flavor_id")):
        if params.get(key):
            want = last_segment(params[key])
            rows = [r for r in rows if getattr(r, column) == want]
    return rows


def server_page(
    session: Session, who: Caller, params: dict[str, str]
) -> tuple[list[Instance], wire.Related]:
    rows = list(
        session.scalars(
            select(Instance)
            .where(Instance.project_id == who.project_id, Instance.deleted_at.is_(None))
            .order_by(Instance.created_at.desc(), Instance.id)
        )
    )
    rows = page(_filtered(rows, params), params.get("marker"), limit_of(params.get("limit")))
    return rows, wire.Related(session, rows)


@router.get("/v2.1/servers")
def list_servers(request: Request, session: SessionDep, who: OsCaller, state: StateDep) -> Any:
    rows, _ = server_page(session, who, dict(request.query_params))
    base = state.settings.public_url
    return {
        "servers": [
            {"id": i.id, "name": i.name, "links": wire.link(base, "servers", i.id)} for i in rows
        ]
    }


@router.get("/v2.1/servers/detail")
def list_details(request: Request, session: SessionDep, who: OsCaller, state: StateDep) -> Any:
    rows, rel = server_page(session, who, dict(request.query_params))
    base, down = state.settings.public_url, state.settings.host_down_after
    return {"servers": [wire.detail(i, rel, base, down, who) for i in rows]}


@router.get("/v2.1/servers/{ident}")
def show_server(ident: str, session: SessionDep, who: OsCaller, state: StateDep) -> Any:
    inst = owned_server(session, ident, who)
    rel = wire.Related(session, [inst])
    base, down = state.settings.public_url, state.settings.host_down_after
    return {"server": wire.detail(inst, rel, base, down, who)}


@router.get("/v2.1/servers/{ident}/os-security-groups")
def server_groups(ident: str, session: SessionDep, who: OsCaller) -> Any:
    inst = owned_server(session, ident, who)
    names = wire.Related(session, [inst]).groups.get(inst.id, [])
    return {"security_groups": [{"name": n, "tenant_id": inst.project_id} for n in names]}


@router.get("/v2.1/servers/{ident}/tags")
def server_tags(ident: str, session: SessionDep, who: OsCaller) -> Any:
    owned_server(session, ident, who)
    return {"tags": []}


@router.get("/v2.1/servers/{ident}/metadata")
def server_metadata(ident: str, session: SessionDep, who: OsCaller) -> Any:
    owned_server(session, ident, who)
    return {"metadata": {}}


@router.get("/v2.1/servers/{ident}/ips")
def server_ips(ident: str, session: SessionDep, who: OsCaller) -> Any:
    inst = owned_server(session, ident, who)
    return {"addresses": wire.addresses(wire.Related(session, [inst]), inst)}


# --- writing ---


def _image_ref(server: dict[str, Any]) -> str:
    ref = text(server, "imageRef", where="server")
    if ref:
        return last_segment(ref)
    for i, bdm in enumerate(server.get("block_device_mapping_v2") or []):
        if isinstance(bdm, dict) and bdm.get("source_type") == "image" and bdm.get("uuid"):
            if bdm.get("destination_type", "local") != "local":
                field = f"server.block_device_mapping_v2[{i}].destination_type"
                raise BadRequest(f"{field}: volumes are not supported", field=field)
            return str(bdm["uuid"])
    raise BadRequest("server.imageRef: required (nubes boots from images)", field="imageRef")


def _default_network(session: Session, who: Caller) -> str:
    ids = session.scalars(
        select(Network.id).where(Network.project_id == who.project_id, Network.external.is_(False))
    ).all()
    if not ids:
        raise Conflict("No networks are available to the project: create a network first.")
    if len(ids) > 1:
        raise Conflict("Multiple possible networks found, use a Network ID to be more specific.")
    return ids[0]


def _nics(session: Session, server: dict[str, Any], who: Caller) -> list[s.NicRequest]:
    requested = server.get("networks")
    if requested in (None, "auto", []):
        return [s.NicRequest(network=_default_network(session, who))]
    if not isinstance(requested, list):
        raise BadRequest("server.networks: a list of {uuid} is required", field="networks")
    nics = []
    for i, item in enumerate(requested):
        field = f"server.networks[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{field}: must be an object", field=field)
        if item.get("port"):
            raise BadRequest(
                f"{field}.port: nubes makes a server's ports itself; name the network (uuid)",
                field=f"{field}.port",
            )
        uuid = text(item, "uuid", required=True, where=field) or ""
        nics.append(s.NicRequest(network=uuid, ip=text(item, "fixed_ip", where=field)))
    return nics


def _user_data(server: dict[str, Any]) -> str | None:
    raw = text(server, "user_data", where="server")
    if raw is None:
        return None
    try:
        return base64.b64decode(raw, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise BadRequest(
            "server.user_data: must be base64 of UTF-8 text", field="user_data"
        ) from None


def to_create(session: Session, body: Any, who: Caller) -> s.ServerCreate:
    server = section(body, "server")
    for key in ("min_count", "max_count"):
        if str(server.get(key, 1)) != "1":
            raise BadRequest(f"server.{key}: nubes creates one server at a time", field=key)
    groups = server.get("security_groups") or []
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise BadRequest("server.security_groups: a list of {name}", field="security_groups")
    return s.ServerCreate(
        name=text(server, "name", required=True, where="server") or "",
        image=_image_ref(server),
        flavor=last_segment(text(server, "flavorRef", required=True, where="server") or ""),
        networks=_nics(session, server, who),
        key_name=text(server, "key_name", where="server"),
        user_data=_user_data(server),
        security_groups=[str(g.get("name")) for g in groups if g.get("name")],
    )


@router.post("/v2.1/servers", status_code=202)
def create_server(body: Annotated[Any, Body()], who: OsCaller, state: StateDep) -> JSONResponse:
    with state.reads() as session:
        request = to_create(session, body, who)
    server = compute.create(state, request, who)
    base = state.settings.public_url
    answer = {
        "id": server.id,
        "links": wire.link(base, "servers", server.id),
        "OS-DCF:diskConfig": "MANUAL",
        "security_groups": [{"name": g} for g in server.security_groups],
    }
    return JSONResponse({"server": answer}, status_code=202)


@router.delete("/v2.1/servers/{ident}", status_code=204)
def delete_server(ident: str, session: SessionDep, who: OsCaller, state: StateDep) -> Response:
    inst = owned_server(session, ident, who)
    host = session.get(Host, inst.host_id) if inst.host_id else None
    if inst.desired_state != "deleted":
        up = compute.host_up(host, state.settings.host_down_after)
        compute.request_delete(state, session, inst, up)
    return Response(status_code=204)


def _action(body: Any) -> s.ServerAction:
    if not isinstance(body, dict) or len(body) != 1:
        raise BadRequest('the body names one action, e.g. {"os-start": null}', field="action")
    name, args = next(iter(body.items()))
    if name == "os-start":
        return s.ServerAction(action="start")
    if name == "os-stop":
        return s.ServerAction(action="stop")
    if name == "reboot":
        kind = args.get("type", "SOFT") if isinstance(args, dict) else None
        if kind not in ("SOFT", "HARD"):
            raise BadRequest("reboot.type: SOFT or HARD", field="reboot.type")
        return s.ServerAction(action="reboot", hard=kind == "HARD")
    raise BadRequest(f"action {name!r} is not supported by nubes", field="action")


@router.post("/v2.1/servers/{ident}/action", status_code=202)
def server_action(
    ident: str, body: Annotated[Any, Body()], session: SessionDep, who: OsCaller, state: StateDep
) -> Response:
    if isinstance(body, dict) and len(body) == 1 and next(iter(body)) in GROUP_ACTIONS:
        return _group_action(ident, body, session, who, state)
    if isinstance(body, dict) and "os-getConsoleOutput" in body:
        return _console_output(ident, body["os-getConsoleOutput"], session, who, state)
    action = _action(body)
    inst = owned_server(session, ident, who)
    compute.act(state, session, inst, action)
    return Response(status_code=202)


GROUP_ACTIONS = ("addSecurityGroup", "removeSecurityGroup")


def _group_action(
    ident: str, body: dict[str, Any], session: Session, who: Caller, state: AppState
) -> Response:
    """`openstack server add|remove security group`: /v1's own routes, applied at once."""
    name, args = next(iter(body.items()))
    group = text(args if isinstance(args, dict) else {}, "name", required=True, where=name) or ""
    inst = owned_server(session, ident, who)
    if name == "addSecurityGroup":
        v1_secgroups.add_to_server(inst.id, s.ServerSecurityGroup(group=group), session, who, state)
    else:
        v1_secgroups.remove_from_server(inst.id, group, session, who, state)
    return Response(status_code=202)


def _console_output(
    ident: str, args: Any, session: Session, who: Caller, state: AppState
) -> JSONResponse:
    """`openstack console log show`: the serial console through the host's agent (/v1's)."""
    length = integer(args, "length", "os-getConsoleOutput") if isinstance(args, dict) else None
    if length is not None and length < 0:
        length = None  # Nova: -1 is the whole log
    inst = owned_server(session, ident, who)
    output = v1_servers.console_log(inst.id, session, who, state, tail=length or 0)
    return JSONResponse({"output": output}, status_code=200)
