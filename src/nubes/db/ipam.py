"""Addresses and MACs for ports: never handed out twice (unique constraints back this up)."""

from __future__ import annotations

import ipaddress
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from nubes.db.models import Network, Port
from nubes.errors import Conflict


def gateway_for(cidr: str) -> str:
    return str(next(ipaddress.ip_network(cidr).hosts()))


# Networks up to this size get their lowest free address (one read of their ports). Larger ones
# are allocated next-fit from a per-process hint, each probe one index lookup, so a create does
# not read every port of a network with thousands of them (see bench/scheduler.py).
SCAN_LIMIT = 1024
PROBES = 32
_hint: dict[str, int] = {}  # network id -> the address to try first (a hint, never trusted)


def _lowest_free(session: Session, network: Network) -> str:
    used = set(session.scalars(select(Port.ip).where(Port.network_id == network.id)))
    used.add(network.gateway)
    for addr in ipaddress.ip_network(network.cidr).hosts():
        if str(addr) not in used:
            return str(addr)
    raise Conflict(f"network {network.name} has no free addresses", field="network")


def allocate_ip(session: Session, network: Network) -> str:
    """Callers serialise allocations per network (row lock); the unique index backs it up."""
    net = ipaddress.ip_network(network.cidr)
    if net.num_addresses > SCAN_LIMIT:
        first = int(net.network_address) + 1
        size = net.num_addresses - 2
        start = _hint.get(network.id, 0)
        for k in range(PROBES):
            ip = str(ipaddress.IPv4Address(first + (start + k) % size))
            taken = select(Port.id).where(Port.network_id == network.id, Port.ip == ip)
            if ip != network.gateway and session.scalar(taken) is None:
                _hint[network.id] = (start + k + 1) % size
                return ip
    ip = _lowest_free(session, network)
    _hint[network.id] = int(ipaddress.IPv4Address(ip)) - int(net.network_address)
    return ip


def allocate_mac(session: Session) -> str:
    # 52:54:00 is QEMU's locally administered prefix; the unique index catches collisions.
    for _ in range(16):
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        if session.scalar(select(Port.id).where(Port.mac == mac)) is None:
            return mac
    raise Conflict("could not find a free MAC address")
