"""IPv4 broadcast and multicast meet the receiver's security groups, on both network drivers
(issue 11): stand-in guests (veth endpoints in namespaces of their own), no QEMU. On OVS a
group frame is not NORMAL's flood but a copy per port through that port's own ingress check;
the gateway's DHCP replies, broadcast or unicast, still reach every guest."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nubes.lab import Lab, LabHost
from nubes.network import netns, ovs_daemons
from nubes.network.base import DhcpHost, NetworkDriver, PortSpec
from nubes.network.linuxbridge import LinuxBridgeDriver
from nubes.network.ovs import OvsDriver
from nubes.network.secgroups import Rule
from tests.integration.capture import Capture
from tests.integration.test_linuxbridge import _ping, _uid, make_ns, net_spec, state_dir
from tests.integration.test_ovs import OPEN, guest, spec_for

__all__ = ["make_ns", "state_dir"]

pytestmark = pytest.mark.integration

UNDERLAY = "10.254.74.0/24"  # apart from test_ovs.py's and a default lab's
DENIED, ALLOWED = 5000, 6000  # UDP ports: the receiver lets in only ALLOWED, the third both
DESTINATIONS = ("10.20.0.255", "255.255.255.255", "239.1.2.3")
RECEIVER_RULES = (Rule("egress"), Rule("ingress", "udp", ALLOWED, ALLOWED))
THIRD_RULES = (
    Rule("egress"),
    Rule("ingress", "udp", ALLOWED, ALLOWED),
    Rule("ingress", "udp", DENIED, DENIED, ("10.20.0.0/24",)),
)
needs_ovs = pytest.mark.skipif(not ovs_daemons.installed(), reason="Open vSwitch is not installed")


def send_group(ns: str, src: str, ports: tuple[int, ...], tag: bytes = b"") -> None:
    """One datagram to each destination and port, from ns (payload `<tag><dst>:<port>`)."""
    with netns.inside(ns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(src))
        s.bind((src, 0))
        for dst in DESTINATIONS:
            for port in ports:
                s.sendto(tag + f"{dst}:{port}".encode(), (dst, port))


def seen(frames: list[bytes], dst: str, port: int, tag: bytes = b"") -> int:
    """How many frames carried the datagram to dst:port."""
    return sum(tag + f"{dst}:{port}".encode() in f for f in frames)


def _udp_ports(frame: bytes) -> bytes:
    """An IPv4 UDP datagram's source and destination ports (no IP options), else b""."""
    ipv4_udp = frame[12:14] == b"\x08\x00" and len(frame) > 38 and frame[23] == 17
    return frame[34:38] if ipv4_udp else b""


def dhcp_reply(frame: bytes) -> bool:
    return _udp_ports(frame) == b"\x00\x43\x00\x44"  # 67 -> 68


def dhcp_request(frame: bytes) -> bool:
    return _udp_ports(frame) == b"\x00\x44\x00\x43"  # 68 -> 67


@pytest.fixture(params=[pytest.param("ovs", marks=needs_ovs), "linuxbridge"])
def driver_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_broadcast_and_multicast_meet_the_receivers_groups(
    driver_name: str, make_ns: Callable[[str], str], state_dir: Path
) -> None:
    host = make_ns("h")
    macs = {n: f"52:54:00:0a:00:{n:02x}" for n in (1, 2, 3)}
    net = net_spec(
        "net-bc",
        vni=4343,
        serve_dhcp=True,
        dhcp_hosts=tuple(DhcpHost(macs[n], f"10.20.0.{10 + n}", f"i-{n}") for n in macs),
    )
    driver: NetworkDriver = (
        OvsDriver(state_dir / "h") if driver_name == "ovs" else LinuxBridgeDriver(state_dir)
    )
    with netns.inside(host):
        driver.ensure_network(net)
    try:
        ns, ports = {}, {}
        for n, rules in ((1, OPEN), (2, RECEIVER_RULES), (3, THIRD_RULES)):
            if isinstance(driver, OvsDriver):
                h = LabHost(name=host, netns=host, underlay_ip="10.254.73.1", index=1)
                ns[n], ports[n] = guest(make_ns, h, driver, net, n, rules)
            else:
                # test_secgroups.py's stand-in guest: a veth of the bridge, then its groups
                ns[n], tap = make_ns(f"g{n}"), f"vb{n}{_uid()}"
                netns.attach_endpoint(
                    host, net.bridge, ns[n], tap, f"10.20.0.{10 + n}/24", mac=macs[n],
                    mtu=net.mtu,
                )  # fmt: skip
                with netns.inside(host):
                    driver.ensure_port_filter(
                        PortSpec(
                            id=f"port-{n}", network_id=net.id, bridge=net.bridge, tap=tap,
                            mac=macs[n], ip=f"10.20.0.{10 + n}", rules=rules,
                        )
                    )  # fmt: skip
        assert _ping(ns[1], "10.20.0.1", count=2)  # the network works at all

        caps = {n: Capture(ns[n], "eth0") for n in (2, 3)}
        for _ in range(3):  # the first of a flow may be slow on the userspace datapath
            send_group(ns[1], "10.20.0.11", (DENIED, ALLOWED))
            time.sleep(0.3)
        time.sleep(1)
        frames = {n: c.close() for n, c in caps.items()}
        for dst in DESTINATIONS:
            assert seen(frames[2], dst, ALLOWED), f"the control to {dst} never arrived"
            assert not seen(frames[2], dst, DENIED), f"{dst}:{DENIED} reached a port denying it"
            assert seen(frames[3], dst, DENIED), f"{dst}:{DENIED} missed a port allowing it"

        # the gateway's DHCP replies reach a guest whose groups let in no DHCP: unicast, and
        # broadcast (-B) as a client without an address asks
        for flags, to in (((), macs[2]), (("-B",), "ff:ff:ff:ff:ff:ff")):
            cap, other = Capture(ns[2], "eth0"), Capture(ns[3], "eth0")
            out = subprocess.run(
                ["ip", "netns", "exec", ns[2], "busybox", "udhcpc", "-i", "eth0", "-n", "-q",
                 "-t", "5", "-T", "2", "-s", "/bin/true", *flags],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert out.returncode == 0 and "10.20.0.12" in out.stdout + out.stderr, (
                flags,
                out.stdout + out.stderr,
            )
            replies = [f[:6] for f in cap.close() if dhcp_reply(f)]
            assert replies and set(replies) == {bytes.fromhex(to.replace(":", ""))}, replies
            # its broadcast requests reached the gateway, not a guest whose groups deny them
            assert not [f for f in other.close() if dhcp_request(f)]

        if isinstance(driver, OvsDriver):  # a port unplugged leaves its network's flood flow
            with netns.inside(host):
                ofport = driver.ovs.vsctl("get", "Interface", ports[3].tap, "ofport").strip()
                flood = driver.ovs.ofctl("dump-flows", "br-int", "table=30")
                assert f"load:0x{int(ofport):x}->NXM_NX_REG7[]" in flood
                driver.unplug_port(ports[3].tap)
                flood = driver.ovs.ofctl("dump-flows", "br-int", "table=30")
            assert f"load:0x{int(ofport):x}->NXM_NX_REG7[]" not in flood
            assert flood.count("->NXM_NX_REG7[]") == 3, flood  # guests 1 and 2, the gateway
    finally:
        with netns.inside(host):
            driver.delete_network(net.id)


@pytest.fixture
def lab3(state_dir: Path) -> Iterator[list[LabHost]]:
    lab = Lab(state_dir / "lab", name_prefix=f"b{_uid()}", underlay_cidr=UNDERLAY)
    try:
        yield lab.create_hosts(3)
    finally:
        lab.destroy()
    assert not any(n.startswith(lab.prefix + "-") for n in netns.list_names())
    left = subprocess.run(["pgrep", "-f", f"ovs.*{state_dir}"], capture_output=True, text=True)
    assert left.stdout == "", "an ovsdb-server or ovs-vswitchd outlived the lab"


@needs_ovs
def test_group_frames_across_ovs_hosts_are_filtered_and_never_relayed(
    lab3: list[LabHost], make_ns: Callable[[str], str], state_dir: Path
) -> None:
    """A broadcast from a guest of h2 arrives on h1 by its tunnel and meets the receivers'
    groups there; h1 never sends it on to h3 (split horizon), so h3's guest gets one copy."""
    h1, h2, h3 = lab3
    drivers = {h.name: OvsDriver(state_dir / h.name) for h in lab3}
    specs = {h.name: spec_for(lab3, h, "net-x", 99, "geneve") for h in lab3}
    for h in lab3:
        with netns.inside(h.netns):
            drivers[h.name].ensure_network(specs[h.name])
    ns = {}
    for n, h, rules in (
        (1, h2, OPEN),
        (2, h1, RECEIVER_RULES),
        (3, h1, THIRD_RULES),
        (4, h3, OPEN),
    ):
        ns[n], _ = guest(make_ns, h, drivers[h.name], specs[h.name], n, rules)
    assert _ping(ns[1], "10.20.0.1", count=3)  # h2's guest reaches the gateway on h1
    assert _ping(ns[1], "10.20.0.14", count=2)  # and h3's guest

    caps = {n: Capture(ns[n], "eth0") for n in (2, 3, 4)}
    rounds = 3
    for i in range(rounds):
        send_group(ns[1], "10.20.0.11", (DENIED, ALLOWED), tag=f"r{i}/".encode())
        time.sleep(0.3)
    time.sleep(1)
    frames = {n: c.close() for n, c in caps.items()}
    for dst in DESTINATIONS:
        for i in range(rounds):
            tag = f"r{i}/".encode()
            assert seen(frames[2], dst, ALLOWED, tag) == 1, f"the control to {dst} never arrived"
            assert not seen(frames[2], dst, DENIED, tag), (
                f"{dst}:{DENIED} reached a port denying it"
            )
            assert seen(frames[3], dst, DENIED, tag) == 1, (
                f"{dst}:{DENIED} missed a port allowing it"
            )
            # exactly once: from h2's tunnel, never relayed again by h1's
            assert seen(frames[4], dst, DENIED, tag) == 1, (
                f"{dst}: {seen(frames[4], dst, DENIED, tag)}"
            )
