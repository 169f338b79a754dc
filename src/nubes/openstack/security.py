"""Neutron security groups and rules, and floating IPs, on nubes' own."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from nubes.api.deps import SessionDep, StateDep
from nubes.api.routes import secgroups as v1_secgroups
from nubes.control import external, secgroups
from nubes.control.caller import Caller
from nubes.db.models import (
    ExternalAddress,
    Instance,
    Network,
    Port,
    SecurityGroup,
    SecurityGroupRule,
)
from nubes.errors import BadRequest, Conflict, NotFound
from nubes.openstack.http import OsCaller, integer, section, text
from nubes.openstack.networks import checked_name
from nubes.openstack.neutron import listed, router, standard
from nubes.schemas import resources as s

PROTOCOLS = {"6": "tcp", "17": "udp", "1": "icmp", "tcp": "tcp", "udp": "udp", "icmp": "icmp"}


def rule_doc(r: SecurityGroupRule, project_id: str) -> dict[str, Any]:
    any_cidr = r.remote_group_id is None and not r.remote_cidr
    return standard(r.id, project_id, r.created_at) | {
        "security_group_id": r.group_id,
        "direction": r.direction,
        "ethertype": "IPv4",
        "protocol": r.protocol or None,
        "port_range_min": r.port_min,
        "port_range_max": r.port_max,
        "remote_ip_prefix": r.remote_cidr or ("0.0.0.0/0" if any_cidr else None),
        "remote_group_id": r.remote_group_id,
        "remote_address_group_id": None,
        "normalized_cidr": r.remote_cidr or None,
    }


def group_docs(session: Session, who: Caller) -> list[dict[str, Any]]:
    secgroups.ensure_default(session, who.project_id)
    session.commit()
    groups = list(
        session.scalars(
            select(SecurityGroup)
            .where(SecurityGroup.project_id == who.project_id)
            .order_by(SecurityGroup.name)
        )
    )
    rules = session.scalars(
        select(SecurityGroupRule)
        .where(SecurityGroupRule.group_id.in_([g.id for g in groups]))
        .order_by(SecurityGroupRule.created_at, SecurityGroupRule.id)
    )
    by_group: dict[str, list[dict[str, Any]]] = {g.id: [] for g in groups}
    for r in rules:
        by_group[r.group_id].append(rule_doc(r, who.project_id))
    return [
        standard(g.id, g.project_id, g.created_at)
        | {
            "name": g.name,
            "description": g.description,
            "stateful": True,
            "shared": False,
            "security_group_rules": by_group[g.id],
        }
        for g in groups
    ]


@router.get("/v2.0/security-groups")
def list_groups(request: Request, session: SessionDep, who: OsCaller) -> Any:
    return listed(request, group_docs(session, who), "security_groups")


def find_group(session: Session, ident: str, who: Caller) -> dict[str, Any]:
    for doc in group_docs(session, who):
        if doc["id"] == ident:
            return doc
    raise NotFound(f"Security group {ident} does not exist")


@router.get("/v2.0/security-groups/{ident}")
def show_group(ident: str, session: SessionDep, who: OsCaller) -> Any:
    return {"security_group": find_group(session, ident, who)}


@router.post("/v2.0/security-groups", status_code=201)
def create_group(
    body: Annotated[Any, Body()], session: SessionDep, who: OsCaller, state: StateDep
) -> Any:
    wanted = section(body, "security_group")
    name = checked_name(text(wanted, "name", where="security_group"), "security_group.name")
    description = (text(wanted, "description", where="security_group") or "")[:255]
    made = v1_secgroups.create_group(
        s.SecurityGroupCreate(name=name, description=description), session, who, state
    )
    return JSONResponse({"security_group": find_group(session, made.id, who)}, status_code=201)


@router.delete("/v2.0/security-groups/{ident}", status_code=204)
def delete_group(ident: str, session: SessionDep, who: OsCaller) -> Response:
    find_group(session, ident, who)
    v1_secgroups.delete_group(ident, session, who)
    return Response(status_code=204)


# --- rules ---


def rule_docs(session: Session, who: Caller) -> list[dict[str, Any]]:
    return [r for g in group_docs(session, who) for r in g["security_group_rules"]]


@router.get("/v2.0/security-group-rules")
def list_rules(request: Request, session: SessionDep, who: OsCaller) -> Any:
    return listed(request, rule_docs(session, who), "security_group_rules")


@router.get("/v2.0/security-group-rules/{ident}")
def show_rule(ident: str, session: SessionDep, who: OsCaller) -> Any:
    for doc in rule_docs(session, who):
        if doc["id"] == ident:
            return {"security_group_rule": doc}
    raise NotFound(f"Security group rule {ident} does not exist")


def to_rule(wanted: dict[str, Any]) -> s.SecurityGroupRuleCreate:
    where = "security_group_rule"
    if (text(wanted, "ethertype", where=where) or "IPv4") != "IPv4":
        raise BadRequest(f"{where}.ethertype: nubes networks are IPv4", field="ethertype")
    raw = wanted.get("protocol")
    protocol = "any" if raw in (None, "", "any") else PROTOCOLS.get(str(raw).lower())
    if protocol is None:
        raise BadRequest(f"{where}.protocol: {raw!r} is not tcp, udp or icmp", field="protocol")
    remote = text(wanted, "remote_ip_prefix", where=where)
    port_min = integer(wanted, "port_range_min", where)
    port_max = integer(wanted, "port_range_max", where)
    if protocol == "icmp":
        port_min = port_max = None  # ICMP type/code: nubes rules take all of ICMP
    return s.SecurityGroupRuleCreate(
        direction=text(wanted, "direction", required=True, where=where),  # type: ignore[arg-type]
        protocol=protocol,  # type: ignore[arg-type]
        port_min=port_min,
        port_max=port_max,
        remote_ip=None if remote in (None, "0.0.0.0/0") else remote,
        remote_group=text(wanted, "remote_group_id", where=where),
    )


@router.post("/v2.0/security-group-rules", status_code=201)
def create_rule(
    body: Annotated[Any, Body()], session: SessionDep, who: OsCaller, state: StateDep
) -> Any:
    wanted = section(body, "security_group_rule")
    group = text(wanted, "security_group_id", required=True, where="security_group_rule") or ""
    find_group(session, group, who)
    made = v1_secgroups.create_rule(group, to_rule(wanted), session, who, state)
    row = session.get(SecurityGroupRule, made.id)
    assert row is not None
    return JSONResponse({"security_group_rule": rule_doc(row, who.project_id)}, status_code=201)


@router.delete("/v2.0/security-group-rules/{ident}", status_code=204)
def delete_rule(ident: str, session: SessionDep, who: OsCaller, state: StateDep) -> Response:
    v1_secgroups.delete_rule(ident, session, who, state)
    return Response(status_code=204)


# --- floating IPs ---


def fip_docs(session: Session, who: Caller) -> list[dict[str, Any]]:
    rows = session.execute(
        select(ExternalAddress, Port)
        .outerjoin(Port, Port.id == ExternalAddress.port_id)
        .where(ExternalAddress.project_id == who.project_id, ExternalAddress.kind == "floating")
        .order_by(ExternalAddress.created_at, ExternalAddress.id)
    ).all()
    routers = dict(
        session.execute(
            select(ExternalAddress.router_of, ExternalAddress.id).where(
                ExternalAddress.kind == "router", ExternalAddress.project_id == who.project_id
            )
        ).all()
    )
    return [
        standard(f.id, f.project_id, f.created_at)
        | {
            "floating_ip_address": f.address,
            "floating_network_id": f.external_id,
            "router_id": routers.get(p.network_id) if p else None,
            "port_id": p.id if p else None,
            "fixed_ip_address": p.ip if p else None,
            "status": "ACTIVE" if p else "DOWN",
            "port_details": None,
            "dns_domain": "",
            "dns_name": "",
        }
        for f, p in rows
    ]


@router.get("/v2.0/floatingips")
def list_fips(request: Request, session: SessionDep, who: OsCaller) -> Any:
    return listed(request, fip_docs(session, who), "floatingips")


def find_fip(session: Session, ident: str, who: Caller) -> dict[str, Any]:
    for doc in fip_docs(session, who):
        if doc["id"] == ident:
            return doc
    raise NotFound(f"Floating IP {ident} could not be found")


@router.get("/v2.0/floatingips/{ident}")
def show_fip(ident: str, session: SessionDep, who: OsCaller) -> Any:
    return {"floatingip": find_fip(session, ident, who)}


def _port_of(session: Session, port_id: str, who: Caller, fixed: str | None) -> Port:
    port = session.get(Port, port_id)
    inst = session.get(Instance, port.instance_id) if port else None
    if port is None or inst is None or inst.project_id != who.project_id:
        raise NotFound(f"Port {port_id} could not be found.")
    if fixed not in (None, port.ip):
        raise BadRequest(
            f"fixed_ip_address: port {port_id} has {port.ip}", field="fixed_ip_address"
        )
    return port


def attach(session: Session, row: ExternalAddress, port: Port | None) -> None:
    """Point the floating IP at `port` (None: detach); the hosts re-read their NAT."""
    if port is not None:
        taken = session.scalar(select(ExternalAddress).where(ExternalAddress.port_id == port.id))
        if taken is not None and taken.id != row.id:
            raise Conflict(f"port {port.id} already has floating IP {taken.address}")
        net = session.get(Network, port.network_id)
        if net is None or not net.egress:
            raise Conflict("port_id: its network has no egress to the external network")
        external.ensure_router(session, net)
    external.bump_port_gateway(session, row.port_id)
    row.port_id = port.id if port else None
    session.flush()
    external.bump_port_gateway(session, row.port_id)


@router.post("/v2.0/floatingips", status_code=201)
def create_fip(
    body: Annotated[Any, Body()], session: SessionDep, who: OsCaller, state: StateDep
) -> Any:
    wanted = section(body, "floatingip")
    where = "floatingip"
    network = text(wanted, "floating_network_id", required=True, where=where) or ""
    ext = external.external_network(session)
    if ext is None or ext.id != network:
        raise NotFound(f"External network {network} could not be found.")
    port_id = text(wanted, "port_id", where=where)
    port = None
    if port_id:
        port = _port_of(session, port_id, who, text(wanted, "fixed_ip_address", where=where))
    row = external.allocate_floating(session, state.settings, who.project_id)
    if port is not None:
        attach(session, row, port)
    session.commit()
    state.notifier.notify()
    return JSONResponse({"floatingip": find_fip(session, row.id, who)}, status_code=201)


def owned_fip(session: Session, ident: str, who: Caller) -> ExternalAddress:
    row = session.get(ExternalAddress, ident)
    if row is None or row.kind != "floating" or row.project_id != who.project_id:
        raise NotFound(f"Floating IP {ident} could not be found")
    return row


@router.put("/v2.0/floatingips/{ident}")
def update_fip(
    ident: str, body: Annotated[Any, Body()], session: SessionDep, who: OsCaller, state: StateDep
) -> Any:
    wanted = section(body, "floatingip")
    row = owned_fip(session, ident, who)
    if "port_id" in wanted:
        port_id = text(wanted, "port_id", where="floatingip")
        fixed = text(wanted, "fixed_ip_address", where="floatingip")
        attach(session, row, _port_of(session, port_id, who, fixed) if port_id else None)
    session.commit()
    state.notifier.notify()
    return {"floatingip": find_fip(session, ident, who)}


@router.delete("/v2.0/floatingips/{ident}", status_code=204)
def delete_fip(ident: str, session: SessionDep, who: OsCaller, state: StateDep) -> Response:
    row = owned_fip(session, ident, who)
    external.bump_port_gateway(session, row.port_id)
    session.delete(row)
    session.commit()
    state.notifier.notify()
    return Response(status_code=204)
