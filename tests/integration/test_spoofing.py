"""Anti-spoofing shown with packet captures (tcpdump in the host's namespace).

With real guests: an attacker instance, driven over its serial console, sends frames with a
spoofed MAC, a spoofed IP and gratuitous ARP for its neighbour's address. The capture on its own
tap shows it sent them; the captures on the bridge and on the victim's tap show none arrived.
A router advertisement, which busybox cannot send, is written into a tap the way QEMU would.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nubes.network import netns
from nubes.network.base import NetworkDriver
from nubes.network.gateway import veth_name
from nubes.network.linuxbridge import LinuxBridgeDriver
from nubes.network.ovs import OvsDriver
from nubes.schemas import resources as s
from tests.integration.conftest import NETWORK_DRIVERS, LabCloud, driver_args, start_lab, stop_lab
from tests.integration.hostcheck import qemu_pids, wait_for, wait_status
from tests.integration.test_linuxbridge import (  # noqa: F401 (fixtures)
    MAC1,
    MAC2,
    Tap,
    _eth,
    _ipv4,
    arp_request,
    make_ns,
    net_spec,
    port_spec,
    state_dir,
)

pytestmark = pytest.mark.integration


class Capture:
    """tcpdump on one interface of a namespace, into a pcap file; `frames()` decodes it."""

    def __init__(self, ns: str, ifname: str, path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "tcpdump", "-i", ifname, "-U", "-n", "-w", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "listening on ...": the capture is armed
        assert "listening on" in line, line

    def frames(self) -> list[str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=10)
        out = subprocess.run(
            ["tcpdump", "-r", str(self.path), "-n", "-e"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return out.splitlines()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def seen(frames: list[str], *needles: str, src: str = "") -> list[str]:
    """Frames (tcpdump -e lines: time, source MAC, >, destination...) with every needle."""
    return [
        f for f in frames if all(n in f for n in needles) and (not src or f.split()[1:2] == [src])
    ]


def claiming(frames: list[str], ip: str, src: str = "") -> list[str]:
    """Frames that claim `ip` as their sender: IPv4 from it, an ARP request told to answer it,
    an ARP reply for it. (An ARP request asking *for* it is anyone's right: a guest whose
    neighbour table still names the address asks so from its own.)"""
    claim = re.compile(rf"(: {re.escape(ip)} > |tell {re.escape(ip)},|Reply {re.escape(ip)} is-at)")
    return [f for f in seen(frames, src=src) if claim.search(f)]


class SerialShell:
    """The guest's console shell over QEMU's serial socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.settimeout(0.5)
        self.count = 0

    def run(self, command: str, timeout: float = 60) -> str:
        """Run command, return its output; the end marker is quoted so the echo of the typed
        line never matches it."""
        self.count += 1
        marker = f"__done{self.count}__"
        self.sock.sendall(f"{command}; echo __do''ne{self.count}__\n".encode())
        data = b""
        deadline = time.monotonic() + timeout
        while marker.encode() not in data:
            if time.monotonic() > deadline:
                raise AssertionError(f"console: no answer to {command!r}: {data[-500:]!r}")
            try:
                data += self.sock.recv(65536)
            except TimeoutError:
                if not data:  # the shell may not be there yet: poke it
                    self.sock.sendall(b"\n")
        return data.decode(errors="replace")

    def close(self) -> None:
        self.sock.close()


def nic_of(pid: int) -> tuple[str, str]:
    """(tap, MAC) of a guest, from its QEMU command line."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    tap = next(re.search(r"ifname=([^,]+)", a).group(1) for a in argv if "ifname=" in a)  # type: ignore[union-attr]
    mac = next(re.search(r"mac=([^,]+)", a).group(1) for a in argv if "mac=" in a)  # type: ignore[union-attr]
    return tap, mac


@pytest.fixture(scope="module", params=NETWORK_DRIVERS)
def lab(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[LabCloud]:
    cloud = start_lab(tmp_path_factory.mktemp("spoof"), 1, lab_args=driver_args(request.param))
    try:
        cloud.nubes("image", "build", "tiny")
        cloud.client.create_network(s.NetworkCreate(name="net1", cidr="10.50.0.0/24"))
        yield cloud
    finally:
        stop_lab(cloud)


def test_guest_cannot_spoof_mac_ip_or_arp(lab: LabCloud, tmp_path: Path) -> None:
    cloud, ns = lab, lab.host_ns()
    ids = {}
    for name in ("victim", "attacker"):
        body = s.ServerCreate(name=name, image="tiny", flavor="m1.tiny", network="net1")
        ids[name] = cloud.client.create_server(body).id
    for sid in ids.values():
        wait_status(cloud, sid, "ACTIVE")
        wait_for(lambda i=sid: "nubes-tiny: ready" in cloud.client.console_log(i), 180, "boot")
    net_id = cloud.client.network("net1").id
    # the gateway's ping reaches them (the default group lets in only its members)
    cloud.client.create_security_group_rule(
        "default", s.SecurityGroupRuleCreate(direction="ingress", protocol="icmp")
    )
    v_ip = cloud.client.server(ids["victim"]).addresses["net1"][0]
    a_ip = cloud.client.server(ids["attacker"]).addresses["net1"][0]
    pids = qemu_pids(cloud)
    v_tap, v_mac = nic_of(pids[ids["victim"]])
    a_tap, a_mac = nic_of(pids[ids["attacker"]])
    if cloud.network_driver == "ovs":  # what br-int gives the gateway
        bridge = veth_name(net_id)
    else:  # every frame the bridge forwards
        found = re.search(r"master (\S+)", cloud.in_host(["ip", "-o", "link", "show", a_tap]))
        assert found is not None
        bridge = found.group(1)
    spoof_mac, spoof_ip = "02:00:00:00:be:ef", "10.50.0.99"

    caps = {
        "sent": Capture(ns, a_tap, tmp_path / "attacker.pcap"),
        "bridge": Capture(ns, bridge, tmp_path / "bridge.pcap"),
        "victim": Capture(ns, v_tap, tmp_path / "victim.pcap"),
    }
    shell = SerialShell(cloud.host_path(f"/run/nubes/{ids['attacker']}/serial.sock"))
    try:
        # the gateway knows it, once the host's agent has the new rule in (it applies rules
        # asynchronously: 0.2 s on the Linux bridge, 1.6 s on OVS on a loaded machine)
        wait_for(
            lambda: (
                " 0% packet loss"
                in cloud.in_gateway(net_id, ["ping", "-c", "1", "-W", "1", v_ip], check=False)
            ),
            30,
            "the gateway's ping",
        )
        # the control: the attacker's own traffic passes
        assert "1 packets received" in shell.run(f"ping -c 1 -W 2 {v_ip}")
        # 1. a spoofed MAC
        shell.run(
            f"ip link set eth0 down; ip link set eth0 address {spoof_mac}; ip link set eth0 up; "
            f"ping -c 2 -W 1 {v_ip}; ip link set eth0 down; ip link set eth0 address {a_mac}; "
            "ip link set eth0 up"
        )
        # 2. a spoofed IP
        shell.run(f"ip addr add {spoof_ip}/24 dev eth0; ping -c 2 -W 1 -I {spoof_ip} {v_ip}")
        shell.run(f"ip addr del {spoof_ip}/24 dev eth0")
        # 3. gratuitous ARP (request and reply forms) claiming the victim's address
        shell.run(
            f"ip addr add {v_ip}/32 dev eth0; arping -U -c 2 -I eth0 -s {v_ip} {v_ip}; "
            f"arping -A -c 2 -I eth0 -s {v_ip} {v_ip}; ip addr del {v_ip}/32 dev eth0"
        )
        time.sleep(1)
        neigh = cloud.in_gateway(net_id, ["ip", "neigh", "show", v_ip])
    finally:
        shell.close()
        frames = {k: c.frames() for k, c in caps.items()}
        for c in caps.values():
            c.stop()

    sent, bridge_seen, victim_seen = frames["sent"], frames["bridge"], frames["victim"]
    # the control went through
    assert seen(victim_seen, f"{a_ip} > {v_ip}", "ICMP echo request", src=a_mac)
    # the attacker did send each spoofed frame (captured on its own tap)...
    garp = ((f"Request who-has {v_ip}", f"tell {v_ip}"), (f"Reply {v_ip} is-at {a_mac}",))
    assert seen(sent, src=spoof_mac), sent
    assert claiming(sent, spoof_ip, src=a_mac), sent
    assert all(seen(sent, *g, src=a_mac) for g in garp), sent
    # ...and none of them got past the tap
    for where, got in (("bridge", bridge_seen), ("victim", victim_seen)):
        assert not seen(got, src=spoof_mac), (where, seen(got, src=spoof_mac))
        assert not claiming(got, spoof_ip), (where, claiming(got, spoof_ip))
        assert not any(seen(got, *g, src=a_mac) for g in garp), (where, got)
    # and the gateway still has the victim's own MAC for its address
    assert v_mac in neigh and a_mac not in neigh, neigh


# -- a router advertisement (and the rest), written into a tap ------------------------------------


def _ipv6(src: str, dst: str, payload: bytes) -> bytes:
    s_, d_ = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
    pseudo = s_ + d_ + struct.pack("!I3xB", len(payload), 58)
    data = pseudo + payload + b"\0" * (len(payload) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    payload = payload[:2] + struct.pack("!H", ~total & 0xFFFF) + payload[4:]
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), 58, 255, s_, d_) + payload


def router_advert(src_mac: str) -> bytes:
    # type 134, hop limit 64, router lifetime 1800 s: "I am your default router"
    ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
    return _eth(src_mac, "33:33:00:00:00:01", 0x86DD, _ipv6("fe80::bad", "ff02::1", ra))


def echo6(src_mac: str) -> bytes:
    ping = struct.pack("!BBHHH", 128, 0, 0, 0x4E42, 1) + b"nubes"
    return _eth(src_mac, "33:33:00:00:00:01", 0x86DD, _ipv6("fe80::5", "ff02::1", ping))


def echo_broadcast(src_mac: str, src_ip: str) -> bytes:
    body = struct.pack("!BBHHH", 8, 0, 0xF7BD, 0x4E42, 1)
    return _eth(src_mac, "ff:ff:ff:ff:ff:ff", 0x0800, _ipv4(src_ip, "10.20.0.255", 1, body))


@pytest.mark.parametrize("driver_name", NETWORK_DRIVERS)
def test_frames_written_into_a_tap_are_filtered(
    make_ns: Callable[[str], str],  # noqa: F811
    state_dir: Path,  # noqa: F811
    tmp_path: Path,
    driver_name: str,
) -> None:
    driver_args(driver_name)  # skips where OVS is missing
    ns = make_ns("s")
    net = net_spec("net-9")
    attacker = port_spec(1, net, MAC1, "10.20.0.5", owner=None)
    victim = port_spec(2, net, MAC2, "10.20.0.6", owner=None)
    with netns.inside(ns):
        driver: NetworkDriver
        if driver_name == "ovs":
            driver = OvsDriver(state_dir)
        else:
            driver = LinuxBridgeDriver(state_dir)
        driver.ensure_network(net)
        driver.plug_port(attacker)
        driver.plug_port(victim)
        with Tap(attacker.tap) as tap, Tap(victim.tap):  # both have carrier, like running guests
            caps = {
                "victim": Capture(ns, victim.tap, tmp_path / "victim.pcap"),
                "sent": Capture(ns, attacker.tap, tmp_path / "sent.pcap"),
            }
            if driver_name == "linuxbridge":  # OVS has no device that sees its forwarding
                caps["bridge"] = Capture(ns, net.bridge, tmp_path / "bridge.pcap")
            try:
                for frame in (
                    arp_request(MAC1, "10.20.0.5", "10.20.0.1"),  # allowed
                    echo6(MAC1),  # allowed: IPv6 neighbour traffic
                    router_advert(MAC1),  # rogue router
                    arp_request(MAC1, "10.20.0.6", "10.20.0.6"),  # gratuitous ARP for the victim
                    arp_request("02:00:00:00:be:ef", "10.20.0.5", "10.20.0.1"),  # spoofed MAC
                    echo_broadcast(MAC1, "10.20.0.99"),  # spoofed IP
                ):
                    os.write(tap.fd, frame)
                time.sleep(1)
            finally:
                frames = {k: c.frames() for k, c in caps.items()}
                for c in caps.values():
                    c.stop()
        driver.unplug_port(attacker.tap)
        driver.unplug_port(victim.tap)
        driver.delete_network(net.id)
    sent = frames["sent"]
    assert seen(sent, "router advertisement") and seen(sent, "02:00:00:00:be:ef"), sent
    assert seen(sent, "10.20.0.99") and seen(sent, "tell 10.20.0.6"), sent
    for where, got in frames.items():
        if where == "sent":
            continue
        assert seen(got, "tell 10.20.0.5"), (where, got)  # the controls arrived
        assert seen(got, "ICMP6, echo request"), (where, got)
        assert not seen(got, "router advertisement"), (where, got)
        assert not seen(got, "tell 10.20.0.6"), (where, got)
        assert not seen(got, "02:00:00:00:be:ef"), (where, got)
        assert not seen(got, "10.20.0.99"), (where, got)
