"""A server's NICs: which networks, which addresses and MACs (asked for, or allocated), and
their port security. Errors name the field (networks[1].ip) and never leave a half-made port."""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from nubes.control import lookup
from nubes.control.caller import Caller
from nubes.db.ipam import allocate_ip, allocate_mac
from nubes.db.models import Network, Port
from nubes.errors import Conflict, InvalidInput
from nubes.schemas import resources as s

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True)
class Nic:
    network: Network
    ip: str | None  # asked for
    mac: str | None
    field: str  # where it came from, for errors: networks[0]


def requested(body: s.ServerCreate) -> list[s.NicRequest]:
    if body.network and body.networks:
        raise InvalidInput("networks: give `network` or `networks`, not both", field="networks")
    if body.network:
        return [s.NicRequest(network=body.network)]
    if not body.networks:
        raise InvalidInput("networks: a server needs a network", field="networks")
    return body.networks


def check_mac(mac: str, field: str) -> str:
    mac = mac.strip().lower().replace("-", ":")
    if not _MAC_RE.match(mac):
        raise InvalidInput(
            f"{field}: {mac!r} is not a MAC address (52:54:00:12:34:56)", field=field
        )
    first = int(mac[:2], 16)
    if first & 1:
        raise InvalidInput(
            f"{field}: {mac} is a multicast MAC; a NIC needs a unicast one", field=field
        )
    if mac == "00:00:00:00:00:00":
        raise InvalidInput(f"{field}: the all-zero MAC is not a NIC's", field=field)
    return mac


def resolve(session: Session, body: s.ServerCreate, who: Caller) -> list[Nic]:
    nics = []
    for i, req in enumerate(requested(body)):
        field = "network" if body.network else f"networks[{i}]"
        net = lookup.owned(session, Network, req.network, who, "network")
        if net.external:
            raise InvalidInput(
                f"{field}: {net.name} is an external network; servers go on tenant networks "
                "and are reached from outside by a floating IP",
                field=field,
            )
        mac = check_mac(req.mac, f"{field}.mac") if req.mac else None
        ip = check_fixed_ip(net, req.ip, f"{field}.ip") if req.ip else None
        nics.append(Nic(net, ip, mac, field))
    seen_ips = [(n.network.id, n.ip) for n in nics if n.ip]
    if len(seen_ips) != len(set(seen_ips)):
        raise InvalidInput("networks: the same address asked for twice", field="networks")
    macs = [n.mac for n in nics if n.mac]
    if len(macs) != len(set(macs)):
        raise InvalidInput("networks: the same MAC asked for twice", field="networks")
    return nics


def check_fixed_ip(net: Network, ip: str, field: str) -> str:
    try:
        addr = ipaddress.IPv4Address(ip.strip())
    except ValueError:
        raise InvalidInput(f"{field}: {ip!r} is not an IPv4 address", field=field) from None
    cidr = ipaddress.IPv4Network(net.cidr)
    if addr not in cidr:
        raise InvalidInput(f"{field}: {addr} is outside {net.name} ({cidr})", field=field)
    if addr in (cidr.network_address, cidr.broadcast_address):
        raise InvalidInput(f"{field}: {addr} is not a host address of {cidr}", field=field)
    if str(addr) == net.gateway:
        raise InvalidInput(f"{field}: {addr} is the gateway of {net.name}", field=field)
    return str(addr)


def allowed_pairs(body: s.ServerCreate) -> str:
    """The allowed address pairs as stored (JSON), validated."""
    pairs = []
    for i, pair in enumerate(body.allowed_addresses):
        field = f"allowed_addresses[{i}]"
        try:
            net = ipaddress.IPv4Network(pair.ip.strip(), strict=False)
        except ValueError:
            raise InvalidInput(
                f"{field}.ip: {pair.ip!r} is not an IPv4 address or CIDR", field=f"{field}.ip"
            ) from None
        mac = check_mac(pair.mac, f"{field}.mac") if pair.mac else None
        pairs.append({"ip": str(net), "mac": mac})
    return json.dumps(pairs)


def make_ports(
    session: Session, instance_id: str, nics: list[Nic], body: s.ServerCreate
) -> list[Port]:
    """The ports, in order (the caller holds each network's allocation lock); returned in
    their NICs' order, as written."""
    pairs = allowed_pairs(body)
    made: dict[int, Port] = {}
    # the asked-for addresses first: an allocated one never takes an address asked for later
    order = sorted(enumerate(nics), key=lambda pn: pn[1].ip is None)
    for position, nic in order:
        if nic.ip is not None:
            taken = select(Port.id).where(Port.network_id == nic.network.id, Port.ip == nic.ip)
            if session.scalar(taken):
                raise Conflict(
                    f"{nic.field}.ip: {nic.ip} is in use on {nic.network.name}",
                    field=f"{nic.field}.ip",
                )
        if nic.mac is not None and session.scalar(select(Port.id).where(Port.mac == nic.mac)):
            raise Conflict(f"{nic.field}.mac: {nic.mac} is in use", field=f"{nic.field}.mac")
        made[position] = Port(
            network_id=nic.network.id,
            instance_id=instance_id,
            mac=nic.mac or allocate_mac(session),
            ip=nic.ip or allocate_ip(session, nic.network),
            position=position,
            port_security=body.port_security and nic.network.port_security,
            allowed_addresses=pairs,
        )
        session.add(made[position])
        session.flush()  # the next NIC's allocation sees this one
    return [made[p] for p in sorted(made)]


def pairs_of(port: Port) -> list[s.AllowedAddress]:
    try:
        return [s.AllowedAddress(**p) for p in json.loads(port.allowed_addresses or "[]")]
    except (ValueError, TypeError):
        return []
