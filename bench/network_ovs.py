"""The Open vSwitch driver against the Linux bridge driver, side by side (bench/network.py runs
these in the same run as the rest):
- plugging a guest's port (port security and security groups on) into a network of this host;
- one TCP stream between two stand-in guests on two hosts: Linux bridge + VXLAN (kernel) vs
  OVS + Geneve (here the userspace datapath; the kernel is expected to win).
Each host is a throwaway network namespace; each OVS host runs its own daemons, killed with it.
"""

from __future__ import annotations

import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from nubes.lab.lab import kill_namespace_processes
from nubes.network import gateway, netns
from nubes.network.base import NetworkDriver, NetworkSpec, OverlayPeer, PortSpec
from nubes.network.linuxbridge import LinuxBridgeDriver
from nubes.network.ovs import OvsDriver, tx_checksum_off
from nubes.network.secgroups import Rule

MTU = 1450
OPEN = (Rule("egress"), Rule("ingress"))


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@contextmanager
def _namespaces(*names: str) -> Iterator[Path]:
    state = Path(tempfile.mkdtemp(prefix="nubes-bench-ovs-"))
    state.chmod(0o755)
    try:
        for ns in names:
            netns.create(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        yield state
    finally:
        for where in [state / ns for ns in names]:  # gateways' dnsmasq, then the rest
            for gw in netns.list_names(f"qgw-{gateway.host_tag(where)}-"):
                kill_namespace_processes(gw)
                netns.delete(gw)
        for ns in names:
            kill_namespace_processes(ns)  # an OVS host's ovsdb-server and ovs-vswitchd
            netns.delete(ns)
        shutil.rmtree(state, ignore_errors=True)


def _net(i: int, **kw: object) -> NetworkSpec:
    return NetworkSpec(
        id=f"bo-{i:04d}", bridge=f"nbrbo{i:04d}", cidr="10.30.0.0/24", gateway="10.30.0.1",
        mtu=MTU, vni=21000 + i, serve_dhcp=False, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def _mac(i: int) -> str:
    return f"52:54:00:0b:{i // 256:02x}:{i % 256:02x}"


def _port(net: NetworkSpec, i: int, tap: str, ip: str = "10.30.0.2") -> PortSpec:
    return PortSpec(
        id=f"bp{i}", network_id=net.id, bridge=net.bridge, tap=tap, mac=_mac(i), ip=ip,
        mtu=MTU, rules=OPEN,
    )  # fmt: skip


def plug_times(count: int) -> dict[str, float]:
    """Median ms of plug_port (+ ensure_port_filter, as an agent's pass does) per driver, each
    in a namespace of its own, interleaved."""
    tag = secrets.token_hex(2)
    lb_ns, ovs_ns = f"bl{tag}", f"bo{tag}"
    times: dict[str, list[float]] = {"linuxbridge": [], "ovs": []}
    with _namespaces(lb_ns, ovs_ns) as state:
        drivers: dict[str, tuple[str, NetworkDriver]] = {
            "linuxbridge": (lb_ns, LinuxBridgeDriver(state / lb_ns, guard_host=False)),
            "ovs": (ovs_ns, OvsDriver(state / ovs_ns)),
        }
        for i in range(count):
            for name, (ns, driver) in drivers.items():
                net = _net(i)
                port = _port(net, i, f"tapbo{i:04d}")
                with netns.inside(ns):
                    driver.ensure_network(net)
                    start = time.perf_counter()
                    driver.plug_port(port)
                    driver.ensure_port_filter(port)
                    times[name].append(time.perf_counter() - start)
    return {f"{k}_ms": statistics.median(v) * 1000 for k, v in times.items()}


def _pair(state: Path, h1: str, h2: str, make: Callable[[Path], NetworkDriver], overlay: str,
          guests: tuple[str, str], plug: bool) -> None:  # fmt: skip
    """Two hosts on a veth underlay, the network on both, a stand-in guest on each."""
    _run("ip", "-n", h1, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
         "netns", h2)  # fmt: skip
    ips = {h1: "10.254.9.1", h2: "10.254.9.2"}
    for n, (ns, guest) in enumerate(zip((h1, h2), guests, strict=True)):
        _run("ip", "-n", ns, "addr", "add", f"{ips[ns]}/24", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        peer = ips[h2 if ns == h1 else h1]
        net = _net(9000, overlay=overlay, local_underlay_ip=ips[ns], peers=(OverlayPeer(peer),))
        driver = make(state / ns)
        tap = f"tv{guest}"[:15]
        netns.create(guest)
        _run("ip", "-n", ns, "link", "add", tap, "mtu", str(MTU), "type", "veth", "peer", "name",
             "eth0", "netns", guest)  # fmt: skip
        ip = f"10.30.0.{11 + n}"
        _run("ip", "-n", guest, "addr", "add", f"{ip}/24", "dev", "eth0")
        _run("ip", "-n", guest, "link", "set", "eth0", "address", _mac(9000 + n))
        _run("ip", "-n", guest, "link", "set", "eth0", "mtu", str(MTU), "up")
        with netns.inside(ns):
            driver.ensure_network(net)
            if plug:  # OVS: the veth is the port; the guest side checksums itself
                with netns.inside(guest):
                    tx_checksum_off("eth0")
                driver.plug_port(_port(net, 9000 + n, tap, ip))
            else:
                _run("ip", "link", "set", tap, "master", net.bridge, "up")


def throughput(
    megabytes: int, rounds: int, measure: Callable[[str, str, str, int], float]
) -> dict[str, float]:
    """MB/s guest to guest on two hosts: Linux bridge + VXLAN vs OVS + Geneve, interleaved."""
    tag = secrets.token_hex(2)
    lb = [f"tl{tag}{x}" for x in ("h1", "h2", "g1", "g2")]
    ov = [f"to{tag}{x}" for x in ("h1", "h2", "g1", "g2")]
    results: dict[str, list[float]] = {"linuxbridge_vxlan": [], "ovs_geneve": []}
    with _namespaces(lb[0], lb[1], ov[0], ov[1]) as state:
        try:
            _pair(state, lb[0], lb[1], LinuxBridgeDriver, "vxlan", (lb[2], lb[3]), plug=False)
            _pair(state, ov[0], ov[1], OvsDriver, "geneve", (ov[2], ov[3]), plug=True)
            for _ in range(rounds):
                results["linuxbridge_vxlan"].append(measure(lb[2], lb[3], "10.30.0.12", megabytes))
                results["ovs_geneve"].append(measure(ov[2], ov[3], "10.30.0.12", megabytes))
        finally:
            for ns in (lb[2], lb[3], ov[2], ov[3]):
                netns.delete(ns)
    return {f"{k}_mbs": statistics.median(v) for k, v in results.items()}
