"""nftables rules of nubes: pure script builders (unit-tested) and one function that applies them.

Two tables are ours alone and nothing else is ever touched or flushed:
- `inet nubes`: a guard that keeps guests from reaching the host's own services or being
  routed between bridges, the overlay filter (UDP to the overlay port with one of our VNIs only
  from peer hosts) and the security groups (secgroups.py). NAT lives in each network's gateway
  namespace, in a table of its own (gateway.py).
- `bridge nubes`: per-port anti-spoofing, one chain per tap reached through the `ports` map.

Every script is idempotent: it declares the skeleton (declaring what exists is a no-op, but rules
are appended, so base chains are flushed and refilled in the same transaction), and a removal
first adds what it deletes, since nft 1.0.6 has no `destroy`.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess

from nubes.errors import DriverError
from nubes.network import secgroups

TABLE = "nubes"
BRIDGE_GLOB = "nbr*"
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def _ifname(name: str) -> str:
    """Interface names end up quoted in nft scripts: allow only what cannot escape the quotes."""
    if not _IFNAME_RE.match(name):
        raise DriverError(f"invalid interface name {name!r}")
    return name


def _chain(prefix: str, ifname: str) -> str:
    return prefix + re.sub(r"[^A-Za-z0-9]", "_", _ifname(ifname))


def inet_skeleton() -> str:
    return f"""table inet {TABLE} {{
  map nat_bridges {{ type ifname : verdict; }}
  map fwd_bridges {{ type ifname : verdict; }}
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
  chain forward {{ type filter hook forward priority filter; policy accept; }}
  chain input {{ type filter hook input priority filter; policy accept; }}
  set overlay_ports {{ type inet_service; }}
  map overlay_vnis {{ typeof @th,96,24 : verdict; }}
  chain overlay_in {{ type filter hook input priority filter - 10; policy accept; }}
}}
flush chain inet {TABLE} postrouting
add rule inet {TABLE} postrouting iifname vmap @nat_bridges
flush chain inet {TABLE} forward
add rule inet {TABLE} forward iifname vmap @fwd_bridges
flush chain inet {TABLE} overlay_in
add rule inet {TABLE} overlay_in udp dport @overlay_ports @th,96,24 vmap @overlay_vnis
"""


def _jump(family: str, vmap: str, chain: str, key: str, rules: list[str]) -> str:
    """(Re)fill a chain and make the map send `key` to it."""
    body = "".join(f"add rule {family} {TABLE} {chain} {r}\n" for r in rules)
    return (
        f"add chain {family} {TABLE} {chain}\n"
        + f"flush chain {family} {TABLE} {chain}\n"
        + body
        + f'add element {family} {TABLE} {vmap} {{ "{key}" : jump {chain} }}\n'
    )


def _unjump(family: str, vmap: str, chain: str, key: str) -> str:
    """Remove the map element and its chain, present or not."""
    return (
        f"add chain {family} {TABLE} {chain}\n"
        + f'add element {family} {TABLE} {vmap} {{ "{key}" : jump {chain} }}\n'
        + f'delete element {family} {TABLE} {vmap} {{ "{key}" }}\n'
        + f"flush chain {family} {TABLE} {chain}\n"
        + f"delete chain {family} {TABLE} {chain}\n"
    )


_GUARD_INPUT = [
    # Only to addresses of the bridge it came in on: one host may carry networks of several
    # tenants with the same addresses, and the host's own stack must never join them up.
    "fib daddr . iif type != { local, broadcast, multicast } drop",
    "ct state established,related accept",
    "udp dport 67 accept",  # DHCP
    "meta l4proto { icmp, ipv6-icmp } accept",  # ping the gateway, path MTU, neighbours
    "ip daddr 169.254.169.254 tcp dport 80 accept",  # the metadata service
    "drop",
]


def guard_script(bridge: str) -> str:
    """Guests reach their gateway host for DHCP and ICMP only, and are not routed to another
    bridge. Bridged traffic also crosses `forward` when br_netfilter is on (iif and oif are then
    the same bridge), hence a chain per bridge rather than one `nbr* -> nbr*` rule."""
    b = _ifname(bridge)
    return (
        inet_skeleton()
        + f"flush chain inet {TABLE} input\n"
        + "".join(
            f'add rule inet {TABLE} input iifname "{BRIDGE_GLOB}" {r}\n' for r in _GUARD_INPUT
        )
        + _jump(
            "inet",
            "fwd_bridges",
            _chain("fwd_", b),
            b,
            [f'oifname "{b}" return', f'oifname "{BRIDGE_GLOB}" drop'],
        )
    )


def guard_remove_script(bridge: str) -> str:
    return inet_skeleton() + _unjump("inet", "fwd_bridges", _chain("fwd_", bridge), bridge)


def overlay_script(vni: int, peers: list[str], port: int) -> str:
    """Overlay packets of our VNI are accepted from the network's peer hosts only.

    The VNI sits at bits 96-119 of the transport header in VXLAN and Geneve alike. Packets of
    VNIs that are not ours pass untouched (the machine may run other overlays)."""
    if not 1 <= vni < 2**24 or not 1 <= port <= 65535:
        raise DriverError(f"invalid VNI {vni} or port {port}")
    addrs = ", ".join(str(ipaddress.IPv4Address(p)) for p in sorted(set(peers)))
    rules = [f"ip saddr {{ {addrs} }} accept"] if addrs else []
    return (
        inet_skeleton()
        + f"add element inet {TABLE} overlay_ports {{ {port} }}\n"
        + _vni_jump(vni, rules + ["counter drop"])
    )


def _vni_jump(vni: int, rules: list[str]) -> str:
    chain = f"ovl_{vni}"
    body = "".join(f"add rule inet {TABLE} {chain} {r}\n" for r in rules)
    return (
        f"add chain inet {TABLE} {chain}\n"
        + f"flush chain inet {TABLE} {chain}\n"
        + body
        + f"add element inet {TABLE} overlay_vnis {{ {vni} : jump {chain} }}\n"
    )


def overlay_remove_script(vni: int) -> str:
    if not 1 <= vni < 2**24:
        raise DriverError(f"invalid VNI {vni}")
    chain = f"ovl_{vni}"
    return (
        inet_skeleton()
        + _vni_jump(vni, [])
        + f"delete element inet {TABLE} overlay_vnis {{ {vni} }}\n"
        + f"delete chain inet {TABLE} {chain}\n"
    )


def bridge_skeleton() -> str:
    """With the security groups' hook for group frames: whenever this table is made anew."""
    return f"""table bridge {TABLE} {{
  map ports {{ type ifname : verdict; }}
  chain prerouting {{ type filter hook prerouting priority -200; policy accept; }}
}}
flush chain bridge {TABLE} prerouting
add rule bridge {TABLE} prerouting iifname vmap @ports
""" + secgroups.group_skeleton()


def _one_or_set(items: list[str]) -> str:
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def port_rules(mac: str, ip: str, allowed: tuple[tuple[str, str | None], ...] = ()) -> list[str]:
    """What a port may send into its bridge: its own MAC and IP (and its allowed address
    pairs': any of their MACs with any of their addresses), no router or DHCP server."""
    mac = mac.lower()
    macs = [mac]
    nets = [ipaddress.IPv4Network(ipaddress.IPv4Address(ip))]
    for cidr, pair_mac in allowed:
        nets.append(ipaddress.IPv4Network(cidr, strict=False))
        if pair_mac and pair_mac.lower() not in macs:
            macs.append(pair_mac.lower())
    for m in macs:
        if not _MAC_RE.match(m):
            raise DriverError(f"invalid MAC address {m!r}")
    # one set without overlaps (nft refuses overlapping intervals): /32s print as addresses
    addrs = [
        str(n.network_address) if n.prefixlen == 32 else str(n)
        for n in ipaddress.collapse_addresses(nets)
    ]
    mac_set, addr_set = _one_or_set(macs), _one_or_set(addrs)
    return [
        f"ether saddr != {mac_set} drop",
        f"ether type arp arp saddr ether != {mac_set} drop",
        # 0.0.0.0 is the sender of an ARP probe (address conflict detection)
        f"ether type arp arp saddr ip != {{ 0.0.0.0, {', '.join(addrs)} }} drop",
        "ether type arp accept",
        "ether type ip udp sport 67 drop",  # no rogue DHCP server
        "ether type ip ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept",
        f"ether type ip ip saddr != {addr_set} drop",
        "ether type ip accept",
        "ether type ip6 icmpv6 type nd-router-advert drop",  # no rogue IPv6 router
        "ether type ip6 udp sport 547 drop",  # no rogue DHCPv6 server
        "ether type ip6 accept",  # link-local/SLAAC sources are not known to us
        "drop",  # VLAN tags and other ethertypes
    ]


def port_script(
    tap: str,
    mac: str,
    ip: str,
    skeleton: bool = True,
    allowed: tuple[tuple[str, str | None], ...] = (),
) -> str:
    """skeleton=False when the caller knows the table is in place: re-flushing its base chain
    makes the kernel wait for an RCU grace period, about 15 ms of every plug here."""
    head = bridge_skeleton() if skeleton else ""
    rules = port_rules(mac, ip, allowed)
    return head + _jump("bridge", "ports", _chain("port_", tap), tap, rules)


def port_remove_script(tap: str, skeleton: bool = True) -> str:
    head = bridge_skeleton() if skeleton else ""
    return head + _unjump("bridge", "ports", _chain("port_", tap), tap)


def delete_tables_script(present: list[str]) -> str:
    """Remove our tables (only those listed as present: `delete` of a missing one fails)."""
    return "".join(f"delete table {family} {TABLE}\n" for family in present)


def apply(script: str, nft: str = "nft") -> None:
    """Apply a script atomically (nft runs it as one transaction)."""
    proc = subprocess.run(
        [nft, "-f", "-"], input=script, capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode != 0:
        raise DriverError(f"nft failed: {proc.stderr.strip()}")


def tables(nft: str = "nft") -> list[str]:
    """Families that have a `nubes` table in this namespace."""
    proc = subprocess.run(
        [nft, "list", "tables"], capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode != 0:
        raise DriverError(f"nft failed: {proc.stderr.strip()}")
    found = []
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "table" and parts[2] == TABLE:
            found.append(parts[1])
    return found
