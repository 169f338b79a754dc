"""The external network: where tenant networks' egress NAT leaves and floating IPs come from.

An admin declares it (`nubes network create public --external --cidr ... --uplink IF`); its
gateway is the outside router. Each tenant network with egress gets a router address of it the
first time a server is placed on it; a floating IP is an address of it a project holds, NATed
1:1 to one of its servers' ports by the namespace of that port's network on its gateway host.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from nubes.conf import Settings
from nubes.control import generations, quotas
from nubes.db.models import ExternalAddress, Network, Port
from nubes.errors import Conflict
from nubes.schemas import agent as a


def external_network(session: Session) -> Network | None:
    return session.scalar(
        select(Network).where(Network.external.is_(True)).order_by(Network.created_at).limit(1)
    )


def _free_address(session: Session, ext: Network) -> str:
    used = set(
        session.scalars(
            select(ExternalAddress.address).where(ExternalAddress.external_id == ext.id)
        )
    )
    used.add(ext.gateway)
    for addr in ipaddress.ip_network(ext.cidr).hosts():
        if str(addr) not in used:
            return str(addr)
    raise Conflict(f"external network {ext.name} has no free addresses", field="network")


def ensure_router(session: Session, net: Network) -> None:
    """The network's router address on the external network, if it has egress and there is
    one (the caller commits)."""
    if not net.egress or net.external:
        return
    ext = external_network(session)
    if ext is None:
        return
    if session.scalar(select(ExternalAddress.id).where(ExternalAddress.router_of == net.id)):
        return
    session.add(
        ExternalAddress(
            external_id=ext.id,
            address=_free_address(session, ext),
            project_id=net.project_id,
            kind="router",
            router_of=net.id,
        )
    )
    session.flush()


def allocate_floating(session: Session, settings: Settings, project_id: str) -> ExternalAddress:
    ext = external_network(session)
    if ext is None:
        raise Conflict("no external network: an admin declares one first", field="network")
    quotas.check(session, settings, project_id, {"floating_ips": 1})
    row = ExternalAddress(
        external_id=ext.id,
        address=_free_address(session, ext),
        project_id=project_id,
        kind="floating",
    )
    session.add(row)
    session.flush()
    return row


def bump_port_gateway(session: Session, port_id: str | None) -> None:
    """The host serving the port's network re-reads its NAT."""
    if not port_id:
        return
    net_id = session.scalar(select(Port.network_id).where(Port.id == port_id))
    if net_id:
        generations.bump_after_commit(session, generations.network_hosts(session, [net_id]))


def desired_external(
    session: Session, net: Network, off_limits: Callable[[], list[str]]
) -> a.DesiredExternal | None:
    """What the serving host of a tenant network needs for its egress and floating IPs."""
    router = session.scalar(select(ExternalAddress).where(ExternalAddress.router_of == net.id))
    if router is None or not net.egress:
        return None
    ext = session.get(Network, router.external_id)
    if ext is None:
        return None
    floating = session.execute(
        select(ExternalAddress.address, Port.ip)
        .join(Port, Port.id == ExternalAddress.port_id)
        .where(Port.network_id == net.id, ExternalAddress.kind == "floating")
        .order_by(ExternalAddress.address)
    ).all()
    return a.DesiredExternal(
        uplink=ext.uplink,
        address=router.address,
        prefix=ipaddress.ip_network(ext.cidr).prefixlen,
        gateway=ext.gateway,
        floating=[a.DesiredFloating(address=f, fixed=ip) for f, ip in floating],
        off_limits=off_limits(),
    )
