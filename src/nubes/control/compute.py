"""Server lifecycle in the database: create (schedule + claim + IPAM), delete, actions."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import Connection, Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from nubes.conf import Settings
from nubes.control import (
    events,
    external,
    generations,
    lookup,
    operations,
    quotas,
    secgroups,
    volumes,
)
from nubes.control.caller import Caller
from nubes.control.desired import UNCONFIRMED
from nubes.control.ports import Nic, allowed_pairs, make_ports, pairs_of, resolve
from nubes.control.state import AppState
from nubes.db.models import (
    ExternalAddress,
    Flavor,
    Host,
    Image,
    Instance,
    InstanceSecurityGroup,
    Keypair,
    Network,
    Port,
    SecurityGroup,
    ServerGroup,
    utcnow,
)
from nubes.errors import Conflict, Forbidden, InvalidInput
from nubes.scheduler import placement
from nubes.scheduler.filters import DEFAULT_FILTERS, HostState, Request
from nubes.scheduler.placement import claim, group_state, released
from nubes.scheduler.weighers import weighers_for
from nubes.schemas import resources as s
from nubes.storage.images import ISO_FORMAT

log = logging.getLogger("nubes.api")
GIB = 1024**3
CLAIM_RETRIES = 5


def host_up(host: Host | None, down_after: float) -> bool:
    if host is None or host.last_heartbeat is None:
        return False
    return host.last_heartbeat >= utcnow() - timedelta(seconds=down_after)


def to_wire(session: Session, inst: Instance, down_after: float) -> s.Server:
    """`down_after`: the host timeout; servers on a down host are UNKNOWN (computed, not stored)."""
    return to_wire_many(session, [inst], down_after)[0]


def _by_id(session: Session, model: Any, ids: set[str | None]) -> dict[str, Any]:
    wanted = sorted(i for i in ids if i)
    if not wanted:
        return {}
    return {r.id: r for r in session.scalars(select(model).where(model.id.in_(wanted)))}


def to_wire_many(session: Session, insts: list[Instance], down_after: float) -> list[s.Server]:
    """Servers for a list's page: a fixed number of queries (ports, hosts, images, flavors,
    groups, security groups) for the whole page, never per server."""
    ids = [i.id for i in insts]
    ports: dict[str, list[tuple[str, Port]]] = {}
    for net_name, port in session.execute(
        select(Network.name, Port)
        .join(Network, Network.id == Port.network_id)
        .where(Port.instance_id.in_(ids))
        .order_by(Port.instance_id, Port.position)
    ).all():
        ports.setdefault(port.instance_id, []).append((net_name, port))
    hosts = _by_id(session, Host, {i.host_id for i in insts})
    images = _by_id(session, Image, {i.image_id for i in insts})
    flavors = _by_id(session, Flavor, {i.flavor_id for i in insts})
    groups = _by_id(session, ServerGroup, {i.group_id for i in insts})
    sec = secgroups.names_of_many(session, ids)
    out = []
    for inst in insts:
        host = hosts.get(inst.host_id) if inst.host_id else None
        out.append(
            _wire(
                inst,
                ports.get(inst.id, []),
                host.name if host else None,
                host is None or host_up(host, down_after),
                images.get(inst.image_id),
                flavors.get(inst.flavor_id),
                groups.get(inst.group_id) if inst.group_id else None,
                sec.get(inst.id, []),
            )
        )
    return out


def _wire(
    inst: Instance,
    ports: list[tuple[str, Port]],
    host_name: str | None,
    host_is_up: bool,
    image: Image | None,
    flavor: Flavor | None,
    group: ServerGroup | None,
    security_groups: list[str],
) -> s.Server:
    """`host_is_up`: False shows a live server UNKNOWN (its host is down)."""
    addresses: dict[str, list[str]] = {}
    for net_name, port in ports:
        addresses.setdefault(net_name, []).append(port.ip)
    nics = [
        s.ServerNic(
            network=net_name,
            ip=port.ip,
            mac=port.mac,
            port_security=port.port_security,
            allowed_addresses=pairs_of(port),
        )
        for net_name, port in ports
    ]
    status = inst.status
    if status != "DELETED" and not host_is_up:
        status = "UNKNOWN"
    return s.Server(
        id=inst.id,
        name=inst.name,
        status=status,
        task_state=inst.task_state,
        host=host_name,
        image=image.name if image else inst.image_id,
        flavor=flavor.name if flavor else inst.flavor_id,
        kind="container" if image is not None and image.disk_format == "rootfs" else "vm",
        group=group.name if group else None,
        addresses=addresses,
        nics=nics,
        security_groups=security_groups,
        key_name=inst.key_name,
        fault=inst.fault,
        created_at=inst.created_at,
        launched_at=inst.launched_at,
        ready_at=inst.ready_at,
        cdrom=bool(image and image.disk_format == ISO_FORMAT and not inst.cdrom_ejected),
    )


@dataclass(frozen=True)
class Resolved:
    """What a create names, looked up within the caller's project."""

    image: Image
    flavor: Flavor
    nics: list[Nic]
    key: Keypair | None
    group: ServerGroup | None
    security_groups: list[SecurityGroup]


def _validate(
    session: Session, body: s.ServerCreate, who: Caller, check_name: bool = True
) -> Resolved:
    if body.host and not who.is_admin:
        raise Forbidden("host: only an admin may choose the host", field="host")
    if body.host:
        lookup.host(session, body.host)  # a name that is no host: 404, not "no valid host"
    image = lookup.owned(session, Image, body.image, who, "image")
    if image.status != "active":
        raise InvalidInput(f"image: {image.name} is not active ({image.status})", field="image")
    flavor = lookup.flavor(session, body.flavor)
    nics = resolve(session, body, who)
    allowed_pairs(body)  # its errors before anything is claimed
    sec = secgroups.for_create(session, body.security_groups, who)
    key = lookup.owned(session, Keypair, body.key_name, who, "key_name") if body.key_name else None
    group = lookup.owned(session, ServerGroup, body.group, who, "group") if body.group else None
    if body.eject_after_install and image.disk_format != ISO_FORMAT:
        raise InvalidInput(
            "eject_after_install: only a server of an installer ISO has a CD to eject",
            field="eject_after_install",
        )
    # an installer CD is not copied to the disk: the flavor's disk is blank whatever its size
    if image.disk_format != ISO_FORMAT and image.virtual_size > flavor.disk_gb * GIB:
        raise InvalidInput(
            f"flavor: {flavor.name} has {flavor.disk_gb} GiB of disk, the image needs "
            f"{-(-image.virtual_size // GIB)} GiB",
            field="flavor",
        )
    taken = select(Instance.id).where(
        Instance.project_id == who.project_id,
        Instance.name == body.name,
        Instance.deleted_at.is_(None),
    )
    if check_name and session.scalar(taken):
        raise Conflict(f"server {body.name!r} already exists", field="name")
    return Resolved(image, flavor, nics, key, group, sec)


def _request(session: Session, body: s.ServerCreate, r: Resolved, lock: bool) -> Request:
    return Request(
        r.flavor.vcpus,
        r.flavor.ram_mb,
        r.flavor.disk_gb,
        force_host=body.host,
        # a host with Geneve if any of its networks is Geneve
        overlay=max((n.network.overlay for n in r.nics), key=lambda o: o == "geneve"),
        group=group_state(session, r.group, lock=lock) if r.group else None,
        runtime="runc" if r.image.disk_format == "rootfs" else "qemu",
    )


_INSTANCES = cast(Table, Instance.__table__)
# RETURNING every column gives the row as written, defaults included (id, times, status)
_INSERT_INSTANCE = insert(Instance).returning(*_INSTANCES.columns)


def schedule(
    conn: Connection, req: Request, settings: Settings, values: dict[str, Any]
) -> tuple[HostState, dict[str, Any]]:
    """The scheduling path of a create: claim a host and INSERT the instance row (`values`, its
    host_id set here) in the transaction of `conn` (the request session's); the host and the
    row as written. bench/scheduler.py measures exactly this. Raises IntegrityError if a racing
    create took the name.
    """
    host = claim(conn, req, settings)
    row = conn.execute(_INSERT_INSTANCE, values | {"host_id": host.id}).one()
    return host, dict(row._mapping)


def _persistent(session: Session, row: dict[str, Any]) -> Instance:
    """The ORM object for an instance row just inserted, without reading it back."""
    inst = Instance(**row)
    make_transient_to_detached(inst)  # as if loaded: every column is set, no history
    session.add(inst)
    return inst


@dataclass(frozen=True)
class Placed:
    """A create's rows as written, for its answer and its bumps: nothing read back."""

    inst: Instance
    host: HostState
    resolved: Resolved
    ports: list[Port]

    def wire(self) -> s.Server:
        """The answer (to_wire's, without its six reads: the claimed host is up)."""
        r = self.resolved
        return _wire(
            self.inst,
            [(nic.network.name, port) for nic, port in zip(r.nics, self.ports, strict=True)],
            self.host.name,
            True,
            r.image,
            r.flavor,
            r.group,
            sorted(g.name for g in r.security_groups),
        )


def _place(session: Session, settings: Settings, body: s.ServerCreate, who: Caller) -> Placed:
    """Validate, claim a host, write the instance and its port (the caller commits)."""
    r = _validate(session, body, who)
    wants = {"servers": 1, "vcpus": r.flavor.vcpus, "ram_mb": r.flavor.ram_mb}
    quotas.check(session, settings, who.project_id, wants)  # before the host's row is locked
    values = dict(
        project_id=who.project_id,
        name=body.name,
        image_id=r.image.id,
        flavor_id=r.flavor.id,
        group_id=r.group.id if r.group else None,
        vcpus=r.flavor.vcpus,
        ram_mb=r.flavor.ram_mb,
        disk_gb=r.flavor.disk_gb,
        key_name=r.key.name if r.key else "",
        public_key=r.key.public_key if r.key else "",
        user_data=body.user_data or "",
        eject_after_install=body.eject_after_install,
    )
    req = _request(session, body, r, lock=True)
    host, row = schedule(session.connection(), req, settings, values)
    inst = _persistent(session, row)
    # one create at a time allocates in a network: a row lock on PostgreSQL, so racing creates
    # on other hosts do not pick the same address (SQLite's write lock already serialises)
    networks = {n.network.id: n.network for n in r.nics}
    if placement.row_locks(session):
        for net_id in sorted(networks):
            session.execute(select(Network.id).where(Network.id == net_id).with_for_update())
    ports = make_ports(session, inst.id, r.nics, body)
    for g in r.security_groups:
        session.add(InstanceSecurityGroup(instance_id=inst.id, group_id=g.id))
    # remote-group rules naming its groups gain its addresses
    secgroups.bump_members_of(session, [g.id for g in r.security_groups])
    for net in networks.values():
        if net.dhcp_host_id is None:  # its first port: the gateway goes beside it
            net.dhcp_host_id = host.id
        external.ensure_router(session, net)
    return Placed(inst, host, r, ports)


def create(
    state: AppState,
    body: s.ServerCreate,
    who: Caller,
    also: Callable[[Session, s.Server], None] | None = None,
) -> s.Server:
    """One transaction: validate, claim a host, allocate the port, write the instance, and
    whatever `also` adds for the answer (the Idempotency-Key's): a crash keeps all or none."""
    for attempt in range(CLAIM_RETRIES):
        with state.sessions() as session:
            try:
                placed = _place(session, state.settings, body, who)
                inst = placed.inst
                operations.begin(session, inst, "create", f"scheduled on {placed.host.name}")
                events.record(session, inst, "create")
                nets = {p.network_id for p in placed.ports}
                generations.instance_changed(session, inst, networks=nets)
                # the answer from what was written, inside the transaction: no read back
                server = placed.wire()
                if also is not None:
                    also(session, server)
                session.commit()
            except IntegrityError:
                # a racing create took the same name, address or MAC: try again from the top
                session.rollback()
                if attempt == CLAIM_RETRIES - 1:
                    raise Conflict("too many concurrent creates; try again") from None
                continue
            return server
    raise AssertionError("unreachable")


def explain(state: AppState, body: s.ServerCreate, who: Caller) -> s.Explanation:
    """The scheduler's whole table for this request, without claiming anything."""
    settings = state.settings
    with state.sessions() as session:
        r = _validate(session, body, who, check_name=False)
        req = _request(session, body, r, lock=False)
        hosts = placement.host_states(session.connection(), settings)
        verdicts = placement.explain(hosts, req, settings)
        session.rollback()
    chosen = next((v.host for v in verdicts if v.weight is not None), None)
    return s.Explanation(
        chosen=chosen,
        filters=[name for name, _ in DEFAULT_FILTERS],
        weighers=[f"{name} x{mult:g}" for name, _, mult in weighers_for(req, settings)],
        hosts=[
            s.HostVerdict(
                host=v.host,
                passed=v.weight is not None,
                weight=v.weight,
                filters=[
                    s.FilterResult(name=n, passed=why is None, reason=why or "")
                    for n, why in v.checks
                ],
            )
            for v in verdicts
        ],
    )


def finish_delete(session: Session, inst: Instance) -> None:
    """The host has let go of everything: free the port, the claim and the name, once.

    A conditional UPDATE marks the instance deleted only if nobody has yet, so two racing
    finishers (an agent's report and a delete on another API server, say) never release its
    claim twice: host usage stays the sum of its live instances.

    A set-based statement per table (an agent's report runs this while users create), and the
    host's row, which creates claim, written last: held only from there to the commit.
    """
    now = utcnow()
    marked = session.execute(
        update(Instance)
        .where(Instance.id == inst.id, Instance.deleted_at.is_(None))
        .values(status="DELETED", task_state="", deleted_at=now)
        .execution_options(synchronize_session=False)
    )
    if marked.rowcount != 1:  # type: ignore[attr-defined]
        session.refresh(inst)  # another transaction finished it
        return
    for key, value in (("status", "DELETED"), ("task_state", ""), ("deleted_at", now)):
        set_committed_value(inst, key, value)
    events.record(session, inst, "delete")
    ports = session.execute(
        select(Port.id, Port.network_id).where(Port.instance_id == inst.id)
    ).all()
    if ports:
        port_ids = [p for p, _ in ports]
        # the project keeps its floating IPs, unassociated
        session.execute(
            update(ExternalAddress)
            .where(ExternalAddress.port_id.in_(port_ids))
            .values(port_id=None)
        )
        session.execute(delete(Port).where(Port.id.in_(port_ids)))
    left = session.scalars(
        delete(InstanceSecurityGroup)
        .where(InstanceSecurityGroup.instance_id == inst.id)
        .returning(InstanceSecurityGroup.group_id)
    ).all()
    secgroups.bump_members_of(session, left)
    volumes.release_from(session, inst.id)  # kept, detached
    operations.finish(session, inst.id, "delete")
    peers = generations.network_hosts(session, {n for _, n in ports})
    session.flush()  # the operation's end, before the host's row is taken
    if inst.host_id:
        generations.bump(session, [inst.host_id], **released(inst.vcpus, inst.ram_mb, inst.disk_gb))
    generations.bump_after_commit(session, peers)


def request_delete(state: AppState, session: Session, inst: Instance, host_up: bool) -> s.Server:
    """The server as it is once the delete is requested (read inside the transaction: a read
    after the commit would begin another, which on SQLite takes the write lock again and holds
    it until the request's session closes)."""
    inst.desired_state = "deleted"
    inst.task_state = "deleting"
    operations.begin(session, inst, "delete")
    if inst.host_id is None or not host_up:
        # nothing on a host to wait for (or its host is down: it is sent a tombstone, and
        # its agent tears the instance down when it comes back)
        finish_delete(session, inst)
        if inst.host_id is not None:
            inst.task_state = UNCONFIRMED
    generations.instance_changed(session, inst)  # its desired state, or its tombstone
    answer = to_wire(session, inst, state.settings.host_down_after)
    session.commit()  # wakes its host's long-poll (control/generations.py)
    return answer


def act(state: AppState, session: Session, inst: Instance, body: s.ServerAction) -> s.Server:
    """The server as the action leaves it (read before the commit, as `request_delete`)."""
    if inst.desired_state == "deleted":
        raise Conflict("server is being deleted")
    if body.action == "eject":
        return _eject(state, session, inst)
    if body.action == "start":
        if inst.status == "ACTIVE" and inst.desired_state == "running":
            raise Conflict("server is already running")
        inst.desired_state, inst.task_state = "running", "starting"
    elif body.action == "stop":
        if inst.status == "SHUTOFF" and inst.desired_state == "stopped":
            raise Conflict("server is already stopped")
        inst.desired_state, inst.task_state = "stopped", "stopping"
    else:
        if inst.status != "ACTIVE":
            raise Conflict(f"server is {inst.status}; only ACTIVE servers can reboot")
        inst.reboot_gen += 1
        inst.hard_reboot = body.hard
        inst.task_state = "rebooting"
    operations.begin(session, inst, body.action)
    generations.instance_changed(session, inst)
    answer = to_wire(session, inst, state.settings.host_down_after)
    session.commit()  # wakes its host's long-poll (control/generations.py)
    return answer


def _eject(state: AppState, session: Session, inst: Instance) -> s.Server:
    """From now on the server boots its disk: the CD leaves a running guest's drive at once and
    is not given to any later start. No operation: nothing for the host to report back."""
    image = session.get(Image, inst.image_id)
    if image is None or image.disk_format != ISO_FORMAT:
        raise Conflict("server has no CD: its image is not an installer ISO", field="action")
    if inst.cdrom_ejected:
        raise Conflict("server's CD is already ejected", field="action")
    inst.cdrom_ejected = True
    generations.instance_changed(session, inst)
    answer = to_wire(session, inst, state.settings.host_down_after)
    session.commit()
    return answer
