"""QemuDriver against real QEMU (software emulation): a Debian cloud kernel + its initramfs,
booted directly, console on ttyS0. The initramfs finds no root disk and waits in a shell,
which is all these tests need: a live guest that prints to the console and ignores ACPI."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nubes.errors import DriverError
from nubes.hypervisor.base import BootSpec, InstanceSpec, PowerState
from nubes.hypervisor.qemu.accel import Accel
from nubes.hypervisor.qemu.cmdline import RuntimePaths
from nubes.hypervisor.qemu.driver import QemuDriver
from nubes.hypervisor.qemu.monitor import Monitor
from nubes.imagebuild.tiny import find_inputs

# the newest installed cloud kernel, as the tiny image uses (Debian updates its version)
KERNEL = find_inputs().kernel
INITRD = KERNEL.with_name(KERNEL.name.replace("vmlinuz-", "initrd.img-", 1))
TCG = Accel("tcg", "integration tests use software emulation")

pytestmark = pytest.mark.integration


def guest_pids(instance_id: str) -> list[int]:
    """Every live (non-zombie) process whose argv names this guest: the leak detector."""
    needle = f"guest={instance_id},debug-threads=on".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def console_count(spec: InstanceSpec, text: str) -> int:
    try:
        return (spec.instance_dir / "console.log").read_text(errors="replace").count(text)
    except FileNotFoundError:
        return 0


@pytest.fixture
def driver(tmp_path: Path) -> QemuDriver:
    return QemuDriver(tmp_path / "run", accel=TCG, soft_reboot_timeout=1.0)


@pytest.fixture
def make_spec(tmp_path: Path) -> Iterator[Callable[..., InstanceSpec]]:
    """Builds specs (each with its own qcow2 disk) and kills their QEMU whatever happens."""
    made: list[str] = []

    def make(**kw: object) -> InstanceSpec:
        instance_id = f"it-{uuid.uuid4().hex[:10]}"
        made.append(instance_id)
        instance_dir = tmp_path / instance_id
        instance_dir.mkdir(mode=0o755)
        disk = instance_dir / "disk.qcow2"
        subprocess.run(  # noqa: S603
            ["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True
        )
        base: dict[str, object] = dict(
            id=instance_id, vcpus=1, ram_mb=256, disk=disk, seed=None,
            instance_dir=instance_dir, vnc_password="vncpass1",
            boot=BootSpec(KERNEL, INITRD, "console=ttyS0 panic=-1"),
        )  # fmt: skip
        base.update(kw)
        return InstanceSpec(**base)  # type: ignore[arg-type]

    yield make
    for instance_id in made:
        for pid in guest_pids(instance_id):
            os.kill(pid, signal.SIGKILL)


def test_lifecycle_adopt_reboot_power_off_destroy(
    driver: QemuDriver, make_spec: Callable[..., InstanceSpec]
) -> None:
    spec = make_spec()
    info = driver.spawn(spec)
    assert info.state is PowerState.RUNNING and info.pid
    assert guest_pids(spec.id) == [info.pid]
    assert driver.info(spec.id) == info
    paths = RuntimePaths(spec.instance_dir)
    for sock in (paths.qmp_sock, paths.serial_sock, paths.vnc_sock):
        assert sock.stat().st_mode & 0o777 == 0o600, sock
    wait_for(lambda: console_count(spec, "Linux version") == 1, 60, "kernel banner")

    # A restarted agent: a new driver object finds the guest and leaves it alone.
    adopted = QemuDriver(driver.runtime_root, accel=TCG)
    assert adopted.list_instances() == [info]
    with pytest.raises(DriverError, match="already running"):
        adopted.spawn(spec)

    adopted.reboot(spec.id, hard=True)
    assert adopted.info(spec.id).pid == info.pid
    wait_for(lambda: console_count(spec, "Linux version") == 2, 60, "banner after reset")

    # Soft reboot: the initramfs ignores ACPI, so after soft_reboot_timeout a reset follows.
    driver.reboot(spec.id)
    assert driver.info(spec.id).pid == info.pid
    wait_for(lambda: console_count(spec, "Linux version") == 3, 60, "banner after soft reboot")

    started = time.monotonic()
    driver.power_off(spec.id, timeout=2.0)
    assert time.monotonic() - started < 2.0 + 10.0
    assert guest_pids(spec.id) == []
    off = driver.info(spec.id)
    assert (off.state, off.pid, off.reason) == (PowerState.SHUTOFF, None, "powered off")
    driver.power_off(spec.id)  # idempotent

    again = driver.power_on(spec)
    assert again.state is PowerState.RUNNING and again.pid != info.pid
    assert driver.power_on(spec) == again  # already running

    driver.destroy(spec.id)
    driver.destroy(spec.id)
    assert guest_pids(spec.id) == []
    assert sorted(p.name for p in spec.instance_dir.iterdir()) == [
        "console.log", "disk.qcow2", "qemu.log",
    ]  # fmt: skip
    assert driver.list_instances() == []
    assert driver.info(spec.id).state is PowerState.NOSTATE


def test_soft_reboot_starts_a_fresh_qemu_once_the_guest_is_off(
    tmp_path: Path, make_spec: Callable[..., InstanceSpec]
) -> None:
    driver = QemuDriver(tmp_path / "run", accel=TCG, soft_reboot_timeout=30.0)
    spec = make_spec()
    first = driver.spawn(spec).pid
    # Stand in for a guest that honours ACPI: end QEMU while reboot() waits for it.
    timer = threading.Timer(1.0, Monitor(RuntimePaths(spec.instance_dir).qmp_sock).quit)
    timer.start()
    try:
        driver.reboot(spec.id)
    finally:
        timer.cancel()
    after = driver.info(spec.id)
    assert after.state is PowerState.RUNNING and after.pid not in (None, first)
    assert guest_pids(spec.id) == [after.pid]
    driver.destroy(spec.id)


def test_guest_exit_reads_shutoff_with_reason(
    driver: QemuDriver, make_spec: Callable[..., InstanceSpec]
) -> None:
    spec = make_spec()
    pid = driver.spawn(spec).pid
    assert pid is not None
    os.kill(pid, signal.SIGTERM)  # QEMU dying behind the driver's back
    wait_for(lambda: not guest_pids(spec.id), 10, "QEMU to exit")
    info = driver.info(spec.id)
    assert info.state is PowerState.SHUTOFF
    assert info.reason.startswith("QEMU process exited")
    assert "terminating on signal 15" in info.reason
    driver.destroy(spec.id)
    assert driver.list_instances() == []


def test_spawn_with_bad_disk_leaves_nothing(
    driver: QemuDriver, make_spec: Callable[..., InstanceSpec], tmp_path: Path
) -> None:
    spec = make_spec(disk=tmp_path / "missing.qcow2")
    with pytest.raises(DriverError, match="missing.qcow2") as excinfo:
        driver.spawn(spec)
    assert "QEMU failed to start" in str(excinfo.value)
    assert guest_pids(spec.id) == []
    assert not (spec.instance_dir / "qemu.pid").exists()
    assert not RuntimePaths(spec.instance_dir).qmp_sock.exists()
    assert driver.list_instances() == []


def test_run_as_unprivileged_user_with_seed(
    driver: QemuDriver, make_spec: Callable[..., InstanceSpec], tmp_path: Path
) -> None:
    seed = tmp_path / "seed.img"
    seed.write_bytes(b"\0" * 1024 * 1024)
    spec = make_spec(run_as="nobody", seed=seed)
    pid = driver.spawn(spec).pid
    status = Path(f"/proc/{pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == ["65534"] * 4
    assert driver.info(spec.id).state is PowerState.RUNNING
    driver.destroy(spec.id)
    assert guest_pids(spec.id) == []


def test_eject_takes_the_cd_out_of_a_running_guest_and_its_restarts(
    driver: QemuDriver, make_spec: Callable[..., InstanceSpec], tmp_path: Path
) -> None:
    iso = tmp_path / "cd.iso"
    subprocess.run(  # noqa: S603
        ["xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), str(Path(__file__).parent)],
        check=True,
        capture_output=True,
    )
    spec = make_spec(cdrom=iso)
    driver.spawn(spec)
    monitor = Monitor(RuntimePaths(spec.instance_dir).qmp_sock)

    def cd_inserted() -> bool:
        blocks = monitor._call("query-block")
        assert isinstance(blocks, list)
        cd = next(b for b in blocks if b.get("qdev", "").endswith("cdrom0"))
        return "inserted" in cd

    assert cd_inserted()
    driver.eject_cdrom(spec.id)
    assert not cd_inserted()  # the same QEMU, the medium gone: its next boot finds the disk
    driver.eject_cdrom(spec.id)  # idempotent
    record = driver.registry.load(spec.id)
    assert record is not None and record.spec.cdrom is None  # soft reboots start without it
    driver.destroy(spec.id)
    assert guest_pids(spec.id) == []
