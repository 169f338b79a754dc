"""Port plumbing benchmark: nubes' netlink driver vs the `ip`-command way of hand-made scripts,
side by side in one run, each in a throwaway network namespace of its own.

One "port" is what a host needs for a guest on an overlay network it did not have yet: the
network's bridge, its VXLAN device (no learning) with head-end entries to the peer hosts and
static entries for the ports on them, then the guest's tap on the bridge. nubes does it with
LinuxBridgeDriver.ensure_network + plug_port (one netlink socket per call, everything checked
and idempotent); the script does it with `ip link`, `ip tuntap` and `bridge fdb` commands, one
process each. Firewall rules, DHCP and addresses are left out of both (nft is a process for
both alike).

Then, side by side as well:
- plugging a guest's port (anti-spoofing on) into a network whose gateway namespace is on this
  host vs one served elsewhere (goal <= 1.2x: the namespace costs the network, not its ports);
- the same plumbing through pyroute2's IPRoute (single-GET lookups, `strict_check`) vs our
  rtnetlink client (rtnl.py);
- TCP throughput between two stand-in guests plugged as ports on two hosts, over the VXLAN
  overlay, vs the same two guests over the bare underlay (a second NIC each, on plain bridges
  joined by a link between the hosts: no encapsulation; goal >= 0.8), and host to host.

Run as root: `.venv/bin/python bench/network.py [--ports N] [--peers P] [--remote-ports R]`.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyroute2 import IPRoute  # noqa: E402

from nubes.network import gateway, netns  # noqa: E402
from nubes.network.base import NetworkSpec, OverlayPeer, PortSpec, RemotePort  # noqa: E402
from nubes.network.linuxbridge import LinuxBridgeDriver  # noqa: E402
from nubes.network.ovs_daemons import installed as ovs_installed  # noqa: E402

LOCAL = "10.254.0.1"
NUD_STATIC = 0xC0  # permanent, noarp: a static entry, as `bridge fdb ... static`
MTU = 1450


def peers_of(n: int) -> list[str]:
    return [f"10.254.0.{10 + i}" for i in range(n)]


def remote_of(i: int, n: int, peers: list[str]) -> list[tuple[str, str]]:
    return [
        (f"52:54:01:{i >> 8 & 255:02x}:{i & 255:02x}:{j:02x}", peers[j % len(peers)])
        for j in range(n)
    ]


def port_mac(i: int) -> str:
    return f"52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"


def plumb_netlink(driver: LinuxBridgeDriver, i: int, peers: list[str], remote: int) -> None:
    net_id = f"bench-{i:05d}"
    spec = NetworkSpec(
        id=net_id,
        bridge=f"nbrb{i:05d}",
        cidr="10.30.0.0/24",
        gateway="10.30.0.1",
        mtu=MTU,
        vni=10000 + i,
        local_underlay_ip=LOCAL,
        peers=tuple(OverlayPeer(p) for p in peers),
        remote_ports=tuple(RemotePort(m, ip) for m, ip in remote_of(i, remote, peers)),
        serve_dhcp=False,
    )
    driver.ensure_network(spec)
    driver.plug_port(
        PortSpec(
            id=f"port-{i:05d}",
            network_id=net_id,
            bridge=spec.bridge,
            tap=f"tapb{i:05d}",
            mac=port_mac(i),
            ip="10.30.0.2",
            mtu=MTU,
        )
    )


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def plumb_ip(i: int, peers: list[str], remote: int) -> None:
    """What a careful hand-made script does for the same port."""
    br, vx, tap = f"brs{i:05d}", f"vxs{i:05d}", f"taps{i:05d}"
    _run("ip", "link", "add", br, "type", "bridge")
    _run("ip", "link", "set", br, "mtu", str(MTU), "up")
    _run(
        "ip", "link", "add", vx, "type", "vxlan", "id", str(10000 + i), "local", LOCAL,
        "dstport", "4789", "nolearning",
    )  # fmt: skip
    _run("ip", "link", "set", vx, "master", br, "mtu", str(MTU), "up")
    for peer in peers:
        _run("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", vx, "dst", peer)
    for mac, peer in remote_of(i, remote, peers):
        _run("bridge", "fdb", "replace", mac, "dev", vx, "dst", peer, "static")
    _run("ip", "tuntap", "add", "dev", tap, "mode", "tap")
    _run("ip", "link", "set", tap, "master", br, "mtu", str(MTU), "up")


def plumb_pyroute2(ipr: IPRoute, i: int, peers: list[str], remote: int) -> None:
    """The same port through pyroute2, as well as it can do it: one GET per lookup."""
    br, vx, tap = f"brp{i:05d}", f"vxp{i:05d}", f"tapp{i:05d}"

    def index(name: str) -> int:
        return int(ipr.link("get", ifname=name)[0]["index"])

    ipr.link("add", ifname=br, kind="bridge")
    ipr.link("set", index=index(br), mtu=MTU, state="up")
    ipr.link(
        "add", ifname=vx, kind="vxlan", vxlan_id=10000 + i, vxlan_local=LOCAL,
        vxlan_port=4789, vxlan_learning=0,
    )  # fmt: skip
    vx_index, br_index = index(vx), index(br)
    ipr.link("set", index=vx_index, master=br_index, mtu=MTU, state="up")
    for peer in peers:
        ipr.fdb("append", ifindex=vx_index, lladdr="00:00:00:00:00:00", dst=peer)
    for mac, peer in remote_of(i, remote, peers):
        ipr.fdb("replace", ifindex=vx_index, lladdr=mac, dst=peer, state=NUD_STATIC, flags=2)
    ipr.link("add", ifname=tap, kind="tuntap", mode="tap")
    ipr.link("set", index=index(tap), master=br_index, mtu=MTU, state="up")


def measure(ns: str, count: int, one: Callable[[int], None], offset: int = 0) -> list[float]:
    """Seconds per port, each port plumbed from nothing (a new network every time)."""
    times = []
    with netns.inside(ns):
        for i in range(offset, offset + count):
            start = time.perf_counter()
            one(i)
            times.append(time.perf_counter() - start)
    return times


def check_same_result(ns_a: str, ns_b: str) -> None:
    """Both ways built the same thing: as many links, taps on bridges, FDB entries."""

    def census(ns: str) -> tuple[int, int]:
        links = subprocess.run(
            ["ip", "-n", ns, "-o", "link"], capture_output=True, text=True, check=True
        ).stdout
        fdb = subprocess.run(
            ["ip", "netns", "exec", ns, "bridge", "fdb", "show"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return len(links.splitlines()), sum(1 for line in fdb.splitlines() if " dst " in line)

    a, b = census(ns_a), census(ns_b)
    if a != b:
        raise SystemExit(f"the two ways built different things: {a} vs {b}")


def run(count: int, peers_n: int, remote: int, rounds: int) -> dict[str, float]:
    tag = secrets.token_hex(3)
    ns_nl, ns_ip, ns_pr = f"bnl{tag}", f"bip{tag}", f"bpr{tag}"
    state = Path(tempfile.mkdtemp(prefix="nubes-bench-net-"))
    peers = peers_of(peers_n)
    netlink_t: list[float] = []
    ip_t: list[float] = []
    pr_t: list[float] = []
    try:
        netns.create(ns_nl)
        netns.create(ns_ip)
        netns.create(ns_pr)
        with netns.inside(ns_pr):
            ipr = IPRoute(strict_check=True)  # its socket stays in that namespace
        driver = LinuxBridgeDriver(state, anti_spoof=False, guard_host=False, overlay_filter=False)
        per_round = max(1, count // rounds)
        done = 0
        while done < count:  # interleaved rounds: both ways see the same machine noise
            n = min(per_round, count - done)
            netlink_t += measure(ns_nl, n, lambda i: plumb_netlink(driver, i, peers, remote), done)
            ip_t += measure(ns_ip, n, lambda i: plumb_ip(i, peers, remote), done)
            pr_t += measure(ns_pr, n, lambda i: plumb_pyroute2(ipr, i, peers, remote), done)
            done += n
        ipr.close()
        check_same_result(ns_nl, ns_ip)
        check_same_result(ns_nl, ns_pr)
    finally:
        for ns in (ns_nl, ns_ip, ns_pr):
            netns.delete(ns)  # takes every device in it along
        shutil.rmtree(state, ignore_errors=True)
    return {
        "netlink_ms": statistics.median(netlink_t) * 1000,
        "ip_ms": statistics.median(ip_t) * 1000,
        "netlink_total_s": sum(netlink_t),
        "ip_total_s": sum(ip_t),
        "pyroute2_ms": statistics.median(pr_t) * 1000,
    }


def plug_with_gateway(count: int) -> dict[str, float]:
    """A port's plug into a network served here (gateway namespace, dnsmasq) vs one served
    elsewhere, anti-spoofing on for both, interleaved."""
    ns = f"bgw{secrets.token_hex(3)}"
    state = Path(tempfile.mkdtemp(prefix="nubes-bench-gw-"))
    state.chmod(0o755)
    served_t: list[float] = []
    plain_t: list[float] = []
    driver = LinuxBridgeDriver(state, guard_host=False, overlay_filter=False)
    try:
        netns.create(ns)
        with netns.inside(ns):
            for i in range(count):
                for serve, times in ((True, served_t), (False, plain_t)):
                    net_id = f"bgw-{i:04d}-{int(serve)}"
                    bridge = f"nbrg{i:04d}{int(serve)}"
                    driver.ensure_network(
                        NetworkSpec(
                            id=net_id,
                            bridge=bridge,
                            cidr="10.30.0.0/24",
                            gateway="10.30.0.1",
                            mtu=MTU,
                            vni=20000 + 2 * i + int(serve),
                            serve_dhcp=serve,
                        )  # fmt: skip
                    )
                    port = PortSpec(
                        id=f"p{i}{int(serve)}", network_id=net_id, bridge=bridge,
                        tap=f"tapg{i:04d}{int(serve)}", mac=port_mac(i), ip="10.30.0.2", mtu=MTU,
                    )  # fmt: skip
                    start = time.perf_counter()
                    driver.plug_port(port)
                    times.append(time.perf_counter() - start)
            for i in range(count):
                for serve in (True, False):
                    driver.delete_network(f"bgw-{i:04d}-{int(serve)}")
    finally:
        for gw in netns.list_names(f"qgw-{driver.gateways.tag}-"):
            for pid in netns.pids(gw):
                subprocess.run(["kill", "-9", str(pid)], capture_output=True)
            netns.delete(gw)
        netns.delete(ns)
        shutil.rmtree(state, ignore_errors=True)
    return {
        "served_ms": statistics.median(served_t) * 1000,
        "plain_ms": statistics.median(plain_t) * 1000,
    }


def _throughput(client_ns: str, server_ns: str, address: str, megabytes: int) -> float:
    """MB/s of one TCP stream from client_ns to address (a receiver in server_ns)."""
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, sys.executable, "-c", _RECEIVER],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.3)
        argv = ["ip", "netns", "exec", client_ns, sys.executable, "-c", _SENDER, address]
        sender = subprocess.run(
            [*argv, str(megabytes)], capture_output=True, text=True, check=True, timeout=300
        )
        return float(sender.stdout.strip())
    finally:
        receiver.kill()
        receiver.wait()


_RECEIVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5201)); s.listen(1)
c, _ = s.accept()
while c.recv(1 << 20):
    pass
"""
_SENDER = """
import socket, sys, time
data = b"x" * (1 << 20)
c = socket.create_connection((sys.argv[1], 5201))
start = time.perf_counter()
for _ in range(int(sys.argv[2])):
    c.sendall(data)
c.shutdown(socket.SHUT_WR); c.recv(1)
print(int(sys.argv[2]) / (time.perf_counter() - start))
"""


def overlay_throughput(megabytes: int, rounds: int) -> dict[str, float]:
    """Two hosts (namespaces joined by a veth underlay), a VXLAN network between them with a
    stand-in guest plugged on each. TCP between the two guests over the overlay; between the
    same two guests over the bare underlay (a second NIC each, on a plain bridge per host whose
    other port is a second veth between the hosts: the same bridges and veths, no VXLAN); and
    host to host. Interleaved."""
    tag = secrets.token_hex(2)
    h1, h2, g1, g2 = (f"bt{tag}{x}" for x in ("h1", "h2", "g1", "g2"))
    state = Path(tempfile.mkdtemp(prefix="nubes-bench-tp-"))
    state.chmod(0o755)
    results: dict[str, list[float]] = {"overlay": [], "bare": [], "hosts": []}
    try:
        for ns in (h1, h2):
            netns.create(ns)
        for link in ("eth0", "eth1"):  # eth0: the underlay; eth1: the bare L2 for the guests
            _run("ip", "-n", h1, "link", "add", link, "type", "veth", "peer", "name", link,
                 "netns", h2)  # fmt: skip
        for ns, ip in ((h1, "10.254.9.1"), (h2, "10.254.9.2")):
            _run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "-n", ns, "link", "add", "brbare", "type", "bridge")
            _run("ip", "-n", ns, "link", "set", "eth1", "master", "brbare", "up")
            _run("ip", "-n", ns, "link", "set", "brbare", "up")
        for ns, local, peer, guest, gip, bare_ip, serve in (
            (h1, "10.254.9.1", "10.254.9.2", g1, "10.30.0.11", "10.31.0.11", True),
            (h2, "10.254.9.2", "10.254.9.1", g2, "10.30.0.12", "10.31.0.12", False),
        ):
            with netns.inside(ns):
                LinuxBridgeDriver(state / ns).ensure_network(
                    NetworkSpec(
                        id="tp",
                        bridge="nbrtp",
                        cidr="10.30.0.0/24",
                        gateway="10.30.0.1",
                        mtu=MTU,
                        vni=30000,
                        local_underlay_ip=local,
                        peers=(OverlayPeer(peer),),
                        serve_dhcp=serve,
                    )  # fmt: skip
                )
            netns.attach_endpoint(ns, "nbrtp", guest, f"v{guest}"[:15], f"{gip}/24", mtu=MTU)
            _run("ip", "-n", ns, "link", "add", f"w{guest}"[:15], "type", "veth", "peer", "name",
                 "eth1", "netns", guest)  # fmt: skip
            _run("ip", "-n", ns, "link", "set", f"w{guest}"[:15], "master", "brbare", "up")
            _run("ip", "-n", guest, "addr", "add", f"{bare_ip}/24", "dev", "eth1")
            _run("ip", "-n", guest, "link", "set", "eth1", "up")
        for _ in range(rounds):
            results["overlay"].append(_throughput(g1, g2, "10.30.0.12", megabytes))
            results["bare"].append(_throughput(g1, g2, "10.31.0.12", megabytes))
            results["hosts"].append(_throughput(h1, h2, "10.254.9.2", megabytes))
    finally:
        for where in (state / h1, state / h2):  # the gateway's dnsmasq first, then everything
            for gw in netns.list_names(f"qgw-{gateway.host_tag(where)}-"):
                for pid in netns.pids(gw):
                    subprocess.run(["kill", "-9", str(pid)], capture_output=True)
                netns.delete(gw)
        for ns in (g1, g2, h1, h2):
            netns.delete(ns)
        shutil.rmtree(state, ignore_errors=True)
    return {f"{k}_mbs": statistics.median(v) for k, v in results.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ports", type=int, default=200, help="ports plumbed each way")
    ap.add_argument("--peers", type=int, default=2, help="other hosts with the network")
    ap.add_argument("--remote-ports", type=int, default=4, help="ports on those hosts")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    ap.add_argument("--megabytes", type=int, default=2000, help="per TCP throughput run")
    ap.add_argument("--tp-rounds", type=int, default=5, help="throughput runs each way")
    args = ap.parse_args()
    r = run(args.ports, args.peers, args.remote_ports, args.rounds)
    ip_cmds = 6 + args.peers + args.remote_ports
    print(
        f"plumbing one port (bridge, vxlan, {args.peers} head-end + {args.remote_ports} "
        f"per-MAC FDB entries, tap), {args.ports} ports each way, median per port:"
    )
    print(f"  nubes netlink driver   {r['netlink_ms']:8.2f} ms")
    print(f"  ip commands ({ip_cmds:2d}/port) {r['ip_ms']:8.2f} ms")
    print(f"  speedup {r['ip_ms'] / r['netlink_ms']:.1f}x (goal >= 5x)")
    print(f"  pyroute2 IPRoute       {r['pyroute2_ms']:8.2f} ms")
    print(f"  rtnl.py vs pyroute2 {r['pyroute2_ms'] / r['netlink_ms']:.1f}x faster")
    g = plug_with_gateway(max(2, args.ports // 10))
    print("plugging a port (anti-spoofing on), median:")
    print(f"  network served here (gateway namespace) {g['served_ms']:7.2f} ms")
    print(f"  network served elsewhere                {g['plain_ms']:7.2f} ms")
    print(f"  ratio {g['served_ms'] / g['plain_ms']:.2f} (goal <= 1.2)")
    t = overlay_throughput(args.megabytes, args.tp_rounds)
    print(f"TCP, one stream of {args.megabytes} MB, median of {args.tp_rounds}:")
    print(f"  guest to guest over the overlay        {t['overlay_mbs']:8.1f} MB/s")
    print(f"  the same guests over the bare underlay {t['bare_mbs']:8.1f} MB/s")
    print(f"  host to host over the underlay         {t['hosts_mbs']:8.1f} MB/s")
    print(f"  overlay/bare underlay {t['overlay_mbs'] / t['bare_mbs']:.2f} (goal >= 0.8)")
    print(f"  overlay/host to host  {t['overlay_mbs'] / t['hosts_mbs']:.2f}")
    if not ovs_installed():
        print("Open vSwitch: not installed, skipped")
        return
    import network_ovs  # bench/ is on sys.path when this runs as a script

    o = network_ovs.plug_times(max(2, args.ports // 10))
    print("plugging a port (port security and security groups on), median:")
    print(f"  Linux bridge driver {o['linuxbridge_ms']:7.2f} ms")
    print(f"  OVS driver          {o['ovs_ms']:7.2f} ms")
    print(f"  OVS/Linux bridge {o['ovs_ms'] / o['linuxbridge_ms']:.2f} (goal <= 2)")
    v = network_ovs.throughput(args.megabytes, args.tp_rounds, _throughput)
    print(f"TCP guest to guest on two hosts, one stream of {args.megabytes} MB, median:")
    print(f"  Linux bridge + VXLAN (kernel)  {v['linuxbridge_vxlan_mbs']:8.1f} MB/s")
    print(f"  OVS + Geneve (userspace)       {v['ovs_geneve_mbs']:8.1f} MB/s")
    print(f"  OVS+Geneve/LB+VXLAN {v['ovs_geneve_mbs'] / v['linuxbridge_vxlan_mbs']:.2f}")


if __name__ == "__main__":
    main()
