"""Pure builders of br-int's OpenFlow table (the shape of Neutron's OVS firewall, in short).

Switching is NORMAL: each network has a local VLAN tag on br-int (access ports), its tunnel
ports are access ports of that VLAN and `protected`, so a frame from one peer is never relayed
to another. Table 0 decides what may enter: an unknown port nothing (a port is plugged before
its flows exist, so it never carries a frame unfiltered); our own ports (tunnels, gateways)
everything; an instance's port only frames from its MAC with its addresses (or its allowed
address pairs), DHCP requests, and never a DHCP server's reply or a router advertisement.

IPv4 to a group address (broadcast, multicast: the group bit of the destination MAC) never
goes to NORMAL's flood, which would skip every receiver's rules: per network, one flow
(`flood_flows`) hands a copy to each port of its VLAN through that port's own check (table
40, the port number in reg7): a guest's security groups, or nothing for our trusted ports;
a frame from a tunnel (reg5=1) never goes out to a tunnel again (the split horizon; OVS
also skips any output between `protected` ports), and OpenFlow never outputs a frame to the
port it came in by.

Each port's flows carry the port's own cookie, so `ovs-ofctl --bundle replace-flows` of the
whole table (atomic) adds or removes exactly that port's flows; a network's flood flow has
its VLAN's cookie.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass

from nubes.network.secgroups import PROTOCOLS, Rule

# tables: 0 admission (port security), 10 egress of the sending port's groups, 20 ingress of
# the receiving port's groups; both in the conntrack zone of the network (its local VLAN,
# loaded into reg6 at admission). IPv4 to a group address: 30 a copy per port of the VLAN,
# 40 that port's ingress check (its number in reg7); reg5=1 marks a frame from a tunnel.
T_EGRESS, T_INGRESS, T_FLOOD, T_PORT_IN = 10, 20, 30, 40
ZONE = "NXM_NX_REG6[0..15]"
GROUP_MAC = "01:00:00:00:00:00/01:00:00:00:00:00"
# priorities
P_DROP_SERVER = 60  # DHCP server replies, RAs from an instance
P_ALLOW = 50
P_TRUSTED = 10
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
METADATA_IP = "169.254.169.254"


@dataclass(frozen=True)
class OfPort:
    name: str
    ofport: int
    trusted: bool = False  # a tunnel or gateway port of ours: no filter
    mac: str = ""
    ip: str = ""
    secured: bool = True
    allowed: tuple[tuple[str, str | None], ...] = ()  # (CIDR, MAC or None: the port's)
    vlan: int = 0  # its network's local VLAN, also the network's conntrack zone here
    rules: tuple[Rule, ...] = ()  # its security groups' (with port security on)
    tunnel: bool = False  # (trusted) a tunnel to a peer host: split horizon


def cookie(name: str) -> int:
    """A port's cookie: from its device name, never 0 (the shared flows')."""
    value = int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "big") >> 1
    return value or 1


def _flow(c: int, priority: int, match: str, actions: str, table: int = 0) -> str:
    sep = "," if match else ""
    return f"cookie={c:#x},table={table},priority={priority}{sep}{match},actions={actions}"


def vlan_cookie(vlan: int) -> int:
    """The cookie of a network's flood flow (a name no device can have: ':' is not allowed)."""
    return cookie(f"vlan:{vlan}")


def _to_ct(port: OfPort, table: int) -> str:
    mark = "load:1->NXM_NX_REG5[]," if port.tunnel else ""
    return f"{mark}load:{port.vlan}->NXM_NX_REG6[],ct(table={table},zone={ZONE})"


def _macs(port: OfPort) -> list[tuple[str, str]]:
    """(address or CIDR, MAC) the port may send from, checked: nothing but an address and a
    MAC ever reaches a flow's text."""
    pairs = [(f"{ipaddress.IPv4Address(port.ip)}", port.mac)]
    pairs += [(str(ipaddress.IPv4Network(cidr)), mac or port.mac) for cidr, mac in port.allowed]
    out = []
    for addr, mac in dict.fromkeys(pairs):  # in order, without repeats
        if not _MAC_RE.match(mac.lower()):
            raise ValueError(f"invalid MAC address {mac!r}")
        out.append((addr, mac.lower()))
    return out


def port_flows(port: OfPort) -> list[str]:
    """Admission (table 0) of what the port sends, and its security groups."""
    c = cookie(port.name)
    inp = f"in_port={port.ofport}"
    if port.trusted or not port.secured:
        # its copy of a group frame, unfiltered; a tunnel's only if it came from no tunnel
        to_me = f"reg7={port.ofport}" + (",reg5=0" if port.tunnel else "")
        return [
            _flow(c, P_TRUSTED, inp, "NORMAL"),
            _flow(c, P_TRUSTED + 1, f"{inp},ip", _to_ct(port, T_INGRESS)),
            _flow(c, P_TRUSTED, to_me, f"output:{port.ofport}", T_PORT_IN),
        ]
    flows = [
        _flow(c, P_DROP_SERVER, f"{inp},udp,tp_src=67", "drop"),
        _flow(c, P_DROP_SERVER, f"{inp},icmp6,icmp_type=134", "drop"),
        _flow(c, P_DROP_SERVER, f"{inp},udp6,tp_src=547", "drop"),  # no rogue DHCPv6 server
        # a DHCP client has no address yet: past its egress rules (DHCP always goes out), to
        # the gateway; other guests see its broadcast only if their rules let it in
        _flow(
            c,
            P_ALLOW,
            f"{inp},udp,dl_src={port.mac},nw_src=0.0.0.0,tp_src=68,tp_dst=67",
            _to_ct(port, T_INGRESS),
        ),  # fmt: skip
    ]
    for addr, mac in _macs(port):
        flows.append(
            _flow(c, P_ALLOW, f"{inp},ip,dl_src={mac},nw_src={addr}", _to_ct(port, T_EGRESS))
        )
        flows.append(
            _flow(c, P_ALLOW, f"{inp},arp,dl_src={mac},arp_sha={mac},arp_spa={addr}", "NORMAL")
        )
    # IPv6 from the port's MACs, as the Linux bridge driver lets it: link-local and SLAAC
    # sources are not known to us (no security group rule is IPv6)
    for mac in dict.fromkeys(mac for _, mac in _macs(port)):
        flows.append(_flow(c, P_ALLOW, f"{inp},ipv6,dl_src={mac}", "NORMAL"))
    return flows + sg_flows(port)


def port_ranges(low: int, high: int) -> list[str]:
    """tp_dst matches (value or value/mask) that cover low..high exactly."""
    out = []
    while low <= high:
        size = low & -low if low else 1 << 16
        while size > high - low + 1:
            size >>= 1
        out.append(str(low) if size == 1 else f"{low:#x}/{0xFFFF & ~(size - 1):#x}")
        low += size
    return out


def _rule_matches(rule: Rule) -> list[str]:
    """The OpenFlow matches of one rule (none if it can match nothing: an empty group)."""
    if rule.remotes is not None and not rule.remotes:
        return []
    field = "nw_src" if rule.direction == "ingress" else "nw_dst"
    if rule.remotes is None:
        remotes = [""]
    else:
        nets = ipaddress.collapse_addresses(ipaddress.IPv4Network(r) for r in rule.remotes)
        remotes = [f",{field}={n}" for n in nets]
    if not rule.protocol:
        protos = ["ip"]
    elif rule.protocol in PROTOCOLS:
        protos = [rule.protocol]
        if rule.protocol != "icmp" and rule.port_min is not None:
            low, high = int(rule.port_min), int(rule.port_max or rule.port_min)
            if not 1 <= low <= high <= 65535:
                raise ValueError(f"invalid port range {low}-{high}")
            protos = [f"{rule.protocol},tp_dst={r}" for r in port_ranges(low, high)]
    else:
        raise ValueError(f"unknown protocol {rule.protocol!r}")
    return [p + r for p in protos for r in remotes]


def sg_flows(port: OfPort) -> list[str]:
    """What the port may start (table 10, by in_port) and what may reach it (table 20, by its
    network and MACs); DHCP and metadata always (as in Neutron)."""
    c = cookie(port.name)
    inp = f"ct_state=+new+trk,in_port={port.ofport}"
    flows = [
        _flow(c, P_DROP_SERVER, f"{inp},udp,tp_dst=67", f"resubmit(,{T_INGRESS})", T_EGRESS),
        _flow(
            c, P_DROP_SERVER, f"{inp},tcp,nw_dst={METADATA_IP},tp_dst=80",
            f"resubmit(,{T_INGRESS})", T_EGRESS,
        ),
        _flow(c, 1, f"in_port={port.ofport}", "drop", T_EGRESS),
    ]  # fmt: skip
    commit = f"ct(commit,zone={ZONE}),NORMAL"
    # its copy of a group frame (table 40): what table 20 lets in by MAC, without a commit
    # (nothing answers a broadcast from its destination address)
    to_me, out = f"reg7={port.ofport}", f"output:{port.ofport}"
    flows += [
        _flow(c, 100, f"ct_state=+est+trk,{to_me}", out, T_PORT_IN),
        _flow(c, 100, f"ct_state=+rel+trk,{to_me}", out, T_PORT_IN),
        _flow(c, P_DROP_SERVER, f"{to_me},udp,tp_src=67,tp_dst=68", out, T_PORT_IN),
    ]
    for rule in port.rules:
        if rule.direction == "ingress":
            for m in _rule_matches(rule):
                flows.append(_flow(c, P_ALLOW, f"ct_state=+new+trk,{to_me},{m}", out, T_PORT_IN))
    for mac in dict.fromkeys(m for _, m in _macs(port)):
        dst = f"reg6={port.vlan},dl_dst={mac}"
        flows.append(_flow(c, P_DROP_SERVER, f"{dst},udp,tp_src=67,tp_dst=68", commit, T_INGRESS))
        flows.append(_flow(c, 40, dst, "drop", T_INGRESS))
        for rule in port.rules:
            if rule.direction == "ingress":
                for m in _rule_matches(rule):
                    flows.append(
                        _flow(c, P_ALLOW, f"ct_state=+new+trk,{dst},{m}", commit, T_INGRESS)
                    )
    for rule in port.rules:
        if rule.direction == "egress":
            for m in _rule_matches(rule):
                flows.append(_flow(c, P_ALLOW, f"{inp},{m}", f"resubmit(,{T_INGRESS})", T_EGRESS))
    return flows


SHARED = [
    "cookie=0x0,table=0,priority=0,actions=drop",
    # a connection both ways, or related to one: through (ct() looked it up in the zone)
    *(
        f"cookie=0x0,table={t},priority=100,ct_state={st}+trk,actions={act}"
        for t, act in ((T_EGRESS, f"resubmit(,{T_INGRESS})"), (T_INGRESS, "NORMAL"))
        for st in ("+est", "+rel")
    ),
    *(
        f"cookie=0x0,table={t},priority=99,ct_state=+inv+trk,actions=drop"
        for t in (T_EGRESS, T_INGRESS)
    ),
    f"cookie=0x0,table={T_EGRESS},priority=0,actions=drop",
    # IPv4 to a group address: a copy to each port of the network through its own check
    f"cookie=0x0,table={T_INGRESS},priority=110,ip,dl_dst={GROUP_MAC},actions=resubmit(,{T_FLOOD})",
    f"cookie=0x0,table={T_PORT_IN},priority=150,ct_state=+inv+trk,actions=drop",
    f"cookie=0x0,table={T_PORT_IN},priority=0,actions=drop",
    f"cookie=0x0,table={T_FLOOD},priority=0,actions=drop",
    # to anything but a secured port of this host (a tunnel, a gateway, a port without port
    # security): committed, so its replies are established
    f"cookie=0x0,table={T_INGRESS},priority=0,ip,actions=ct(commit,zone={ZONE}),NORMAL",
]


def flood_flows(ports: list[OfPort]) -> dict[int, str]:
    """Per VLAN, the flow that gives a group frame to each of its ports' checks (table 40)."""
    by_vlan: dict[int, list[int]] = {}
    for port in sorted(ports, key=lambda p: p.name):
        if port.ofport > 0:
            by_vlan.setdefault(port.vlan, []).append(port.ofport)
    return {
        vlan: _flow(
            vlan_cookie(vlan),
            10,
            f"reg6={vlan}",
            ",".join(f"load:{n}->NXM_NX_REG7[],resubmit(,{T_PORT_IN})" for n in ofports),
            T_FLOOD,
        )
        for vlan, ofports in sorted(by_vlan.items())
    }


def table(ports: list[OfPort]) -> str:
    """The whole flow table, for `ovs-ofctl --bundle replace-flows br-int -`."""
    lines = list(SHARED)
    for port in sorted(ports, key=lambda p: p.name):
        if port.ofport > 0:  # -1: OVS could not open the device (yet)
            lines += port_flows(port)
    lines += flood_flows(ports).values()
    return "\n".join(lines) + "\n"


def encode_rules(rules: tuple[Rule, ...]) -> str:
    """A port's rules for its external_ids (read back by decode_rules)."""
    return json.dumps(
        [[r.direction, r.protocol, r.port_min, r.port_max, r.remotes] for r in rules],
        separators=(",", ":"),
    )


def decode_rules(text: str) -> tuple[Rule, ...]:
    out = []
    for d, proto, low, high, remotes in json.loads(text or "[]"):
        out.append(Rule(d, proto, low, high, None if remotes is None else tuple(remotes)))
    return tuple(out)


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
