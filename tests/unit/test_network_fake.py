"""The fake network driver keeps the real driver's idempotent semantics."""

from __future__ import annotations

import threading

import pytest

from nubes.errors import DriverError, InvalidInput
from nubes.network.base import (
    DhcpHost,
    NetworkSpec,
    OverlayPeer,
    PortInfo,
    PortSpec,
    bridge_name,
    tap_name,
)
from nubes.network.fake import FakeNetworkDriver
from nubes.network.linuxbridge import vxlan_name

NET = NetworkSpec(
    id="net-1",
    bridge=bridge_name("net-1"),
    cidr="10.20.0.0/24",
    gateway="10.20.0.1",
    dhcp_hosts=(DhcpHost("52:54:00:00:00:05", "10.20.0.5", "i-1"),),
)
PORT = PortSpec(
    id="port-1",
    network_id="net-1",
    bridge=NET.bridge,
    tap=tap_name("port-1"),
    mac="52:54:00:00:00:05",
    ip="10.20.0.5",
)


def test_ensure_delete_are_idempotent() -> None:
    d = FakeNetworkDriver()
    d.ensure_network(NET)
    d.ensure_network(NET)
    assert d.list_networks() == ["net-1"]
    d.plug_port(PORT)
    d.plug_port(PORT)
    assert d.list_ports() == [PortInfo(tap=PORT.tap, bridge=NET.bridge, mac=PORT.mac)]
    assert d.leases("net-1") == [("52:54:00:00:00:05", "10.20.0.5")]
    d.unplug_port(PORT.tap)
    d.unplug_port(PORT.tap)
    assert d.list_ports() == []
    d.delete_network("net-1")
    d.delete_network("net-1")
    assert d.list_networks() == []


def test_plug_needs_the_bridge() -> None:
    with pytest.raises(DriverError):
        FakeNetworkDriver().plug_port(PORT)


def test_deleting_a_network_detaches_its_taps() -> None:
    d = FakeNetworkDriver()
    d.ensure_network(NET)
    d.plug_port(PORT)
    d.delete_network(NET.id)
    assert d.list_ports() == [PortInfo(tap=PORT.tap, bridge=None, mac=PORT.mac)]


def test_geneve_depends_on_the_pretend_kernel() -> None:
    spec = NetworkSpec(
        **{
            **NET.__dict__,
            "vni": 7,
            "overlay": "geneve",
            "local_underlay_ip": "10.255.0.11",
            "peers": (OverlayPeer("10.255.0.12"),),
        }
    )
    with pytest.raises(InvalidInput, match="no Geneve; use --type vxlan"):
        FakeNetworkDriver().ensure_network(spec)
    d = FakeNetworkDriver(geneve=True)
    d.ensure_network(spec)
    assert d.list_networks() == ["net-1"]


@pytest.mark.parametrize(
    "change",
    [
        {"gateway": "10.21.0.1"},
        {"cidr": "10.20.0.0/33"},
        {"mtu": 10},
        {"vni": 2**24},
        {"vni": 5, "overlay": "gre"},
        {"vni": 5, "peers": (OverlayPeer("10.255.0.12"),)},  # no local underlay address
        {"id": "../x"},
        {"bridge": "a-much-too-long-bridge"},
    ],
)
def test_bad_specs_are_rejected(change: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        FakeNetworkDriver().ensure_network(NetworkSpec(**{**NET.__dict__, **change}))  # type: ignore[arg-type]


def test_thread_safety() -> None:
    d = FakeNetworkDriver()
    d.ensure_network(NET)

    def work(i: int) -> None:
        for j in range(50):
            p = PortSpec(**{**PORT.__dict__, "id": f"p{i}-{j}", "tap": f"tap{i}x{j}"})
            d.plug_port(p)
            d.list_ports()
            d.unplug_port(p.tap)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert d.list_ports() == []


def test_vxlan_name_fits_an_interface_name() -> None:
    name = vxlan_name("0f8a7c3e-1111-2222-3333-444455556666")
    assert name == "vx0f8a7c3e11112" and len(name) <= 15
