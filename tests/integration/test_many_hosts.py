"""Issue 4, for real: a 3-host lab (network namespaces on one underlay bridge, an agent each),
tiny QEMU guests on overlay networks, driven through the API and the `nubes` command; the
module runs on each network driver (Linux bridge + VXLAN, Open vSwitch + Geneve).

One lab for the whole module (a lab and six guests cost a minute); the tests run in file
order and each leaves the lab as the next expects it:
1. six guests of tenant A in a soft-anti-affinity group spread over the hosts; each pings every
   other, its gateway, asks DHCP and the metadata service, and reports its MTU;
2. each host's overlay holds exactly the entries the database implies (OVS: its tunnels);
3. tenant B, same CIDR: no ping, no ARP, no frame crosses (captured on every bridge; on OVS,
   on every guest's tap and the gateways' veths);
4. the last ports of a host leave: its bridge, VXLAN device, entries and filter go (OVS: its
   tunnels, and the other hosts' tunnels to it);
5. the serving host is killed: marked down, never chosen, its guests kept; gateway and DHCP
   move, and a new guest gets both from the new serving host.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.sync.client import ClientConnection, unix_connect

from nubes.client import NubesClient
from nubes.lab.lab import kill_namespace_processes
from nubes.network import netns
from nubes.network.base import bridge_name
from nubes.network.linuxbridge import gateway_mac, vxlan_name
from nubes.network.netlink import ZERO_MAC, Netlink
from nubes.network.openflow import parse_port_ids
from nubes.schemas import resources as s
from tests.integration.capture import Capture, from_macs, mentioning_macs
from tests.integration.conftest import (
    NETWORK_DRIVERS,
    LabCloud,
    driver_args,
    isolation_points,
    ovs_rows,
    start_lab,
    stop_lab,
)
from tests.integration.hostcheck import api_pid

pytestmark = pytest.mark.integration

CIDR = "10.30.0.0/24"
GW = "10.30.0.1"
A_IPS = [f"10.30.0.{i}" for i in range(2, 8)]  # IPAM hands them out in order
B_IPS = A_IPS[:2]  # tenant B's own, on its network with the same CIDR
DONE = "user-data script exited"

A_SCRIPT = """#!/bin/sh
t() { echo "nubes-test: $*"; }
t "link $(ip -o link show eth0)"
printf '#!/bin/sh\\n[ "$1" = bound ] && echo "nubes-test: lease $ip mtu $mtu router $router \
server $serverid"\\nexit 0\\n' >/tmp/lease
chmod 755 /tmp/lease
udhcpc -i eth0 -n -q -t 5 -O mtu -s /tmp/lease
if ping -c 2 -W 2 GW >/dev/null 2>&1; then t "gateway ok"; else t "gateway FAIL"; fi
# (the static busybox's wget crashes: plain HTTP over nc)
printf 'GET /latest/meta-data/instance-id HTTP/1.0\r\n\r\n' | nc -w 5 169.254.169.254 80 >/tmp/md
t "metadata $(tail -n 1 /tmp/md)"
for ip in PEERS; do
    n=0; ok=FAIL
    while [ $n -lt 90 ]; do
        if ping -c 1 -W 1 "$ip" >/dev/null 2>&1; then ok=ok; break; fi
        n=$((n + 1))
    done
    t "ping $ip $ok"
done
# keep some unicast and broadcast traffic going for the isolation test
(while :; do for ip in PEERS; do ping -c 1 -W 1 "$ip"; arping -b -c 1 -w 1 -I eth0 "$ip"; done
 sleep 3; done) </dev/null >/dev/null 2>&1 &
"""

B_SCRIPT = """#!/bin/sh
t() { echo "nubes-test: $*"; }
for ip in PEERS; do
    n=0; ok=FAIL
    while [ $n -lt 90 ]; do
        if ping -c 1 -W 1 "$ip" >/dev/null 2>&1; then ok=ok; break; fi
        n=$((n + 1))
    done
    t "ping $ip $ok"
done
arping -c 3 -w 4 -I eth0 GW | while read -r w1 w2 w3 w4 w5 rest; do
    [ "$w2" = reply ] && t "gateway at $(echo "$w5" | tr -d '[]')"
done
if ping -c 2 -W 2 GW >/dev/null 2>&1; then t "gateway ok"; else t "gateway FAIL"; fi
for ip in OTHERS; do
    if ping -c 2 -W 1 "$ip" >/dev/null 2>&1; then t "reached $ip"; else t "no answer from $ip"; fi
    if arping -c 2 -w 3 -I eth0 "$ip" >/dev/null 2>&1; then t "arp reply from $ip"
    else t "no arp reply from $ip"; fi
done
"""

LATE_SCRIPT = """#!/bin/sh
t() { echo "nubes-test: $*"; }
printf '#!/bin/sh\\n[ "$1" = bound ] && echo "nubes-test: lease $ip mtu $mtu router $router \
server $serverid"\\nexit 0\\n' >/tmp/lease
chmod 755 /tmp/lease
udhcpc -i eth0 -n -q -t 5 -O mtu -s /tmp/lease
if ping -c 3 -W 2 GW >/dev/null 2>&1; then t "gateway ok"; else t "gateway FAIL"; fi
if ping -c 3 -W 2 PEER >/dev/null 2>&1; then t "ping PEER ok"; else t "ping PEER FAIL"; fi
"""


@dataclass
class World:
    """The lab and what the earlier tests of this module left in it."""

    cloud: LabCloud
    hosts: dict[str, str]  # lab host name -> underlay address
    blue: s.Network
    a_servers: dict[str, s.Server] = field(default_factory=dict)
    b_client: NubesClient | None = None
    emptied: str = ""  # the host test 4 took every port of tenant A off


@pytest.fixture(scope="module", params=NETWORK_DRIVERS)
def world(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[World]:
    cloud = start_lab(tmp_path_factory.mktemp("many"), 3, lab_args=driver_args(request.param))
    w = None
    try:
        cloud.nubes("image", "build", "tiny")
        out = cloud.nubes("network", "create", "blue", "--cidr", CIDR)
        if cloud.network_driver == "ovs":  # OVS carries Geneve whatever the kernel has
            assert cloud.client.network("blue").type == "geneve", out
        else:
            assert "note: type: VXLAN, since the kernel of" in out  # this kernel has no Geneve
        cloud.nubes("group", "create", "web", "--policy", "soft-anti-affinity")
        hosts = {h.name: h.address for h in cloud.client.hosts()}
        w = World(cloud, hosts, cloud.client.network("blue"))
        yield w
    finally:
        if w is not None and w.b_client is not None:
            w.b_client.close()
        stop_lab(cloud)


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def console_when_done(client: NubesClient, names: list[str], timeout: float) -> dict[str, str]:
    logs: dict[str, str] = {}

    def all_done() -> bool:
        for name in names:
            if name not in logs:
                log = client.console_log(name)
                if DONE in log:
                    logs[name] = log
        return len(logs) == len(names)

    try:
        wait_for(all_done, timeout, f"the user-data scripts of {names}")
    except AssertionError:
        pending = {n: client.console_log(n)[-2000:] for n in names if n not in logs}
        raise AssertionError(f"user-data never finished on {list(pending)}: {pending}") from None
    return logs


def test_six_guests_spread_over_three_hosts_reach_each_other(world: World) -> None:
    cloud = world.cloud
    script = A_SCRIPT.replace("GW", GW).replace("PEERS", " ".join(A_IPS))
    names = [f"web-{i}" for i in range(1, 7)]
    for name in names:
        body = s.ServerCreate(
            name=name, image="tiny", flavor="m1.tiny", network="blue", group="web", user_data=script
        )
        cloud.client.create_server(body)

    def active() -> list[s.Server] | None:
        servers = [cloud.client.server(n) for n in names]
        bad = [x for x in servers if x.status == "ERROR"]
        assert not bad, f"{bad[0].name} failed: {bad[0].fault}"
        return servers if all(x.status == "ACTIVE" for x in servers) else None

    servers: list[s.Server] = wait_for(active, 180, "six ACTIVE guests")  # type: ignore[assignment]
    world.a_servers = {x.name: x for x in servers}
    per_host = sorted(sum(1 for x in servers if x.host == h) for h in world.hosts)
    assert per_host == [2, 2, 2], {x.name: x.host for x in servers}
    assert sorted(x.addresses["blue"][0] for x in servers) == A_IPS

    logs = console_when_done(cloud.client, names, 300)
    serving = cloud.client.network("blue").gateway_host
    assert serving in world.hosts
    for x in servers:
        log, ip = logs[x.name], x.addresses["blue"][0]
        assert re.search(r"nubes-test: link \d+: eth0: .* mtu 1450 ", log), log[-3000:]
        # DHCP: the reserved address and the MTU, from the one dnsmasq (on the gateway)
        assert f"nubes-test: lease {ip} mtu 1450 router {GW} server {GW}" in log, log[-3000:]
        assert "nubes-test: gateway ok" in log, f"{x.name} on {x.host}: {log[-3000:]}"
        assert f"nubes-test: metadata {x.id}" in log, log[-3000:]
        for peer in A_IPS:
            assert f"nubes-test: ping {peer} ok" in log, f"{x.name} on {x.host}: {log[-3000:]}"
    # gateway, DHCP (and NAT) are served once, by one host
    assert {h: dnsmasq_pids(cloud, h, world.blue.id) != [] for h in world.hosts} == {
        h: h == serving for h in world.hosts
    }


def _websocket(cloud: LabCloud, path: str) -> ClientConnection:
    token = json.loads((cloud.state_dir / "client.json").read_text())["token"]
    return unix_connect(
        str(cloud.state_dir / "api.sock"),
        f"ws://nubes{path}",
        additional_headers={"Authorization": f"Bearer {token}"},
    )


def _read_until(ws: ClientConnection, needle: bytes, timeout: float = 30) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            seen += ws.recv(timeout=2)  # type: ignore[operator]
    return seen


def test_consoles_of_a_guest_on_each_host_come_through_its_agent(world: World) -> None:
    """The API holds no QEMU socket and reads no host's disk: the log, the serial port and
    VNC of a guest on each of the three hosts come over that host's console channel."""
    cloud = world.cloud
    one_per_host = {x.host: x for x in world.a_servers.values()}
    assert set(one_per_host) == set(world.hosts)
    for host, server in sorted(one_per_host.items()):
        assert "nubes-tiny: ready" in cloud.client.console_log(server.id), host
        with _websocket(cloud, f"/v1/servers/{server.id}/console") as ws:
            ws.send(b"echo console-of-$((6*7))-on-$(hostname)\n")
            seen = _read_until(ws, b"console-of-42")
            assert b"console-of-42" in seen, f"{server.name} on {host}: {seen[-300:]!r}"
        out = cloud.nubes("console", "url", server.name)
        assert "password:" in out, out
        with _websocket(cloud, f"/v1/servers/{server.id}/vnc") as ws:
            greeting = _read_until(ws, b"\n", timeout=15)
            assert greeting.startswith(b"RFB 003."), f"{server.name} on {host}: {greeting!r}"


def test_the_api_and_the_hosts_see_none_of_each_others_files(world: World) -> None:
    cloud = world.cloud
    api = Path(f"/proc/{api_pid(cloud)}")
    api_mounts = (api / "mountinfo").read_text()
    secret_files = ("nubes.db", "client.json", "tls/ca.key")
    for index in range(1, len(world.hosts) + 1):
        host_dir = cloud.host_dir(index)
        name = f"marker-{secrets.token_hex(4)}"
        marker = host_dir / name
        marker.write_text("the host's own")
        as_the_host_has_it = cloud.state_dir / "hosts" / cloud.host_ns(index) / name
        try:
            # the host's state lives on a filesystem the API has mounted nowhere
            dev = os.stat(host_dir).st_dev
            majmin = f" {os.major(dev)}:{os.minor(dev)} "
            assert majmin not in api_mounts, f"host {index}'s files are mounted in the API's view"
            assert not (api / "root" / str(as_the_host_has_it).lstrip("/")).exists()
            # and the host sees none of the API's files, where they are for the API
            for name in secret_files:
                assert (cloud.state_dir / name).exists()
                assert not cloud.host_path(cloud.state_dir / name, index).exists(), name
            assert not cloud.host_path(
                cloud.state_dir / "hosts" / cloud.host_ns(index % 3 + 1), index
            ).exists()
            # /run is the host's own: its guests' QEMU sockets are there and nowhere else
            guests = [x.id for x in world.a_servers.values() if x.host == cloud.host_ns(index)]
            assert guests
            for guest in guests:
                assert cloud.host_path(f"/run/nubes/{guest}/qmp.sock", index).exists()
                assert not Path(f"/run/nubes/{guest}").exists()
            qemu = [p for p in netns.pids(cloud.host_ns(index)) if b"qemu-system" in _cmdline(p)]
            assert qemu
            for pid in qemu:
                assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink(api / "ns" / "mnt")
        finally:
            marker.unlink()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def dnsmasq_pids(cloud: LabCloud, host: str, network_id: str) -> list[int]:
    found = []
    for pid in cloud.host_pids(cloud.index_of(host)):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"dnsmasq") and any(network_id.encode() in a for a in argv):
            found.append(pid)
    return found


def overlay_of(host: str, network_id: str) -> tuple[bool, set[str], dict[str, str]] | None:
    """(learning, head-end peers, per-MAC entries) of the network's VXLAN device on the
    host, or None if the device is not there."""
    with netns.inside(host), Netlink() as nl:
        vx = nl.get_link(vxlan_name(network_id))
        if vx is None:
            return None
        entries = nl.fdb_entries(vx.name)
    flood = {e.dst for e in entries if e.mac == ZERO_MAC and e.dst}
    macs = {e.mac: e.dst for e in entries if e.mac != ZERO_MAC and e.dst}
    return bool(vx.info.get("IFLA_VXLAN_LEARNING")), flood, macs


def port_macs(cloud: LabCloud, host: str, network_id: str) -> set[str]:
    """MACs of the network's guest ports on the host."""
    from nubes.network.linuxbridge import LinuxBridgeDriver

    if cloud.network_driver == "ovs":
        rows = ovs_rows(cloud, cloud.index_of(host))
        return {
            parse_port_ids(r.ids["nubes-port"])[1]
            for r in rows
            if r.ids.get("nubes-net") == network_id and "nubes-port" in r.ids
        }
    bridge = bridge_name(network_id)
    with netns.inside(host):
        ports = LinuxBridgeDriver(Path("/nonexistent")).list_ports()
    return {p.mac for p in ports if p.bridge == bridge and p.mac}


def ovs_tunnels(cloud: LabCloud, host: str, network_id: str) -> set[str]:
    """The peers the network's tunnels of the host lead to."""
    rows = ovs_rows(cloud, cloud.index_of(host))
    return {
        r.ids["nubes-peer"]
        for r in rows
        if r.ids.get("nubes-net") == network_id and "nubes-peer" in r.ids
    }


def nft_of(host: str) -> str:
    argv = ["ip", "netns", "exec", host, "nft", "list", "table", "inet", "nubes"]
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def test_each_host_forwards_by_the_database(world: World) -> None:
    cloud = world.cloud
    net = cloud.client.network("blue")
    serving = net.gateway_host
    assert serving
    macs = {h: port_macs(cloud, h, net.id) for h in world.hosts}
    assert all(len(m) == 2 for m in macs.values()), macs
    for host in world.hosts:
        others = {h: a for h, a in world.hosts.items() if h != host}
        if cloud.network_driver == "ovs":  # a tunnel to each other host, and no more
            assert ovs_tunnels(cloud, host, net.id) == set(others.values()), host
            continue
        want = {mac: others[h] for h in others for mac in macs[h]}
        if host != serving:
            want[gateway_mac(net.id)] = world.hosts[serving]
        assert overlay_of(host, net.id) == (False, set(others.values()), want), host
        # overlay packets of this VNI are taken from those peers only
        rules = nft_of(host)
        chain = rules[rules.index(f"chain ovl_{net.vni} ") :]
        peers = re.search(r"ip saddr \{ ([^}]*) \} accept", chain)
        assert peers and set(peers.group(1).replace(",", " ").split()) == set(others.values())


def test_two_tenants_with_the_same_cidr_never_meet(world: World) -> None:
    cloud = world.cloud
    created = cloud.client.create_project(s.ProjectCreate(name="tenant-b"))
    b = NubesClient(f"unix://{cloud.state_dir / 'api.sock'}", created.token)
    world.b_client = b
    red = b.create_network(s.NetworkCreate(name="red", cidr=CIDR))
    b.create_group(s.GroupCreate(name="red", policy="soft-anti-affinity"))
    blue_macs = {h: port_macs(cloud, h, world.blue.id) for h in world.hosts}
    a_macs = {m for macs in blue_macs.values() for m in macs}
    a_macs.add(gateway_mac(world.blue.id))
    # red-1 on the host serving blue (the others disabled for a moment): that host serves
    # red's gateway too, of the same addresses, each in a namespace of its own
    blue_gw = cloud.client.network("blue").gateway_host
    assert blue_gw
    blue_caps = []
    for h in world.hosts:
        index = cloud.index_of(h)
        points = isolation_points(cloud, world.blue.id, blue_macs[h], index, h == blue_gw)
        assert points, h
        blue_caps += [Capture(h, p, promisc=True) for p in points]
    red_caps: dict[str, list[Capture]] = {}
    others = [h for h in world.hosts if h != blue_gw]
    try:
        script = B_SCRIPT.replace("PEERS", " ".join(B_IPS)).replace("GW", GW)
        script = script.replace("OTHERS", " ".join(A_IPS[len(B_IPS) :]))
        names = ["red-1", "red-2"]
        for name in names:
            body = s.ServerCreate(
                name=name,
                image="tiny",
                flavor="m1.tiny",
                network="red",
                group="red",
                user_data=script,
            )
            for h in others:
                cloud.client.set_host_enabled(h, name != "red-1")
            assert b.create_server(body).host == blue_gw or name != "red-1"

        def watch_red_bridges() -> bool:
            # capture from the moment each bridge (OVS: guest tap) exists, before its guest
            # sends anything
            servers = [b.server(n) for n in names]
            for h in world.hosts:
                macs = {x.nics[0].mac for x in servers if x.host == h}
                if h in red_caps or not macs:
                    continue
                index = cloud.index_of(h)
                points = isolation_points(cloud, red.id, macs, index, h == blue_gw)
                if points is not None:
                    red_caps[h] = [Capture(h, p, promisc=True) for p in points]
            return {x.host for x in servers if x.host} <= set(red_caps) and all(
                x.status == "ACTIVE" for x in servers
            )

        wait_for(watch_red_bridges, 180, "tenant B's guests")
        logs = console_when_done(b, names, 240)
    finally:
        blue_frames = [f for c in blue_caps for f in c.close()]
        red_frames = [f for cs in red_caps.values() for c in cs for f in c.close()]
    b_servers = [b.server(n) for n in names]
    assert len({x.host for x in b_servers}) == 2
    assert b.network("red").gateway_host == blue_gw
    b_macs = {m for h in world.hosts for m in port_macs(cloud, h, red.id)}
    b_macs.add(gateway_mac(red.id))
    assert len(b_macs) == 3
    for log in logs.values():
        for ip in B_IPS:
            assert f"nubes-test: ping {ip} ok" in log, log[-3000:]  # its own network works
        # only its own gateway answers, even on the host with the other tenant's gateway
        assert "nubes-test: gateway ok" in log, log[-3000:]
        answers = {m.lower() for m in re.findall(r"nubes-test: gateway at (\S+)", log)}
        assert answers == {gateway_mac(red.id)}, log[-3000:]
        for ip in A_IPS[len(B_IPS) :]:  # tenant A's addresses: nothing answers
            assert f"nubes-test: no answer from {ip}" in log, log[-3000:]
            assert f"nubes-test: no arp reply from {ip}" in log, log[-3000:]
    # the captures saw each tenant's own traffic, and never a frame of the other
    assert from_macs(blue_frames, a_macs) and from_macs(red_frames, b_macs)
    assert mentioning_macs(blue_frames, b_macs) == []
    assert mentioning_macs(red_frames, a_macs) == []


def bridge_exists(host: str, bridge: str) -> bool:
    with netns.inside(host), Netlink() as nl:
        return nl.get_link(bridge) is not None


def test_last_port_leaving_a_host_takes_the_overlay_with_it(world: World) -> None:
    cloud = world.cloud
    net = cloud.client.network("blue")
    host = sorted(h for h in world.hosts if h != net.gateway_host)[0]
    leaving = [x.name for x in world.a_servers.values() if x.host == host]
    for name in leaving:
        cloud.client.delete_server(name)
    wait_for(lambda: not {x.name for x in cloud.client.servers()} & set(leaving), 60, "the deletes")
    gone = world.hosts[host]
    if cloud.network_driver == "ovs":
        wait_for(lambda: not ovs_tunnels(cloud, host, net.id), 30, f"blue's tunnels of {host}")
        assert port_macs(cloud, host, net.id) == set()
        assert dnsmasq_pids(cloud, host, net.id) == []
        for other in world.hosts:
            if other != host:
                wait_for(
                    lambda h=other: (
                        ovs_tunnels(cloud, h, net.id)
                        == set(world.hosts.values()) - {world.hosts[h], gone}
                    ),
                    30,
                    f"{other} to drop its tunnel of blue to {host}",
                )
        world.emptied = host
        for name in leaving:
            del world.a_servers[name]
        return
    wait_for(lambda: overlay_of(host, net.id) is None, 30, f"vx of blue to leave {host}")
    assert not bridge_exists(host, bridge_name(net.id))
    assert dnsmasq_pids(cloud, host, net.id) == []
    assert f"chain ovl_{net.vni} " not in nft_of(host)
    for other in world.hosts:
        if other == host:
            continue

        def forgotten(h: str = other) -> bool:
            ov = overlay_of(h, net.id)
            return ov is not None and gone not in ov[1] and gone not in ov[2].values()

        wait_for(forgotten, 30, f"{other} to drop {host} from blue's overlay")
    world.emptied = host
    for name in leaving:
        del world.a_servers[name]


def test_killed_host_is_marked_down_and_its_gateway_moves(world: World) -> None:
    cloud = world.cloud
    net = cloud.client.network("blue")
    dead = net.gateway_host
    assert dead and dead != world.emptied
    survivor = next(h for h in world.hosts if h not in (dead, world.emptied))
    # the host dies: agent, guests and dnsmasq killed, its underlay cut
    killed_at = time.monotonic()
    kill_namespace_processes(dead)
    for pid in cloud.host_pids(cloud.index_of(dead)):  # its gateways' dnsmasq too
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    subprocess.run(["ip", "-n", dead, "link", "set", "eth0", "down"], check=True)

    def state_of(h: str) -> str:
        return next(x.state for x in cloud.client.hosts() if x.name == h)

    wait_for(lambda: state_of(dead) == "down", 20, f"{dead} to be marked down")
    assert time.monotonic() - killed_at < 6 + 2 * 2 + 3  # down_after + a heartbeat's slack
    wait_for(lambda: cloud.client.network("blue").gateway_host == survivor, 20, "the move")
    wait_for(lambda: dnsmasq_pids(cloud, survivor, net.id), 20, f"dnsmasq on {survivor}")
    # its guests are kept, not deleted
    on_dead = {x.name for x in world.a_servers.values() if x.host == dead}
    listed = {x.name: x for x in cloud.client.servers()}
    assert on_dead and on_dead <= set(listed)
    assert all(listed[n].host == dead and listed[n].status == "UNKNOWN" for n in on_dead)

    peer = next(x for x in world.a_servers.values() if x.host == survivor)
    script = LATE_SCRIPT.replace("GW", GW).replace("PEER", peer.addresses["blue"][0])
    body = s.ServerCreate(
        name="late", image="tiny", flavor="m1.tiny", network="blue", user_data=script
    )
    explained = cloud.client.explain_server(body)
    verdict = next(v for v in explained.hosts if v.host == dead)
    assert not verdict.passed and "down" in " ".join(f.reason for f in verdict.filters)
    late = cloud.client.create_server(body)
    assert late.host != dead
    log = console_when_done(cloud.client, ["late"], 180)["late"]
    late_ip = cloud.client.server("late").addresses["blue"][0]
    # a new guest gets its lease and its gateway from the new serving host
    assert f"nubes-test: lease {late_ip} mtu 1450 router {GW} server {GW}" in log, log[-3000:]
    assert "nubes-test: gateway ok" in log, log[-3000:]
    assert f"nubes-test: ping {peer.addresses['blue'][0]} ok" in log, log[-3000:]
