"""A network's gateway on the host that serves it, in a network namespace of its own (Neutron's
qdhcp-/qrouter- namespaces are the model).

The namespace `qgw-<host tag>-<network id>` holds the gateway address and 169.254.169.254 on
`gw0`, the other end of a veth whose host end (`nvg…`) is a port of the network's bridge; the
network's dnsmasq runs in it, the agent's metadata listener is a socket made in it, and its own
nftables table lets guests reach DHCP, ICMP and metadata there and nothing else. No tenant
address ever enters the host's routing table, so tenants with the same CIDR share a host.

The host tag (a hash of the agent's state directory) keeps the namespaces of lab hosts, which
share one /run/netns, apart.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Callable
from pathlib import Path

from nubes.errors import DriverError
from nubes.network import firewall, netns
from nubes.network.base import NetworkSpec
from nubes.network.dhcp import DhcpConfig, Dnsmasq
from nubes.network.netlink import Netlink, set_sysctl

NS_PREFIX = "qgw-"
GW_DEV = "gw0"  # inside the namespace
EXT_DEV = "qg0"  # inside too: a macvlan of the host's uplink to the external network
VETH_PREFIX = "nvg"  # the host end, a port of the bridge
GATEWAY_ALIAS = "nubes gateway "
METADATA_IP = "169.254.169.254"


def derived_mac(seed: str) -> str:
    """A locally administered unicast MAC that depends only on seed."""
    digest = hashlib.sha256(seed.encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


def gateway_mac(network_id: str) -> str:
    """The gateway's MAC: the same whichever host serves it, so guests keep a valid ARP entry
    for their gateway when it moves."""
    return derived_mac("gateway/" + network_id)


def veth_name(network_id: str) -> str:
    return VETH_PREFIX + network_id.replace("-", "")[:12]


def host_tag(state_dir: Path) -> str:
    return hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:6]


def namespace_script(spec: NetworkSpec) -> str:
    """The namespace's own table, whole: guests reach DHCP, ICMP and the metadata service at
    their gateway; with an external network, their traffic out is NATed to the network's
    router address (or a port's floating IP), nothing comes in but replies and floating IPs'
    traffic, and nothing is ever forwarded to the hosts' own networks. One transaction."""
    t = firewall.TABLE
    ext = spec.external
    lines = [
        f"add table inet {t}",
        f"delete table inet {t}",
        f"table inet {t} {{",
        "  chain input {",
        "    type filter hook input priority filter; policy drop;",
        "    iif lo accept",
        "    ct state established,related accept",
        f'    iifname "{GW_DEV}" udp dport 67 accept',
        f'    iifname "{GW_DEV}" icmp type {{ echo-request }} accept',
        f'    iifname "{GW_DEV}" ip daddr {METADATA_IP} tcp dport 80 accept',
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy drop;",
    ]
    if ext is not None:
        cidr = ipaddress.IPv4Network(spec.cidr)
        router = ipaddress.IPv4Address(ext.address)
        off = [str(ipaddress.IPv4Network(n, strict=False)) for n in ext.off_limits]
        off_nets = ", ".join(
            str(n) for n in ipaddress.collapse_addresses(map(ipaddress.IPv4Network, off))
        )
        if off_nets:  # before established: a reply never opens a way there either
            lines.append(f'    oifname "{EXT_DEV}" ip daddr {{ {off_nets} }} drop')
        lines += [
            "    ct state established,related accept",
            f'    iifname "{GW_DEV}" oifname "{EXT_DEV}" ip saddr {cidr} accept',
            f'    iifname "{EXT_DEV}" oifname "{GW_DEV}" ct status dnat accept',
            "  }",
            "  chain prerouting {",
            "    type nat hook prerouting priority dstnat; policy accept;",
        ]
        for floating, fixed in ext.floating:
            f, p = ipaddress.IPv4Address(floating), ipaddress.IPv4Address(fixed)
            lines.append(f'    iifname "{EXT_DEV}" ip daddr {f} dnat ip to {p}')
        lines += [
            "  }",
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
        ]
        for floating, fixed in ext.floating:
            f, p = ipaddress.IPv4Address(floating), ipaddress.IPv4Address(fixed)
            lines.append(f'    oifname "{EXT_DEV}" ip saddr {p} snat ip to {f}')
        lines.append(f'    oifname "{EXT_DEV}" ip saddr {cidr} snat ip to {router}')
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


class Gateways:
    """Puts up and takes down the gateway namespaces of one host's networks."""

    def __init__(
        self,
        state_dir: Path,
        dhcp: Dnsmasq,
        attach: Callable[[Netlink, str, NetworkSpec, str], None] | None = None,
    ) -> None:
        self.tag = host_tag(state_dir)
        self.dhcp = dhcp
        # how the host end of the veth joins the network (nl, veth, spec, namespace): a port of
        # the Linux bridge by default; the OVS driver makes it a port of br-int
        self.attach = attach or _bridge_port
        self._applied: dict[str, str] = {}  # network id -> the nft script applied inside

    def namespace(self, network_id: str) -> str:
        return f"{NS_PREFIX}{self.tag}-{network_id}"

    def network_ids(self) -> list[str]:
        """Networks that have a gateway namespace of this host."""
        prefix = f"{NS_PREFIX}{self.tag}-"
        return [name[len(prefix) :] for name in netns.list_names(prefix)]

    def ensure(self, nl: Netlink, spec: NetworkSpec) -> None:
        """nl: the host's namespace. Idempotent; cheap when everything is in place."""
        ns = self.namespace(spec.id)
        if netns.create(ns):
            # a namespace deleted behind our back: its dnsmasq and veth may live on in it
            self.dhcp.stop(spec.id)
            self._applied.pop(spec.id, None)
        veth = veth_name(spec.id)
        with netns.inside(ns), Netlink() as inner:
            have_gw = inner.get_link(GW_DEV) is not None
            have_ext = inner.get_link(EXT_DEV) is not None
            if not have_gw:
                set_sysctl("all", "disable_ipv6", "1")  # guests reach it over IPv4 only
                set_sysctl("default", "disable_ipv6", "1")
        if not have_gw:
            nl.delete_link(veth)  # its peer is elsewhere (a namespace that was deleted)
        fd = os.open(netns.NETNS_DIR / ns, os.O_RDONLY)
        try:
            nl.ensure_veth(veth, GW_DEV, fd, spec.mtu)
            if spec.external is not None and not have_ext:
                if nl.get_link(spec.external.uplink) is None:
                    raise DriverError(
                        f"no interface {spec.external.uplink} to the external network here"
                    )
                nl.create_macvlan(EXT_DEV, spec.external.uplink, fd, 1500)
        finally:
            os.close(fd)
        self.attach(nl, veth, spec, ns)
        prefix = ipaddress.IPv4Network(spec.cidr).prefixlen
        want = (f"{spec.gateway}/{prefix}", f"{METADATA_IP}/32")
        with netns.inside(ns), Netlink() as inner:
            link = inner.get_link(GW_DEV)
            mac = gateway_mac(spec.id)
            changes: dict[str, object] = {"mtu": spec.mtu}
            if link is None or link.mac != mac:
                changes["address"] = mac
            if link is None or not link.up:
                changes["state"] = "up"
            inner.set_link(GW_DEV, **changes)
            for cidr in want:
                inner.ensure_address(GW_DEV, cidr)
            inner.remove_addresses(GW_DEV, keep=want)
            self._ensure_external(inner, spec)
            script = namespace_script(spec)
            if self._applied.get(spec.id) != script:
                firewall.apply(script)
                self._applied[spec.id] = script
            # dnsmasq started from this thread lives in the namespace
            self.dhcp.ensure(
                DhcpConfig(
                    network_id=spec.id,
                    interface=GW_DEV,
                    cidr=spec.cidr,
                    gateway=spec.gateway,
                    mtu=spec.mtu,
                    hosts=spec.dhcp_hosts,
                    dns=spec.dns,
                )
            )

    def _ensure_external(self, inner: Netlink, spec: NetworkSpec) -> None:
        """inner: the gateway namespace. The router's leg on the external network (made in
        ensure), or none."""
        ext = spec.external
        if ext is None:
            inner.delete_link(EXT_DEV)
            return
        want = (f"{ext.address}/{ext.prefix}", *(f"{f}/32" for f, _ in ext.floating))
        inner.set_link(EXT_DEV, state="up")
        for cidr in want:
            inner.ensure_address(EXT_DEV, cidr)
        inner.remove_addresses(EXT_DEV, keep=want)
        inner.replace_default_route(ext.gateway)
        set_sysctl("all", "forwarding", "1", "ipv4")

    def remove(self, nl: Netlink, network_id: str) -> None:
        """Take the gateway of a network off this host (present or not)."""
        self.dhcp.stop(network_id)
        nl.delete_link(veth_name(network_id))
        self._applied.pop(network_id, None)
        netns.delete(self.namespace(network_id))

    def endpoint(self, network_id: str) -> tuple[str, str]:
        """(namespace, device) where the network's metadata listener belongs."""
        return self.namespace(network_id), GW_DEV


def _bridge_port(nl: Netlink, veth: str, spec: NetworkSpec, ns: str) -> None:
    nl.set_port(veth, spec.bridge, alias=GATEWAY_ALIAS + spec.id)


def remove_all(state_dir: Path) -> None:
    """Delete every gateway namespace of the host whose state directory this is (a lab's
    teardown, a test's); their dnsmasq must be stopped first."""
    for name in netns.list_names(f"{NS_PREFIX}{host_tag(state_dir)}-"):
        netns.delete(name)
