"""Issue 11, for real: a 2-host lab whose agents run the Open vSwitch driver (each host its own
ovsdb-server and ovs-vswitchd, userspace datapath here), tiny QEMU guests, through the API.

One lab for the module; the tests run in file order:
1. the hosts report `ovs` and Geneve, so a network is Geneve by default;
2. two guests on two hosts: DHCP (MTU), gateway, metadata (TCP to the other host's gateway
   namespace), ping and a TCP stream between them; the underlay carries Geneve with the VNI;
3. a VXLAN network of another tenant, same CIDR: its guest reaches its own gateway, none of blue;
4. ovs-vswitchd killed: the agent restarts it and the guests' traffic comes back; an agent
   restart never reboots a guest;
and `lab down` (stop_lab) leaves no process, namespace or mount; no OVS file is left either.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nubes.client import NubesClient
from nubes.network import ovs_daemons
from nubes.schemas import resources as s
from tests.integration.capture import Capture
from tests.integration.conftest import LabCloud, start_lab, stop_lab

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not ovs_daemons.installed(), reason="Open vSwitch is not installed"),
]

CIDR = "10.30.0.0/24"
GW = "10.30.0.1"
A1, A2 = "10.30.0.2", "10.30.0.3"  # IPAM hands them out in order
DONE = "user-data script exited"
TCP_BYTES = 4 << 20

# role RECV: a sink for the TCP stream; role SEND: sends it. Both keep pinging the other.
SCRIPT = """#!/bin/sh
t() { echo "nubes-test: $*"; }
printf '#!/bin/sh\\n[ "$1" = bound ] && echo "nubes-test: lease $ip mtu $mtu router $router"\\n\
exit 0\\n' >/tmp/lease
chmod 755 /tmp/lease
udhcpc -i eth0 -n -q -t 5 -O mtu -s /tmp/lease
if ping -c 3 -W 2 GW >/dev/null 2>&1; then t "gateway ok"; else t "gateway FAIL"; fi
md=169.254.169.254
printf 'GET /latest/meta-data/instance-id HTTP/1.0\\r\\n\\r\\n' | nc -w 5 $md 80 >/tmp/md
t "metadata $(tail -n 1 /tmp/md)"
n=0; ok=FAIL
while [ $n -lt 90 ]; do
    if ping -c 1 -W 1 PEER >/dev/null 2>&1; then ok=ok; break; fi
    n=$((n + 1))
done
t "ping PEER $ok"
if [ ROLE = RECV ]; then
    printf '#!/bin/sh\\ncat >/tmp/rx\\n' >/tmp/sink; chmod 755 /tmp/sink
    nc -l -p 5001 -e /tmp/sink &
    n=0
    while [ $n -lt 120 ] && [ "$(wc -c </tmp/rx 2>/dev/null)" != "BYTES" ]; do
        sleep 1; n=$((n + 1))
    done
    t "tcp received $(wc -c </tmp/rx 2>/dev/null) bytes in about $n s"
else
    sleep 3
    (dd if=/dev/zero bs=4096 count=$((BYTES / 4096)) 2>/dev/null | nc PEER 5001) &
fi
(while :; do ping -c 1 -W 1 PEER; sleep 1; done) </dev/null >/dev/null 2>&1 &
"""

RED_SCRIPT = """#!/bin/sh
t() { echo "nubes-test: $*"; }
udhcpc -i eth0 -n -q -t 5
if ping -c 3 -W 2 GW >/dev/null 2>&1; then t "gateway ok"; else t "gateway FAIL"; fi
for ip in OTHERS; do
    if ping -c 3 -W 1 "$ip" >/dev/null 2>&1; then t "reached $ip"; else t "no way to $ip"; fi
done
"""


@dataclass
class World:
    cloud: LabCloud
    blue: s.Network | None = None
    servers: dict[str, s.Server] = field(default_factory=dict)
    b_client: NubesClient | None = None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    started = time.monotonic()
    cloud = start_lab(tmp_path_factory.mktemp("ovs"), 2, lab_args=("--network-driver", "ovs"))
    w = World(cloud)
    try:
        cloud.nubes("image", "build", "tiny")
        yield w
    finally:
        if w.b_client is not None:
            w.b_client.close()
        stop_lab(cloud)
        left = [p for p in cloud.state_dir.parent.rglob("*") if p.name.endswith((".db", ".ctl"))]
        assert not left, f"OVS files left behind: {left}"
        print(f"\nthe OVS lab module took {time.monotonic() - started:.0f} s")


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def console_when(client: NubesClient, name: str, needle: str, timeout: float) -> str:
    def seen() -> str | None:
        log = client.console_log(name)
        return log if needle in log else None

    try:
        return wait_for(seen, timeout, f"{needle!r} on {name}'s console")  # type: ignore[return-value]
    except AssertionError:
        raise AssertionError(f"{name}: {client.console_log(name)[-3000:]}") from None


def active(client: NubesClient, names: list[str]) -> list[s.Server]:
    def all_active() -> list[s.Server] | None:
        servers = [client.server(n) for n in names]
        bad = [x for x in servers if x.status == "ERROR"]
        assert not bad, f"{bad[0].name} failed: {bad[0].fault}"
        return servers if all(x.status == "ACTIVE" for x in servers) else None

    return wait_for(all_active, 180, f"{names} ACTIVE")  # type: ignore[return-value]


def geneve(frames: list[bytes], vni: int) -> list[tuple[str, str]]:
    """(outer source, outer destination) of the Geneve packets with this VNI among frames."""
    found = []
    for f in frames:
        if len(f) > 50 and f[12:14] == b"\x08\x00" and f[23] == 17:
            ihl = (f[14] & 0x0F) * 4
            udp = f[14 + ihl :]
            if int.from_bytes(udp[2:4], "big") == 6081 and int.from_bytes(udp[12:15], "big") == vni:
                found.append((socket.inet_ntoa(f[26:30]), socket.inet_ntoa(f[30:34])))
    return found


def test_hosts_report_ovs_and_geneve_is_the_default(world: World) -> None:
    cloud = world.cloud
    hosts = cloud.client.hosts()
    assert {(h.network_driver, h.overlays) for h in hosts} == {("ovs", "vxlan,geneve")}
    out = cloud.nubes("host", "list", "-o", "json")
    listed = json.loads(out[out.index("[") : out.rindex("]") + 1])
    assert {(h["network_driver"], h["overlays"]) for h in listed} == {("ovs", "vxlan,geneve")}
    cloud.nubes("network", "create", "blue", "--cidr", CIDR)
    world.blue = cloud.client.network("blue")
    assert world.blue.type == "geneve", world.blue


def test_geneve_guests_on_two_hosts_ping_and_stream_tcp(world: World) -> None:
    cloud, blue = world.cloud, world.blue
    assert blue is not None
    cloud.nubes("group", "create", "web", "--policy", "anti-affinity")
    for name, role, peer in (("a-1", "RECV", A2), ("a-2", "SEND", A1)):
        script = SCRIPT.replace("GW", GW).replace("PEER", peer).replace("ROLE", role)
        body = s.ServerCreate(
            name=name,
            image="tiny",
            flavor="m1.tiny",
            network="blue",
            group="web",
            user_data=script.replace("BYTES", str(TCP_BYTES)),
        )
        cloud.client.create_server(body)
    servers = active(cloud.client, ["a-1", "a-2"])
    world.servers = {x.name: x for x in servers}
    assert len({x.host for x in servers}) == 2
    host1 = cloud.index_of(servers[0].host or "")
    cap = Capture(cloud.host_ns(host1), "eth0")  # the underlay device, a port of br-phy
    try:
        for x, peer in zip(servers, (A2, A1), strict=True):
            log = console_when(cloud.client, x.name, f"nubes-test: ping {peer}", 240)
            assert f"nubes-test: ping {peer} ok" in log, log[-3000:]
            assert f"mtu {blue.mtu} router {GW}" in log, log[-3000:]
            assert "nubes-test: gateway ok" in log, log[-3000:]
            assert f"nubes-test: metadata {x.id}" in log, log[-3000:]  # TCP, maybe across
        log = console_when(cloud.client, "a-1", "nubes-test: tcp received", 200)
        assert f"nubes-test: tcp received {TCP_BYTES} bytes" in log, log[-3000:]
    finally:
        frames = cap.close()
    seen = geneve(frames, blue.vni)
    addresses = {h.name: h.address for h in cloud.client.hosts()}
    pair = {addresses[servers[0].host or ""], addresses[servers[1].host or ""]}
    assert {src for src, _ in seen} == pair, f"Geneve VNI {blue.vni} between {pair}: {seen[:5]}"


def test_a_vxlan_network_on_ovs_of_another_tenant_never_meets_blue(world: World) -> None:
    cloud = world.cloud
    created = cloud.client.create_project(s.ProjectCreate(name="tenant-b"))
    b = NubesClient(f"unix://{cloud.state_dir / 'api.sock'}", created.token)
    world.b_client = b
    red = b.create_network(s.NetworkCreate(name="red", cidr=CIDR, type="vxlan"))
    assert red.type == "vxlan"
    script = RED_SCRIPT.replace("GW", GW).replace("OTHERS", f"{A1} {A2}")
    b.create_server(
        s.ServerCreate(
            name="red-1", image="tiny", flavor="m1.tiny", network="red", user_data=script
        )
    )
    active(b, ["red-1"])
    log = console_when(b, "red-1", DONE, 240)
    assert "nubes-test: gateway ok" in log, log[-3000:]  # its own gateway, same address
    for ip in (A1, A2):  # red-1 got .2 or .3 itself: blue's guest of the other one never answers
        assert f"nubes-test: reached {ip}" not in log or ip == b.server("red-1").addresses["red"][0]
    b.delete_server("red-1")


def _pids_named(cloud: LabCloud, index: int, name: bytes) -> list[int]:
    found = []
    for pid in cloud.host_pids(index):
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            continue
        if argv0.endswith(name):
            found.append(pid)
    return found


def test_vswitchd_killed_comes_back_and_an_agent_restart_keeps_guests(world: World) -> None:
    cloud, blue = world.cloud, world.blue
    assert blue is not None and world.servers
    x = world.servers["a-2"]
    index = cloud.index_of(x.host or "")
    (old,) = _pids_named(cloud, index, b"ovs-vswitchd")
    qemu_before = sorted(_pids_named(cloud, index, b"qemu-system-x86_64"))
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: _pids_named(cloud, index, b"ovs-vswitchd"), 30, "a new ovs-vswitchd")
    restarted = time.monotonic() - killed
    addresses = {h.name: h.address for h in cloud.client.hosts()}
    here = addresses[x.host or ""]

    def both_ways() -> bool:
        cap = Capture(cloud.host_ns(index), "eth0")
        time.sleep(2.5)
        srcs = {src for src, _ in geneve(cap.close(), blue.vni)}
        return here in srcs and len(srcs) == 2

    wait_for(both_ways, 30, "Geneve both ways again")
    back = time.monotonic() - killed
    print(f"\nvswitchd restarted {restarted:.1f} s after the kill; traffic both ways {back:.1f} s")
    cloud.nubes("lab", "restart-agent", cloud.host_ns(index))
    time.sleep(5)
    assert sorted(_pids_named(cloud, index, b"qemu-system-x86_64")) == qemu_before
    wait_for(both_ways, 30, "Geneve both ways after the agent's restart")
    assert cloud.client.server("a-2").status == "ACTIVE"
