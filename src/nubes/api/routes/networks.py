from __future__ import annotations

import ipaddress
import logging

from fastapi import APIRouter
from sqlalchemy import func, select

from nubes.api import lookup
from nubes.api.deps import CallerDep, SessionDep, StateDep
from nubes.api.state import bump_generation
from nubes.db.ipam import gateway_for
from nubes.db.models import Network, Port
from nubes.errors import Conflict, Forbidden, InvalidInput
from nubes.schemas import resources as s

router = APIRouter(prefix="/v1/networks", tags=["networks"])
log = logging.getLogger("nubes.api")

VXLAN_MTU = 1450  # 1500 underlay less the 50 bytes of VXLAN encapsulation
FIRST_VNI = 1000
RESERVED = [
    ipaddress.ip_network(n)
    for n in ("127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "0.0.0.0/8", "240.0.0.0/4")
]


def geneve_supported() -> bool:
    from pathlib import Path

    return Path("/sys/module/geneve").exists()


def parse_cidr(cidr: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(cidr, strict=True)
    except ValueError as exc:
        raise InvalidInput(f"cidr: {exc}", field="cidr") from exc
    if not isinstance(net, ipaddress.IPv4Network):
        raise InvalidInput("cidr: only IPv4 networks are supported", field="cidr")
    if net.prefixlen > 29:
        raise InvalidInput("cidr: too small; use a /29 or larger", field="cidr")
    if net.prefixlen < 16:
        raise InvalidInput("cidr: too large; use a /16 or smaller", field="cidr")
    for reserved in RESERVED:
        if net.overlaps(reserved):
            raise InvalidInput(f"cidr: overlaps reserved range {reserved}", field="cidr")
    return net


def choose_overlay(requested: str | None) -> str:
    if requested == "geneve":
        if not geneve_supported():
            raise InvalidInput(
                "type: this kernel has no Geneve support; use --type vxlan", field="type"
            )
        return "geneve"
    return requested or "vxlan"


def to_wire(n: Network) -> s.Network:
    return s.Network(
        id=n.id,
        name=n.name,
        cidr=n.cidr,
        gateway=n.gateway,
        type=n.overlay,
        vni=n.vni,
        mtu=n.mtu,
        created_at=n.created_at,
    )


@router.get("")
def list_networks(session: SessionDep, who: CallerDep) -> list[s.Network]:
    rows = session.scalars(
        select(Network).where(Network.project_id == who.project_id).order_by(Network.name)
    )
    return [to_wire(n) for n in rows]


@router.get("/{ref}")
def show_network(ref: str, session: SessionDep, who: CallerDep) -> s.Network:
    return to_wire(lookup.owned(session, Network, ref, who, "network"))


@router.post("", status_code=201)
def create_network(body: s.NetworkCreate, session: SessionDep, who: CallerDep) -> s.Network:
    net = parse_cidr(body.cidr)
    if body.vni is not None and not who.is_admin:
        raise Forbidden("vni: only an admin may choose a VNI", field="vni")
    overlay = choose_overlay(body.type)
    mine = session.scalars(select(Network).where(Network.project_id == who.project_id)).all()
    for other in mine:
        if other.name == body.name:
            raise Conflict(f"network {body.name!r} already exists", field="name")
        if ipaddress.ip_network(other.cidr).overlaps(net):
            raise Conflict(f"cidr: overlaps network {other.name} ({other.cidr})", field="cidr")
    vni = body.vni
    if vni is None:
        vni = max(FIRST_VNI - 1, session.scalar(select(func.max(Network.vni))) or 0) + 1
    elif session.scalar(select(Network.id).where(Network.vni == vni)):
        raise Conflict(f"vni: {vni} is in use", field="vni")
    row = Network(
        project_id=who.project_id,
        name=body.name,
        cidr=str(net),
        gateway=gateway_for(str(net)),
        vni=vni,
        overlay=overlay,
        mtu=VXLAN_MTU,
    )
    session.add(row)
    session.commit()
    return to_wire(row)


@router.delete("/{ref}", status_code=204)
def delete_network(ref: str, session: SessionDep, who: CallerDep, state: StateDep) -> None:
    row = lookup.owned(session, Network, ref, who, "network")
    if session.scalar(select(Port.id).where(Port.network_id == row.id)):
        raise Conflict(f"network {row.name!r} has servers on it; delete them first")
    session.delete(row)
    bump_generation(session)
    session.commit()
    state.notifier.notify()
