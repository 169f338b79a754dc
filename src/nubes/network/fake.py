"""An in-memory network driver for functional tests: same idempotent semantics, no root."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from nubes.errors import DriverError
from nubes.network.base import NetworkDriver, NetworkSpec, PortInfo, PortSpec
from nubes.network.linuxbridge import validate_network


@dataclass
class _Port:
    spec: PortSpec
    bridge: str | None


@dataclass
class FakeState:
    networks: dict[str, NetworkSpec] = field(default_factory=dict)
    ports: dict[str, _Port] = field(default_factory=dict)  # by tap


class FakeNetworkDriver(NetworkDriver):
    """Remembers what it was asked. `geneve` says whether the pretend kernel has Geneve."""

    def __init__(self, geneve: bool = False) -> None:
        self.geneve = geneve
        self.state = FakeState()
        self.calls: list[tuple[str, str]] = []  # (method, id) for assertions in tests
        self._lock = threading.Lock()

    def ensure_network(self, spec: NetworkSpec) -> None:
        validate_network(spec, geneve_ok=lambda: self.geneve)
        with self._lock:
            self.calls.append(("ensure_network", spec.id))
            self.state.networks[spec.id] = spec

    def delete_network(self, network_id: str) -> None:
        with self._lock:
            self.calls.append(("delete_network", network_id))
            spec = self.state.networks.pop(network_id, None)
            if spec is None:
                return
            for port in self.state.ports.values():
                if port.bridge == spec.bridge:
                    port.bridge = None  # a deleted bridge leaves its taps detached

    def plug_port(self, spec: PortSpec) -> None:
        with self._lock:
            self.calls.append(("plug_port", spec.id))
            if not any(n.bridge == spec.bridge for n in self.state.networks.values()):
                raise DriverError(f"bridge {spec.bridge} of network {spec.network_id} is missing")
            self.state.ports[spec.tap] = _Port(spec=spec, bridge=spec.bridge)

    def ensure_port_filter(self, spec: PortSpec) -> None:
        with self._lock:
            port = self.state.ports.get(spec.tap)
            if port is not None:
                port.spec = spec  # the rules as they are now

    def unplug_port(self, tap: str) -> None:
        with self._lock:
            self.calls.append(("unplug_port", tap))
            self.state.ports.pop(tap, None)

    def list_ports(self) -> list[PortInfo]:
        with self._lock:
            return sorted(
                (
                    PortInfo(tap=t, bridge=p.bridge, mac=p.spec.mac.lower())
                    for t, p in self.state.ports.items()
                ),
                key=lambda p: p.tap,
            )

    def list_networks(self) -> list[str]:
        with self._lock:
            return sorted(self.state.networks)

    def overlays(self) -> tuple[str, ...]:
        return ("vxlan", "geneve") if self.geneve else ("vxlan",)

    def leases(self, network_id: str) -> list[tuple[str, str]]:
        """Pretend every reservation of a DHCP-serving network was leased."""
        with self._lock:
            spec = self.state.networks.get(network_id)
            if spec is None or not spec.serve_dhcp:
                return []
            return sorted((h.mac.lower(), h.ip) for h in spec.dhcp_hosts)
