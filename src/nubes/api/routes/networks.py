from __future__ import annotations

import ipaddress
import logging

from fastapi import APIRouter
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from nubes.api.deps import Caller, CallerDep, SessionDep, StateDep
from nubes.api.paging import PageDep, paginate
from nubes.control import generations, lookup, netranges, quotas
from nubes.control.state import AppState
from nubes.db.ipam import gateway_for
from nubes.db.models import ExternalAddress, Host, Network, Port
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


def hosts_without_geneve(session: Session) -> list[str] | None:
    """Names of the hosts whose kernel has no Geneve (as their agents reported it); None when
    no host is registered, so nothing is known."""
    rows = session.execute(select(Host.name, Host.overlays).order_by(Host.name)).all()
    if not rows:
        return None
    return [name for name, overlays in rows if "geneve" not in overlays.split(",")]


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


def choose_overlay(requested: str | None, lacking: list[str] | None) -> tuple[str, str]:
    """(overlay, note): Geneve where every host has it, else VXLAN."""
    if requested == "vxlan":
        return "vxlan", ""
    if lacking is None:
        why = "no host has registered yet to say it has Geneve"
    elif lacking:
        more = f" and {len(lacking) - 5} more" if len(lacking) > 5 else ""
        shown = ", ".join(lacking[:5]) + more
        why = f"the kernel of {shown} has no Geneve"
    else:
        return "geneve", ""
    if requested == "geneve":
        raise InvalidInput(f"type: Geneve is not available: {why}; use --type vxlan", field="type")
    return "vxlan", f"type: VXLAN, since {why}"


def to_wire(session: Session, n: Network, note: str = "") -> s.Network:
    return to_wire_many(session, [n], note)[0]


def to_wire_many(session: Session, rows: list[Network], note: str = "") -> list[s.Network]:
    """Two queries for a page (routers' addresses, serving hosts' names), never per network."""
    ids = [n.id for n in rows]
    routers = dict(
        session.execute(
            select(ExternalAddress.router_of, ExternalAddress.address).where(
                ExternalAddress.router_of.in_(ids)
            )
        ).all()
    )
    serving = sorted({n.dhcp_host_id for n in rows if n.dhcp_host_id})
    hosts = dict(session.execute(select(Host.id, Host.name).where(Host.id.in_(serving))).all())
    return [
        s.Network(
            id=n.id,
            name=n.name,
            cidr=n.cidr,
            gateway=n.gateway,
            type=n.overlay,
            vni=n.vni,
            mtu=n.mtu,
            gateway_host=hosts.get(n.dhcp_host_id) if n.dhcp_host_id else None,
            port_security=n.port_security,
            egress=n.egress,
            external=n.external,
            uplink=n.uplink,
            router_ip=routers.get(n.id),
            note=note,
            created_at=n.created_at,
        )
        for n in rows
    ]


@router.get("")
def list_networks(session: SessionDep, who: CallerDep, page: PageDep) -> list[s.Network]:
    # the external network is everyone's to see, as in Neutron
    query = select(Network).where(
        or_(Network.project_id == who.project_id, Network.external.is_(True))
    )
    rows = paginate(session, query, (Network.created_at, Network.id), page)
    return to_wire_many(session, rows)


@router.get("/{ref}")
def show_network(ref: str, session: SessionDep, who: CallerDep) -> s.Network:
    return to_wire(session, lookup.owned(session, Network, ref, who, "network"))


@router.post("", status_code=201)
def create_network(
    body: s.NetworkCreate, session: SessionDep, who: CallerDep, state: StateDep
) -> s.Network:
    return create(body, session, who, state)


def create(
    body: s.NetworkCreate,
    session: Session,
    who: Caller,
    state: AppState,
    network_id: str | None = None,
) -> s.Network:
    """`network_id`: the id it gets (the OpenStack layer's, for a network made by its subnet)."""
    net = parse_cidr(body.cidr)
    gateway = gateway_for(str(net))
    if body.external:
        if not who.is_admin:
            raise Forbidden(
                "external: only an admin declares an external network", field="external"
            )
        if not body.uplink:
            raise InvalidInput(
                "uplink: an external network needs the interface each host reaches it through",
                field="uplink",
            )
        if body.gateway:
            try:
                gw = ipaddress.IPv4Address(body.gateway)
            except ValueError:
                raise InvalidInput(
                    f"gateway: {body.gateway!r} is not an address", field="gateway"
                ) from None
            if gw not in net:
                raise InvalidInput(f"gateway: {gw} is outside {net}", field="gateway")
            gateway = str(gw)
        if session.scalar(select(Network.id).where(Network.external.is_(True))):
            raise Conflict("external: there is an external network already", field="external")
    else:
        if body.uplink or body.gateway:
            raise InvalidInput("uplink: only an external network has one", field="uplink")
        netranges.check_tenant_cidr(session, net)
        quotas.check(session, state.settings, who.project_id, {"networks": 1})
    if body.vni is not None and not who.is_admin:
        raise Forbidden("vni: only an admin may choose a VNI", field="vni")
    overlay, note = choose_overlay(body.type, hosts_without_geneve(session))
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
        **({"id": network_id} if network_id else {}),
        project_id=who.project_id,
        name=body.name,
        cidr=str(net),
        gateway=gateway,
        vni=vni,
        overlay=overlay,
        mtu=VXLAN_MTU,
        port_security=body.port_security,
        egress=body.egress,
        external=body.external,
        uplink=body.uplink or "",
    )
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        # a racing create took the same name or VNI (PostgreSQL lets both read the same max)
        session.rollback()
        raise Conflict("another network was created at the same time; try again") from None
    if note:
        log.info("network %s: %s", row.name, note)
    return to_wire(session, row, note)


@router.delete("/{ref}", status_code=204)
def delete_network(ref: str, session: SessionDep, who: CallerDep, state: StateDep) -> None:
    row = lookup.owned(session, Network, ref, who, "network")
    if session.scalar(select(Port.id).where(Port.network_id == row.id)):
        raise Conflict(f"network {row.name!r} has servers on it; delete them first")
    if row.external and session.scalar(
        select(ExternalAddress.id).where(ExternalAddress.external_id == row.id)
    ):
        raise Conflict(f"network {row.name!r} has floating IPs and routers; release them first")
    for router in session.scalars(
        select(ExternalAddress).where(ExternalAddress.router_of == row.id)
    ):
        session.delete(router)
    session.flush()
    generations.bump_after_commit(session, [row.dhcp_host_id])  # it keeps the bridge till now
    session.delete(row)
    session.commit()
    state.notifier.notify()
