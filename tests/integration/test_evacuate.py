"""Issue 13 item 6 for real: a 2-host lab, a tiny guest on host 1. Host 1's agent is killed
(-9) and its QEMU keeps running, as in a partition; once host 1 is down it is evacuated: the
server comes up on host 2 (same id and address, ready), and when host 1's agent comes back it
hears it is fenced and destroys its copy: never two copies of one server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import LabCloud, start_lab, stop_lab
from tests.integration.hostcheck import (
    agent_pid,
    instance_dirs,
    kill_agent,
    qemu_pids,
    taps,
    wait_for,
)

pytestmark = pytest.mark.integration

TIMEOUT = 300.0  # generous: other tests emulate guests on the same 2 cores


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LabCloud]:
    cloud = start_lab(tmp_path, 2)
    try:
        yield cloud
    finally:
        stop_lab(cloud)


def _state(lab: LabCloud, host: str) -> str:
    return next(h.state for h in lab.client.hosts() if h.name == host)


def test_evacuating_a_killed_host_runs_its_server_elsewhere_once(lab: LabCloud) -> None:
    c = lab.client
    h1 = lab.host_ns(1)
    lab.nubes("image", "build", "tiny")
    lab.nubes("network", "create", "net", "--cidr", "10.42.0.0/24")
    lab.nubes(
        "server", "create", "web1", "--image", "tiny", "--flavor", "m1.tiny",
        "--network", "net", "--host", h1, "--wait", timeout=TIMEOUT,
    )  # fmt: skip
    before = c.server("web1")
    assert before.host == h1 and before.ready_at is not None
    old_pid = qemu_pids(lab, 1)[before.id]

    out = lab.nubes("host", "evacuate", h1, "--yes", check=False)
    assert "is up" in out, out  # refused while host 1 is up

    kill_agent(lab, 1)  # a partition: the agent is gone, its guest runs on
    wait_for(lambda: _state(lab, h1) == "down", 60, f"{h1} to be down")
    assert qemu_pids(lab, 1).get(before.id) == old_pid
    out = lab.nubes("host", "evacuate", h1, check=False)
    assert "lost" in out and "--yes" in out and c.server("web1").host == h1  # nothing done

    out = lab.nubes("host", "evacuate", h1, "--yes")
    assert "fenced" in out and f"{before.id}: rebuilding on {lab.host_ns(2)}" in out, out

    def ready() -> object:
        server = c.server("web1")
        return server if server.status == "ACTIVE" and server.ready_at else None

    after = wait_for(ready, TIMEOUT, "web1 to be ready on host 2")
    assert after.host == lab.host_ns(2) and after.id == before.id
    assert after.addresses == before.addresses  # the same port, on another host
    assert before.id in qemu_pids(lab, 2)
    assert qemu_pids(lab, 1).get(before.id) == old_pid  # the stale copy, until host 1 is back

    lab.nubes("lab", "restart-agent", h1)  # host 1 comes back: fenced, it destroys its copy
    wait_for(lambda: before.id not in qemu_pids(lab, 1), 60, "the stale copy to go")
    wait_for(lambda: agent_pid(lab, 1) is None, 60, "the fenced agent to stop")
    assert instance_dirs(lab, 1) == [] and taps(lab, 1) == []
    assert _state(lab, h1) == "down"  # its heartbeats are refused
    assert list(qemu_pids(lab, 2)) == [before.id]  # once, on host 2
    assert c.server("web1").status == "ACTIVE"
    lab.nubes("server", "delete", "web1", "--wait", timeout=TIMEOUT)
