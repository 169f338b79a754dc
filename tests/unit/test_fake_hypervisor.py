from __future__ import annotations

import threading
from pathlib import Path

import pytest

from nubes.errors import DriverError
from nubes.hypervisor.base import InstanceSpec, PowerState
from nubes.hypervisor.fake import FakeHypervisorDriver


def spec(instance_id: str = "i-1") -> InstanceSpec:
    return InstanceSpec(
        id=instance_id,
        vcpus=1,
        ram_mb=256,
        disk=Path("/nonexistent/disk.qcow2"),
        seed=None,
        instance_dir=Path("/nonexistent"),
    )


def test_lifecycle_and_events() -> None:
    d = FakeHypervisorDriver()
    assert d.info("i-1").state is PowerState.NOSTATE
    info = d.spawn(spec())
    assert info.state is PowerState.RUNNING and info.pid
    with pytest.raises(DriverError):
        d.spawn(spec())
    assert d.power_on(spec()).pid == info.pid  # already running: unchanged
    d.reboot("i-1", hard=True)
    assert d.info("i-1").pid == info.pid and d.boots("i-1") == 2
    d.power_off("i-1", timeout=0)
    assert d.info("i-1") == d.list_instances()[0]
    assert d.info("i-1").state is PowerState.SHUTOFF and d.info("i-1").reason == "powered off"
    d.power_off("i-1")
    with pytest.raises(DriverError):
        d.reboot("i-1")
    assert d.power_on(spec()).state is PowerState.RUNNING
    d.destroy("i-1")
    d.destroy("i-1")
    assert d.list_instances() == []
    states = [e.state for e in d.events()]
    assert states == [
        PowerState.RUNNING, PowerState.SHUTOFF, PowerState.RUNNING, PowerState.NOSTATE
    ]  # fmt: skip
    assert list(d.events()) == []


def test_crash_reads_like_qemu_exit() -> None:
    d = FakeHypervisorDriver()
    d.spawn(spec())
    d.crash("i-1")
    info = d.info("i-1")
    assert (info.state, info.pid, info.reason) == (PowerState.SHUTOFF, None, "QEMU process exited")
    d.spawn(spec())  # a stopped guest can be spawned again
    assert d.info("i-1").state is PowerState.RUNNING


def test_fault_injection_leaves_nothing() -> None:
    d = FakeHypervisorDriver()
    d.fail_spawn("i-1", "disk missing")
    with pytest.raises(DriverError, match="disk missing"):
        d.spawn(spec())
    assert d.info("i-1").state is PowerState.NOSTATE
    d.spawn(spec("i-2"))
    d.clear_failures()
    d.spawn(spec())
    assert [i.id for i in d.list_instances()] == ["i-1", "i-2"]
    assert ("spawn", "i-1") in d.calls
    d.fail_spawn("*")
    with pytest.raises(DriverError):
        d.power_on(spec("i-3"))


def test_invalid_spec_rejected_like_qemu() -> None:
    with pytest.raises(DriverError):
        FakeHypervisorDriver().spawn(spec("bad id"))


def test_thread_safe_spawns() -> None:
    d = FakeHypervisorDriver()
    threads = [threading.Thread(target=d.spawn, args=(spec(f"i-{n}"),)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pids = {i.pid for i in d.list_instances()}
    assert len(pids) == 20
