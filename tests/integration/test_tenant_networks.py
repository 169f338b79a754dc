"""Tenant networks the Neutron way, in the lab with tiny guests: two tenants with the same
CIDR on one host; egress NAT to the lab's outside host and floating IPs from it; fixed
addresses, a fixed MAC and two NICs inside a guest; no way from a guest to the underlay."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nubes.client import NubesClient
from nubes.lab.lab import OUTSIDE_IP, OUTSIDE_LINE
from nubes.network import netns, ovs_daemons
from nubes.network.base import bridge_name
from nubes.network.gateway import gateway_mac, veth_name
from nubes.network.ovs import tx_checksum_off
from nubes.schemas import resources as s
from tests.integration.capture import Capture, mentioning_macs
from tests.integration.conftest import (
    NETWORK_DRIVERS,
    LabCloud,
    driver_args,
    isolation_points,
    ovs_rows,
    ovs_vsctl,
    start_lab,
    stop_lab,
)
from tests.integration.hostcheck import wait_for

pytestmark = pytest.mark.integration
DONE = "user-data script exited"

TENANT_SCRIPT = """#!/bin/sh
t() { echo "nubes-test: $*"; }
printf '#!/bin/sh\\n[ "$1" = bound ] && echo "nubes-test: lease $ip router $router"\\nexit 0\\n' \
    >/tmp/lease
chmod 755 /tmp/lease
udhcpc -i eth0 -n -q -t 5 -s /tmp/lease
if ping -c 2 -W 2 GW >/dev/null 2>&1; then t "gateway ok"; else t "gateway FAIL"; fi
printf 'GET /latest/meta-data/instance-id HTTP/1.0\\r\\n\\r\\n' | \\
    nc -w 5 169.254.169.254 80 >/tmp/md
t "metadata $(tail -n 1 /tmp/md)"
(while :; do ping -c 1 -W 1 GW; arping -b -c 1 -w 1 -I eth0 GW; sleep 2; done) \
    </dev/null >/dev/null 2>&1 &
"""

OUT_SCRIPT = """#!/bin/sh
t() { echo "nubes-test: $*"; }
ip -o -4 addr | while read -r n dev fam addr rest; do t "addr $dev $addr"; done
ip -o link | while read -r n dev rest; do t "link $dev $(cat /sys/class/net/${dev%:}/address)"; done
n=0; ok=FAIL
while [ $n -lt 30 ]; do
    if ping -c 1 -W 1 OUTSIDE >/dev/null 2>&1; then ok=ok; break; fi
    n=$((n + 1))
done
t "outside ping $ok"
printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 OUTSIDE 80 >/tmp/o
t "outside http $(tail -n 1 /tmp/o)"
"""


def console_lines(client: NubesClient, name: str, timeout: float = 240) -> str:
    def done() -> str | None:
        log = client.console_log(name)
        return log if DONE in log else None

    return wait_for(done, timeout, f"{name}'s user-data to finish")  # type: ignore[no-any-return]


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("driver", NETWORK_DRIVERS)
def test_two_tenants_same_cidr_one_host(tmp_path: Path, driver: str) -> None:
    cloud = start_lab(tmp_path, 1, lab_args=driver_args(driver))
    b: NubesClient | None = None
    caps: dict[str, list[Capture]] = {}
    try:
        cloud.nubes("image", "build", "tiny")
        a = cloud.client
        created = a.create_project(s.ProjectCreate(name="tenant-b"))
        b = NubesClient(f"unix://{cloud.state_dir / 'api.sock'}", created.token)
        nets = {}
        for who, c in (("a", a), ("b", b)):
            nets[who] = c.create_network(s.NetworkCreate(name="web", cidr="10.40.0.0/24"))
        ud = TENANT_SCRIPT.replace("GW", "10.40.0.1")
        servers = {}
        for who, c in (("a", a), ("b", b)):
            body = s.ServerCreate(
                name=f"{who}1", image="tiny", flavor="m1.tiny", network="web", user_data=ud
            )
            servers[who] = c.create_server(body)
        host = cloud.host_ns()

        def watching() -> bool:
            # each tenant's bridge (on OVS: its guest's tap and its gateway's veth), watched
            # from the moment it is there, before its guest sends anything
            for who in ("a", "b"):
                if who not in caps:
                    mac = {servers[who].nics[0].mac}
                    points = isolation_points(cloud, nets[who].id, mac)
                    if points is not None:
                        caps[who] = [Capture(host, p, promisc=True) for p in points]
            return len(caps) == 2

        wait_for(watching, 120, "both tenants' ports")
        logs = {who: console_lines(c, f"{who}1") for who, c in (("a", a), ("b", b))}
        time.sleep(4)  # the guests' background pings and ARP go on meanwhile
        frames = {who: [f for cp in cs for f in cp.close()] for who, cs in caps.items()}
        caps = {}
        assert a.network("web").gateway_host == b.network("web").gateway_host == host
        macs = {}
        for who, c in (("a", a), ("b", b)):
            me = c.server(f"{who}1")
            ip = me.nics[0].ip
            log = logs[who]
            assert f"nubes-test: lease {ip} router 10.40.0.1" in log, log[-2000:]
            assert "nubes-test: gateway ok" in log, log[-2000:]
            assert f"nubes-test: metadata {me.id}" in log, log[-2000:]  # its own
            macs[who] = {me.nics[0].mac, gateway_mac(nets[who].id)}
        # the same address, each tenant its own guest and gateway; no frame crosses
        assert servers["a"].nics[0].ip == servers["b"].nics[0].ip
        for who, other in (("a", "b"), ("b", "a")):
            seen = frames[who]
            assert mentioning_macs(seen, macs[who]), f"{who}'s ports saw nothing of their own"
            assert mentioning_macs(seen, macs[other]) == [], f"{other}'s frames on {who}'s ports"
    finally:
        for cs in caps.values():
            for cp in cs:
                cp.close()
        if b is not None:
            b.close()
        stop_lab(cloud)


@pytest.fixture(scope="module", params=["linuxbridge", "ovs"])
def lab2(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[LabCloud]:
    """Every test of this module on both network drivers, a lab each."""
    if request.param == "ovs" and not ovs_daemons.installed():
        pytest.skip("Open vSwitch is not installed")
    cloud = start_lab(
        tmp_path_factory.mktemp("ext"), 2, lab_args=("--network-driver", request.param)
    )
    try:
        cloud.nubes("image", "build", "tiny")
        yield cloud
    finally:
        stop_lab(cloud)


def _outside(cloud: LabCloud, *argv: str) -> bool:
    ns = f"{cloud.prefix}-outside"
    return (
        subprocess.run(
            ["ip", "netns", "exec", ns, *argv], capture_output=True, timeout=60
        ).returncode
        == 0
    )


def test_egress_floating_ips_fixed_addresses_and_two_nics(lab2: LabCloud, tmp_path: Path) -> None:
    cloud = lab2
    c = cloud.client
    assert [n.name for n in c.networks() if n.external] == ["public"]  # `lab up` declared it
    cloud.nubes("network", "create", "out", "--cidr", "10.41.0.0/24")
    cloud.nubes("network", "create", "db", "--cidr", "10.42.0.0/24")
    # what may come in from outside: ping, to show the floating IP (the default group would
    # let in only its members)
    cloud.nubes(
        "security-group", "rule", "create", "default", "--ingress", "--protocol", "icmp",
        "--remote-ip", "198.51.100.0/24",
    )  # fmt: skip
    ud = write(tmp_path, "out.sh", OUT_SCRIPT.replace("OUTSIDE", OUTSIDE_IP))
    cloud.nubes(
        "server", "create", "a", "--image", "tiny", "--network", "out:10.41.0.50",
        "--network", "db", "--mac", "52:54:00:00:00:01", "--host", cloud.host_ns(1),
        "--user-data", str(ud),
    )  # fmt: skip
    cloud.nubes(
        "server", "create", "b", "--image", "tiny", "--network", "out",
        "--host", cloud.host_ns(2), "--user-data", str(ud),
    )  # fmt: skip
    logs = {n: console_lines(c, n) for n in ("a", "b")}
    a, b = c.server("a"), c.server("b")
    # fixed IP and MAC, and the second NIC, as the guest sees them
    assert [(n.network, n.ip) for n in a.nics] == [("out", "10.41.0.50"), ("db", "10.42.0.2")]
    log = logs["a"]
    assert "nubes-test: addr eth0 10.41.0.50/24" in log, log[-3000:]
    assert "nubes-test: addr eth1 10.42.0.2/24" in log, log[-3000:]
    assert "nubes-test: link eth0: 52:54:00:00:00:01" in log, log[-3000:]
    assert f"nubes-test: link eth1: {a.nics[1].mac}" in log, log[-3000:]
    # egress by NAT from both hosts, to ping and HTTP of the outside host
    for name in ("a", "b"):
        assert "nubes-test: outside ping ok" in logs[name], logs[name][-3000:]
        assert f"nubes-test: outside http {OUTSIDE_LINE}" in logs[name], logs[name][-3000:]
    assert a.host != b.host
    # a floating IP answers from outside; the private address does not, even routed there
    router = c.network("out").router_ip
    assert router
    fip = c.create_floating_ip(s.FloatingIpCreate(server="a")).address
    assert _outside(cloud, "ip", "route", "replace", "10.41.0.0/24", "via", router)
    wait_for(lambda: _outside(cloud, "ping", "-c", "1", "-W", "1", fip), 30, "the floating IP")
    assert not _outside(cloud, "ping", "-c", "2", "-W", "1", "10.41.0.50")
    c.disassociate_floating_ip(fip)
    wait_for(lambda: not _outside(cloud, "ping", "-c", "1", "-W", "1", fip), 30, "the NAT to go")
    assert not _outside(cloud, "ping", "-c", "2", "-W", "1", "10.41.0.50")
    c.delete_floating_ip(fip)
    del b


def test_forwarded_traffic_never_reaches_the_underlay(lab2: LabCloud) -> None:
    """A port without port security (a stand-in guest on the gateway host's bridge; on OVS a
    port of br-int in the network's VLAN) sends UDP to the other host's overlay port and to the
    outside host: the outside host gets its packet through NAT, the peer's underlay carries
    none of the other."""
    cloud = lab2
    c = cloud.client
    net = c.network("out")
    serving = net.gateway_host
    assert serving
    index = cloud.index_of(serving)
    peer = cloud.host_ns(3 - index)
    peer_ip = next(h.address for h in c.hosts() if h.name == peer)
    guest, veth = f"{cloud.prefix}-ep", f"{cloud.prefix}-epv"
    ovs = cloud.network_driver == "ovs"
    netns.attach_endpoint(
        serving, None if ovs else bridge_name(net.id), guest, veth, "10.41.0.99/24"
    )
    try:
        if ovs:  # a port of the network the agent's driver did not make: trusted, as a gateway
            tag = next(
                r.tag for r in ovs_rows(cloud, index) if r.name == veth_name(net.id) and r.tag
            )
            ovs_vsctl(
                cloud, index, "add-port", "br-int", veth, "--",
                "set", "Port", veth, f"tag={tag}", f"external_ids:nubes-net={net.id}",
            )  # fmt: skip
            with netns.inside(guest):
                tx_checksum_off("eth0")
        # (on OVS its flows come with the agent's next pass over the network)
        wait_for(
            lambda: (
                subprocess.run(
                    ["ip", "netns", "exec", guest, "ping", "-c", "1", "-W", "1", "10.41.0.1"],
                    capture_output=True,
                ).returncode
                == 0
            ),
            30,
            "the stand-in guest to reach its gateway",
        )
        subprocess.run(
            ["ip", "-n", guest, "route", "add", "default", "via", "10.41.0.1"], check=True
        )
        on_peer = Capture(peer, "eth0")
        on_outside = Capture(f"{cloud.prefix}-outside", "eth0")
        payload = b"nubes-inject"
        code = (
            "import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "for _ in range(5):\n"
            f" s.sendto({payload!r},('{peer_ip}',4789));s.sendto({payload!r},('{OUTSIDE_IP}',9))\n"
        )
        try:
            for _ in range(3):
                subprocess.run(["ip", "netns", "exec", guest, "python3", "-c", code], check=True)
                time.sleep(0.5)
        finally:
            peer_frames, outside_frames = on_peer.close(), on_outside.close()
        assert any(payload in f for f in outside_frames)  # the control: NAT works
        router = socket.inet_aton(net.router_ip or "")
        assert any(router in f and payload in f for f in outside_frames)
        assert not any(payload in f for f in peer_frames)
    finally:
        if ovs:
            ovs_vsctl(cloud, index, "--if-exists", "del-port", "br-int", veth)
        subprocess.run(["ip", "netns", "delete", guest], check=False)


MACVLAN_DATA = """#cloud-config
runcmd:
  - - sh
    - -c
    - |
      say() { echo "nubes-test: $*"; echo "nubes-test: $*" >/dev/ttyS0; }
      ip netns add inner
      ip link add mv0 link eth0 type macvlan mode bridge
      ip link set mv0 address MAC netns inner
      ip -n inner addr add ADDR/24 dev mv0
      ip -n inner link set lo up
      ip -n inner link set mv0 up
      for peer in PEERS; do
        ok=FAIL; n=0
        while [ $n -lt 40 ]; do
          if ip netns exec inner ping -c 1 -W 2 "$peer" >/dev/null 2>&1; then ok=ok; break; fi
          n=$((n + 1))
        done
        say "macvlan ping $peer $ok"
      done
      say "macvlan done"
"""


@pytest.mark.timeout(2700)  # Debian's first boots under software emulation: minutes
def test_seed_004_macvlan_in_a_namespace_inside_instances(lab2: LabCloud, tmp_path: Path) -> None:
    """Debian instances on two hosts, each with a macvlan of its own MAC and address in a
    network namespace inside it: those without port security reach each other; one with it
    (anti-spoofing: the macvlan's MAC is not its port's) is not reached."""
    cloud = lab2
    c = cloud.client
    cloud.nubes("image", "build", "debian", timeout=1800)
    cloud.nubes("network", "create", "nodes", "--cidr", "10.43.0.0/24")
    inner = {"n1": "10.43.0.101", "n2": "10.43.0.102", "n3": "10.43.0.103"}
    macs = {"n1": "52:54:00:00:01:01", "n2": "52:54:00:00:01:02", "n3": "52:54:00:00:01:03"}
    where = {"n1": cloud.host_ns(1), "n2": cloud.host_ns(2), "n3": cloud.host_ns(2)}
    for name in inner:
        peers = " ".join(ip for other, ip in inner.items() if other != name)
        ud = MACVLAN_DATA.replace("MAC", macs[name]).replace("ADDR", inner[name])
        path = write(tmp_path, f"{name}.yaml", ud.replace("PEERS", peers))
        extra = ["--no-port-security"] if name != "n3" else []
        cloud.nubes(
            "server", "create", name, "--image", "debian", "--flavor", "m1.small",
            "--network", "nodes", "--host", where[name], "--user-data", str(path), *extra,
        )  # fmt: skip

    def done(name: str) -> str | None:
        log = c.console_log(name)
        assert c.server(name).status != "ERROR", c.server(name).fault
        return log if "nubes-test: macvlan done" in log else None

    logs = {n: wait_for(lambda n=n: done(n), 1200, f"{n}'s macvlan test") for n in inner}
    assert f"macvlan ping {inner['n2']} ok" in logs["n1"], logs["n1"][-3000:]
    assert f"macvlan ping {inner['n1']} ok" in logs["n2"], logs["n2"][-3000:]
    assert c.server("n1").host != c.server("n2").host
    for name in ("n1", "n2"):  # with port security on, n3's macvlan is never reached
        assert f"macvlan ping {inner['n3']} FAIL" in logs[name], logs[name][-3000:]
    assert [x.port_security for x in c.server("n3").nics] == [True]
    assert [x.port_security for x in c.server("n1").nics] == [False]
    for name in inner:
        c.delete_server(name)


TARGET_SCRIPT = """#!/bin/sh
mkdir -p /tmp/www && echo "nubes-web" >/tmp/www/index.html
httpd -p 80 -h /tmp/www
"""

PROBE_SCRIPT = """#!/bin/sh
t() { echo "nubes-test: $*"; }
n=0  # dropbear answers on 22 as soon as the target is up: wait for it
while [ $n -lt 60 ] && ! nc -w 2 TARGET 22 </dev/null 2>/dev/null | grep -q SSH; do
    n=$((n + 1))
done
if [ $n -lt 60 ]; then t "probe 22 open"; else t "probe 22 closed"; fi
sleep 5  # its httpd starts right after dropbear
n=0; web=closed
while [ $n -lt 3 ]; do
    if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 TARGET 80 2>/dev/null | grep -q nubes-web; then
        web=open; break
    fi
    n=$((n + 1))
done
t "probe 80 $web"
"""


def test_security_groups_between_guests_on_two_hosts(lab2: LabCloud, tmp_path: Path) -> None:
    """Real guests, real TCP, across hosts: a target whose group lets in tcp/22 from anywhere
    and tcp/80 from the members of `probes` only. A probe in `probes` reaches both; one in the
    default group reaches 22 (and its replies come back, though its own group lets in only
    members: conntrack) but not 80."""
    cloud = lab2
    c = cloud.client
    cloud.nubes("network", "create", "sg", "--cidr", "10.44.0.0/24")
    cloud.nubes("security-group", "create", "web")
    cloud.nubes("security-group", "create", "probes")
    cloud.nubes(
        "security-group", "rule", "create", "web", "--ingress", "--protocol", "tcp",
        "--port", "22",
    )  # fmt: skip
    cloud.nubes(
        "security-group", "rule", "create", "web", "--ingress", "--protocol", "tcp",
        "--port", "80", "--remote-group", "probes",
    )  # fmt: skip
    target = "10.44.0.10"
    cloud.nubes(
        "server", "create", "t", "--image", "tiny", "--network", f"sg:{target}",
        "--security-group", "web", "--host", cloud.host_ns(1),
        "--user-data", str(write(tmp_path, "t.sh", TARGET_SCRIPT)),
    )  # fmt: skip
    probe = write(tmp_path, "p.sh", PROBE_SCRIPT.replace("TARGET", target))
    for name, groups in (("p1", ["--security-group", "probes"]), ("p2", [])):
        cloud.nubes(
            "server", "create", name, "--image", "tiny", "--network", "sg",
            "--host", cloud.host_ns(2), "--user-data", str(probe), *groups,
        )  # fmt: skip
    logs = {n: console_lines(c, n, timeout=400) for n in ("p1", "p2")}
    assert c.server("t").host != c.server("p1").host
    assert c.server("p2").security_groups == ["default"]
    for name, web in (("p1", "open"), ("p2", "closed")):
        assert "nubes-test: probe 22 open" in logs[name], logs[name][-3000:]
        assert f"nubes-test: probe 80 {web}" in logs[name], logs[name][-3000:]
    for name in ("t", "p1", "p2"):
        c.delete_server(name)
    wait_for(lambda: not [x for x in c.servers() if x.name in ("t", "p1", "p2")], 120, "deletes")
    cloud.nubes("network", "delete", "sg")
