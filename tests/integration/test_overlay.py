"""The VXLAN overlay of the Linux bridge driver between lab hosts: static forwarding entries,
no learning, the gateway's MAC, and the filter that accepts overlay packets from peers only.
Driver level (no API, no QEMU): stand-in guests are veth endpoints in namespaces of their own."""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from nubes.lab import Lab, LabHost
from nubes.network import firewall, gateway, netns
from nubes.network.base import NetworkSpec, OverlayPeer, RemotePort
from nubes.network.linuxbridge import LinuxBridgeDriver, gateway_mac, vxlan_name
from nubes.network.netlink import ZERO_MAC, Netlink
from tests.integration.capture import Capture
from tests.integration.test_linuxbridge import _ping, _uid, make_ns, net_spec, state_dir

__all__ = ["make_ns", "state_dir"]  # fixtures shared with the bridge tests

pytestmark = pytest.mark.integration

VNI = 4242
G1, G2, G3 = "52:54:00:aa:00:01", "52:54:00:aa:00:02", "52:54:00:aa:00:03"


@pytest.fixture
def lab3(state_dir: Path) -> Iterator[list[LabHost]]:
    lab = Lab(state_dir / "lab", name_prefix=f"t{_uid()}")
    try:
        yield lab.create_hosts(3)
    finally:
        lab.destroy()
    assert not any(n.startswith(lab.prefix + "-") for n in netns.list_names())


def spec_for(
    hosts: list[LabHost], me: LabHost, ports: dict[str, LabHost], serving: LabHost
) -> NetworkSpec:
    """What the agent of `me` would be told: peers are the other hosts that have the network."""
    having = {h.name for h in ports.values()} | {serving.name}
    return net_spec(
        "net-ov",
        vni=VNI,
        local_underlay_ip=me.underlay_ip,
        peers=tuple(OverlayPeer(h.underlay_ip) for h in hosts if h.name in having and h != me),
        remote_ports=tuple(RemotePort(m, h.underlay_ip) for m, h in ports.items() if h != me),
        serve_dhcp=me == serving,
        gateway_underlay_ip=None if me == serving else serving.underlay_ip,
        dhcp_hosts=(),
    )


def fdb(host: LabHost) -> tuple[set[str], dict[str, str]]:
    """(head-end peers, static per-MAC entries) of the host's VXLAN device."""
    with netns.inside(host.netns), Netlink() as nl:
        entries = nl.fdb_entries(vxlan_name("net-ov"))
    flood = {e.dst for e in entries if e.mac == ZERO_MAC and e.dst}
    return flood, {e.mac: e.dst for e in entries if e.mac != ZERO_MAC and e.dst}


def icmp_between(frames: list[bytes], a: str, b: str) -> list[bytes]:
    """IPv4 ICMP frames between addresses a and b (in either direction), VXLAN-encapsulated
    or not."""
    pair = {socket.inet_aton(a), socket.inet_aton(b)}
    found = []
    for f in frames:
        for off in (14, 14 + 50):  # plain, or inner frame of a VXLAN packet on the underlay
            ip = f[off:]
            if len(ip) >= 20 and ip[0] >> 4 == 4 and ip[9] == 1 and {ip[12:16], ip[16:20]} == pair:
                found.append(f)
    return found


def test_static_forwarding_entries_and_no_unicast_flooding(
    lab3: list[LabHost], make_ns: Callable[[str], str], state_dir: Path
) -> None:
    h1, h2, h3 = lab3
    ports = {G1: h1, G2: h2, G3: h3}
    drivers = {h.name: LinuxBridgeDriver(state_dir / h.name) for h in lab3}
    for h in lab3:
        with netns.inside(h.netns):
            drivers[h.name].ensure_network(spec_for(lab3, h, ports, serving=h1))
    guests = {}
    for tag, host, mac, ip in [
        ("1", h1, G1, "10.20.0.11"),
        ("2", h2, G2, "10.20.0.12"),
        ("3", h3, G3, "10.20.0.13"),
    ]:
        guests[tag] = make_ns(tag)
        netns.attach_endpoint(
            host.netns, "nbrnetov", guests[tag], f"vg{tag}{_uid()}", f"{ip}/24", mac, 1450
        )

    # the database's view, programmed statically; the device learns nothing
    gw = gateway_mac("net-ov")
    assert fdb(h2) == (
        {h1.underlay_ip, h3.underlay_ip},
        {G1: h1.underlay_ip, G3: h3.underlay_ip, gw: h1.underlay_ip},
    )
    assert fdb(h1) == ({h2.underlay_ip, h3.underlay_ip}, {G2: h2.underlay_ip, G3: h3.underlay_ip})
    assert fdb(h3)[1] == {G1: h1.underlay_ip, G2: h2.underlay_ip, gw: h1.underlay_ip}
    with netns.inside(h2.netns), Netlink() as nl:
        vx = nl.get_link(vxlan_name("net-ov"))
        assert vx is not None and not vx.info.get("IFLA_VXLAN_LEARNING")
        # the gateway's MAC lives in the serving host's gateway namespace only
        assert nl.get_link("nbrnetov").mac != gw  # type: ignore[union-attr]
    with netns.inside(h1.netns), Netlink() as nl:
        assert nl.get_link("nbrnetov").mac != gw  # type: ignore[union-attr]
    with netns.inside(drivers[h1.name].gateways.namespace("net-ov")), Netlink() as nl:
        assert nl.get_link(gateway.GW_DEV).mac == gw  # type: ignore[union-attr]

    # unicast between h1 and h2 goes to its host only: h3's underlay never carries it
    cap = Capture(h3.netns, "eth0")
    try:
        assert _ping(guests["2"], "10.20.0.11", count=3)
        assert _ping(guests["2"], "10.20.0.1", count=2)  # the gateway, on h1
    finally:
        frames = cap.close()
    assert not icmp_between(frames, "10.20.0.12", "10.20.0.11")
    assert not icmp_between(frames, "10.20.0.12", "10.20.0.1")
    assert _ping(guests["3"], "10.20.0.12", count=2)

    # a port that moves host moves its entry; the last port of h3 gone, h3 leaves the overlay
    moved = {G1: h1, G2: h2, G3: h1}
    for h in (h1, h2):
        with netns.inside(h.netns):
            drivers[h.name].ensure_network(spec_for(lab3, h, moved, serving=h1))
    assert fdb(h2) == (
        {h1.underlay_ip},
        {G1: h1.underlay_ip, G3: h1.underlay_ip, gw: h1.underlay_ip},
    )
    assert fdb(h1) == ({h2.underlay_ip}, {G2: h2.underlay_ip})

    # the serving host changes: the gateway's MAC moves with it
    for h in (h1, h2):
        with netns.inside(h.netns):
            drivers[h.name].ensure_network(spec_for(lab3, h, moved, serving=h2))
    assert fdb(h1)[1] == {G2: h2.underlay_ip, gw: h2.underlay_ip}
    assert fdb(h2)[1] == {G1: h1.underlay_ip, G3: h1.underlay_ip}
    with netns.inside(drivers[h2.name].gateways.namespace("net-ov")), Netlink() as nl:
        assert nl.get_link(gateway.GW_DEV).mac == gw  # type: ignore[union-attr]
    assert not netns.exists(drivers[h1.name].gateways.namespace("net-ov"))
    assert _ping(guests["1"], "10.20.0.1", count=3)  # same gateway MAC, now on h2

    # no peer left: the VXLAN device and its filter go
    with netns.inside(h1.netns):
        alone = replace(spec_for(lab3, h1, {G1: h1}, serving=h1), peers=())
        drivers[h1.name].ensure_network(alone)
        with Netlink() as nl:
            assert nl.get_link(vxlan_name("net-ov")) is None
        assert f"ovl_{VNI}" not in nft(["list", "table", "inet", "nubes"])
    for h in lab3:
        with netns.inside(h.netns):
            drivers[h.name].delete_network("net-ov")


def nft(args: list[str]) -> str:
    return subprocess.run(["nft", *args], capture_output=True, text=True, check=False).stdout


def drop_counter(host: LabHost) -> int:
    with netns.inside(host.netns):
        out = nft(["list", "chain", "inet", "nubes", f"ovl_{VNI}"])
    match = re.search(r"counter packets (\d+)", out)
    assert match, out
    return int(match.group(1))


def vxlan_packet(vni: int, payload: bytes) -> bytes:
    """A VXLAN packet carrying a broadcast frame of a local experimental ethertype."""
    frame = b"\xff" * 6 + bytes.fromhex("02aabbccddee") + struct.pack("!H", 0x88B5) + payload
    return struct.pack("!II", 0x08000000, vni << 8) + frame


def send_udp(ns: str, dst: str, data: bytes) -> None:
    with netns.inside(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(data, (dst, 4789))
    finally:
        s.close()


def test_overlay_packets_only_from_peer_hosts(
    lab3: list[LabHost], make_ns: Callable[[str], str], state_dir: Path
) -> None:
    h1, h2, h3 = lab3
    ports = {G1: h1, G2: h2}  # h3 has no port: it is no peer of this network
    drivers = {h.name: LinuxBridgeDriver(state_dir / h.name) for h in (h1, h2)}
    for h in (h1, h2):
        with netns.inside(h.netns):
            drivers[h.name].ensure_network(spec_for(lab3, h, ports, serving=h1))
    # an intruder on the underlay, with an address no host has
    intruder = make_ns("x")
    lab_bridge = h1.name.rsplit("-", 1)[0] + "-ul"
    veth = f"x{_uid()}ul"
    subprocess.run(
        ["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", intruder],
        check=True,
    )
    subprocess.run(["ip", "link", "set", veth, "master", lab_bridge, "up"], check=True)
    subprocess.run(
        ["ip", "-n", intruder, "addr", "add", "10.255.0.99/24", "dev", "eth0"], check=True
    )
    subprocess.run(["ip", "-n", intruder, "link", "set", "eth0", "up"], check=True)

    def delivered(sender: str, tag: bytes) -> bool:
        cap = Capture(h1.netns, "nbrnetov")
        try:
            for _ in range(3):
                send_udp(sender, h1.underlay_ip, vxlan_packet(VNI, tag))
                time.sleep(0.1)
            time.sleep(0.3)
        finally:
            frames = cap.close()
        return any(tag in f for f in frames)

    before = drop_counter(h1)
    assert not delivered(intruder, b"nubes-forged-intruder")
    assert not delivered(h3.netns, b"nubes-forged-nonpeer")  # a host, but not of this network
    assert drop_counter(h1) >= before + 6
    assert delivered(h2.netns, b"nubes-from-peer")  # the control: a peer's packet gets through
    for h in (h1, h2):
        with netns.inside(h.netns):
            drivers[h.name].delete_network("net-ov")
            assert "inet" not in nft(["list", "tables"])


def test_a_host_never_joins_up_two_tenants_with_the_same_addresses(
    make_ns: Callable[[str], str], state_dir: Path
) -> None:
    """Host h serves tenant A's 10.20.0.0/24 and carries tenant B's bridge of the same range
    (served elsewhere): B's guests get no ARP answer nor IP service from h's stack."""
    host = make_ns("h")
    served = net_spec("net-ta", dhcp_hosts=())
    other = net_spec("net-tb", dhcp_hosts=(), serve_dhcp=False, gateway_underlay_ip=None)
    with netns.inside(host):
        driver = LinuxBridgeDriver(state_dir)
        driver.ensure_network(served)
        driver.ensure_network(other)
        with Netlink() as nl:
            b_mac = nl.get_link(other.bridge).mac  # type: ignore[union-attr]
    guest = make_ns("g")
    netns.attach_endpoint(host, other.bridge, guest, f"vt{_uid()}", "10.20.0.9/24", None, 1450)
    a_guest = make_ns("a")  # tenant A has a guest here too (its bridge has carrier)
    netns.attach_endpoint(host, served.bridge, a_guest, f"va{_uid()}", "10.20.0.7/24", None, 1450)

    def arp_answered(who: str) -> bool:
        argv = ["ip", "netns", "exec", who, "busybox", "arping", "-c", "2", "-w", "3"]
        argv += ["-I", "eth0", "10.20.0.1"]
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0

    def leaks_into_a() -> bool:
        """Does a ping from B's guest to A's gateway address, sent to the host's MAC on B's
        bridge, make the host send anything about B's guest into A's bridge?"""
        cap = Capture(host, served.bridge, promisc=True)
        try:
            _ping(guest, "10.20.0.1", count=2)
        finally:
            frames = cap.close()
        return any(socket.inet_aton("10.20.0.9") in f for f in frames)

    assert arp_answered(a_guest)  # the control: A's gateway answers A's guest
    assert not arp_answered(guest)
    subprocess.run(
        ["ip", "-n", guest, "neigh", "replace", "10.20.0.1", "lladdr", b_mac, "dev", "eth0"],
        check=True,
    )
    assert not leaks_into_a()
    # not thanks to a rule: the host's own stack has no address in either range, so even with
    # the host's defaults, its guard gone and routing on, there is nothing to answer or route
    sysctl = f"net.ipv4.conf.{other.bridge}.arp_ignore=0"
    subprocess.run(["ip", "netns", "exec", host, "sysctl", "-qw", sysctl], check=True)
    with netns.inside(host):
        firewall.apply(firewall.guard_remove_script(other.bridge))
        nft(["flush", "chain", "inet", "nubes", "input"])
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
    assert not arp_answered(guest)
    assert not leaks_into_a()
    with netns.inside(host):
        driver.delete_network(served.id)
        driver.delete_network(other.id)
