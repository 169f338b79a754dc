"""The runc driver on this machine, real runc: the tiny container boots, root inside is an
unprivileged uid outside that sees no host process, writes no host file and loads nothing into
the kernel; a new driver (a restarted agent) adopts it; its init's exit is SHUTOFF with the
status. Everything is made under tmp_path and in a network namespace of the test's own."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nubes.agent.containers import write_seed
from nubes.hypervisor.base import ContainerNic, ContainerSpec, InstanceSpec, PowerState
from nubes.hypervisor.runc.driver import RuncDriver
from nubes.imagebuild.tinycontainer import READY_LINE, build_tiny_container
from nubes.network import netns
from nubes.storage.rootfs import Limits, flatten, unpack
from nubes.storage.seed import SeedData
from tests.integration.conftest import needs_root

UID_BASE = 1_300_000


def wait_for(predicate, what: str, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def container(tmp_path: Path) -> Iterator[tuple[RuncDriver, InstanceSpec]]:
    needs_root()
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed")
    # the container's root (an unprivileged uid) walks to its rootfs: pytest's tmp is 0700
    work = Path(tempfile.mkdtemp(prefix="nubes-runc-test-", dir="/var/tmp"))
    os.chmod(work, 0o711)
    built = build_tiny_container(tmp_path / "cache")
    stored = work / "image.rootfs"
    with stored.open("wb") as out:
        flatten(built, "rootfs", out, Limits(1 << 30))
    bundle = work / "c1"
    bundle.mkdir(mode=0o711)
    unpack(stored, bundle / "rootfs", UID_BASE, 1 << 30)
    with __import__("tarfile").open(stored) as tar:
        fh = tar.extractfile("image.json")
        assert fh is not None
        (bundle / "image.json").write_bytes(fh.read())
    write_seed(
        bundle,
        SeedData(instance_id="i-1", hostname="c1", public_keys=("ssh-ed25519 AAAA k",)),
        UID_BASE,
    )
    # the "host" of this test is a namespace of its own: the veth waits there, its host end
    # has 10.99.0.1, and the hook moves the other end into the container as eth0
    ns = f"nubes-test-c-{secrets.token_hex(3)}"
    netns.create(ns)
    peer = f"nc{secrets.token_hex(4)}"
    ip("-n", ns, "link", "add", "hostend", "type", "veth", "peer", "name", peer)
    ip("-n", ns, "addr", "add", "10.99.0.1/24", "dev", "hostend")
    ip("-n", ns, "link", "set", "hostend", "up")
    driver = RuncDriver(work / "runtime")
    cid = f"test-{secrets.token_hex(4)}"
    nic = ContainerNic(peer, "eth0", "02:00:00:aa:bb:01", "10.99.0.2/24", "10.99.0.1")
    spec = InstanceSpec(
        id=cid, vcpus=1, ram_mb=64, disk=bundle / "none", seed=None, instance_dir=bundle,
        container=ContainerSpec(hostname="c1", uid_base=UID_BASE, nics=(nic,)),
    )  # fmt: skip
    try:
        with netns.inside(ns):
            yield driver, spec
    finally:
        driver.destroy(cid)
        netns.delete(ns)
        shutil.rmtree(work)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def run_in(driver: RuncDriver, cid: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        driver.exec_argv(cid, list(argv)), capture_output=True, text=True, timeout=60, check=False
    )


def test_a_container_is_isolated_and_adopted(
    container: tuple[RuncDriver, InstanceSpec], tmp_path: Path
) -> None:
    driver, spec = container
    cid = spec.id
    info = driver.spawn(spec)
    assert info.state is PowerState.RUNNING and info.pid
    log = spec.instance_dir / "console.log"
    wait_for(lambda: READY_LINE in log.read_text(errors="replace"), "the ready line")
    assert "nubes-tiny: hostname c1" in log.read_text()
    assert "nubes-tiny: address 10.99.0.2/24" in log.read_text()
    assert "nubes-tiny: ssh keys 1" in log.read_text()
    mac = run_in(driver, cid, "cat", "/sys/class/net/eth0/address").stdout.strip()
    assert mac == "02:00:00:aa:bb:01"
    pinged = run_in(driver, cid, "ping", "-c", "1", "-W", "10", "10.99.0.1")
    assert pinged.returncode == 0, pinged
    got = run_in(driver, cid, "hostname")
    assert got.stdout.strip() == "c1", got

    # root inside, an unprivileged uid outside
    assert run_in(driver, cid, "id", "-u").stdout.strip() == "0"
    status = Path(f"/proc/{info.pid}/status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert {int(u) for u in uids} == {UID_BASE}, uids

    # no host process in sight: its own pid namespace holds its init and the exec'd ps
    pids = run_in(driver, cid, "ls", "/proc").stdout.split()
    numeric = [p for p in pids if p.isdigit()]
    assert "1" in numeric and len(numeric) < 10, numeric
    assert str(os.getpid()) not in numeric or len(numeric) < 10

    # no host file to write: / is its rootfs, /proc/sys read-only, no devices to open
    canary = tmp_path / "host-canary"
    canary.write_text("host\n")
    wrote = run_in(driver, cid, "sh", "-c", f"echo pwned > {canary}; cat {canary}")
    assert canary.read_text() == "host\n", wrote
    inside = spec.instance_dir / "rootfs" / str(canary).lstrip("/")
    assert inside.exists() or wrote.returncode != 0
    sysrq = run_in(driver, cid, "sh", "-c", "echo h > /proc/sysrq-trigger")
    assert sysrq.returncode != 0
    hostname = run_in(driver, cid, "sh", "-c", "echo x > /proc/sys/kernel/hostname")
    assert hostname.returncode != 0
    mknod = run_in(driver, cid, "mknod", "/tmp/sda", "b", "8", "0")
    assert mknod.returncode != 0

    # nothing loaded into the host's kernel, no kernel-wide syscalls, no new user namespace
    module = tmp_path / "x.ko"
    module.write_bytes(b"\x7fELF not a module")
    shutil.copyfile(module, spec.instance_dir / "rootfs" / "tmp.ko")
    insmod = run_in(driver, cid, "insmod", "/tmp.ko")
    assert insmod.returncode != 0
    assert "not permitted" in (insmod.stderr + insmod.stdout).lower(), insmod
    nested = run_in(driver, cid, "unshare", "-U", "true")
    assert nested.returncode != 0
    mount = run_in(driver, cid, "mount", "-t", "tmpfs", "x", "/mnt")
    assert mount.returncode != 0

    # an interactive shell on a pty of its own, driven through pipes (the console channel's)
    shell = subprocess.run(
        driver.exec_argv(cid, ["/bin/sh"], tty=True),
        input="echo tty-$((6*7)); tty; exit\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "tty-42" in shell.stdout and "/dev/pts/" in shell.stdout, shell

    # a new driver on the same runtime directory (a restarted agent) adopts it
    again = RuncDriver(spec.instance_dir.parent / "runtime")
    assert again.info(cid).state is PowerState.RUNNING
    assert [i.id for i in again.list_instances()] == [cid]

    # its init exits: SHUTOFF, with the status in the reason
    run_in(driver, cid, "kill", "-KILL", "1")  # PID 1 ignores KILL from inside its namespace
    again.power_off(cid, timeout=30)
    wait_for(lambda: driver.info(cid).state is PowerState.SHUTOFF, "shutoff")
    wait_for(lambda: "status" in driver.info(cid).reason, "the exit status")
    assert "exited with status 0" in driver.info(cid).reason, driver.info(cid).reason

    # and it starts again from its rootfs, with its veth made again (it died with its netns)
    assert spec.container is not None
    peer = spec.container.nics[0].peer
    ip("link", "add", "hostend", "type", "veth", "peer", "name", peer)
    assert driver.power_on(spec).state is PowerState.RUNNING
    driver.destroy(cid)
    assert driver.list_instances() == []
