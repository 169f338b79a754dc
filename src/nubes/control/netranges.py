"""The hosts' own network is off limits to tenants: a tenant network may not overlap any range a
host has an address in (its underlay, its LAN, as it registered them), any host's or the API
machine's address, or link-local. Otherwise a host's routes to its peers, or the API, would go
into a tenant's network."""

from __future__ import annotations

import ipaddress
import json
import subprocess

from sqlalchemy import select
from sqlalchemy.orm import Session

from nubes.db.models import Host, Network
from nubes.errors import InvalidInput

IPv4Net = ipaddress.IPv4Network


def _parse(cidrs: str) -> list[IPv4Net]:
    found = []
    for text in cidrs.split(","):
        try:
            net = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            continue
        if isinstance(net, IPv4Net):
            found.append(net)
    return found


def api_ranges() -> tuple[IPv4Net, ...]:
    """The networks the API's machine has addresses in (asked at each network create: one
    `ip` run, and a machine's addresses may change)."""
    try:
        out = subprocess.run(
            ["ip", "-j", "-4", "addr"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
        links = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return ()
    nets = set()
    for link in links:
        if link.get("ifname") == "lo":
            continue
        for a in link.get("addr_info", []):
            try:
                nets.add(ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}").network)
            except (KeyError, ValueError):
                continue
    return tuple(sorted(nets))


def check_tenant_cidr(session: Session, net: IPv4Net) -> None:
    """Raise InvalidInput (422, field cidr) if net reaches into the hosts' own network."""
    for name, address, networks in session.execute(
        select(Host.name, Host.address, Host.networks).order_by(Host.name)
    ):
        for other in _parse(networks) + _parse(address):
            if net.overlaps(other):
                raise InvalidInput(
                    f"cidr: {net} overlaps {other}, the network of host {name}; "
                    "choose a range no host uses",
                    field="cidr",
                )
    for name, cidr in session.execute(
        select(Network.name, Network.cidr).where(Network.external.is_(True))
    ):
        if net.overlaps(ipaddress.IPv4Network(cidr)):
            raise InvalidInput(
                f"cidr: {net} overlaps {cidr}, the external network {name}", field="cidr"
            )
    for other in api_ranges():
        if net.overlaps(other):
            raise InvalidInput(
                f"cidr: {net} overlaps {other}, a network of the API's machine; "
                "choose a range no host uses",
                field="cidr",
            )
