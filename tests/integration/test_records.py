"""Records that never cost a disk, on a real 1-host lab: one tiny guest whose agent record is
damaged four ways (the agent restarted after each), then once more with its QEMU gone too. The
disk keeps its inode and birth time throughout; the guest keeps its QEMU, or is restarted from
that disk with a fault saying so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nubes.schemas import resources as s
from tests.integration.conftest import LabCloud, start_lab, stop_lab
from tests.integration.hostcheck import (
    agent_pid,
    gc_clean,
    host_dir,
    kill_agent,
    qemu_pids,
    wait_for,
    wait_gone,
    wait_status,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCloud]:
    cloud = start_lab(tmp_path_factory.mktemp("records"), 1)
    try:
        cloud.nubes("image", "build", "tiny")
        cloud.client.create_network(s.NetworkCreate(name="net1", cidr="10.41.0.0/24"))
        yield cloud
    finally:
        stop_lab(cloud)


def _edit(change: Callable[[dict[str, object]], None]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))

    return damage


CASES: list[tuple[str, Callable[[Path], None]]] = [
    ("unknown field disk_bus", _edit(lambda d: d.update(disk_bus="scsi"))),
    ("written by a newer agent (version 2 > 1)", _edit(lambda d: d.update(version=2))),
    ("empty", lambda p: p.write_text("")),
    ("truncated or invalid JSON", lambda p: p.write_text(p.read_text()[:25])),
]


def identity(disk: Path) -> tuple[int, str]:
    """Inode and birth time (statx; Python 3.11 has no st_birthtime on Linux)."""
    born = subprocess.run(["stat", "-c", "%w", str(disk)], capture_output=True, text=True)
    return os.stat(disk).st_ino, born.stdout.strip()


def damage_and_restart(cloud: LabCloud, record: Path, damage: Callable[[Path], None]) -> None:
    if agent_pid(cloud) is not None:
        kill_agent(cloud)  # first: a running agent could rewrite the record under the test
    damage(record)
    cloud.nubes("lab", "restart-agent", cloud.host_ns())


def wait_fault(cloud: LabCloud, server_id: str, fault: str) -> s.Server:
    def seen() -> s.Server | None:
        now = cloud.client.server(server_id)
        return now if now.fault.startswith(fault) and now.status == "ACTIVE" else None

    return wait_for(seen, 60, f"the fault {fault!r}")


def test_damaged_records_keep_disk_and_guest(lab: LabCloud) -> None:
    cloud = lab
    body = s.ServerCreate(name="keeper", image="tiny", flavor="m1.tiny", network="net1")
    server = cloud.client.create_server(body)
    wait_status(cloud, server.id, "ACTIVE")
    inst = host_dir(cloud) / "instances" / server.id
    disk, record = inst / "disk.qcow2", inst / "agent.json"
    born = identity(disk)
    assert born[1] not in ("", "-"), "no birth time on this filesystem"
    pid = qemu_pids(cloud)[server.id]
    for why, damage in CASES:
        damage_and_restart(cloud, record, damage)
        wait_fault(cloud, server.id, f"agent record agent.json {why}: kept the disk, adopted")
        assert identity(disk) == born, why
        assert qemu_pids(cloud) == {server.id: pid}, f"{why}: the guest was restarted"
        assert json.loads(record.read_text())["version"] == 1  # repaired
    # with its QEMU gone as well, the guest starts again from the same disk
    kill_agent(cloud)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: server.id not in qemu_pids(cloud), 10, "QEMU to die")
    damage_and_restart(cloud, record, CASES[3][1])
    fault = "agent record agent.json truncated or invalid JSON: kept the disk, restarted the guest"
    wait_fault(cloud, server.id, fault)
    assert identity(disk) == born
    assert qemu_pids(cloud)[server.id] != pid
    as_the_host_has_it = "/" + str(disk.relative_to(cloud.host_root()))
    argv = Path(f"/proc/{qemu_pids(cloud)[server.id]}/cmdline").read_text()
    assert f"file={as_the_host_has_it}" in argv
    cloud.client.delete_server(server.id)
    wait_gone(cloud, server.id)
    gc_clean(cloud)
