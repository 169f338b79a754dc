"""Neutron networks, subnets, ports and routers on nubes' networks.

A nubes network is a Neutron network *and* its one IPv4 subnet (subnet id derived from the
network's). A network created through Neutron has no CIDR yet, so it lives only in
`os_networks` (the OpenStack layer's table) until its subnet arrives; the subnet makes the nubes
network with the same id. Deleting that subnet deletes the nubes network and leaves the Neutron
network pending again. Routers are synthesized: one per tenant network with egress, named by
its router address on the external network."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from fastapi import Body, Request, Response
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from nubes.api.deps import SessionDep, StateDep
from nubes.api.routes import networks as v1_networks
from nubes.control.caller import Caller
from nubes.db.models import (
    ExternalAddress,
    Instance,
    InstanceSecurityGroup,
    Network,
    OsNetwork,
    Port,
)
from nubes.errors import BadRequest, Conflict, Forbidden, NotFound
from nubes.openstack.http import OsCaller, derived_id, flag, section, text
from nubes.openstack.neutron import listed, router, standard
from nubes.schemas import resources as s
from nubes.schemas.common import Name

_NAME = TypeAdapter(Name)


def subnet_id(network_id: str) -> str:
    return derived_id("subnet", network_id)


def network_doc(n: Network | OsNetwork, subnets: list[str], external: bool) -> dict[str, Any]:
    mtu = n.mtu if isinstance(n, Network) else 1450
    return standard(n.id, n.project_id, n.created_at) | {
        "name": n.name,
        "status": "ACTIVE",
        "admin_state_up": True,
        "shared": external,
        "router:external": external,
        "subnets": subnets,
        "mtu": mtu,
        "port_security_enabled": n.port_security if isinstance(n, Network) else True,
        "availability_zones": ["nova"],
        "availability_zone_hints": [],
        "ipv4_address_scope": None,
        "ipv6_address_scope": None,
        "is_default": external,
    }


def visible_networks(session: Session, who: Caller) -> list[Network]:
    return list(
        session.scalars(
            select(Network)
            .where(or_(Network.project_id == who.project_id, Network.external.is_(True)))
            .order_by(Network.external, Network.name)
        )
    )


def pending(session: Session, who: Caller) -> list[OsNetwork]:
    return list(
        session.scalars(
            select(OsNetwork)
            .where(OsNetwork.project_id == who.project_id, OsNetwork.subnet_name.is_(None))
            .order_by(OsNetwork.name)
        )
    )


def all_network_docs(session: Session, who: Caller) -> list[dict[str, Any]]:
    docs = [network_doc(n, [subnet_id(n.id)], n.external) for n in visible_networks(session, who)]
    return docs + [network_doc(p, [], False) for p in pending(session, who)]


@router.get("/v2.0/networks")
def list_networks(request: Request, session: SessionDep, who: OsCaller) -> Any:
    return listed(request, all_network_docs(session, who), "networks")


def find_network(session: Session, ident: str, who: Caller) -> Network | OsNetwork:
    net = session.get(Network, ident)
    if net is not None and (net.project_id == who.project_id or net.external):
        return net
    row = session.get(OsNetwork, ident)
    if row is not None and row.project_id == who.project_id and row.subnet_name is None:
        return row
    raise NotFound(f"Network {ident} could not be found.")


@router.get("/v2.0/networks/{ident}")
def show_network(ident: str, session: SessionDep, who: OsCaller) -> Any:
    n = find_network(session, ident, who)
    if isinstance(n, Network):
        return {"network": network_doc(n, [subnet_id(n.id)], n.external)}
    return {"network": network_doc(n, [], False)}


def checked_name(value: str | None, field: str) -> str:
    try:
        return _NAME.validate_python(value)
    except ValidationError as exc:
        raise BadRequest(f"{field}: {exc.errors()[0]['msg']}", field=field) from None


@router.post("/v2.0/networks", status_code=201)
def create_network(body: Annotated[Any, Body()], session: SessionDep, who: OsCaller) -> Any:
    wanted = section(body, "network")
    name = checked_name(text(wanted, "name", where="network"), "network.name")
    if flag(wanted.get("router:external")):
        raise Forbidden("router:external: an admin declares it with `nubes network create`")
    taken = session.scalar(
        select(Network.id).where(Network.project_id == who.project_id, Network.name == name)
    ) or session.scalar(
        select(OsNetwork.id).where(
            OsNetwork.project_id == who.project_id,
            OsNetwork.name == name,
            OsNetwork.subnet_name.is_(None),
        )
    )
    if taken:
        raise Conflict(f"network {name!r} already exists", field="name")
    row = OsNetwork(project_id=who.project_id, name=name)
    session.add(row)
    session.commit()
    return JSONResponse({"network": network_doc(row, [], False)}, status_code=201)


@router.delete("/v2.0/networks/{ident}", status_code=204)
def delete_network(ident: str, session: SessionDep, who: OsCaller, state: StateDep) -> Response:
    n = find_network(session, ident, who)
    if isinstance(n, Network):
        if n.project_id != who.project_id:
            raise Forbidden("the external network is the admin's")
        v1_networks.delete_network(n.id, session, who, state)
    extra = session.get(OsNetwork, ident)
    if extra is not None:
        session.delete(extra)
        session.commit()
    return Response(status_code=204)


# --- subnets: one per nubes network ---


def subnet_doc(n: Network, name: str) -> dict[str, Any]:
    hosts = ipaddress.ip_network(n.cidr).hosts()
    first = next(hosts)
    *_, last = hosts
    start = first + 1 if str(first) == n.gateway else first
    return standard(subnet_id(n.id), n.project_id, n.created_at) | {
        "name": name,
        "network_id": n.id,
        "cidr": n.cidr,
        "ip_version": 4,
        "gateway_ip": n.gateway,
        "enable_dhcp": True,
        "allocation_pools": [{"start": str(start), "end": str(last)}],
        "dns_nameservers": [],
        "host_routes": [],
        "subnetpool_id": None,
        "ipv6_ra_mode": None,
        "ipv6_address_mode": None,
        "service_types": [],
    }


def subnet_docs(session: Session, who: Caller) -> list[dict[str, Any]]:
    nets = visible_networks(session, who)
    names = dict(
        session.execute(
            select(OsNetwork.id, OsNetwork.subnet_name).where(
                OsNetwork.id.in_([n.id for n in nets])
            )
        ).all()
    )
    return [subnet_doc(n, names.get(n.id) or n.name) for n in nets]


@router.get("/v2.0/subnets")
def list_subnets(request: Request, session: SessionDep, who: OsCaller) -> Any:
    return listed(request, subnet_docs(session, who), "subnets")


def find_subnet(session: Session, ident: str, who: Caller) -> dict[str, Any]:
    for doc in subnet_docs(session, who):
        if doc["id"] == ident:
            return doc
    raise NotFound(f"Subnet {ident} could not be found.")


@router.get("/v2.0/subnets/{ident}")
def show_subnet(ident: str, session: SessionDep, who: OsCaller) -> Any:
    return {"subnet": find_subnet(session, ident, who)}


def _check_subnet(wanted: dict[str, Any]) -> str:
    if str(wanted.get("ip_version", 4)) != "4":
        raise BadRequest("subnet.ip_version: nubes networks are IPv4", field="ip_version")
    cidr = text(wanted, "cidr", required=True, where="subnet") or ""
    net = v1_networks.parse_cidr(cidr)
    gateway = wanted.get("gateway_ip")
    expected = str(next(net.hosts()))
    if gateway not in (None, expected):
        raise BadRequest(
            f"subnet.gateway_ip: a nubes network's gateway is its first address ({expected})",
            field="gateway_ip",
        )
    if wanted.get("enable_dhcp") is not None and flag(wanted["enable_dhcp"]) is False:
        raise BadRequest(
            "subnet.enable_dhcp: nubes networks always serve DHCP", field="enable_dhcp"
        )
    return str(net)


@router.post("/v2.0/subnets", status_code=201)
def create_subnet(
    body: Annotated[Any, Body()], session: SessionDep, who: OsCaller, state: StateDep
) -> Any:
    wanted = section(body, "subnet")
    net_id = text(wanted, "network_id", required=True, where="subnet") or ""
    name = text(wanted, "name", where="subnet") or ""
    if name:
        checked_name(name, "subnet.name")
    cidr = _check_subnet(wanted)
    target = find_network(session, net_id, who)
    if isinstance(target, Network):
        raise Conflict(f"network {target.name!r} has its subnet already (one per network)")
    made = v1_networks.create(
        s.NetworkCreate(name=target.name, cidr=cidr), session, who, state, network_id=target.id
    )
    row = session.get(OsNetwork, target.id)
    if row is not None:
        row.subnet_name = name
        session.commit()
    net = session.get(Network, made.id)
    assert net is not None
    return JSONResponse({"subnet": subnet_doc(net, name or net.name)}, status_code=201)


@router.delete("/v2.0/subnets/{ident}", status_code=204)
def delete_subnet(ident: str, session: SessionDep, who: OsCaller, state: StateDep) -> Response:
    doc = find_subnet(session, ident, who)
    net = session.get(Network, doc["network_id"])
    if net is None or net.project_id != who.project_id:
        raise Forbidden("the external network's subnet is the admin's")
    name = net.name
    v1_networks.delete_network(net.id, session, who, state)
    row = session.get(OsNetwork, doc["network_id"])
    if row is None:
        row = OsNetwork(id=doc["network_id"], project_id=who.project_id, name=name)
        session.add(row)
    row.subnet_name = None  # the Neutron network stays, without a subnet
    session.commit()
    return Response(status_code=204)


# --- ports: the NICs of the project's servers ---


def port_docs(session: Session, who: Caller) -> list[dict[str, Any]]:
    rows = session.execute(
        select(Port, Instance)
        .join(Instance, Instance.id == Port.instance_id)
        .where(Instance.project_id == who.project_id, Instance.deleted_at.is_(None))
        .order_by(Port.created_at, Port.id)
    ).all()
    groups: dict[str, list[str]] = {}
    for inst_id, group_id in session.execute(
        select(InstanceSecurityGroup.instance_id, InstanceSecurityGroup.group_id).where(
            InstanceSecurityGroup.instance_id.in_({i.id for _, i in rows})
        )
    ):
        groups.setdefault(inst_id, []).append(group_id)
    return [
        standard(p.id, i.project_id, p.created_at)
        | {
            "name": "",
            "network_id": p.network_id,
            "mac_address": p.mac,
            "fixed_ips": [{"subnet_id": subnet_id(p.network_id), "ip_address": p.ip}],
            "device_id": i.id,
            "device_owner": "compute:nova",
            "status": "ACTIVE" if i.status == "ACTIVE" else "DOWN",
            "admin_state_up": True,
            "port_security_enabled": p.port_security,
            "allowed_address_pairs": [],
            "security_groups": sorted(groups.get(i.id, [])) if p.port_security else [],
            "binding:vnic_type": "normal",
        }
        for p, i in rows
    ]


@router.get("/v2.0/ports")
def list_ports(request: Request, session: SessionDep, who: OsCaller) -> Any:
    return listed(request, port_docs(session, who), "ports")


@router.get("/v2.0/ports/{ident}")
def show_port(ident: str, session: SessionDep, who: OsCaller) -> Any:
    for doc in port_docs(session, who):
        if doc["id"] == ident:
            return {"port": doc}
    raise NotFound(f"Port {ident} could not be found.")


# --- routers: each tenant network's way out, as nubes makes it ---


def router_docs(session: Session, who: Caller) -> list[dict[str, Any]]:
    rows = session.execute(
        select(ExternalAddress, Network)
        .join(Network, Network.id == ExternalAddress.router_of)
        .where(ExternalAddress.project_id == who.project_id, ExternalAddress.kind == "router")
        .order_by(Network.name)
    ).all()
    return [
        standard(r.id, r.project_id, r.created_at)
        | {
            "name": f"{n.name}-router",
            "status": "ACTIVE",
            "admin_state_up": True,
            "external_gateway_info": {
                "network_id": r.external_id,
                "enable_snat": True,
                "external_fixed_ips": [
                    {"subnet_id": subnet_id(r.external_id), "ip_address": r.address}
                ],
            },
            "routes": [],
            "distributed": False,
            "ha": False,
            "availability_zones": ["nova"],
        }
        for r, n in rows
    ]


@router.get("/v2.0/routers")
def list_routers(request: Request, session: SessionDep, who: OsCaller) -> Any:
    return listed(request, router_docs(session, who), "routers")


@router.get("/v2.0/routers/{ident}")
def show_router(ident: str, session: SessionDep, who: OsCaller) -> Any:
    for doc in router_docs(session, who):
        if doc["id"] == ident:
            return {"router": doc}
    raise NotFound(f"Router {ident} could not be found.")
