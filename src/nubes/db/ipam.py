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


def allocate_ip(session: Session, network: Network) -> str:
    used = set(session.scalars(select(Port.ip).where(Port.network_id == network.id)))
    used.add(network.gateway)
    for addr in ipaddress.ip_network(network.cidr).hosts():
        if str(addr) not in used:
            return str(addr)
    raise Conflict(f"network {network.name} has no free addresses", field="network")


def allocate_mac(session: Session) -> str:
    # 52:54:00 is QEMU's locally administered prefix; the unique index catches collisions.
    for _ in range(16):
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        if session.scalar(select(Port.id).where(Port.mac == mac)) is None:
            return mac
    raise Conflict("could not find a free MAC address")
