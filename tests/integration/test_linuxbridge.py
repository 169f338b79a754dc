"""The Linux bridge driver for real: bridges, taps, dnsmasq, nftables and VXLAN, each test in
network namespaces of its own (created here, deleted in finally even on failure)."""

from __future__ import annotations

import fcntl
import os
import secrets
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from nubes.errors import DriverError, InvalidInput
from nubes.lab import Lab
from nubes.lab.lab import kill_namespace_processes
from nubes.network import firewall, gateway, linuxbridge, netns
from nubes.network.base import DhcpHost, NetworkSpec, OverlayPeer, PortSpec
from nubes.network.linuxbridge import LinuxBridgeDriver, geneve_supported, vxlan_name
from nubes.network.netlink import Netlink

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

MAC1 = "52:54:00:00:00:05"
MAC2 = "52:54:00:00:00:06"


def _uid() -> str:
    return secrets.token_hex(3)


@pytest.fixture
def make_ns() -> Iterator[Callable[[str], str]]:
    """Creates uniquely named namespaces; all of them (and their processes) go at the end."""
    made: list[str] = []

    def make(tag: str) -> str:
        name = f"nt{_uid()}{tag}"
        made.append(name)
        netns.create(name)
        return name

    try:
        yield make
    finally:
        for name in reversed(made):
            kill_namespace_processes(name)
            netns.delete(name)


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # world-traversable, so dnsmasq can drop to nobody and still re-read its hostsfile
    d = Path(tempfile.mkdtemp(prefix="nubes-net-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        # a failed test's gateways (of this directory's drivers, or of a lab host's under it)
        for where in (d, *(p for p in d.iterdir() if p.is_dir())):
            for name in netns.list_names(f"{gateway.NS_PREFIX}{gateway.host_tag(where)}-"):
                kill_namespace_processes(name)
            gateway.remove_all(where)
        shutil.rmtree(d, ignore_errors=True)


def net_spec(net_id: str = "net-1", **kw: object) -> NetworkSpec:
    base = NetworkSpec(
        id=net_id,
        bridge="nbr" + net_id.replace("-", "")[:11],
        cidr="10.20.0.0/24",
        gateway="10.20.0.1",
        mtu=1450,
        dhcp_hosts=(DhcpHost(MAC1, "10.20.0.5", "i-1"),),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def port_spec(n: int, net: NetworkSpec, mac: str, ip: str, owner: int | None) -> PortSpec:
    return PortSpec(
        id=f"port-{n}",
        network_id=net.id,
        bridge=net.bridge,
        tap=f"tapport{n}",
        mac=mac,
        ip=ip,
        owner_uid=owner,
        mtu=net.mtu,
    )


def link_names() -> list[str]:
    with Netlink() as nl:
        return sorted(link.name for link in nl.list_links())


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_network_lifecycle_and_dnsmasq(make_ns: Callable[[str], str], state_dir: Path) -> None:
    ns = make_ns("a")
    net = net_spec()
    with netns.inside(ns):
        driver = LinuxBridgeDriver(state_dir)
        driver.ensure_network(net)
        pid = driver.dhcp.pid(net.id)
        driver.ensure_network(net)  # idempotent: same dnsmasq, same devices
        assert driver.dhcp.pid(net.id) == pid is not None
        assert driver.list_networks() == ["net-1"]
        with Netlink() as nl:
            bridge = nl.get_link(net.bridge)
            assert bridge is not None and bridge.kind == "bridge" and bridge.up
            assert bridge.mtu == 1450 and bridge.alias == "nubes network net-1"
            # no tenant address on the host: the gateway and the metadata address live in the
            # network's namespace, on the far end of a veth plugged into the bridge
            assert nl.addresses(net.bridge) == []
            veth = nl.get_link(gateway.veth_name(net.id))
            assert veth is not None and veth.master == bridge.index and veth.up
        gw_ns = driver.gateways.namespace(net.id)
        with netns.inside(gw_ns), Netlink() as nl:
            assert nl.addresses(gateway.GW_DEV) == ["10.20.0.1/24", "169.254.169.254/32"]
            gw = nl.get_link(gateway.GW_DEV)
            assert gw is not None and gw.mac == gateway.gateway_mac(net.id) and gw.mtu == 1450
            gw_inode = netns.current_inode()

        # dnsmasq lives in the gateway's namespace, unprivileged, with the reservation on file
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == gw_inode
        assert "\nUid:\t65534\t" in Path(f"/proc/{pid}/status").read_text()
        paths = driver.dhcp.paths(net.id)
        assert paths.hosts.read_text() == f"{MAC1},10.20.0.5,i-1\n"

        # a new reservation is a SIGHUP, not a restart
        more = replace(net, dhcp_hosts=(*net.dhcp_hosts, DhcpHost(MAC2, "10.20.0.6", "i-2")))
        driver.ensure_network(more)
        assert driver.dhcp.pid(net.id) == pid
        assert f"{MAC2},10.20.0.6,i-2" in paths.hosts.read_text()
        _wait_for(lambda: paths.log.read_text().count(f"read {paths.hosts}") >= 2)

        # a changed option restarts it; a dead one is restarted
        driver.ensure_network(replace(more, mtu=1400))
        pid2 = driver.dhcp.pid(net.id)
        assert pid2 is not None and pid2 != pid
        assert "--dhcp-option=option:mtu,1400" in Path(f"/proc/{pid2}/cmdline").read_text()
        os.kill(pid2, 9)
        _wait_for(lambda: not alive(pid2))
        driver.ensure_network(replace(more, mtu=1400))
        pid3 = driver.dhcp.pid(net.id)
        assert pid3 is not None and pid3 != pid2

        driver.delete_network(net.id)
        driver.delete_network(net.id)
        assert link_names() == ["lo"]
        assert driver.list_networks() == []
        assert firewall.tables() == []
        _wait_for(lambda: not alive(pid3))
        assert not paths.dir.exists()
        assert not netns.exists(gw_ns)
    assert netns.pids(ns) == []


def test_ports_plug_and_unplug(make_ns: Callable[[str], str], state_dir: Path) -> None:
    ns = make_ns("p")
    net = net_spec()
    p1 = port_spec(1, net, MAC1, "10.20.0.5", owner=65534)
    p2 = port_spec(2, net, MAC2, "10.20.0.6", owner=None)
    with netns.inside(ns):
        driver = LinuxBridgeDriver(state_dir)
        driver.ensure_network(net)
        for p in (p1, p2, p1, p2):
            driver.plug_port(p)
        with Netlink() as nl:
            bridge = nl.get_link(net.bridge)
            assert bridge is not None
            for p in (p1, p2):
                tap = nl.get_link(p.tap)
                assert tap is not None and tap.kind == "tun" and tap.mtu == 1450 and tap.up
                assert tap.master == bridge.index
                assert tap.info["IFLA_TUN_TYPE"] == 2  # tap, not tun
                assert tap.info["IFLA_TUN_PERSIST"] == 1
                assert tap.info.get("IFLA_TUN_OWNER") == p.owner_uid
        assert [(p.tap, p.bridge, p.mac) for p in driver.list_ports()] == [
            ("tapport1", net.bridge, MAC1),
            ("tapport2", net.bridge, MAC2),
        ]
        with Netlink() as nl:  # the gateway MAC stays put when ports come and go
            assert nl.get_link(net.bridge).mac == bridge.mac  # type: ignore[union-attr]
        # a new owner recreates the tap, but never under a guest that has it open
        index = nl_index(p1.tap)
        with Tap(p1.tap):
            driver.plug_port(replace(p1, owner_uid=1000))
            assert nl_index(p1.tap) == index
        driver.plug_port(replace(p1, owner_uid=1000))
        assert nl_index(p1.tap) != index
        with pytest.raises(DriverError):  # no bridge, no port
            driver.plug_port(replace(p1, bridge="nbrmissing", tap="tapport3"))
        assert nl_get("tapport3") is None

        for tap in ("tapport1", "tapport2", "tapport1"):
            driver.unplug_port(tap)
        assert driver.list_ports() == []
        driver.delete_network(net.id)
        assert link_names() == ["lo"]
        assert firewall.tables() == []


def nl_get(name: str) -> object:
    with Netlink() as nl:
        return nl.get_link(name)


def nl_index(name: str) -> int:
    with Netlink() as nl:
        link = nl.get_link(name)
        assert link is not None
        return link.index


def test_dhcp_lease_matches_the_reservation(make_ns: Callable[[str], str], state_dir: Path) -> None:
    host = make_ns("h")
    other = net_spec("net-2", cidr="10.21.0.0/24", gateway="10.21.0.1", dhcp_hosts=())
    net = net_spec("net-3", dns=("10.20.0.53",))
    with netns.inside(host):
        driver = LinuxBridgeDriver(state_dir)
        driver.ensure_network(other)  # two dnsmasqs side by side in one namespace
        driver.ensure_network(net)
        assert driver.dhcp.pid(other.id) and driver.dhcp.pid(net.id)

    script = state_dir / "udhcpc.sh"
    script.write_text(f'#!/bin/sh\nenv > "{state_dir}/udhcpc.$1"\n')
    script.chmod(0o755)
    good = make_ns("c")
    netns.attach_endpoint(host, net.bridge, good, f"v{_uid()}g", mac=MAC1, mtu=1450)
    udhcpc = [
        "busybox",
        "udhcpc",
        "-i",
        "eth0",
        "-f",
        "-q",
        "-n",
        "-O",
        "mtu",
        "-t",
        "6",
        "-T",
        "1",
        "-s",
    ]
    proc = subprocess.run(
        ["ip", "netns", "exec", good, *udhcpc, str(script)], capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    env = dict(line.split("=", 1) for line in (state_dir / "udhcpc.bound").read_text().splitlines())
    assert env["ip"] == "10.20.0.5"
    assert env["router"] == "10.20.0.1"
    assert env["mtu"] == "1450"
    assert env["subnet"] == "255.255.255.0"
    assert env["dns"].split() == ["10.20.0.53"]
    with netns.inside(host):
        _wait_for(lambda: driver.leases(net.id) == [(MAC1, "10.20.0.5")])

    # a MAC without a reservation gets nothing: the range is static
    (state_dir / "udhcpc.bound").unlink()
    stranger = make_ns("s")
    netns.attach_endpoint(host, net.bridge, stranger, f"v{_uid()}s", mac=MAC2, mtu=1450)
    udhcpc[udhcpc.index("6")] = "2"
    proc = subprocess.run(
        ["ip", "netns", "exec", stranger, *udhcpc, str(script)], capture_output=True, timeout=60
    )
    assert proc.returncode != 0
    assert not (state_dir / "udhcpc.bound").exists()
    with netns.inside(host):
        driver.delete_network(net.id)
        driver.delete_network(other.id)


def test_anti_spoofing_and_host_guard(
    make_ns: Callable[[str], str], state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = make_ns("f")
    net = net_spec("net-4")
    port = port_spec(4, net, MAC1, "10.20.0.5", owner=None)
    gw = "10.20.0.1"
    with netns.inside(ns):
        driver = LinuxBridgeDriver(state_dir)  # anti_spoof and guard_host are on by default
        driver.ensure_network(net)
        driver.plug_port(port)
        with Tap(port.tap) as tap:
            # ARP: only the port's own MAC and IP get an answer
            assert not tap.exchange(arp_request(MAC1, "10.20.0.9", gw), mentions_ip("10.20.0.9"))
            assert not tap.exchange(arp_request(MAC2, "10.20.0.5", gw), is_arp_reply_from(gw))
            reply = tap.exchange(arp_request(MAC1, "10.20.0.5", gw), is_arp_reply_from(gw))
            assert reply is not None
            gw_mac = reply[6:12].hex(":")
            # IP: the gateway answers its own port, never a spoofed source address or MAC
            assert tap.exchange(icmp_echo(MAC1, gw_mac, "10.20.0.5", gw), is_echo_reply(gw))
            spoofed_ip = icmp_echo(MAC1, gw_mac, "10.20.0.9", gw)
            assert not tap.exchange(spoofed_ip, mentions_ip("10.20.0.9"))
            assert not tap.exchange(icmp_echo(MAC2, gw_mac, "10.20.0.5", gw), is_echo_reply(gw))
            # the gateway's namespace: no TCP but the metadata service's...
            syn = tcp_syn(MAC1, gw_mac, "10.20.0.5", gw, 5555)
            assert not tap.exchange(syn, is_tcp_rst(gw))
            # ...and the negatives are real: without our tables they get through
            firewall.apply(firewall.delete_tables_script(firewall.tables()))
            assert tap.exchange(spoofed_ip, mentions_ip("10.20.0.9"))
            # tables gone behind the driver's back: its next ensure puts every rule back, and
            # so does a restarted agent's driver (the port's rules from the tap's alias)
            monkeypatch.setattr(linuxbridge, "TABLES_CHECK_EVERY", 0.0)
            # (a new spoofed address each time: the gateway still ARPs for the one that got in)
            restarted = LinuxBridgeDriver(state_dir)
            for ensuring, spoof in ((driver, "10.20.0.10"), (restarted, "10.20.0.11")):
                ensuring.ensure_network(net)
                assert sorted(firewall.tables()) == ["bridge", "inet"]
                spoofed = icmp_echo(MAC1, gw_mac, spoof, gw)
                assert not tap.exchange(spoofed, mentions_ip(spoof))
                assert tap.exchange(icmp_echo(MAC1, gw_mac, "10.20.0.5", gw), is_echo_reply(gw))
                firewall.apply(firewall.delete_tables_script(firewall.tables()))
            # the gateway namespace's own table: without it the SYN is answered; an agent
            # that starts again puts it back
            with netns.inside(driver.gateways.namespace(net.id)):
                firewall.apply(firewall.delete_tables_script(firewall.tables()))
            assert tap.exchange(syn, is_tcp_rst(gw))
            LinuxBridgeDriver(state_dir).ensure_network(net)
            assert not tap.exchange(syn, is_tcp_rst(gw))
        driver.unplug_port(port.tap)
        driver.delete_network(net.id)
        assert link_names() == ["lo"]


# -- raw frames through a tap, the way QEMU would send them ---------------------------------------

_TUNSETIFF = 0x400454CA
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
Frame = bytes


class Tap:
    """Opens a persistent tap like an unprivileged QEMU would, to write and read frames."""

    def __init__(self, name: str) -> None:
        self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(self.fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TAP | _IFF_NO_PI))

    def __enter__(self) -> Tap:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def exchange(
        self, frame: Frame, match: Callable[[Frame], bool], timeout: float = 1.0
    ) -> Frame | None:
        """Send a frame, return the first frame coming back that matches (None on timeout)."""
        while select.select([self.fd], [], [], 0)[0]:
            os.read(self.fd, 65536)  # drop what arrived before
        os.write(self.fd, frame)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if select.select([self.fd], [], [], left)[0]:
                got = os.read(self.fd, 65536)
                if match(got):
                    return got
        return None


def _mac(m: str) -> bytes:
    return bytes.fromhex(m.replace(":", ""))


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _eth(src: str, dst: str, ethertype: int, payload: bytes) -> Frame:
    return _mac(dst) + _mac(src) + struct.pack("!H", ethertype) + payload


def _ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0, s, d)
    return hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:] + payload


def arp_request(src_mac: str, src_ip: str, target_ip: str) -> Frame:
    arp = struct.pack(
        "!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, _mac(src_mac), socket.inet_aton(src_ip),
        b"\0" * 6, socket.inet_aton(target_ip),
    )  # fmt: skip
    return _eth(src_mac, "ff:ff:ff:ff:ff:ff", 0x0806, arp)


def icmp_echo(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str) -> Frame:
    body = struct.pack("!BBHHH", 8, 0, 0, 0x4E42, 1) + b"nubes"
    body = body[:2] + struct.pack("!H", _csum(body)) + body[4:]
    return _eth(src_mac, dst_mac, 0x0800, _ipv4(src_ip, dst_ip, 1, body))


def tcp_syn(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, port: int) -> Frame:
    tcp = struct.pack("!HHIIBBHHH", 40000, port, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    pseudo = socket.inet_aton(src_ip) + socket.inet_aton(dst_ip) + struct.pack("!BBH", 0, 6, 20)
    tcp = tcp[:16] + struct.pack("!H", _csum(pseudo + tcp)) + tcp[18:]
    return _eth(src_mac, dst_mac, 0x0800, _ipv4(src_ip, dst_ip, 6, tcp))


def _ethertype(f: Frame) -> int:
    return int(struct.unpack("!H", f[12:14])[0]) if len(f) >= 14 else 0


def is_arp_reply_from(ip: str) -> Callable[[Frame], bool]:
    addr = socket.inet_aton(ip)
    return lambda f: _ethertype(f) == 0x0806 and f[20:22] == b"\0\2" and f[28:32] == addr


def is_echo_reply(src: str) -> Callable[[Frame], bool]:
    addr = socket.inet_aton(src)
    return lambda f: _ethertype(f) == 0x0800 and f[23] == 1 and f[26:30] == addr and f[34] == 0


def is_tcp_rst(src: str) -> Callable[[Frame], bool]:
    addr = socket.inet_aton(src)
    return lambda f: (
        _ethertype(f) == 0x0800 and f[23] == 6 and f[26:30] == addr and bool(f[47] & 0x04)
    )


def mentions_ip(ip: str) -> Callable[[Frame], bool]:
    """Any sign the network stack saw this address: an ARP for it, or a packet to it."""
    addr = socket.inet_aton(ip)
    return lambda f: (
        (_ethertype(f) == 0x0806 and f[38:42] == addr)
        or (_ethertype(f) == 0x0800 and f[30:34] == addr)
    )


def test_geneve_is_refused_clearly_without_kernel_support(
    make_ns: Callable[[str], str], state_dir: Path
) -> None:
    if geneve_supported():
        pytest.skip("this kernel has Geneve")
    ns = make_ns("g")
    spec = net_spec(
        vni=5,
        overlay="geneve",
        local_underlay_ip="10.255.0.11",
        peers=(OverlayPeer("10.255.0.12"),),
    )
    with netns.inside(ns):
        with pytest.raises(InvalidInput, match="this kernel has no Geneve; use --type vxlan"):
            LinuxBridgeDriver(state_dir).ensure_network(spec)
        assert link_names() == ["lo"]


def test_two_networks_with_the_same_addresses_share_a_host(
    make_ns: Callable[[str], str], state_dir: Path
) -> None:
    """Two tenants both pick 10.20.0.0/24: each gateway lives in its own namespace, each guest
    reaches its own, and nothing crosses (same addresses, even the same guest address)."""
    host = make_ns("r")
    a = net_spec("net-5", dhcp_hosts=())
    b = net_spec("net-6", dhcp_hosts=())
    with netns.inside(host):
        driver = LinuxBridgeDriver(state_dir)
        driver.ensure_network(a)
        driver.ensure_network(b)
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1")  # routing on, to be sure
    ga, gb, ga2 = make_ns("a"), make_ns("b"), make_ns("c")
    for guest, net, ip in [(ga, a, "10.20.0.7"), (gb, b, "10.20.0.7"), (ga2, a, "10.20.0.8")]:
        netns.attach_endpoint(host, net.bridge, guest, f"v{_uid()}r", f"{ip}/24", mtu=1450)
    assert _ping(ga, "10.20.0.8", count=3)  # bridged traffic on one network flows
    assert _ping(ga, "10.20.0.1") and _ping(gb, "10.20.0.1")
    assert not _ping(gb, "10.20.0.8", count=2)  # but the other tenant's guest is not there
    for guest, net in ((ga, a), (gb, b)):  # each answered by its own gateway
        neigh = subprocess.run(
            ["ip", "-n", guest, "neigh", "show", "10.20.0.1"], capture_output=True, text=True
        ).stdout
        assert gateway.gateway_mac(net.id) in neigh, neigh
    routes = subprocess.run(
        ["ip", "-n", host, "-4", "route", "show", "table", "all"], capture_output=True, text=True
    ).stdout
    assert "10.20.0" not in routes  # no tenant range in the host's own routing tables
    with netns.inside(host):
        driver.delete_network(a.id)
        driver.delete_network(b.id)
        assert not [n for n in link_names() if n.startswith(("nbr", "nvg"))]
    assert not netns.list_names(gateway.NS_PREFIX + driver.gateways.tag)


def _ping(ns: str, ip: str, count: int = 1) -> bool:
    argv = ["ip", "netns", "exec", ns, "busybox", "ping", "-c", str(count), "-W", "1", ip]
    return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0


def _wait_for(cond: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_vxlan_overlay_between_lab_hosts(make_ns: Callable[[str], str], state_dir: Path) -> None:
    lab = Lab(state_dir / "lab", name_prefix=f"t{_uid()}")
    try:
        h1, h2 = lab.create_hosts(2)
        ips = {h1.name: h1.underlay_ip, h2.name: h2.underlay_ip}

        def spec(net_id: str, vni: int, host: str, serve: bool) -> NetworkSpec:
            peers = tuple(OverlayPeer(ip) for name, ip in ips.items() if name != host)
            return net_spec(
                net_id,
                vni=vni,
                local_underlay_ip=ips[host],
                peers=peers,
                serve_dhcp=serve,
                dhcp_hosts=(),
            )

        drivers = {h.name: LinuxBridgeDriver(state_dir / h.name) for h in (h1, h2)}
        for h in (h1, h2):
            with netns.inside(h.netns):
                drivers[h.name].ensure_network(spec("net-a", 100, h.name, serve=h is h1))
                drivers[h.name].ensure_network(spec("net-a", 100, h.name, serve=h is h1))
                drivers[h.name].ensure_network(spec("net-b", 200, h.name, serve=False))
        # stand-in guests: same CIDR on both networks, two hosts each
        guests = {}
        for tag, host, net_id, ip in [
            ("1", h1, "net-a", "10.20.0.11"),
            ("2", h2, "net-a", "10.20.0.12"),
            ("3", h2, "net-b", "10.20.0.13"),
            ("4", h1, "net-b", "10.20.0.14"),
        ]:
            guests[tag] = make_ns(tag)
            bridge = "nbr" + net_id.replace("-", "")
            netns.attach_endpoint(
                host.netns, bridge, guests[tag], f"vg{tag}{_uid()}", f"{ip}/24", mtu=1450
            )
        assert _ping(guests["2"], "10.20.0.1", count=3)  # h2's guest reaches h1's gateway
        assert _ping(guests["2"], "10.20.0.11")
        assert _ping(guests["3"], "10.20.0.14", count=3)  # net-b works across hosts too
        # isolation: another VNI is another segment, whatever its addresses
        assert not _ping(guests["3"], "10.20.0.1")
        assert not _ping(guests["3"], "10.20.0.11")
        assert not _ping(guests["1"], "10.20.0.13")

        # peers are reconciled: dropping h1 removes its FDB entry and cuts the overlay
        with netns.inside(h2.netns), Netlink() as nl:
            vx = vxlan_name("net-a")
            flood = [e.dst for e in nl.fdb_entries(vx) if e.mac == "00:00:00:00:00:00"]
            assert flood == [h1.underlay_ip]
            lonely = replace(spec("net-a", 100, h2.name, serve=False), peers=())
            drivers[h2.name].ensure_network(lonely)
            assert nl.get_link(vx) is None
        assert not _ping(guests["2"], "10.20.0.11")
        with netns.inside(h2.netns):
            drivers[h2.name].ensure_network(spec("net-a", 100, h2.name, serve=False))
        assert _ping(guests["2"], "10.20.0.11", count=3)
    finally:
        lab.destroy()
    assert not any(n.startswith(lab.prefix) for n in netns.list_names())


def test_rtnl_sets_a_bridge_port_isolated_and_the_default_route(
    make_ns: Callable[[str], str],
) -> None:
    """What pyroute2 used to do for us (Geneve's split horizon, a gateway's way out)."""
    ns = make_ns("q")
    for cmd in (
        "link add br0 type bridge",
        "link add p0 type veth peer name p1",
        "link set p0 master br0",
        "link set p1 up",
        "addr add 192.0.2.9/24 dev p1",
    ):
        subprocess.run(["ip", "-n", ns, *cmd.split()], check=True)
    with netns.inside(ns), Netlink() as nl:
        nl.set_port_isolated("p0", True)
        nl.replace_default_route("192.0.2.1")
        nl.replace_default_route("192.0.2.2")  # replaced, not added

    def ip(*argv: str) -> str:
        return subprocess.run(["ip", "-n", ns, *argv], capture_output=True, text=True).stdout

    assert "isolated on" in ip("-d", "link", "show", "p0")
    assert "default via 192.0.2.2 dev p1" in ip("route")
    assert ip("route").count("default") == 1
    with netns.inside(ns), Netlink() as nl:
        nl.replace_default_route(None)
        nl.replace_default_route(None)  # absent: fine
    assert "default" not in ip("route")
