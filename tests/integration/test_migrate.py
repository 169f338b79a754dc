"""Issue 13 item 1, for real: a tiny guest moves between two lab hosts that share no disk.

One 2-host lab for the module; the tests run in file order and move the same guest back and
forth (each leaves it ACTIVE on one host, once):
1. live, host1 → host2: no reboot (the counter its user-data started keeps counting, same
   boot id), a neighbour on host1 pings it after; the migration port only takes the source;
2. live, with the source's agent killed (kill -9, or a crash point: paused at the
   switch-over point with the guest on both hosts) mid-migration and started again;
3. the same with the target's agent (kill -9, or a crash before it reports it is ready);
4. a target that fails before the switch-over: the guest stays where it is, once;
5. cold: it stops, its disk is copied, it starts on the other host with its data (the
   user-data marker on its disk says the script already ran);
6. live with a volume attached and written: the volume is mirrored beside the disk, read back
   on the target; the source keeps no copy of it; then cold back, the same.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from nubes.client import ApiError
from nubes.schemas import resources as s
from nubes.schemas import volumes as sv
from tests.integration.conftest import LabCloud, start_lab, stop_lab
from tests.integration.hostcheck import (
    agent_pid,
    instance_dirs,
    kill_agent,
    qemu_pids,
    wait_for,
)
from tests.integration.test_volumes_lab import in_guest

pytestmark = pytest.mark.integration

CIDR = "10.31.0.0/24"
COUNTER = """#!/bin/sh
b=$(cat /proc/sys/kernel/random/boot_id)
(n=0; while :; do n=$((n + 1)); echo "nubes-count $b $n" >/dev/console; sleep 1; done) \
</dev/null >/dev/null 2>&1 &
"""
PINGER = """#!/bin/sh
(while :; do if ping -c 1 -W 1 TARGET >/dev/null 2>&1; then r=ok; else r=FAIL; fi
 echo "nubes-ping $r" >/dev/console; sleep 1; done) </dev/null >/dev/null 2>&1 &
"""
COUNT = re.compile(r"nubes-count (\S+) (\d+)")


@dataclass
class World:
    cloud: LabCloud
    ip: str  # the mover's address


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    cloud = start_lab(tmp_path_factory.mktemp("migrate"), 2)
    try:
        cloud.nubes("image", "build", "tiny")
        cloud.nubes("network", "create", "mnet", "--cidr", CIDR)
        body = s.ServerCreate(
            name="mover", image="tiny", flavor="m1.tiny", network="mnet",
            host=cloud.host_ns(1), user_data=COUNTER,
        )  # fmt: skip
        mover = cloud.client.create_server(body)
        ip = mover.addresses["mnet"][0]
        neighbour = s.ServerCreate(
            name="neighbour", image="tiny", flavor="m1.tiny", network="mnet",
            host=cloud.host_ns(1), user_data=PINGER.replace("TARGET", ip),
        )  # fmt: skip
        cloud.client.create_server(neighbour)
        wait_for(lambda: counts(cloud), 300, "the mover's counter")
        yield World(cloud, ip)
    finally:
        stop_lab(cloud)


def counts(cloud: LabCloud) -> list[tuple[str, int]]:
    """The counter lines of the mover's console log; none while its host's agent is not
    listening yet (just restarted)."""
    try:
        text = cloud.client.console_log("mover")
    except ApiError:
        return []
    return [(b, int(n)) for b, n in COUNT.findall(text)]


def served(cloud: LabCloud) -> bool:
    return bool(counts(cloud))


def host_index(cloud: LabCloud, name: str) -> int:
    return cloud.index_of(name)


def copies(cloud: LabCloud, server_id: str) -> list[int]:
    """Which lab hosts run a QEMU of the server."""
    return [i for i in (1, 2) if server_id in qemu_pids(cloud, i)]


def migrate(cloud: LabCloud, target: str, live: bool = True) -> s.Migration:
    mig = cloud.client.migrate_server("mover", host=target, live=live)
    assert mig.target == target
    return mig


def wait_done(cloud: LabCloud, mig: s.Migration, timeout: float = 600) -> s.Migration:
    def over() -> s.Migration | None:
        m = cloud.client.migration(mig.id)
        return m if m.phase in ("done", "failed") else None

    end = wait_for(over, timeout, f"migration {mig.id} to end", every=0.5)
    assert end.phase == "done", end.error
    return end  # type: ignore[no-any-return]


def settled(cloud: LabCloud, host: str) -> s.Server:
    server = cloud.client.server("mover")
    wait_for(
        lambda: (
            (x := cloud.client.server("mover")).host == host
            and x.status == "ACTIVE"
            and not x.task_state
        ),
        300,
        f"mover ACTIVE on {host}",
    )
    wait_for(lambda: copies(cloud, server.id) == [host_index(cloud, host)], 120, "one QEMU")
    return cloud.client.server("mover")


def assert_kept_counting(cloud: LabCloud, before: list[tuple[str, int]]) -> None:
    boot, last = before[-1]
    wait_for(lambda: any(n > last for _, n in counts(cloud)), 120, "the counter on the target")
    after = counts(cloud)
    assert {b for b, _ in after} == {boot}, "the guest rebooted"
    assert after[-1][1] > last
    # the log goes on where it was: what the source had is still served from the target
    assert before[0] in after, "the console log restarted on the target"


def test_live_migration_keeps_it_running_and_reachable(world: World) -> None:
    cloud = world.cloud
    before = counts(cloud)
    h1, h2 = cloud.host_ns(1), cloud.host_ns(2)
    mig = migrate(cloud, h2)
    # while it moves, the target's ports take only the source's underlay address
    wait_for(lambda: cloud.client.migration(mig.id).phase != "preparing", 300, "prepared")
    ruleset = cloud.in_host(["nft", "list", "ruleset"], 2)
    source = next(h.address for h in cloud.client.hosts() if h.name == h1)
    end = wait_done(cloud, mig)
    if end.phase == "done" and "nubes_mig_" in ruleset:
        assert f"ip saddr != {source} drop" in ruleset
    settled(cloud, h2)
    assert_kept_counting(cloud, before)
    assert end.total_ms > 0
    print(f"live migration: total {end.total_ms} ms, downtime {end.downtime_ms} ms")
    # the neighbour left on host1 reaches it on host2 (its overlay entry moved)
    seen = cloud.client.console_log("neighbour").count("nubes-ping ok")
    wait_for(
        lambda: cloud.client.console_log("neighbour").count("nubes-ping ok") > seen + 2,
        120,
        "the neighbour's pings after the move",
    )
    assert "nubes_mig_" not in cloud.in_host(["nft", "list", "ruleset"], 2)


def _killed_mid_migration(world: World, which: str, fault: str = "") -> None:
    """kill -9 of the source's or the target's agent while the server moves: at a random
    point once the migration runs, or (`fault`) exactly at a crash point of nubes/faults.py,
    which ends the agent as kill -9 does. Restarted, it ends with one running copy."""
    cloud = world.cloud
    here = cloud.client.server("mover").host
    assert here is not None
    there = cloud.host_ns(1) if here == cloud.host_ns(2) else cloud.host_ns(2)
    victim = host_index(cloud, here if which == "source" else there)
    server_id = cloud.client.server("mover").id
    if fault:
        cloud.nubes("lab", "restart-agent", cloud.host_ns(victim),
                    env={"NUBES_FAULT_CRASH_AFTER": fault})  # fmt: skip
        wait_for(lambda: agent_pid(cloud, victim) is not None, 60, "the agent with its fault")
        wait_for(lambda: served(cloud), 60, "its console channel")  # served again
    before = counts(cloud)
    mig = migrate(cloud, there)
    if fault:
        wait_for(lambda: agent_pid(cloud, victim) is None, 300, f"the agent to crash at {fault}")
        # the moment that matters: the guest on both hosts, the switch-over not made
        assert copies(cloud, server_id) == [1, 2]
        assert cloud.client.server("mover").host == here
    else:
        wait_for(lambda: cloud.client.migration(mig.id).phase == "migrating", 300, "migrating")
        kill_agent(cloud, victim)
    time.sleep(3)  # QEMU carries on (or waits at the switch-over point) without its agent
    cloud.nubes("lab", "restart-agent", cloud.host_ns(victim))
    wait_for(lambda: agent_pid(cloud, victim) is not None, 60, "the agent back")
    wait_done(cloud, mig)
    settled(cloud, there)
    assert_kept_counting(cloud, before)


def _with_logs(world: World, which: str, fault: str = "") -> None:
    try:
        _killed_mid_migration(world, which, fault)
    except AssertionError:
        for log in sorted((world.cloud.state_dir / "lab").glob("*.log")):
            lines = [x for x in log.read_text().splitlines() if "httpx" not in x]
            print(f"== {log.name}", *lines[-60:], sep="\n")
        print("== mover", world.cloud.client.console_log("mover")[-3000:])
        raise


def test_source_agent_killed_at_the_switch_over_point_ends_once(world: World) -> None:
    _with_logs(world, "source", "switch-over-point")


def test_source_agent_killed_mid_migration_ends_once(world: World) -> None:
    _with_logs(world, "source")


def test_target_agent_killed_before_reporting_it_is_ready_ends_once(world: World) -> None:
    _with_logs(world, "target", "incoming-ready")


def test_target_agent_killed_mid_migration_ends_once(world: World) -> None:
    _with_logs(world, "target")


def test_a_target_failing_before_the_switch_over_leaves_it_on_the_source(world: World) -> None:
    """The target's agent dies once prepared and its incoming QEMU is killed: the migration
    fails, the target removes all it made (Reverter), the guest runs on where it was."""
    cloud = world.cloud
    here = cloud.client.server("mover").host
    assert here is not None
    there = cloud.host_ns(1) if here == cloud.host_ns(2) else cloud.host_ns(2)
    victim, server_id = host_index(cloud, there), cloud.client.server("mover").id
    cloud.nubes("lab", "restart-agent", there, env={"NUBES_FAULT_CRASH_AFTER": "incoming-ready"})
    wait_for(lambda: agent_pid(cloud, victim) is not None, 60, "the agent with its fault")
    before = counts(cloud)
    mig = migrate(cloud, there)
    wait_for(lambda: agent_pid(cloud, victim) is None, 300, "the target's agent to crash")
    pid = qemu_pids(cloud, victim)[server_id]
    os.kill(pid, signal.SIGKILL)  # the incoming guest dies before any memory came
    cloud.nubes("lab", "restart-agent", there)
    end = wait_for(
        lambda: (m := cloud.client.migration(mig.id)).phase in ("done", "failed") and m,
        300,
        "the migration to end",
    )
    assert end.phase == "failed" and "incoming QEMU exited" in end.error, end
    settled(cloud, here)  # still there, once
    assert_kept_counting(cloud, before)
    # the target keeps nothing of it: no directory, no QEMU, no migration firewall table
    wait_for(
        lambda: server_id not in instance_dirs(cloud, victim), 60, "the target's leftovers gone"
    )
    assert "nubes_mig_" not in cloud.in_host(["nft", "list", "ruleset"], victim)
    assert not cloud.client.gc().database  # its claim on the target was given back


def test_cold_migration_carries_the_disk(world: World) -> None:
    cloud = world.cloud
    here = cloud.client.server("mover").host
    there = cloud.host_ns(1) if here == cloud.host_ns(2) else cloud.host_ns(2)
    mig = migrate(cloud, there, live=False)
    wait_done(cloud, mig)
    settled(cloud, there)
    # a new boot (cold), from the same disk: the user-data's marker came along
    wait_for(
        lambda: "user-data script already ran" in cloud.client.console_log("mover"),
        300,
        "the guest to boot from its copied disk",
    )


def test_a_volume_moves_with_a_live_migration(world: World) -> None:
    cloud = world.cloud
    here = cloud.client.server("mover").host
    assert here is not None
    there = cloud.host_ns(1) if here == cloud.host_ns(2) else cloud.host_ns(2)
    old, new = host_index(cloud, here), host_index(cloud, there)
    vol = cloud.client.create_volume(sv.VolumeCreate(name="mvol", size_gb=1, host=here))
    wait_for(lambda: cloud.client.volume("mvol").status == "available", 120, "the volume")
    cloud.client.attach_volume("mover", "mvol")
    payload = f"nubes-moved-{os.urandom(4).hex()}"
    out = in_guest(
        cloud,
        "mover",
        "while [ ! -b /dev/vdc ]; do sleep 1; done; cat /sys/block/vdc/serial; echo; "
        f"echo {payload} | dd of=/dev/vdc conv=fsync 2>/dev/null; sync",
    )
    assert vol.id[:20] in out, out  # the guest's vdc is this volume

    def started() -> s.Migration | None:
        try:
            return migrate(cloud, there)
        except ApiError as exc:  # its host has not reported the hotplug port yet: 409
            assert exc.status == 409 and exc.field == "volume", exc.detail
            return None

    mig = wait_for(started, 60, "the migration to be accepted", every=1)
    wait_done(cloud, mig)
    settled(cloud, there)
    moved = cloud.client.volume("mvol")
    assert (moved.host, moved.server, moved.status) == (there, "mover", "in-use"), moved
    wait, read = "while [ ! -b /dev/vdc ]; do sleep 1; done; ", "head -c 64 /dev/vdc | head -1"
    assert payload in in_guest(cloud, "mover", read).split("head -1", 1)[-1]
    assert (cloud.host_dir(new) / "volumes" / f"{vol.id}.qcow2").exists()
    wait_for(
        lambda: not list((cloud.host_dir(old) / "volumes").glob("*.qcow2")),
        60,
        "the source's copy of the volume gone",
    )
    # and back, cold: the volume file is copied over the same NBD channel as the disk
    booted = cloud.client.console_log("mover").count("user-data script already ran")
    wait_done(cloud, migrate(cloud, here, live=False))
    settled(cloud, here)
    wait_for(
        lambda: cloud.client.console_log("mover").count("user-data script already ran") > booted,
        300,
        "the guest to boot on its old host",
    )
    wait_for(lambda: cloud.client.volume("mvol").status == "in-use", 120, "attached again")
    assert cloud.client.volume("mvol").host == here
    assert payload in in_guest(cloud, "mover", wait + read).split("head -1", 1)[-1]
    wait_for(
        lambda: not list((cloud.host_dir(new) / "volumes").glob("*.qcow2")),
        60,
        "the cold source's copy gone",
    )
