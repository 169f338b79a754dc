"""Soak: create/delete cycles across a 3-host lab while agents are killed (-9) at random moments
and restarted. Afterwards the database, the hosts and `nubes gc --dry-run` agree that nothing is
left: no server, port or claim, no QEMU, tap, instance directory or registry record.

Creation only needs QEMU to start (ACTIVE), not the guest to boot, so a cycle takes seconds.
NUBES_SOAK_CYCLES sets the number of cycles (default and CI: the issue's 200); NUBES_SOAK_SEED
replays a run's random choices.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from nubes.client import ApiError
from nubes.schemas import resources as s
from tests.integration.conftest import LabCloud, start_lab, stop_lab
from tests.integration.hostcheck import (
    agent_pid,
    gc_clean,
    host_dir,
    hosts_up,
    instance_dirs,
    kill_agent,
    qemu_pids,
    taps,
    wait_for,
)

pytestmark = pytest.mark.integration

HOSTS = 3
CYCLES = int(os.environ.get("NUBES_SOAK_CYCLES", "200"))
SEED = int(os.environ.get("NUBES_SOAK_SEED", str(int(time.time()))))
IN_FLIGHT = 6  # servers alive at once
KILL_EVERY = 4.0  # seconds between agent kills, on average
CYCLE_TIMEOUT = 240.0


@dataclass
class Soak:
    cloud: LabCloud
    rng: random.Random
    started: dict[str, float] = field(default_factory=dict)  # server id -> created at
    deleting: set[str] = field(default_factory=set)
    dead: dict[int, float] = field(default_factory=dict)  # host index -> when to restart
    created = 0
    done = 0
    kills = 0
    errors: list[str] = field(default_factory=list)

    def create(self) -> None:
        body = s.ServerCreate(
            name=f"soak-{self.created}", image="tiny", flavor="m1.tiny", network="soak"
        )
        try:
            self.started[self.cloud.client.create_server(body).id] = time.monotonic()
            self.created += 1
        except ApiError as exc:  # every host down at this moment: try again later
            assert exc.status == 409 and "no valid host" in exc.detail.lower(), exc.detail

    def step(self) -> None:
        servers = {x.id: x for x in self.cloud.client.servers()}
        for sid in list(self.started):
            server = servers.get(sid)
            if server is None:  # deleted and gone
                del self.started[sid]
                self.deleting.discard(sid)
                self.done += 1
                continue
            assert time.monotonic() - self.started[sid] < CYCLE_TIMEOUT, f"stuck: {server}"
            if server.status == "ERROR":
                self.errors.append(f"{server.name}: {server.fault}")
            if server.status in ("ACTIVE", "ERROR") and sid not in self.deleting:
                self.cloud.client.delete_server(sid)
                self.deleting.add(sid)

    def chaos(self, dt: float) -> None:
        now = time.monotonic()
        for index, when in list(self.dead.items()):
            if now >= when:
                self.cloud.nubes("lab", "restart-agent", self.cloud.host_ns(index))
                del self.dead[index]
        if self.rng.random() < dt / KILL_EVERY:
            index = self.rng.randint(1, HOSTS)
            if index not in self.dead and agent_pid(self.cloud, index) is not None:
                kill_agent(self.cloud, index)
                self.kills += 1
                # mostly back before the host counts as down (6 s in the lab), sometimes not
                self.dead[index] = now + self.rng.choice([0.2, 1.0, 3.0, 8.0])


@pytest.fixture
def lab3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCloud]:
    cloud = start_lab(tmp_path_factory.mktemp("soak"), HOSTS)
    try:
        yield cloud
    finally:
        stop_lab(cloud)


def test_soak_create_delete_with_agent_kills(lab3: LabCloud) -> None:
    cloud = lab3
    cloud.nubes("image", "build", "tiny")
    cloud.client.create_network(s.NetworkCreate(name="soak", cidr="10.60.0.0/24"))
    soak = Soak(cloud, random.Random(SEED))
    print(f"soak: {CYCLES} cycles, seed {SEED}")
    began = last = time.monotonic()
    while soak.done < CYCLES:
        while len(soak.started) < IN_FLIGHT and soak.created < CYCLES:
            before = soak.created
            soak.create()
            if soak.created == before:
                break
        time.sleep(0.3)
        soak.step()
        now = time.monotonic()
        soak.chaos(now - last)
        last = now
    for index in list(soak.dead):
        cloud.nubes("lab", "restart-agent", cloud.host_ns(index))
    elapsed = time.monotonic() - began
    print(f"soak: {soak.done} cycles in {elapsed:.0f} s, {soak.kills} agent kills")
    assert not soak.errors, soak.errors

    # the database: no server, and hosts' claims match (no ports or claims left behind)
    hosts_up(cloud, timeout=60)
    assert cloud.client.servers() == []
    for host in cloud.client.hosts():
        used = (host.used_vcpus, host.used_ram_mb, host.used_disk_gb, host.instances)
        assert used == (0, 0, 0, 0), host
    # the hosts: leftovers of deletes done while an agent was dead are gone after its return
    for index in range(1, HOSTS + 1):
        wait_for(lambda i=index: not qemu_pids(cloud, i), 60, f"no QEMU on host {index}")
        wait_for(lambda i=index: not instance_dirs(cloud, i), 60, f"no dirs on host {index}")
        wait_for(lambda i=index: not taps(cloud, i), 60, f"no taps on host {index}")
        assert not list((host_dir(cloud, index) / "runtime").glob("*.json"))
    # and `nubes gc --dry-run` finds nothing either (after a fresh report from every host)
    time.sleep(3 * 2.0)
    gc_clean(cloud)
    assert "nothing is left over" in cloud.nubes("gc", "--dry-run")
