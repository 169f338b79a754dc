"""Security groups with real TCP: stand-in guests (veth endpoints in namespaces of their own)
on a real bridge, the driver's nftables rules and the kernel's conntrack between them."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from nubes.network import netns
from nubes.network.base import PortSpec
from nubes.network.linuxbridge import LinuxBridgeDriver
from nubes.network.secgroups import Rule
from tests.integration.test_linuxbridge import _uid, make_ns, net_spec, state_dir

__all__ = ["make_ns", "state_dir"]  # fixtures shared with the bridge tests


def _listen(ns: str, port: int) -> subprocess.Popen[bytes]:
    """A TCP server that answers each connection with a line naming its port."""
    return subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "busybox",
            "nc",
            "-ll",
            "-p",
            str(port),
            "-e",
            "echo",
            f"hi{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _connects(ns: str, ip: str, port: int) -> bool:
    argv = ["ip", "netns", "exec", ns, "busybox", "nc", "-w", "2", ip, str(port)]
    out = subprocess.run(argv, capture_output=True, timeout=30, stdin=subprocess.DEVNULL).stdout
    return f"hi{port}".encode() in out


def test_ingress_egress_remote_groups_and_replies(
    make_ns: Callable[[str], str], state_dir: Path
) -> None:
    host = make_ns("h")
    net = net_spec("net-sg", vni=4242, dhcp_hosts=())
    guests = {"a": "10.20.0.5", "b": "10.20.0.6", "c": "10.20.0.7"}
    with netns.inside(host):
        driver = LinuxBridgeDriver(state_dir)
        driver.ensure_network(net)
    ns = {}
    for name, ip in guests.items():
        ns[name] = make_ns(name)
        netns.attach_endpoint(host, net.bridge, ns[name], f"v{name}{_uid()}", f"{ip}/24", mtu=1450)
    servers = [_listen(ns["b"], p) for p in (22, 80)] + [_listen(ns["a"], 8080)]
    time.sleep(0.5)
    try:
        # the control: with no group on any port, everything connects
        assert _connects(ns["a"], guests["b"], 22) and _connects(ns["a"], guests["b"], 80)

        def secure(name: str, *rules: Rule) -> None:
            with netns.inside(host):
                driver.ensure_port_filter(
                    PortSpec(
                        id=f"port-{name}",
                        network_id=net.id,
                        bridge=net.bridge,
                        tap=f"tapsg{name}",  # the rules are keyed by address, not device
                        mac="52:54:00:00:00:01",
                        ip=guests[name],
                        rules=rules,
                    )
                )

        # b: ingress tcp/22 only; a and c: the default group's (egress anywhere; ingress from
        # members: a, b and c are all members)
        members = tuple(f"{ip}/32" for ip in guests.values())
        default = (Rule("egress"), Rule("ingress", remotes=members))
        secure("a", *default)
        secure("c", *default)
        secure("b", Rule("egress"), Rule("ingress", "tcp", 22, 22))
        assert _connects(ns["a"], guests["b"], 22)  # allowed, and its replies come back
        assert not _connects(ns["a"], guests["b"], 80)
        # a remote-group rule: b lets in tcp/80 from the members of a group holding only a
        secure(
            "b",
            Rule("egress"),
            Rule("ingress", "tcp", 22, 22),
            Rule("ingress", "tcp", 80, 80, (f"{guests['a']}/32",)),
        )
        assert _connects(ns["a"], guests["b"], 80)
        assert not _connects(ns["c"], guests["b"], 80)
        # the default group: members reach a; b left it, so it does not (its egress is open,
        # a's ingress is not), while a's own connections out still get their replies
        secure(
            "a", Rule("egress"), Rule("ingress", remotes=(f"{guests['a']}/32", f"{guests['c']}/32"))
        )
        assert _connects(ns["c"], guests["a"], 8080)
        assert not _connects(ns["b"], guests["a"], 8080)
        assert _connects(ns["a"], guests["b"], 22)
        # an egress rule that allows nothing but tcp/22: a's connection to 80 never leaves
        secure("a", Rule("egress", "tcp", 22, 22), Rule("ingress", remotes=members))
        secure("b", Rule("egress"), Rule("ingress"))
        assert _connects(ns["a"], guests["b"], 22) and not _connects(ns["a"], guests["b"], 80)
        # two tenants' identical flows never share a connection entry: each bridge its zone
        zones = subprocess.run(
            ["ip", "netns", "exec", host, "cat", "/proc/net/nf_conntrack"],
            capture_output=True,
            text=True,
        ).stdout
        assert f"zone={4242 % 65535 + 1}" in zones, zones[-2000:]
    finally:
        for p in servers:
            p.kill()
            p.wait()
        with netns.inside(host):
            driver.delete_network(net.id)
