"""Issue: nubes on one host. A 1-host lab, real QEMU, bridge, taps and dnsmasq."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from nubes.schemas import resources as s
from tests.integration.conftest import LabCloud, network_link, processes_of

pytestmark = pytest.mark.integration


def wait_console(cloud: LabCloud, name: str, pattern: str, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = cloud.client.console_log(name)
        if re.search(pattern, log):
            return log
        time.sleep(1)
    raise AssertionError(f"{name}: console never showed {pattern!r}:\n{log[-3000:]}")


def qemu_pids(cloud: LabCloud) -> list[int]:

    pids = []
    for pid in cloud.host_pids():
        try:
            if b"qemu-system" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
        except OSError:
            pass
    return pids


def _cmdlines(cloud: LabCloud) -> list[bytes]:

    found = []
    for pid in cloud.host_pids():
        try:
            found.append(Path(f"/proc/{pid}/cmdline").read_bytes())
        except OSError:
            pass
    return found


def test_two_tiny_instances_talk_then_leave_nothing(
    lab1_each_driver: LabCloud, tmp_path: Path
) -> None:
    cloud = lab1_each_driver
    cloud.nubes("image", "build", "tiny")
    cloud.nubes("network", "create", "net1", "--cidr", "10.20.0.0/24")
    cloud.nubes("keypair", "create", "k1", "--save", str(tmp_path / "k1"))
    out = cloud.nubes(
        "server",
        "create",
        "alpha",
        "--image",
        "tiny",
        "--network",
        "net1",
        "--key",
        "k1",
        "--wait",
        "-o",
        "json",
    )
    assert '"status": "ACTIVE"' in out
    alpha = cloud.client.server("alpha")
    alpha_ip = alpha.addresses["net1"][0]
    script = tmp_path / "ud.sh"
    # beta pings alpha, and asks dnsmasq for a lease to show the reservation matches IPAM
    script.write_text(f"#!/bin/sh\nping -c 3 {alpha_ip}\nudhcpc -i eth0 -n -q -t 5 -s /bin/true\n")
    cloud.nubes(
        "server",
        "create",
        "beta",
        "--image",
        "tiny",
        "--network",
        "net1",
        "--user-data",
        str(script),
        "--wait",
    )
    beta = cloud.client.server("beta")
    beta_ip = beta.addresses["net1"][0]

    log_a = wait_console(cloud, "alpha", r"nubes-tiny: ready")
    assert "nubes-tiny: hostname alpha" in log_a
    assert f"nubes-tiny: address {alpha_ip}/24" in log_a
    log_b = wait_console(cloud, "beta", r"user-data script exited")
    assert "nubes-tiny: hostname beta" in log_b
    assert re.search(r"3 packets transmitted, [1-3] packets received", log_b), log_b[-2000:]

    # the lease dnsmasq handed out is the address IPAM allocated
    leases = next((cloud.host_dir() / "network").rglob("leases"))
    lease_text = leases.read_text()
    assert beta_ip in lease_text, lease_text

    # user names never reach host identifiers
    links = cloud.in_host(["ip", "-o", "link"])
    assert "alpha" not in links and "beta" not in links
    argvs = [Path(f"/proc/{p}/cmdline").read_bytes() for p in qemu_pids(cloud)]
    assert len(argvs) == 2 and not any(b"alpha" in a or b"beta" in a for a in argvs)

    for name in ("alpha", "beta"):
        cloud.nubes("server", "delete", name, "--wait")
    assert qemu_pids(cloud) == []
    assert "tap" not in cloud.in_host(["ip", "-o", "link"])
    inst_dir = cloud.host_dir() / "instances"
    assert list(inst_dir.iterdir()) == []
    hosts_file = leases.with_name("hosts")
    assert not hosts_file.exists() or alpha_ip not in hosts_file.read_text()
    # the network's DHCP stays up on its host while the network exists; beta's lease was
    # released when its port went (dhcp_release), not left to expire
    deadline = time.monotonic() + 10
    while beta_ip in leases.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert beta_ip not in leases.read_text()
    # ... and goes with the network itself
    net_id = cloud.client.network("net1").id
    assert network_link(cloud, net_id) in cloud.in_host(["ip", "-o", "link"])
    assert any(b"dnsmasq" in a for a in _cmdlines(cloud))
    cloud.nubes("network", "delete", "net1")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (
        network_link(cloud, net_id) in cloud.in_host(["ip", "-o", "link"])
        or any(b"dnsmasq" in a for a in _cmdlines(cloud))
    ):
        time.sleep(0.2)
    assert network_link(cloud, net_id) not in cloud.in_host(["ip", "-o", "link"])
    assert not any(b"dnsmasq" in a for a in _cmdlines(cloud))
    assert not leases.parent.exists()
    host = cloud.client.hosts()[0]
    assert (host.used_vcpus, host.used_ram_mb, host.instances) == (0, 0, 0)


def test_agent_restart_keeps_guests_running(lab1_each_driver: LabCloud) -> None:
    cloud = lab1_each_driver
    cloud.nubes("image", "build", "tiny")
    cloud.client.create_network(s.NetworkCreate(name="net1", cidr="10.21.0.0/24"))
    cloud.nubes("server", "create", "gamma", "--image", "tiny", "--network", "net1", "--wait")
    before = qemu_pids(cloud)
    assert len(before) == 1
    cloud.nubes("lab", "restart-agent", cloud.host_ns())
    time.sleep(5)  # several sync periods of the new agent
    server = cloud.client.server("gamma")
    assert server.status == "ACTIVE" and not server.task_state
    assert qemu_pids(cloud) == before
    log = cloud.client.console_log("gamma")
    assert log.count("nubes-tiny: ready") == 1, "the guest rebooted"
    # and the new agent still manages it
    cloud.nubes("server", "stop", "gamma", "--wait")
    assert cloud.client.server("gamma").status == "SHUTOFF"
    assert qemu_pids(cloud) == []


def test_lab_down_leaves_nothing(lab1_each_driver: LabCloud) -> None:
    cloud = lab1_each_driver
    cloud.nubes("image", "build", "tiny")
    cloud.client.create_network(s.NetworkCreate(name="net1", cidr="10.22.0.0/24"))
    cloud.nubes("server", "create", "delta", "--image", "tiny", "--network", "net1", "--wait")
    cloud.nubes("lab", "down")
    assert (
        subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.count(
            cloud.prefix + "-"
        )
        == 0
    )
    assert (
        cloud.prefix
        not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    )
    assert not cloud.state_dir.exists()
    assert processes_of(cloud.state_dir) == []  # ovsdb-server and ovs-vswitchd on OVS too
