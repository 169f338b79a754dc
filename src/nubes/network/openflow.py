"""Pure builders of br-int's OpenFlow table (the shape of Neutron's OVS firewall, in short).

Switching is NORMAL: each network has a local VLAN tag on br-int (access ports), its tunnel
ports are access ports of that VLAN and `protected`, so a frame from one peer is never relayed
to another. Table 0 decides what may enter: an unknown port nothing (a port is plugged before
its flows exist, so it never carries a frame unfiltered); our own ports (tunnels, gateways)
everything; an instance's port only frames from its MAC with its addresses (or its allowed
address pairs), DHCP requests, and never a DHCP server's reply or a router advertisement.

Each port's flows carry the port's own cookie, so `ovs-ofctl --bundle replace-flows` of the
whole table (atomic) adds or removes exactly that port's flows.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass

# priorities
P_DROP_SERVER = 60  # DHCP server replies, RAs from an instance
P_ALLOW = 50
P_TRUSTED = 10
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True)
class OfPort:
    name: str
    ofport: int
    trusted: bool = False  # a tunnel or gateway port of ours: no filter
    mac: str = ""
    ip: str = ""
    secured: bool = True
    allowed: tuple[tuple[str, str | None], ...] = ()  # (CIDR, MAC or None: the port's)


def cookie(name: str) -> int:
    """A port's cookie: from its device name, never 0 (the table-miss flow's)."""
    value = int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "big") >> 1
    return value or 1


def _flow(c: int, priority: int, match: str, actions: str) -> str:
    sep = "," if match else ""
    return f"cookie={c:#x},table=0,priority={priority}{sep}{match},actions={actions}"


def port_flows(port: OfPort) -> list[str]:
    c = cookie(port.name)
    inp = f"in_port={port.ofport}"
    if port.trusted or not port.secured:
        return [_flow(c, P_TRUSTED, inp, "NORMAL")]
    flows = [
        _flow(c, P_DROP_SERVER, f"{inp},udp,tp_src=67", "drop"),
        _flow(c, P_DROP_SERVER, f"{inp},icmp6,icmp_type=134", "drop"),
        # a DHCP client has no address yet
        _flow(
            c, P_ALLOW, f"{inp},udp,dl_src={port.mac},nw_src=0.0.0.0,tp_src=68,tp_dst=67", "NORMAL"
        ),
    ]
    pairs = [(f"{ipaddress.IPv4Address(port.ip)}", port.mac)]
    pairs += [(str(ipaddress.IPv4Network(cidr)), mac or port.mac) for cidr, mac in port.allowed]
    for addr, mac in dict.fromkeys(pairs):  # in order, without repeats
        mac = mac.lower()
        if not _MAC_RE.match(mac):  # nothing but a MAC ever reaches a flow's text
            raise ValueError(f"invalid MAC address {mac!r}")
        flows.append(_flow(c, P_ALLOW, f"{inp},ip,dl_src={mac},nw_src={addr}", "NORMAL"))
        flows.append(
            _flow(c, P_ALLOW, f"{inp},arp,dl_src={mac},arp_sha={mac},arp_spa={addr}", "NORMAL")
        )
    return flows


def table(ports: list[OfPort]) -> str:
    """The whole flow table, for `ovs-ofctl --bundle replace-flows br-int -`."""
    lines = ["cookie=0x0,table=0,priority=0,actions=drop"]
    for port in sorted(ports, key=lambda p: p.name):
        if port.ofport > 0:  # -1: OVS could not open the device (yet)
            lines += port_flows(port)
    return "\n".join(lines) + "\n"


def parse_port_ids(value: str) -> tuple[str, str, str, bool, tuple[tuple[str, str | None], ...]]:
    """`<port id> <mac> <ip> [off] [CIDR@MAC|CIDR@-]...` (a port's external_ids:nubes-port)
    -> (id, mac, ip, secured, allowed)."""
    fields = value.split()
    if len(fields) < 3:
        raise ValueError(f"bad nubes-port {value!r}")
    rest = fields[3:]
    pairs = tuple(
        (cidr, None if mac == "-" else mac)
        for cidr, _, mac in (f.partition("@") for f in rest if "@" in f)
    )
    return fields[0], fields[1], fields[2], "off" not in rest, pairs
