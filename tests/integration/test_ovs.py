"""The Open vSwitch driver between two lab hosts, driver level (no API, no QEMU): each host runs
its own ovsdb-server and ovs-vswitchd (userspace datapath here); stand-in guests are veth
endpoints in namespaces of their own, plugged as ports of br-int."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from nubes.lab import Lab, LabHost
from nubes.network import netns, openflow, ovs_daemons
from nubes.network.base import NetworkSpec, OverlayPeer, PortSpec
from nubes.network.ovs import BR_PHY, OvsDriver, tx_checksum_off
from nubes.network.secgroups import Rule
from tests.integration.capture import Capture
from tests.integration.test_linuxbridge import _ping, _uid, make_ns, net_spec, state_dir
from tests.integration.test_secgroups import _connects, _listen

__all__ = ["make_ns", "state_dir"]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not ovs_daemons.installed(), reason="Open vSwitch is not installed"),
]

UNDERLAY = "10.254.71.0/24"  # apart from the default lab's, which may be up beside us


@pytest.fixture
def lab2(state_dir: Path) -> Iterator[list[LabHost]]:
    lab = Lab(state_dir / "lab", name_prefix=f"o{_uid()}", underlay_cidr=UNDERLAY)
    try:
        yield lab.create_hosts(2)
    finally:
        lab.destroy()
    assert not any(n.startswith(lab.prefix + "-") for n in netns.list_names())
    left = subprocess.run(["pgrep", "-f", f"ovs.*{state_dir}"], capture_output=True, text=True)
    assert left.stdout == "", "an ovsdb-server or ovs-vswitchd outlived the lab"


def spec_for(hosts: list[LabHost], me: LabHost, net_id: str, vni: int, overlay: str) -> NetworkSpec:
    serving = hosts[0]
    return net_spec(
        net_id,
        vni=vni,
        overlay=overlay,
        local_underlay_ip=me.underlay_ip,
        peers=tuple(OverlayPeer(h.underlay_ip) for h in hosts if h != me),
        serve_dhcp=me == serving,
        gateway_underlay_ip=None if me == serving else serving.underlay_ip,
        dhcp_hosts=(),
    )


OPEN = (Rule("egress"), Rule("ingress"))


def guest(
    make_ns: Callable[[str], str],
    host: LabHost,
    driver: OvsDriver,
    net: NetworkSpec,
    n: int,
    rules: tuple[Rule, ...] = OPEN,
) -> tuple[str, PortSpec]:
    """A stand-in guest: a namespace whose eth0 is the peer of the port's `tap` (a veth)."""
    ns = make_ns(f"g{n}")
    mac, ip = f"52:54:00:0a:00:{n:02x}", f"10.20.0.{10 + n}"
    tap = f"tapovs{n}{_uid()}"[:15]
    subprocess.run(
        ["ip", "-n", host.netns, "link", "add", tap, "type", "veth", "peer", "name", "eth0",
         "netns", ns],
        check=True,
    )  # fmt: skip
    for argv in (
        ["link", "set", "eth0", "address", mac, "mtu", str(net.mtu), "up"],
        ["addr", "add", f"{ip}/24", "dev", "eth0"],
        ["link", "set", "lo", "up"],
    ):
        subprocess.run(["ip", "-n", ns, *argv], check=True)
    with netns.inside(ns):
        tx_checksum_off("eth0")  # what QEMU's csum=off does for a real guest
    port = PortSpec(
        id=f"port-{n}", network_id=net.id, bridge=net.bridge, tap=tap, mac=mac, ip=ip,
        mtu=net.mtu, rules=rules,
    )  # fmt: skip
    with netns.inside(host.netns):
        driver.plug_port(port)
    return ns, port


def tcp_transfer(server_ns: str, client_ns: str, ip: str, size: int = 4 << 20) -> float:
    """Bytes/s of one TCP stream of `size` bytes from client to server."""
    code = (
        "import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
        "s.bind(('0.0.0.0',5001));s.listen();c,_=s.accept();n=0\n"
        "while (b:=c.recv(65536)): n+=len(b)\nprint(n)"
    )
    srv = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "python3", "-c", code], stdout=subprocess.PIPE, text=True
    )
    time.sleep(0.5)
    start = time.monotonic()
    with netns.inside(client_ns), socket.create_connection((ip, 5001), timeout=20) as c:
        c.sendall(b"x" * size)
    out, _ = srv.communicate(timeout=30)
    elapsed = time.monotonic() - start
    assert int(out) == size
    return size / elapsed


def send_udp(ns: str, src: str, sport: int, dport: int, payload: bytes) -> None:
    """A broadcast UDP datagram from inside ns."""
    with netns.inside(ns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.bind((src, sport))
        s.sendto(payload, ("10.20.0.255", dport))


def geneve_vnis(frames: list[bytes]) -> set[int]:
    """VNIs of the Geneve (UDP 6081) packets among frames (IPv4, no IP options)."""
    found = set()
    for f in frames:
        if len(f) > 50 and f[12:14] == b"\x08\x00" and f[23] == 17:
            udp = f[14 + 20 :]
            if int.from_bytes(udp[2:4], "big") == 6081:
                found.add(int.from_bytes(udp[8 + 4 : 8 + 7], "big"))
    return found


def test_geneve_and_vxlan_between_two_ovs_hosts(
    lab2: list[LabHost], make_ns: Callable[[str], str], state_dir: Path
) -> None:
    h1, h2 = lab2
    drivers = {h.name: OvsDriver(state_dir / h.name) for h in lab2}
    for h in lab2:
        with netns.inside(h.netns):
            for _ in range(2):  # idempotent
                drivers[h.name].ensure_network(spec_for(lab2, h, "net-a", 88, "geneve"))
            drivers[h.name].ensure_network(spec_for(lab2, h, "net-b", 200, "vxlan"))
    net_a, net_b = (
        spec_for(lab2, h1, "net-a", 88, "geneve"),
        spec_for(lab2, h1, "net-b", 200, "vxlan"),
    )
    g1, _ = guest(make_ns, h1, drivers[h1.name], net_a, 1)
    g2, p2 = guest(make_ns, h2, drivers[h2.name], net_a, 2)
    g3, _ = guest(make_ns, h2, drivers[h2.name], net_b, 3)
    g4, _ = guest(make_ns, h1, drivers[h1.name], net_b, 4)

    cap = Capture(h2.netns, "eth0")
    assert _ping(g2, "10.20.0.1", count=3)  # h2's guest reaches the gateway on h1
    assert _ping(g2, "10.20.0.11")
    frames = cap.close()
    assert 88 in geneve_vnis(frames), "no Geneve packet with VNI 88 on the underlay"
    rate = tcp_transfer(g1, g2, "10.20.0.11")
    print(f"TCP over OVS + Geneve between hosts: {rate * 8 / 1e6:.0f} Mbit/s")
    assert _ping(g3, "10.20.0.14", count=3)  # VXLAN on OVS
    # isolation: the other network's guests, same addresses, never answer
    assert not _ping(g3, "10.20.0.11")
    assert not _ping(g1, "10.20.0.13")

    # a DHCP server's offer from an instance never leaves its port (g1 is on the same host)
    cap = Capture(g1, "eth0")
    send_udp(g4, "10.20.0.14", 67, 68, b"rogue-offer")
    send_udp(g4, "10.20.0.14", 5000, 68, b"plain-udp")  # the control: this one arrives
    time.sleep(1)
    seen = cap.close()
    assert any(b"plain-udp" in f for f in seen) is False  # another network: never there
    cap = Capture(g1, "eth0")
    send_udp(g2, "10.20.0.12", 67, 68, b"rogue-offer")
    send_udp(g2, "10.20.0.12", 5000, 68, b"plain-udp")
    time.sleep(1)
    seen = cap.close()
    assert any(b"plain-udp" in f for f in seen), "the control never arrived"
    assert not any(b"rogue-offer" in f for f in seen), "a DHCP offer from an instance arrived"

    # anti-spoofing: another source address or MAC gets nowhere, nor ARP that claims it
    subprocess.run(["ip", "-n", g2, "addr", "flush", "dev", "eth0"], check=True)
    subprocess.run(["ip", "-n", g2, "addr", "add", "10.20.0.99/24", "dev", "eth0"], check=True)
    cap = Capture(g1, "eth0")
    assert not _ping(g2, "10.20.0.11")
    seen = cap.close()
    assert not [f for f in seen if socket.inet_aton("10.20.0.99") in f], "a spoofed frame arrived"
    # an allowed address pair lets it through
    with netns.inside(h2.netns):
        drivers[h2.name].plug_port(replace(p2, allowed=(("10.20.0.99/32", None),)))
    assert _ping(g2, "10.20.0.11", count=3)


def test_vswitchd_killed_is_restarted_and_traffic_comes_back(
    lab2: list[LabHost], make_ns: Callable[[str], str], state_dir: Path
) -> None:
    h1, h2 = lab2
    drivers = {h.name: OvsDriver(state_dir / h.name) for h in lab2}
    specs = {h.name: spec_for(lab2, h, "net-a", 88, "geneve") for h in lab2}
    for h in lab2:
        with netns.inside(h.netns):
            drivers[h.name].ensure_network(specs[h.name])
    g1, _ = guest(make_ns, h1, drivers[h1.name], specs[h1.name], 1)
    g2, _ = guest(make_ns, h2, drivers[h2.name], specs[h2.name], 2)
    assert _ping(g2, "10.20.0.11", count=2)
    d2 = drivers[h2.name]
    pid = ovs_daemons.pid_of(d2.ovs.paths, "ovs-vswitchd")
    assert pid is not None
    subprocess.run(["kill", "-9", str(pid)], check=True)
    time.sleep(0.5)
    assert not _ping(g2, "10.20.0.11")
    start = time.monotonic()
    with netns.inside(h2.netns):  # the agent's next pass
        d2.ensure_network(specs[h2.name])
    assert ovs_daemons.pid_of(d2.ovs.paths, "ovs-vswitchd") not in (None, pid)
    assert _ping(g2, "10.20.0.11", count=3)
    print(f"traffic back {time.monotonic() - start:.1f} s after the restarting pass")
    with netns.inside(h2.netns):
        assert (
            BR_PHY in subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True).stdout
        )
    # killed again while the agent restarts too: a new driver finds everything in OVSDB
    pid = ovs_daemons.pid_of(d2.ovs.paths, "ovs-vswitchd")
    subprocess.run(["kill", "-9", str(pid)], check=True)
    time.sleep(0.5)
    with netns.inside(h2.netns):
        OvsDriver(state_dir / h2.name).ensure_network(specs[h2.name])
    assert _ping(g2, "10.20.0.11", count=3)


def test_security_groups_in_conntrack_flows(
    lab2: list[LabHost], make_ns: Callable[[str], str], state_dir: Path
) -> None:
    h1, h2 = lab2
    drivers = {h.name: OvsDriver(state_dir / h.name) for h in lab2}
    specs = {h.name: spec_for(lab2, h, "net-a", 88, "geneve") for h in lab2}
    for h in lab2:
        with netns.inside(h.netns):
            drivers[h.name].ensure_network(specs[h.name])
    only_tcp = (Rule("egress"), Rule("ingress", "tcp", 5001, 5001, ("10.20.0.0/24",)))
    g1, p1 = guest(make_ns, h1, drivers[h1.name], specs[h1.name], 1, only_tcp)
    g2, _ = guest(make_ns, h2, drivers[h2.name], specs[h2.name], 2)
    g3, _ = guest(make_ns, h1, drivers[h1.name], specs[h1.name], 3)
    assert _ping(g1, "10.20.0.12", count=2)  # out and its replies back: stateful
    assert not _ping(g2, "10.20.0.11")  # no ingress ICMP, across hosts
    assert not _ping(g3, "10.20.0.11")  # nor on the same host
    assert tcp_transfer(g1, g2, "10.20.0.11", size=1 << 20) > 0  # tcp 5001 is let in
    with netns.inside(h1.netns):  # the group changes: the next pass puts it in
        drivers[h1.name].ensure_port_filter(replace(p1, rules=OPEN))
    assert _ping(g2, "10.20.0.11", count=2)
    with netns.inside(h1.netns):
        drivers[h1.name].ensure_port_filter(replace(p1, rules=()))
    assert not _ping(g3, "10.20.0.11")
    assert not _ping(g1, "10.20.0.12")  # no egress either


def test_secgroups_scenario_of_the_linux_bridge_on_ovs(
    make_ns: Callable[[str], str], state_dir: Path
) -> None:
    """test_secgroups.py's scenario, on one OVS host (no underlay: no peers)."""
    host = make_ns("h")
    h = LabHost(name=host, netns=host, underlay_ip="10.254.72.1", index=1)
    net = net_spec("net-sg", vni=4242, dhcp_hosts=(), serve_dhcp=False)
    driver = OvsDriver(state_dir / "h")
    with netns.inside(host):
        driver.ensure_network(net)
    ns, ports = {}, {}
    for n, name in enumerate(("a", "b", "c"), start=5):
        ns[name], ports[name] = guest(make_ns, h, driver, net, n)
    ips = {name: p.ip for name, p in ports.items()}
    servers = [_listen(ns["b"], p) for p in (22, 80)] + [_listen(ns["a"], 8080)]
    time.sleep(0.5)

    def secure(name: str, *rules: Rule) -> None:
        with netns.inside(host):
            driver.ensure_port_filter(replace(ports[name], rules=rules))

    try:
        assert _connects(ns["a"], ips["b"], 22) and _connects(ns["a"], ips["b"], 80)
        members = tuple(f"{ip}/32" for ip in ips.values())
        default = (Rule("egress"), Rule("ingress", remotes=members))
        secure("a", *default)
        secure("c", *default)
        secure("b", Rule("egress"), Rule("ingress", "tcp", 22, 22))
        assert _connects(ns["a"], ips["b"], 22)
        assert not _connects(ns["a"], ips["b"], 80)
        secure(
            "b",
            Rule("egress"),
            Rule("ingress", "tcp", 22, 22),
            Rule("ingress", "tcp", 80, 80, (f"{ips['a']}/32",)),
        )
        assert _connects(ns["a"], ips["b"], 80)
        assert not _connects(ns["c"], ips["b"], 80)
        secure("a", Rule("egress"), Rule("ingress", remotes=(f"{ips['a']}/32", f"{ips['c']}/32")))
        assert _connects(ns["c"], ips["a"], 8080)
        assert not _connects(ns["b"], ips["a"], 8080)
        assert _connects(ns["a"], ips["b"], 22)
        secure("a", Rule("egress", "tcp", 22, 22), Rule("ingress", remotes=members))
        secure("b", Rule("egress"), Rule("ingress"))
        assert _connects(ns["a"], ips["b"], 22) and not _connects(ns["a"], ips["b"], 80)
        # unplugging a port removes exactly its flows (its cookie)
        with netns.inside(host):
            flows = driver.ovs.ofctl("dump-flows", "br-int")
            cookie = f"cookie={openflow.cookie(ports['c'].tap):#x}"
            assert cookie in flows
            before = len(flows.splitlines())
            driver.unplug_port(ports["c"].tap)
            after = driver.ovs.ofctl("dump-flows", "br-int")
        assert cookie not in after
        assert len(after.splitlines()) == before - flows.count(cookie + ",")
    finally:
        for p in servers:
            p.kill()
            p.wait()
