"""Floating IPs: addresses of the external network a project holds, each NATed 1:1 to one
of its servers' ports (on the host serving that port's network) while associated."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import or_, select

from nubes.api.deps import CallerDep, SessionDep, StateDep
from nubes.api.paging import PageDep, paginate
from nubes.control import external, lookup
from nubes.db.models import ExternalAddress, Instance, Network, Port
from nubes.errors import Conflict, NotFound
from nubes.schemas import resources as s

router = APIRouter(prefix="/v1/floating-ips", tags=["floating IPs"])


def _wire(session: SessionDep, row: ExternalAddress) -> s.FloatingIp:
    return _wire_many(session, [row])[0]


def _wire_many(session: SessionDep, rows: list[ExternalAddress]) -> list[s.FloatingIp]:
    """Two queries for a page (external networks' names, associated ports), never per row."""
    nets = sorted({r.external_id for r in rows})
    names = dict(
        session.execute(select(Network.id, Network.name).where(Network.id.in_(nets))).all()
    )
    port_ids = sorted({r.port_id for r in rows if r.port_id})
    ports = {
        port_id: (ip, server)
        for port_id, ip, server in session.execute(
            select(Port.id, Port.ip, Instance.name)
            .outerjoin(Instance, Instance.id == Port.instance_id)
            .where(Port.id.in_(port_ids))
        )
    }
    out = []
    for row in rows:
        fixed, server = ports.get(row.port_id, (None, None)) if row.port_id else (None, None)
        out.append(
            s.FloatingIp(
                id=row.id,
                address=row.address,
                network=names.get(row.external_id, row.external_id),
                server=server,
                fixed_ip=fixed,
                created_at=row.created_at,
            )
        )
    return out


def _mine(session: SessionDep, ref: str, who: CallerDep) -> ExternalAddress:
    row = session.scalar(
        select(ExternalAddress).where(
            or_(ExternalAddress.id == ref, ExternalAddress.address == ref),
            ExternalAddress.kind == "floating",
            ExternalAddress.project_id == who.project_id,
        )
    )
    if row is None:
        raise NotFound(f"floating IP {ref!r} not found", field="floating_ip")
    return row


def _associate(session: SessionDep, row: ExternalAddress, server: str, who: CallerDep) -> None:
    inst = lookup.owned(session, Instance, server, who, "server")
    port = session.scalar(
        select(Port)
        .join(Network, Network.id == Port.network_id)
        .where(Port.instance_id == inst.id, Network.egress.is_(True))
        .order_by(Port.position)
        .limit(1)
    )
    if port is None:
        raise Conflict(
            f"server: {inst.name} has no NIC on a network with egress to the external network",
            field="server",
        )
    taken = session.scalar(select(ExternalAddress).where(ExternalAddress.port_id == port.id))
    if taken is not None and taken.id != row.id:
        raise Conflict(
            f"server: {inst.name} already has floating IP {taken.address}", field="server"
        )
    external.bump_port_gateway(session, row.port_id)  # where it was, if anywhere
    net = session.get(Network, port.network_id)
    if net is not None:
        external.ensure_router(session, net)  # the NAT lives in the network's router
    row.port_id = port.id
    session.flush()
    external.bump_port_gateway(session, port.id)


@router.get("")
def list_floating(session: SessionDep, who: CallerDep, page: PageDep) -> list[s.FloatingIp]:
    query = select(ExternalAddress).where(
        ExternalAddress.project_id == who.project_id, ExternalAddress.kind == "floating"
    )
    rows = paginate(session, query, (ExternalAddress.created_at, ExternalAddress.id), page)
    return _wire_many(session, rows)


@router.post("", status_code=201)
def create_floating(
    body: s.FloatingIpCreate, session: SessionDep, who: CallerDep, state: StateDep
) -> s.FloatingIp:
    row = external.allocate_floating(session, state.settings, who.project_id)
    if body.server:
        _associate(session, row, body.server, who)
    session.commit()
    state.notifier.notify()
    return _wire(session, row)


@router.post("/{ref}/associate")
def associate(
    ref: str, body: s.FloatingIpAssociate, session: SessionDep, who: CallerDep, state: StateDep
) -> s.FloatingIp:
    row = _mine(session, ref, who)
    _associate(session, row, body.server, who)
    session.commit()
    state.notifier.notify()
    return _wire(session, row)


@router.post("/{ref}/disassociate")
def disassociate(ref: str, session: SessionDep, who: CallerDep, state: StateDep) -> s.FloatingIp:
    row = _mine(session, ref, who)
    external.bump_port_gateway(session, row.port_id)
    row.port_id = None
    session.commit()
    state.notifier.notify()
    return _wire(session, row)


@router.delete("/{ref}", status_code=204)
def delete_floating(ref: str, session: SessionDep, who: CallerDep, state: StateDep) -> None:
    row = _mine(session, ref, who)
    external.bump_port_gateway(session, row.port_id)
    session.delete(row)
    session.commit()
    state.notifier.notify()
