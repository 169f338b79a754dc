"""The desired state of one host, derived from the database on every request."""

from __future__ import annotations

import functools
import ipaddress
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from nubes.control import external, migrations, secgroups, volumes
from nubes.control.ports import pairs_of
from nubes.control.state import read_meta
from nubes.db.models import Host, Image, Instance, Migration, Network, Port, utcnow
from nubes.schemas import agent as a
from nubes.storage.images import ISO_FORMAT

CLOUD_ID = "cloud_id"  # meta row: this cloud's random id, made at bootstrap
GC_REQUEST = "gc_request"  # meta row: bumped by each `nubes gc` that removes leftovers
# task_state of an instance deleted while its host was down: the host is sent a tombstone for
# it (for TOMBSTONE_TTL), so it tears the instance down when it comes back
UNCONFIRMED = "unconfirmed"
TOMBSTONE_TTL = timedelta(days=30)


def cloud_id(session: Session) -> str:
    value = read_meta(session, CLOUD_ID)
    return f"{value:016x}" if value else ""


def _tombstones(session: Session, host: Host) -> list[str]:
    rows = select(Instance.id).where(
        Instance.host_id == host.id,
        Instance.task_state == UNCONFIRMED,
        Instance.deleted_at >= utcnow() - TOMBSTONE_TTL,
    )
    return sorted(session.scalars(rows))


def _port(p: Port, n: Network, rules: list[a.DesiredRule] | None = None) -> a.DesiredPort:
    return a.DesiredPort(
        id=p.id,
        network_id=n.id,
        mac=p.mac,
        ip=p.ip,
        prefix=ipaddress.ip_network(n.cidr).prefixlen,
        gateway=n.gateway,
        mtu=n.mtu,
        primary=p.position == 0,
        port_security=p.port_security,
        allowed=[a.DesiredAllowed(ip=x.ip, mac=x.mac) for x in pairs_of(p)],
        rules=rules or [],
    )


def _instance(
    inst: Instance, image: Image, ports: list[a.DesiredPort], snapshots: list[str]
) -> a.DesiredInstance:
    return a.DesiredInstance(
        id=inst.id,
        name=inst.name,
        desired_state=inst.desired_state,
        status=inst.status,
        reboot_gen=inst.reboot_gen,
        hard_reboot=inst.hard_reboot,
        vcpus=inst.vcpus,
        ram_mb=inst.ram_mb,
        disk_gb=inst.disk_gb,
        image_id=image.id,
        image_format=image.disk_format,
        image_virtual_size=image.virtual_size,
        image_sha256=image.sha256,
        image_kernel_sha256=image.kernel_sha256,
        image_initrd_sha256=image.initrd_sha256,
        image_cmdline=image.cmdline,
        image_ready_pattern=image.ready_pattern,
        default_user=image.default_user,
        public_keys=[inst.public_key] if inst.public_key else [],
        user_data=inst.user_data or None,
        ports=ports,
        cdrom=image.disk_format == ISO_FORMAT and not inst.cdrom_ejected,
        cdrom_once=inst.eject_after_install,
        rebuild_gen=inst.rebuild_gen,
        resize_gen=inst.resize_gen,
        snapshots=snapshots,
    )


def _instances(session: Session, host: Host) -> list[a.DesiredInstance]:
    """The host's instances with their images and ports: three queries, whatever their number
    (agents ask on every change and every sync period)."""
    live = (Instance.host_id == host.id, Instance.deleted_at.is_(None))
    instances = session.scalars(select(Instance).where(*live)).all()
    image_ids = {i.image_id for i in instances}
    images = {im.id: im for im in session.scalars(select(Image).where(Image.id.in_(image_ids)))}
    ports: dict[str, list[a.DesiredPort]] = defaultdict(list)
    rows = session.execute(
        select(Port, Network)
        .join(Network, Network.id == Port.network_id)
        .join(Instance, Instance.id == Port.instance_id)
        .where(*live)
        .order_by(Port.position, Port.created_at, Port.id)
    )
    rules = secgroups.rules_for(session, [i.id for i in instances])
    for p, n in rows:
        ports[p.instance_id].append(_port(p, n, rules.get(p.instance_id)))
    snaps: dict[str, list[str]] = defaultdict(list)
    queued = select(Image.snapshot_of, Image.id).where(
        Image.snapshot_of.in_([i.id for i in instances]), Image.status == "queued"
    )
    for of, image_id in session.execute(queued.order_by(Image.created_at)):
        snaps[of or ""].append(image_id)
    return [_instance(i, images[i.image_id], ports[i.id], snaps[i.id]) for i in instances]


def dhcp_hostname(instance_id: str) -> str:
    return "i-" + instance_id.replace("-", "")[:12]


def _off_limits(session: Session) -> list[str]:
    """Every host's networks and address (as registered): no forwarded guest packet goes there.
    Collapsed, so a thousand hosts on a few subnets are a few prefixes, not a thousand."""
    nets: set[ipaddress.IPv4Network] = set()
    for address, networks in session.execute(select(Host.address, Host.networks)):
        for text in [address, *networks.split(",")]:
            try:
                nets.add(ipaddress.IPv4Network(text.strip(), strict=False))
            except ValueError:
                continue
    return [str(n) for n in ipaddress.collapse_addresses(nets)]


def _network(
    session: Session, net: Network, host: Host, off_limits: Callable[[], list[str]]
) -> a.DesiredNetwork:
    rows = session.execute(
        select(Port, Instance)
        .join(Instance, Instance.id == Port.instance_id)
        .where(Port.network_id == net.id, Instance.deleted_at.is_(None))
    ).all()
    host_ids = {i.host_id for _, i in rows if i.host_id}
    host_ids |= {net.dhcp_host_id} if net.dhcp_host_id else set()
    others = host_ids - {host.id}
    address = {
        hid: addr
        for hid, addr in session.execute(select(Host.id, Host.address).where(Host.id.in_(others)))
    }
    serve = net.dhcp_host_id == host.id
    return a.DesiredNetwork(
        id=net.id,
        cidr=net.cidr,
        gateway=net.gateway,
        vni=net.vni,
        mtu=net.mtu,
        overlay=net.overlay,
        serve=serve,
        peers=sorted(addr for addr in address.values() if addr),
        # every port elsewhere, so the overlay forwards by the database and never learns
        remote_ports=[
            a.DesiredRemotePort(mac=p.mac, address=address[i.host_id])
            for p, i in rows
            if i.host_id in others and address.get(i.host_id)
        ],
        gateway_host="" if serve else address.get(net.dhcp_host_id or "", ""),
        reservations=[
            a.DesiredReservation(mac=p.mac, ip=p.ip, hostname=dhcp_hostname(p.instance_id))
            for p, _ in rows
        ]
        if serve
        else [],
        metadata=[_metadata(p, i) for p, i in rows] if serve else [],
        external=external.desired_external(session, net, off_limits) if serve else None,
    )


def _metadata(port: Port, inst: Instance) -> a.DesiredMetadata:
    return a.DesiredMetadata(
        instance_id=inst.id,
        name=inst.name,
        project_id=inst.project_id,
        ip=port.ip,
        mac=port.mac,
        key_name=inst.key_name,
        public_keys=[inst.public_key] if inst.public_key else [],
        user_data=inst.user_data or None,
    )


def desired_state(session: Session, host: Host, generation: int) -> a.DesiredState:
    wanted = _instances(session, host)
    migs = migrations.for_host(session, host)
    incoming = _incoming(session, host, migs)
    net_ids = {p.network_id for i in wanted if i.desired_state != "deleted" for p in i.ports}
    net_ids |= {p.network_id for i in incoming.values() for p in i.ports}  # plugged before
    # the host serving a network's gateway and DHCP keeps them while the network exists, as
    # Neutron's DHCP agent does: its next first port needs no bridge or dnsmasq started
    net_ids.update(session.scalars(select(Network.id).where(Network.dhcp_host_id == host.id)))
    nets = session.scalars(select(Network).where(Network.id.in_(net_ids))).all()
    # read only by a host serving a routed network (one read of every host: not for the others)
    off_limits = functools.cache(lambda: _off_limits(session))
    return a.DesiredState(
        generation=generation,
        cloud_id=cloud_id(session),
        host_id=host.id,
        address=host.address,
        instances=wanted,
        networks=[_network(session, n, host, off_limits) for n in nets],
        deleted=_tombstones(session, host),
        gc_request=read_meta(session, GC_REQUEST),
        volumes=volumes.desired(session, host),
        migrations=migrations.desired(session, host, migs, incoming),
    )


def _incoming(session: Session, host: Host, migs: list[Migration]) -> dict[str, a.DesiredInstance]:
    """The instances this host is preparing to take over, as their source sees them."""
    ids = {m.instance_id for m in migs if m.target_host_id == host.id and m.phase != "failed"}
    if not ids:
        return {}
    source = {m.instance_id: m.source_host_id for m in migs}
    out: dict[str, a.DesiredInstance] = {}
    for src in set(source[i] for i in ids):
        src_host = session.get(Host, src)
        if src_host is not None:
            out |= {i.id: i for i in _instances(session, src_host) if i.id in ids}
    return out
