"""Security groups in nftables (pure script builders; firewall.apply runs them).

Bridged IPv4 goes through the inet hooks (br_netfilter, `net.bridge.bridge-nf-call-iptables`),
where conntrack makes the rules stateful; the bridge family has no conntrack in this kernel.
Each network's bridge gets a conntrack zone of its own (from its VNI), so two tenants' flows
with the same addresses never share a connection entry. Per bridge, `sgb_<bridge>` accepts
established traffic, then sends a new connection through the egress chain of the local port
it comes from (by source address: anti-spoofing vouches for it) and the ingress chain of the
local port it goes to. A port without port security is in neither map: nothing filters it.

A broadcast or multicast has no port's address to be looked up by, and the inet hooks see
the bridge, not the port, as the way out: so in the bridge family's forward hook (once per
port a frame is flooded to), IPv4 to a group MAC goes through the ingress rules of the port
it is about to leave by (`sgg_<tap>`, stateless: nothing answers from a group address, and
the bridge family has no conntrack here). The gateway and overlay ports have none.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass

from nubes.errors import DriverError

TABLE = "nubes"
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
PROTOCOLS = ("tcp", "udp", "icmp")
GROUP_DST = "ether daddr & 01:00:00:00:00:00 == 01:00:00:00:00:00"  # broadcast, multicast


@dataclass(frozen=True)
class Rule:
    direction: str  # ingress | egress
    protocol: str = ""  # "" any, or tcp | udp | icmp
    port_min: int | None = None
    port_max: int | None = None
    remotes: tuple[str, ...] | None = None  # CIDRs; None: anywhere; (): nobody (an empty group)


def _name(prefix: str, ifname: str) -> str:
    if not _IFNAME_RE.match(ifname):
        raise DriverError(f"invalid interface name {ifname!r}")
    return prefix + re.sub(r"[^A-Za-z0-9]", "_", ifname)


def zone_of(vni: int) -> int:
    """A conntrack zone per network on a host (1..65535; VNIs are unique in the cloud)."""
    return vni % 65535 + 1


def skeleton() -> str:
    return f"""table inet {TABLE} {{
  map sg_zones {{ type ifname : verdict; }}
  map sg_bridges {{ type ifname : verdict; }}
  chain sg_pre {{ type filter hook prerouting priority raw; policy accept; }}
  chain sg_fwd {{ type filter hook forward priority filter + 10; policy accept; }}
}}
flush chain inet {TABLE} sg_pre
add rule inet {TABLE} sg_pre iifname vmap @sg_zones
flush chain inet {TABLE} sg_fwd
add rule inet {TABLE} sg_fwd iifname vmap @sg_bridges
"""


def group_skeleton() -> str:
    """The bridge-family hook that hands IPv4 to a group MAC to its output port's chain."""
    return f"""table bridge {TABLE} {{
  map sg_groups {{ type ifname : verdict; }}
  chain sg_groups_fwd {{ type filter hook forward priority filter; policy accept; }}
}}
flush chain bridge {TABLE} sg_groups_fwd
add rule bridge {TABLE} sg_groups_fwd ether type ip {GROUP_DST} oifname vmap @sg_groups
"""


def bridge_script(bridge: str, vni: int) -> str:
    """The bridge's zone, its maps of local ports, and its chain (and the group frames'
    hook, shared by every bridge)."""
    chain, zone = _name("sgb_", bridge), _name("sgz_", bridge)
    egress, ingress = _name("sge_", bridge), _name("sgi_", bridge)
    return (
        skeleton()
        + f"add chain inet {TABLE} {zone}\n"
        + f"flush chain inet {TABLE} {zone}\n"
        + f"add rule inet {TABLE} {zone} ct zone set {zone_of(vni)}\n"
        + f"add map inet {TABLE} {egress} {{ type ipv4_addr : verdict; }}\n"
        + f"add map inet {TABLE} {ingress} {{ type ipv4_addr : verdict; }}\n"
        + f"add chain inet {TABLE} {chain}\n"
        + f"flush chain inet {TABLE} {chain}\n"
        + f"add rule inet {TABLE} {chain} ct state established,related accept\n"
        + f"add rule inet {TABLE} {chain} ct state invalid drop\n"
        + f"add rule inet {TABLE} {chain} ip saddr vmap @{egress}\n"
        + f"add rule inet {TABLE} {chain} ip daddr vmap @{ingress}\n"
        + f'add element inet {TABLE} sg_zones {{ "{bridge}" : jump {zone} }}\n'
        + f'add element inet {TABLE} sg_bridges {{ "{bridge}" : jump {chain} }}\n'
        + group_skeleton()
    )


def bridge_remove_script(bridge: str) -> str:
    chain, zone = _name("sgb_", bridge), _name("sgz_", bridge)
    egress, ingress = _name("sge_", bridge), _name("sgi_", bridge)
    return (
        bridge_script(bridge, 0)
        + f'delete element inet {TABLE} sg_zones {{ "{bridge}" }}\n'
        + f'delete element inet {TABLE} sg_bridges {{ "{bridge}" }}\n'
        + f"flush chain inet {TABLE} {chain}\n"
        + f"delete chain inet {TABLE} {chain}\n"
        + f"flush chain inet {TABLE} {zone}\n"
        + f"delete chain inet {TABLE} {zone}\n"
        + f"delete map inet {TABLE} {egress}\n"
        + f"delete map inet {TABLE} {ingress}\n"
    )


def _match(rule: Rule) -> str | None:
    """The rule's match, or None if it can match nothing (a group without members)."""
    parts = []
    if rule.remotes is not None:
        if not rule.remotes:
            return None
        nets = ipaddress.collapse_addresses(ipaddress.IPv4Network(r) for r in rule.remotes)
        field = "saddr" if rule.direction == "ingress" else "daddr"
        parts.append(f"ip {field} {{ {', '.join(str(n) for n in nets)} }}")
    if rule.protocol:
        if rule.protocol not in PROTOCOLS:
            raise DriverError(f"unknown protocol {rule.protocol!r}")
        parts.append(f"meta l4proto {rule.protocol}")
        if rule.protocol != "icmp" and rule.port_min is not None:
            low, high = int(rule.port_min), int(rule.port_max or rule.port_min)
            if not 1 <= low <= high <= 65535:
                raise DriverError(f"invalid port range {low}-{high}")
            parts.append(f"th dport {low}" if low == high else f"th dport {low}-{high}")
    return " ".join(parts)


def _port_chains(bridge: str, ip: str) -> tuple[str, str]:
    """A port's chains are named by its bridge and address, not its tap: a new port that gets
    a freed address takes the old chains over, and its map entries are the same ones."""
    tag = hashlib.sha1(f"{_name('', bridge)}/{ipaddress.IPv4Address(ip)}".encode()).hexdigest()
    return f"spe_{tag[:16]}", f"spi_{tag[:16]}"


def port_script(bridge: str, tap: str, ip: str, rules: tuple[Rule, ...]) -> str:
    """A port's own chains (what it may start, what may reach it), keyed by its address;
    and what group frames may leave by its tap."""
    addr = ipaddress.IPv4Address(ip)
    egress, ingress = _port_chains(bridge, ip)
    lines = [
        f"add chain inet {TABLE} {c}\nflush chain inet {TABLE} {c}\n" for c in (egress, ingress)
    ]
    # DHCP and metadata always work, whatever the groups say (as in Neutron)
    body = [
        f"add rule inet {TABLE} {egress} udp dport 67 return\n",
        f"add rule inet {TABLE} {egress} ip daddr 169.254.169.254 tcp dport 80 return\n",
        f"add rule inet {TABLE} {ingress} udp sport 67 udp dport 68 accept\n",
    ]
    for rule in rules:
        match = _match(rule)
        if match is None:
            continue
        chain, verdict = (egress, "return") if rule.direction == "egress" else (ingress, "accept")
        body.append(f"add rule inet {TABLE} {chain} {match} {verdict}\n".replace("  ", " "))
    body += [f"add rule inet {TABLE} {egress} drop\n", f"add rule inet {TABLE} {ingress} drop\n"]
    emap, imap = _name("sge_", bridge), _name("sgi_", bridge)
    elements = (
        f"add element inet {TABLE} {emap} {{ {addr} : jump {egress} }}\n"
        + f"add element inet {TABLE} {imap} {{ {addr} : jump {ingress} }}\n"
    )
    return "".join(lines) + "".join(body) + elements + group_script(tap, rules)


def group_script(tap: str, rules: tuple[Rule, ...]) -> str:
    """The port's ingress rules for the group frames that leave by its tap (DHCP replies
    always), in the bridge family."""
    chain = _name("sgg_", tap)
    out = [
        f"add table bridge {TABLE}\n",
        f"add map bridge {TABLE} sg_groups {{ type ifname : verdict; }}\n",
        f"add chain bridge {TABLE} {chain}\nflush chain bridge {TABLE} {chain}\n",
        f"add rule bridge {TABLE} {chain} udp sport 67 udp dport 68 accept\n",
    ]
    for rule in rules:
        match = _match(rule) if rule.direction == "ingress" else None
        if match is not None:
            out.append(f"add rule bridge {TABLE} {chain} {match} accept\n".replace("  ", " "))
    out.append(f"add rule bridge {TABLE} {chain} drop\n")
    out.append(f'add element bridge {TABLE} sg_groups {{ "{tap}" : jump {chain} }}\n')
    return "".join(out)


def group_remove_script(tap: str) -> str:
    """Present or not (add first, then delete)."""
    chain = _name("sgg_", tap)
    return (
        f"add table bridge {TABLE}\n"
        + f"add map bridge {TABLE} sg_groups {{ type ifname : verdict; }}\n"
        + f"add chain bridge {TABLE} {chain}\n"
        + f'add element bridge {TABLE} sg_groups {{ "{tap}" : jump {chain} }}\n'
        + f'delete element bridge {TABLE} sg_groups {{ "{tap}" }}\n'
        + f"flush chain bridge {TABLE} {chain}\n"
        + f"delete chain bridge {TABLE} {chain}\n"
    )


def port_remove_script(bridge: str, tap: str, ip: str) -> str:
    """Present or not (nft 1.0.6 has no destroy: add first, then delete)."""
    addr = ipaddress.IPv4Address(ip)
    egress, ingress = _port_chains(bridge, ip)
    emap, imap = _name("sge_", bridge), _name("sgi_", bridge)
    out = "".join(
        f"add map inet {TABLE} {m} {{ type ipv4_addr : verdict; }}\n" for m in (emap, imap)
    )
    for chain, m in ((egress, emap), (ingress, imap)):
        out += (
            f"add chain inet {TABLE} {chain}\n"
            + f"add element inet {TABLE} {m} {{ {addr} : jump {chain} }}\n"
            + f"delete element inet {TABLE} {m} {{ {addr} }}\n"
            + f"flush chain inet {TABLE} {chain}\n"
            + f"delete chain inet {TABLE} {chain}\n"
        )
    return out + group_remove_script(tap)
