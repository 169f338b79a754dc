"""Containers beside VMs on one tenant network, on a two-host lab (issue 12).

A tiny container on host 1 and a tiny VM on host 2, on one network, reach each other both ways;
security groups and anti-spoofing hold for the container's port as for a VM's; root in the
container is an unprivileged uid on the host; exec, console log, stop/start, an init that
exits, an agent killed with SIGKILL (the container keeps running and is adopted) and delete
work; `gc --dry-run` finds nothing after, and `lab down` leaves nothing (stop_lab checks)."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from websockets.sync.client import ClientConnection, unix_connect

from nubes.agent.containers import UID_FIRST
from nubes.client import ApiError
from nubes.imagebuild.tinycontainer import READY_LINE
from nubes.schemas import resources as s
from tests.integration.conftest import LabCloud, start_lab, stop_lab
from tests.integration.hostcheck import gc_clean, kill_agent

CIDR = "10.81.0.0/24"

VM_SCRIPT = """#!/bin/sh
t() { echo "nubes-test: $*"; }
for i in $(seq 1 90); do ping -c 1 -W 1 CIP >/dev/null 2>&1 && break; done
if ping -c 2 -W 2 CIP >/dev/null 2>&1; then t "ping CIP ok"; else t "ping CIP FAIL"; fi
if echo hi | nc -w 3 CIP 8081; then t "port 8081 open"; else t "port 8081 closed"; fi
if echo hi | nc -w 3 CIP 8080; then t "port 8080 open"; else t "port 8080 closed"; fi
t done
"""


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module", params=["linuxbridge", "ovs"])
def lab(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[LabCloud]:
    """Both network drivers: a container's veth is plugged by the same driver call as a tap."""
    driver_args = ("--network-driver", request.param)
    cloud = start_lab(tmp_path_factory.mktemp("containers"), 2, driver_args)
    try:
        cloud.nubes("image", "build", "tiny")
        cloud.nubes("image", "build", "tiny", "--container")
        cloud.nubes("network", "create", "blue", "--cidr", CIDR)
        yield cloud
    finally:
        stop_lab(cloud)


def exec_ok(cloud: LabCloud, name: str, *argv: str) -> str:
    result = cloud.client.exec(name, list(argv), timeout=60)
    assert result.exit_status == 0, (argv, result)
    return result.stdout


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


def exec_status(cloud: LabCloud, name: str) -> int | None:
    try:
        return cloud.client.exec(name, ["true"]).exit_status
    except ApiError:  # the new agent is not listening yet
        return None


def active(cloud: LabCloud, name: str, timeout: float = 300) -> s.Server:
    def check() -> s.Server | None:
        x = cloud.client.server(name)
        assert x.status != "ERROR", f"{name}: {x.fault}"
        return x if x.status == "ACTIVE" and x.ready_at is not None else None

    return wait_for(check, timeout, f"{name} ACTIVE and ready")  # type: ignore[return-value]


def container_uids(cloud: LabCloud, index: int) -> dict[int, int]:
    """pid -> uid of the host's processes that run as a container's uids."""
    found = {}
    for pid in cloud.host_pids(index) + _children_of(cloud.host_pids(index)):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        uid = int(next(x for x in status.splitlines() if x.startswith("Uid:")).split()[1])
        if uid >= UID_FIRST:
            found[pid] = uid
    return found


def run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=check)


def _children_of(pids: list[int]) -> list[int]:
    from nubes.lab.lab import _with_descendants

    return _with_descendants(pids)


def test_a_container_and_a_vm_on_one_network(lab: LabCloud) -> None:
    cloud = lab
    hosts = sorted(h.name for h in cloud.client.hosts())
    assert all("runc" in h.runtimes.split(",") for h in cloud.client.hosts())
    assert cloud.client.image("tiny-container").kind == "container"

    # security groups: the container admits ICMP and TCP 8081; the VM admits ICMP
    cloud.nubes("security-group", "create", "c-sg")
    cloud.nubes("security-group", "rule", "create", "c-sg", "--protocol", "icmp")
    cloud.nubes("security-group", "rule", "create", "c-sg", "--protocol", "tcp", "--port", "8081")
    cloud.nubes("security-group", "create", "vm-sg")
    cloud.nubes("security-group", "rule", "create", "vm-sg", "--protocol", "icmp")

    body = s.ServerCreate(
        name="c1", image="tiny-container", flavor="m1.tiny", network="blue", host=hosts[0],
        security_groups=["c-sg"],
    )  # fmt: skip
    cloud.client.create_server(body)
    c1 = active(cloud, "c1")
    assert (c1.kind, c1.host) == ("container", hosts[0])
    cip = c1.addresses["blue"][0]
    log = cloud.client.console_log("c1")
    assert READY_LINE in log and "nubes-tiny: hostname c1" in log, log
    assert f"nubes-tiny: address {cip}/24" in log, log
    assert cip in exec_ok(cloud, "c1", "ip", "addr")
    assert exec_ok(cloud, "c1", "hostname").strip() == "c1"
    failed = cloud.client.exec("c1", ["sh", "-c", "exit 7"])
    assert failed.exit_status == 7
    # what works on a VM's disk or QEMU is refused for a container, naming it
    for action in (
        lambda: cloud.client.snapshot_server("c1", "c1-snap"),
        lambda: cloud.client.resize_server("c1", "m1.small"),
        lambda: cloud.client.rebuild_server("c1"),
        lambda: cloud.client.migrate_server("c1", live=True),
    ):
        with pytest.raises(ApiError) as refused:
            action()
        assert refused.value.status == 409 and refused.value.field == "server"
        assert "is a container" in refused.value.detail
    # the interactive console: a shell on a pty of its own, through the host's agent
    with _websocket(cloud, f"/v1/servers/{c1.id}/console") as ws:
        ws.send(b"echo console-of-$((6*7)) on $(hostname) $(tty)\n")
        seen = _read_until(ws, b"console-of-42 on c1 /dev/pts/")
        assert b"console-of-42 on c1 /dev/pts/" in seen, seen[-500:]
    # listeners for the VM's probes, detached from exec's pipes
    listen = "nc -ll -p {0} -e true </dev/null >/dev/null 2>&1 &"
    exec_ok(cloud, "c1", "sh", "-c", listen.format(8080) + " " + listen.format(8081))

    # root inside is an unprivileged uid on the host, and sees none of the host's processes
    assert exec_ok(cloud, "c1", "id", "-u").strip() == "0"
    uids = container_uids(cloud, 1)
    assert uids and all(u >= UID_FIRST for u in uids.values()), uids
    procs = [p for p in exec_ok(cloud, "c1", "ls", "/proc").split() if p.isdigit()]
    assert len(procs) < 10, procs
    insmod = cloud.client.exec("c1", ["insmod", "/bin/busybox"])
    assert insmod.exit_status != 0

    vm_body = s.ServerCreate(
        name="vm1", image="tiny", flavor="m1.tiny", network="blue", host=hosts[1],
        security_groups=["vm-sg"], user_data=VM_SCRIPT.replace("CIP", cip),
    )  # fmt: skip
    cloud.client.create_server(vm_body)
    vm = active(cloud, "vm1")
    vip = vm.addresses["blue"][0]
    assert (vm.kind, vm.host) == ("vm", hosts[1])

    # container -> VM across hosts
    pinged = cloud.client.exec("c1", ["ping", "-c", "3", "-W", "3", vip], timeout=120)
    assert pinged.exit_status == 0, pinged
    # VM -> container, and the container's security group holds: 8081 open, 8080 closed
    done = wait_for(
        lambda: "nubes-test: done" in (t := cloud.client.console_log("vm1")) and t, 300, "vm1"
    )
    assert f"nubes-test: ping {cip} ok" in done, done
    assert "nubes-test: port 8081 open" in done, done
    assert "nubes-test: port 8080 closed" in done, done

    # anti-spoofing: root in the container may not re-address its NIC (no CAP_NET_ADMIN)...
    denied = cloud.client.exec("c1", ["ip", "addr", "add", "10.81.0.250/32", "dev", "eth0"])
    assert denied.exit_status != 0 and "not permitted" in denied.stderr, denied
    # ...and what a raw socket could forge is dropped on the host end of its veth: frames from
    # the container's namespace with another address, or another MAC, reach nothing
    pid = next(iter(container_uids(cloud, 1)))
    in_c1 = ["nsenter", "-t", str(pid), "-n"]
    run([*in_c1, "ip", "addr", "add", "10.81.0.250/32", "dev", "eth0"])
    spoofed = run([*in_c1, "ping", "-c", "3", "-W", "2", "-I", "10.81.0.250", vip], check=False)
    assert spoofed.returncode != 0, spoofed
    run([*in_c1, "ip", "addr", "del", "10.81.0.250/32", "dev", "eth0"])
    run([*in_c1, "ip", "link", "set", "eth0", "address", "02:de:ad:be:ef:01"])
    run([*in_c1, "ip", "neigh", "flush", "dev", "eth0"])
    macspoof = run([*in_c1, "ping", "-c", "3", "-W", "2", vip], check=False)
    assert macspoof.returncode != 0, macspoof
    run([*in_c1, "ip", "link", "set", "eth0", "address", c1.nics[0].mac])
    again = cloud.client.exec("c1", ["ping", "-c", "3", "-W", "3", vip], timeout=120)
    assert again.exit_status == 0, again

    # the agent killed with SIGKILL: the container keeps running and is adopted
    before = container_uids(cloud, 1)
    kill_agent(cloud, 1)
    cloud.nubes("lab", "restart-agent", cloud.host_ns(1))
    wait_for(lambda: exec_status(cloud, "c1") == 0, 120, "exec through the new agent")
    assert set(before) <= set(container_uids(cloud, 1)), "the container was restarted"
    assert cloud.client.server("c1").status == "ACTIVE"

    # stop and start: its veth goes with its namespace, and comes back
    cloud.nubes("server", "stop", "c1")
    wait_for(lambda: cloud.client.server("c1").status == "SHUTOFF", 120, "c1 SHUTOFF")
    assert not container_uids(cloud, 1)
    cloud.nubes("server", "start", "c1")
    active(cloud, "c1")
    after = cloud.client.exec("c1", ["ping", "-c", "3", "-W", "3", vip], timeout=120)
    assert after.exit_status == 0, after

    # reboot: a new init (its own pid namespace starts again), the network back with it
    exec_ok(cloud, "c1", "touch", "/tmp/before-reboot")  # /tmp is the rootfs's: it stays
    boots = cloud.client.console_log("c1").count(READY_LINE)
    cloud.nubes("server", "reboot", "c1")
    wait_for(lambda: cloud.client.console_log("c1").count(READY_LINE) > boots, 120, "reboot")
    active(cloud, "c1")
    exec_ok(cloud, "c1", "ls", "/tmp/before-reboot")
    rebooted = cloud.client.exec("c1", ["ping", "-c", "3", "-W", "3", vip], timeout=120)
    assert rebooted.exit_status == 0, rebooted

    # an init that exits: SHUTOFF, its exit status in the fault
    cloud.client.exec("c1", ["kill", "-TERM", "1"])
    wait_for(lambda: cloud.client.server("c1").status == "SHUTOFF", 120, "c1 SHUTOFF")
    assert "exited with status 0" in cloud.client.server("c1").fault

    # its veth went with its namespace; an agent restarted since its plug still finds its
    # security groups' rules to remove (kept on disk), and leaves none behind at the delete
    def port_chains() -> set[str]:  # the Linux bridge driver's (OVS keeps flows per port)
        return set(re.findall(r"chain (sp[ei]_\w+)", cloud.in_host(["nft", "list", "ruleset"])))

    with_c1 = port_chains()
    kill_agent(cloud, 1)
    cloud.nubes("lab", "restart-agent", cloud.host_ns(1))
    cloud.client.delete_server("c1")
    wait_for(lambda: all(x.name != "c1" for x in cloud.client.servers()), 120, "c1 gone")
    if lab.network_driver == "linuxbridge":
        gone = with_c1 - port_chains()
        assert len(gone) == 2, (with_c1, gone)  # its egress and ingress chains

    for name in ("vm1",):
        cloud.client.delete_server(name)
    wait_for(lambda: not cloud.client.servers(), 120, "servers gone")
    wait_for(lambda: not container_uids(cloud, 1), 60, "container processes gone")
    gc_clean(cloud)


def test_a_container_that_cannot_start_leaves_nothing(lab: LabCloud, tmp_path: Path) -> None:
    """An image whose command cannot run (BASE's /bin/sh is no ELF). runc fails it either
    before the start (the build is undone: ERROR with runc's reason) or just after (its init
    "exited with status 1": SHUTOFF, as a VM whose kernel panics); delete and gc leave nothing."""
    from tests.ociarchive import BASE, Entry, oci_archive

    cloud = lab
    archive = oci_archive(tmp_path / "broken.tar", [BASE, [Entry("etc/motd", b"hi\n")]])
    cloud.nubes("image", "import", "broken", "--file", str(archive), "--format", "oci-archive")
    assert cloud.client.image("broken").kind == "container"
    body = s.ServerCreate(name="broken1", image="broken", flavor="m1.tiny", network="blue")
    server = cloud.client.create_server(body)

    def settled() -> s.Server | None:
        x = cloud.client.server("broken1")
        return x if x.status in ("ERROR", "SHUTOFF") else None

    x: s.Server = wait_for(settled, 120, "broken1 ERROR or SHUTOFF")  # type: ignore[assignment]
    index = sorted(h.name for h in cloud.client.hosts()).index(x.host or "") + 1
    here = cloud.host_dir(index)
    if x.status == "ERROR":  # every step undone
        assert "did not start" in x.fault and "exec format error" in x.fault, x.fault
        assert not (here / "instances" / server.id).exists()
        assert not list((here / "runtime" / "containers").glob("*.json"))
    else:
        assert "exited with status 1" in x.fault, x.fault
        assert "exec format error" in cloud.client.console_log("broken1")
    cloud.client.delete_server("broken1")
    wait_for(lambda: not cloud.client.servers(), 120, "broken1 gone")
    assert not (here / "instances" / server.id).exists()
    assert not list((here / "runtime" / "containers").glob("*.json"))
    links = cloud.in_host(["ip", "-o", "link"], index).splitlines()
    names = [line.split(":")[1].strip().split("@")[0] for line in links]
    assert not [n for n in names if n.startswith(("tap", "nc"))], names  # no other server here
    gc_clean(cloud)
