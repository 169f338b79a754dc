"""Pidfile//proc helpers, the registry, and QemuDriver paths that need no real QEMU."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nubes.errors import DriverError
from nubes.hypervisor.base import BootSpec, InstanceSpec, NicSpec, PowerState
from nubes.hypervisor.qemu import process
from nubes.hypervisor.qemu.accel import Accel
from nubes.hypervisor.qemu.driver import QemuDriver
from nubes.hypervisor.qemu.registry import Record, Registry


def fake_proc(root: Path, pid: int, state: str, argv: list[str]) -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "stat").write_text(f"{pid} (qemu-system-x86) {state} 1 2 3 4\n")
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")


def test_is_guest_process_checks_name_and_state(tmp_path: Path) -> None:
    qemu = ["qemu-system-x86_64", "-name", "guest=i-1,debug-threads=on"]
    fake_proc(tmp_path, 10, "S", qemu)
    fake_proc(tmp_path, 11, "Z", qemu)
    fake_proc(tmp_path, 12, "R", ["qemu-system-x86_64", "-name", "guest=i-10,debug-threads=on"])
    assert process.is_guest_process(10, "i-1", tmp_path)
    assert not process.is_guest_process(11, "i-1", tmp_path)  # zombie
    assert not process.is_guest_process(12, "i-1", tmp_path)  # another guest (prefix)
    assert not process.is_guest_process(13, "i-1", tmp_path)  # gone


def test_guest_of_reads_the_instance_from_the_command_line(tmp_path: Path) -> None:
    fake_proc(tmp_path, 20, "S", ["qemu-system-x86_64", "-name", "guest=i-7,debug-threads=on"])
    fake_proc(tmp_path, 21, "S", ["sleep", "60"])
    assert process.guest_of(20, tmp_path) == "i-7"
    assert process.guest_of(21, tmp_path) is None
    assert process.guest_of(22, tmp_path) is None  # gone


def test_real_process_signal_and_wait() -> None:
    child = subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", "import time; time.sleep(60)", "guest=t-1,debug-threads=on"]
    )
    try:
        # Popen returns when the child's exec has begun; its argv shows a moment later
        deadline = time.monotonic() + 5
        while not process.is_guest_process(child.pid, "t-1") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process.is_guest_process(child.pid, "t-1")
        assert not process.wait_gone(child.pid, "t-1", 0.1)
        process.signal_guest(child.pid, "other", signal.SIGKILL)  # wrong guest: ignored
        assert process.is_guest_process(child.pid, "t-1")
        process.signal_guest(child.pid, "t-1", signal.SIGKILL)
        assert process.wait_gone(child.pid, "t-1", 5.0)  # a zombie counts as gone
    finally:
        child.kill()
        child.wait()


def test_pidfile_and_tail(tmp_path: Path) -> None:
    pidfile = tmp_path / "qemu.pid"
    assert process.read_pidfile(pidfile) is None
    pidfile.write_text("1234\n")
    assert process.read_pidfile(pidfile) == 1234
    pidfile.write_text("garbage")
    assert process.read_pidfile(pidfile) is None
    log = tmp_path / "qemu.log"
    log.write_text("a\n\nb\nc\nd\n")
    assert process.tail(log) == "b | c | d"
    assert process.tail(tmp_path / "none") == ""


def spec(tmp_path: Path, instance_id: str = "i-1") -> InstanceSpec:
    return InstanceSpec(
        id=instance_id,
        vcpus=1,
        ram_mb=128,
        disk=tmp_path / "disk.qcow2",
        seed=tmp_path / "seed.iso",
        instance_dir=tmp_path / instance_id,
        nics=(NicSpec("tap1", "52:54:00:00:00:01", 1450),),
        boot=BootSpec(Path("/k"), None, "console=ttyS0"),
        vnc_password="pw",
        run_as="nobody",
    )


def test_registry_round_trip(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "run")
    record = Record(spec(tmp_path), ["qemu", "-x"], 42, True)
    reg.save(record)
    assert reg.load("i-1") == record
    assert reg.ids() == ["i-1"]
    assert (reg.path("i-1").stat().st_mode & 0o777) == 0o600
    reg.remove("i-1")
    reg.remove("i-1")
    assert reg.load("i-1") is None
    with pytest.raises(ValueError):
        reg.path("../x")


def test_registry_ignores_corrupt_record(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    (tmp_path / "i-2.json").write_text("{not json")
    assert reg.load("i-2") is None


TCG = Accel("tcg", "test")


def test_dead_guest_reads_shutoff_with_reason(tmp_path: Path) -> None:
    s = spec(tmp_path)
    driver = QemuDriver(tmp_path / "run", accel=TCG)
    driver.registry.save(Record(s, [], pid=999_999_99))
    s.instance_dir.mkdir()
    (s.instance_dir / "qemu.log").write_text("qemu: terminating on signal 15\n")
    info = driver.info("i-1")
    assert info.state is PowerState.SHUTOFF
    assert info.reason == "QEMU process exited: qemu: terminating on signal 15"
    assert [i.id for i in QemuDriver(tmp_path / "run", accel=TCG).list_instances()] == ["i-1"]
    assert driver.info("i-9").state is PowerState.NOSTATE
    driver.power_off("i-1")
    assert driver.info("i-1").reason == "powered off"
    with pytest.raises(DriverError):
        driver.reboot("i-1")
    driver.destroy("i-1")
    driver.destroy("i-1")
    assert driver.list_instances() == []


def test_failed_launch_raises_stderr_and_leaves_nothing(tmp_path: Path) -> None:
    fake_qemu = tmp_path / "fake-qemu"
    fake_qemu.write_text("#!/bin/sh\necho 'qemu: could not open disk' >&2\nexit 1\n")
    fake_qemu.chmod(0o755)
    driver = QemuDriver(tmp_path / "run", str(fake_qemu), accel=TCG)
    with pytest.raises(DriverError, match="could not open disk"):
        driver.spawn(spec(tmp_path))
    assert driver.list_instances() == []
    assert not (tmp_path / "i-1" / "qemu.pid").exists()


def test_missing_binary_and_invalid_spec(tmp_path: Path) -> None:
    driver = QemuDriver(tmp_path / "run", str(tmp_path / "no-such-qemu"), accel=TCG)
    with pytest.raises(DriverError, match="cannot run QEMU binary"):
        driver.spawn(spec(tmp_path))
    with pytest.raises(DriverError, match="invalid instance id"):
        driver.spawn(spec(tmp_path, "bad,id"))
    assert driver.list_instances() == []


def test_host_facts(tmp_path: Path) -> None:
    driver = QemuDriver(tmp_path, accel=TCG)
    assert driver.capabilities().accel == "tcg"
    res = driver.host_resources()
    assert res.vcpus >= 1 and res.ram_mb > 0 and res.disk_gb >= 0
