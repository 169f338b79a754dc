"""QemuMigration reads what QEMU says, and nothing it cannot trust."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nubes.hypervisor.qemu.driver import QemuDriver
from nubes.hypervisor.qemu.migration import QemuMigration, nbd_uri


class FakeMonitor:
    def __init__(self, replies: dict[str, Any]) -> None:
        self.replies, self.calls = replies, []  # type: ignore[var-annotated]

    def execute(self, cmd: str, args: dict[str, object] | None = None) -> object:
        self.calls.append((cmd, args))
        return self.replies.get(cmd, {})


def migration(tmp_path: Path, replies: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    mig = QemuMigration(QemuDriver(tmp_path))
    mon = FakeMonitor(replies)
    monkeypatch.setattr(mig, "_monitor", lambda instance_id: mon)
    return mig, mon


def test_a_guest_that_came_by_migration_has_not_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # what a former target says before it migrates anywhere: its incoming one, completed
    mig, _ = migration(tmp_path, {"query-migrate": {"status": "completed"}}, monkeypatch)
    assert mig.outcome("i").state == "none"


def test_an_outgoing_migration_completes_with_its_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = {"status": "completed", "total-time": 812, "downtime": 41, "ram": {}}
    mig, _ = migration(tmp_path, {"query-migrate": done}, monkeypatch)
    out = mig.outcome("i")
    assert (out.state, out.total_ms, out.downtime_ms) == ("completed", 812, 41)


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_failed_and_cancelled_are_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: str
) -> None:
    mig, _ = migration(tmp_path, {"query-migrate": {"status": status}}, monkeypatch)
    assert mig.outcome("i").state == "failed"


def test_resuming_at_the_switch_over_point_ends_the_mirror_then_continues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    states = iter(["pre-switchover", "pre-switchover", "pre-switchover"])

    class Resume(FakeMonitor):
        def execute(self, cmd: str, args: dict[str, object] | None = None) -> object:
            self.calls.append((cmd, args))
            if cmd == "query-migrate":
                status = next(states, "completed")
                return (
                    {"status": status, "total-time": 5}
                    if status == "completed"
                    else {"status": status}
                )
            return [] if cmd == "query-block-jobs" else {}

    mig = QemuMigration(QemuDriver(tmp_path))
    mon = Resume({})
    monkeypatch.setattr(mig, "_monitor", lambda instance_id: mon)
    steps: list[str] = []
    out = mig.migrate_out("i", "10.0.0.2", 4000, 4001, steps.append)
    assert out.state == "completed"
    cmds = [c for c, _ in mon.calls if c not in ("query-migrate", "query-block-jobs")]
    # no second mirror or migrate: QEMU was already at the switch-over point
    assert cmds == ["block-job-cancel", "migrate-continue"]
    assert steps == ["switch-over-point"]


def test_nbd_target_names_the_export() -> None:
    assert nbd_uri("10.0.0.2", 4001) == "nbd:10.0.0.2:4001:exportname=disk0"


def test_volumes_are_mirrored_beside_the_disk_and_switched_over_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Qemu(FakeMonitor):
        """Mirrors that become ready on their own time; the switch-over point after migrate."""

        def __init__(self) -> None:
            super().__init__({})
            self.jobs: dict[str, int] = {}  # job -> polls left until ready
            self.status = "none"
            self.ready_at_migrate: bool | None = None

        def execute(self, cmd: str, args: dict[str, object] | None = None) -> object:
            self.calls.append((cmd, args))
            args = args or {}
            if cmd == "drive-mirror":  # the volume's copy is slower than the disk's
                self.jobs[str(args["job-id"])] = 0 if args["device"] == "disk0" else 3
            elif cmd == "query-block-jobs":
                for job in self.jobs:
                    self.jobs[job] = max(0, self.jobs[job] - 1)
                return [{"device": j, "ready": n == 0} for j, n in self.jobs.items()]
            elif cmd == "block-job-cancel":
                self.jobs.pop(str(args["device"]), None)
            elif cmd == "migrate":
                self.ready_at_migrate = all(n == 0 for n in self.jobs.values())
                self.status = "pre-switchover"
            elif cmd == "migrate-continue":
                self.status = "completed"
            elif cmd == "query-migrate":
                if self.status == "completed":
                    return {"status": "completed", "total-time": 9}
                return {"status": self.status}
            return {}

    mig = QemuMigration(QemuDriver(tmp_path))
    mon = Qemu()
    monkeypatch.setattr(mig, "_monitor", lambda instance_id: mon)
    out = mig.migrate_out("i", "10.0.0.2", 4000, 4001, volumes=("vol-abc",))
    assert out.state == "completed"
    mirrors = {str(a["device"]): a for c, a in mon.calls if c == "drive-mirror" and a}
    assert set(mirrors) == {"disk0", "nvol-abc"}
    assert mirrors["nvol-abc"]["target"] == nbd_uri("10.0.0.2", 4001, "vol-abc")
    assert mirrors["nvol-abc"]["sync"] == "full"  # a volume has nothing beneath
    assert mon.ready_at_migrate is True  # memory moved only once every copy was in step
    cancelled = {a["device"] for c, a in mon.calls if c == "block-job-cancel" and a}
    assert cancelled == {"migrate-disk0", "migrate-vol-abc"}
    assert mon.jobs == {}
