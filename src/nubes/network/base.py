"""The network driver seam. Every ensure_/delete_ is idempotent."""

from __future__ import annotations

import abc
from dataclasses import dataclass

from nubes.network.secgroups import Rule


@dataclass(frozen=True)
class DhcpHost:
    mac: str
    ip: str
    hostname: str  # derived from the instance id, never the user's name


@dataclass(frozen=True)
class OverlayPeer:
    underlay_ip: str  # another host that has this network


@dataclass(frozen=True)
class RemotePort:
    """A port of the network on another host: frames for mac go to that host only."""

    mac: str
    underlay_ip: str


@dataclass(frozen=True)
class ExternalSpec:
    """Egress NAT and floating IPs of a network, in its gateway namespace."""

    uplink: str  # this host's interface to the external network
    address: str  # the network's router address on it
    prefix: int
    gateway: str  # the external network's router
    floating: tuple[tuple[str, str], ...] = ()  # (floating address, port address)
    off_limits: tuple[str, ...] = ()  # the hosts' own networks: never forwarded to


@dataclass(frozen=True)
class NetworkSpec:
    id: str
    bridge: str  # derived from the network id (<= 15 chars)
    cidr: str  # e.g. 10.20.0.0/24
    gateway: str  # e.g. 10.20.0.1; lives on the bridge of the host that serves the network
    mtu: int = 1500
    vni: int | None = None  # also its conntrack zone on the host (security groups)
    overlay: str = "vxlan"  # vxlan | geneve
    local_underlay_ip: str | None = None
    peers: tuple[OverlayPeer, ...] = ()
    remote_ports: tuple[RemotePort, ...] = ()  # static forwarding entries (no learning)
    serve_dhcp: bool = True  # gateway + DHCP + NAT live on this host
    gateway_underlay_ip: str | None = None  # the serving host, when it is another one
    dhcp_hosts: tuple[DhcpHost, ...] = ()
    dns: tuple[str, ...] = ()
    external: ExternalSpec | None = None  # None: no egress


@dataclass(frozen=True)
class PortSpec:
    id: str
    network_id: str
    bridge: str
    tap: str
    mac: str
    ip: str
    owner_uid: int | None = None  # unprivileged QEMU opens the tap as this user
    mtu: int = 1500
    port_security: bool = True  # anti-spoofing (and security groups) on this port
    allowed: tuple[tuple[str, str | None], ...] = ()  # (CIDR, MAC or None: the port's)
    rules: tuple[Rule, ...] = ()  # its security groups' rules (with port security on)


@dataclass(frozen=True)
class PortInfo:
    tap: str
    bridge: str | None
    mac: str | None


class NetworkDriver(abc.ABC):
    @abc.abstractmethod
    def ensure_network(self, spec: NetworkSpec) -> None:
        """Bridge, gateway address, DHCP reservations, overlay device and NAT as the spec says."""

    @abc.abstractmethod
    def delete_network(self, network_id: str) -> None: ...

    @abc.abstractmethod
    def plug_port(self, spec: PortSpec) -> None:
        """Create the tap (if missing) and attach it to the network's bridge."""

    @abc.abstractmethod
    def ensure_port_filter(self, spec: PortSpec) -> None:
        """The port's security groups as they are now (called on every pass: cheap when
        nothing changed)."""

    @abc.abstractmethod
    def unplug_port(self, tap: str) -> None: ...

    @abc.abstractmethod
    def list_ports(self) -> list[PortInfo]: ...

    @abc.abstractmethod
    def list_networks(self) -> list[str]:
        """Ids of the networks that have a bridge on this host."""

    def metadata_endpoint(self, network_id: str) -> tuple[str | None, str]:
        """(network namespace or None for the agent's own, device) where the metadata
        listener of a network this host serves belongs."""
        return None, bridge_name(network_id)

    def host_ranges(self) -> tuple[str, ...]:
        """The IPv4 networks this host has addresses in (its underlay, its LAN): no tenant
        network may overlap them."""
        return ()

    def overlays(self) -> tuple[str, ...]:
        """Overlay kinds this host can carry."""
        return ("vxlan",)

    def guest_offloads(self) -> bool:
        """May guests' NICs leave checksums and segmentation to the host? (Not on a switch
        that forwards frames as read, as OVS's userspace datapath does.)"""
        return True


def bridge_name(network_id: str) -> str:
    return "nbr" + network_id.replace("-", "")[:11]


def tap_name(port_id: str) -> str:
    return "tap" + port_id.replace("-", "")[:11]
