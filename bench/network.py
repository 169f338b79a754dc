"""Port plumbing benchmark: nubes' netlink driver vs the `ip`-command way of hand-made scripts,
side by side in one run, each in a throwaway network namespace of its own.

One "port" is what a host needs for a guest on an overlay network it did not have yet: the
network's bridge, its VXLAN device (no learning) with head-end entries to the peer hosts and
static entries for the ports on them, then the guest's tap on the bridge. nubes does it with
LinuxBridgeDriver.ensure_network + plug_port (one netlink socket per call, everything checked
and idempotent); the script does it with `ip link`, `ip tuntap` and `bridge fdb` commands, one
process each. Firewall rules, DHCP and addresses are left out of both (nft is a process for
both alike).

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

from nubes.network import netns  # noqa: E402
from nubes.network.base import NetworkSpec, OverlayPeer, PortSpec, RemotePort  # noqa: E402
from nubes.network.linuxbridge import LinuxBridgeDriver  # noqa: E402

LOCAL = "10.254.0.1"
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
    ns_nl, ns_ip = f"bnl{tag}", f"bip{tag}"
    state = Path(tempfile.mkdtemp(prefix="nubes-bench-net-"))
    peers = peers_of(peers_n)
    netlink_t: list[float] = []
    ip_t: list[float] = []
    try:
        netns.create(ns_nl)
        netns.create(ns_ip)
        driver = LinuxBridgeDriver(state, anti_spoof=False, guard_host=False, overlay_filter=False)
        per_round = max(1, count // rounds)
        done = 0
        while done < count:  # interleaved rounds: both ways see the same machine noise
            n = min(per_round, count - done)
            netlink_t += measure(ns_nl, n, lambda i: plumb_netlink(driver, i, peers, remote), done)
            ip_t += measure(ns_ip, n, lambda i: plumb_ip(i, peers, remote), done)
            done += n
        check_same_result(ns_nl, ns_ip)
    finally:
        for ns in (ns_nl, ns_ip):
            netns.delete(ns)  # takes every device in it along
        shutil.rmtree(state, ignore_errors=True)
    return {
        "netlink_ms": statistics.median(netlink_t) * 1000,
        "ip_ms": statistics.median(ip_t) * 1000,
        "netlink_total_s": sum(netlink_t),
        "ip_total_s": sum(ip_t),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ports", type=int, default=200, help="ports plumbed each way")
    ap.add_argument("--peers", type=int, default=2, help="other hosts with the network")
    ap.add_argument("--remote-ports", type=int, default=4, help="ports on those hosts")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
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


if __name__ == "__main__":
    main()
