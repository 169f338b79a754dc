"""Boot the tiny image for real: plain QEMU (software emulation), a seed we built, and a tap in
a network namespace this test creates (no traffic leaves it)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nubes.imagebuild.tiny import READY_LINE, BuiltImage, build_tiny
from nubes.storage.disks import create_overlay
from nubes.storage.seed import SeedData, SeedNic, write_seed

pytestmark = pytest.mark.integration

MAC = "52:54:00:5e:00:0a"
BOOT_TIMEOUT = 180.0  # generous: other tests may be emulating guests on the same 2 cores


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    return build_tiny(tmp_path_factory.mktemp("tiny"))


@dataclass
class Netns:
    name: str

    def run(self, *argv: str, timeout: float = 60, check: bool = True) -> str:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        ).stdout


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A namespace with tap0 (10.98.0.1/24) for the guest's NIC; deleted afterwards."""
    ns = Netns("nbt-" + secrets.token_hex(3))
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    try:
        for argv in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"],
            ["ip", "addr", "add", "10.98.0.1/24", "dev", "tap0"],
            ["ip", "link", "set", "tap0", "up"],
        ):
            ns.run(*argv)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns.name], check=False)


@dataclass
class Guest:
    proc: subprocess.Popen[bytes]
    console: Path
    qmp: Path
    disk: Path
    boot_seconds: float = 0.0

    def log(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def wait_for(self, text: str, timeout: float = BOOT_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if text in log:
                return log
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"QEMU exited ({self.proc.returncode}) before {text!r}:\n{log}"
                )
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} within {timeout} s:\n{self.log()}")

    def powerdown(self) -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(self.qmp))
            reader = sock.makefile("r")
            reader.readline()  # greeting
            for command in ("qmp_capabilities", "system_powerdown"):
                sock.sendall(json.dumps({"execute": command}).encode() + b"\n")
                reply = json.loads(reader.readline())
                while "event" in reply:
                    reply = json.loads(reader.readline())
                assert "return" in reply, reply


def make_seed(tmp_path: Path, **kw: object) -> Path:
    data: dict[str, object] = {"instance_id": "i-" + secrets.token_hex(4), "hostname": "tiny-one"}
    data.update(kw)
    path = tmp_path / "seed.iso"
    write_seed(SeedData(**data), path)  # type: ignore[arg-type]
    return path


Boot = Callable[..., Guest]


@pytest.fixture
def boot(tiny: BuiltImage, tmp_path: Path) -> Iterator[Boot]:
    """boot(seed, netns or None, disk=None) -> Guest; every QEMU started is killed at the end."""
    guests: list[Guest] = []

    def start(seed: Path, ns: Netns | None, disk: Path | None = None) -> Guest:
        if disk is None:
            disk = tmp_path / f"disk{len(guests)}.qcow2"
            create_overlay(tiny.disk, tiny.disk_format, disk, 1)
        console, qmp = tmp_path / f"console{len(guests)}.log", tmp_path / f"qmp{len(guests)}.sock"
        argv = [
            "qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot",
            "-monitor", "none", "-serial", f"file:{console}",
            "-qmp", f"unix:{qmp},server=on,wait=off",
            "-kernel", str(tiny.kernel), "-initrd", str(tiny.initrd), "-append", tiny.cmdline,
            "-drive", f"file={disk},if=virtio,format=qcow2",
            "-drive", f"file={seed},if=virtio,format=raw,readonly=on",
        ]  # fmt: skip
        if ns is None:
            argv += ["-nic", "none"]
        else:
            argv += [
                "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
                "-device", f"virtio-net-pci,netdev=n0,mac={MAC}",
            ]  # fmt: skip
            argv = ["ip", "netns", "exec", ns.name, *argv]
        started = time.monotonic()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        guest = Guest(proc, console, qmp, disk)
        guests.append(guest)
        guest.wait_for(READY_LINE)
        guest.boot_seconds = time.monotonic() - started
        return guest

    try:
        yield start
    finally:
        for guest in guests:
            if guest.proc.poll() is None:
                guest.proc.kill()
            guest.proc.wait(timeout=30)


def test_static_network_hostname_user_script_ssh_and_powerdown(
    boot: Boot, netns: Netns, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    seed = make_seed(
        tmp_path,
        public_keys=(key.with_suffix(".pub").read_text().strip(),),
        user_data='#!/bin/sh\necho "user-script ran as $(id -u) on $(hostname)"\n',
        network=(SeedNic(MAC, "10.98.0.5/24", "10.98.0.1", ("10.98.0.1",), 1400),),
    )
    guest = boot(seed, netns)
    log = guest.log()
    print(f"tiny boot to ready line: {guest.boot_seconds:.2f} s")
    record_property("tiny_boot_seconds", round(guest.boot_seconds, 2))
    assert "nubes-tiny: hostname tiny-one" in log
    assert "nubes-tiny: address 10.98.0.5/24" in log
    assert "user-script ran as 0 on tiny-one" in log
    assert log.index("user-script ran") < log.index(READY_LINE)
    assert "data /dev/vda on /data" in log

    netns.run("ping", "-c", "1", "-W", "5", "10.98.0.5")
    if shutil.which("ssh"):
        out = netns.run(
            "ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=60",
            "root@10.98.0.5",
            "hostname; cat /sys/class/net/eth0/mtu; ls /data/.nubes/dropbear; ip route",
            timeout=120,
        )  # fmt: skip
        assert out.splitlines()[:2] == ["tiny-one", "1400"]
        assert "dropbear_ed25519_host_key" in out  # kept on the disk: same key after reboot
        assert "default via 10.98.0.1" in out

    guest.powerdown()  # an ACPI power button press; the guest must shut itself down
    assert guest.proc.wait(timeout=60) == 0


def test_dhcp_when_no_static_address_and_cloud_config_keys(
    boot: Boot, netns: Netns, tmp_path: Path
) -> None:
    conf = tmp_path / "udhcpd.conf"
    leases = tmp_path / "udhcpd.leases"
    leases.touch()
    conf.write_text(
        "start 10.98.0.50\nend 10.98.0.60\ninterface tap0\n"
        f"lease_file {leases}\npidfile {tmp_path / 'udhcpd.pid'}\n"
        "option subnet 255.255.255.0\noption router 10.98.0.1\noption lease 600\n"
    )
    dhcpd = subprocess.Popen(
        ["ip", "netns", "exec", netns.name, "busybox", "udhcpd", "-f", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        seed = make_seed(
            tmp_path,
            hostname="Tiny DHCP",  # a user's name, made into a valid hostname
            user_data="#cloud-config\nssh_authorized_keys: ['ssh-ed25519 AAAAuserkey u@h']\n",
            network=(SeedNic(MAC),),
        )
        guest = boot(seed, netns)
        log = guest.log()
        assert "nubes-tiny: hostname tiny-dhcp" in log
        assert "nubes-tiny: address 10.98.0.5" in log  # 10.98.0.50-60
        assert "nubes-tiny: ssh keys 1" in log
        netns.run("ping", "-c", "1", "-W", "5", log.split("address ")[1].split("/")[0])
    finally:
        dhcpd.kill()
        dhcpd.wait(timeout=30)


def test_boots_without_nic_and_runs_user_script_once(boot: Boot, tmp_path: Path) -> None:
    seed = make_seed(tmp_path, instance_id="i-once", user_data="#!/bin/sh\necho once-only\n")
    first = boot(seed, None)
    assert "once-only" in first.log()
    first.proc.kill()
    first.proc.wait(timeout=30)
    # same disk, same instance: the marker left on /data stops a second run
    second = boot(seed, None, first.disk)
    assert "user-data script already ran" in second.log()
    assert "once-only" not in second.log()
