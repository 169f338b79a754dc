"""Fault injection on a real 1-host lab (real QEMU, taps, dnsmasq): crashes of the agent at each
step of a build, of QEMU, of the API inside a create and a delete; restarts; a locked database;
a full disk. After each, the cloud ends in a clean state and the host has nothing left over."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nubes.client import ApiError
from nubes.schemas import resources as s
from tests.integration.conftest import LabCloud, start_lab, stop_lab
from tests.integration.hostcheck import (
    agent_pid,
    api_pid,
    assert_host_has,
    gc_clean,
    host_dir,
    hosts_up,
    qemu_pids,
    restart_api,
    taps,
    wait_for,
    wait_gone,
    wait_status,
)
from tests.pgcluster import PgCluster, unavailable

pytestmark = pytest.mark.integration

SYNC = 2.0  # the agents' default sync_interval


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCloud]:
    cloud = start_lab(tmp_path_factory.mktemp("faults"), 1)
    try:
        cloud.nubes("image", "build", "tiny")
        cloud.client.create_network(s.NetworkCreate(name="net1", cidr="10.40.0.0/24"))
        yield cloud
    finally:
        stop_lab(cloud)


def create(cloud: LabCloud, name: str, key: str | None = None) -> s.Server:
    body = s.ServerCreate(name=name, image="tiny", flavor="m1.tiny", network="net1")
    headers = {"Idempotency-Key": key} if key else {}
    resp = cloud.client.request("POST", "/v1/servers", json=body.model_dump(), headers=headers)
    return s.Server.model_validate(resp.json())


def delete_all(cloud: LabCloud) -> None:
    # the ids are kept: a server being deleted is no longer listed, so listing again here
    # would wait for nothing and check the host while QEMU is still going
    ids = [server.id for server in cloud.client.servers()]
    for server_id in ids:
        cloud.client.delete_server(server_id)
    for server_id in ids:
        wait_gone(cloud, server_id)
    assert_host_has(cloud, set())
    gc_clean(cloud)


def restart_agent(cloud: LabCloud, **env: str) -> None:
    cloud.nubes("lab", "restart-agent", cloud.host_ns(), env=env)


def uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


# what each step leaves on the host when the agent dies right after it
LEFT_BEHIND = {
    "disk": ("disk.qcow2",),
    "seed": ("disk.qcow2", "seed.iso"),
    "ports": ("disk.qcow2", "seed.iso", "tap"),
    "qemu": ("disk.qcow2", "seed.iso", "tap", "qemu"),
}


@pytest.mark.parametrize("step", list(LEFT_BEHIND))
def test_agent_killed_after_each_build_step(lab: LabCloud, step: str) -> None:
    cloud = lab
    restart_agent(cloud, NUBES_FAULT_CRASH_AFTER=step)
    server = create(cloud, f"crash-{step}")
    wait_for(lambda: agent_pid(cloud) is None, 60, f"the agent to crash after {step}")

    # the crash really left this step's work behind, half a build
    inst = host_dir(cloud) / "instances" / server.id
    left = LEFT_BEHIND[step]
    for name in ("disk.qcow2", "seed.iso"):
        assert (inst / name).exists() == (name in left), name
    assert len(taps(cloud)) == ("tap" in left)
    assert (server.id in qemu_pids(cloud)) == ("qemu" in left)
    assert cloud.client.server(server.id).status == "BUILD"
    adopted = qemu_pids(cloud).get(server.id)

    restart_agent(cloud)  # without the fault
    wait_status(cloud, server.id, "ACTIVE")
    assert_host_has(cloud, {server.id})
    pid = qemu_pids(cloud)[server.id]
    if adopted:
        assert pid == adopted, "a running guest was restarted instead of adopted"
    assert not [p.name for p in inst.iterdir() if p.name.endswith(".tmp")]
    assert not cloud.client.server(server.id).fault
    cloud.client.delete_server(server.id)
    wait_gone(cloud, server.id)
    assert_host_has(cloud, set())
    gc_clean(cloud)


def test_guests_run_unprivileged_with_private_files(lab: LabCloud) -> None:
    cloud = lab
    try:
        import pwd

        user = pwd.getpwnam("nubes-qemu")
    except KeyError:
        pytest.skip("no nubes-qemu user (make deps creates it)")
    server = create(cloud, "unpriv")
    wait_status(cloud, server.id, "ACTIVE")
    pid = qemu_pids(cloud)[server.id]
    assert uid_of(pid) == user.pw_uid
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"-sandbox" in argv and b"-runas" in argv
    inst = host_dir(cloud) / "instances" / server.id
    disk, seed = os.stat(inst / "disk.qcow2"), os.stat(inst / "seed.iso")
    assert (disk.st_uid, disk.st_mode & 0o777) == (user.pw_uid, 0o600)
    assert (seed.st_uid, seed.st_gid, seed.st_mode & 0o777) == (0, user.pw_gid, 0o640)
    for cached in (host_dir(cloud) / "images").iterdir():
        st = cached.stat()  # read-only for guests, invisible to other users
        if ".overlay-" in cached.name:  # overlay templates: only root copies them
            assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600), cached
        else:
            assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, user.pw_gid, 0o640), cached
    sockets = cloud.host_path(f"/run/nubes/{server.id}")
    assert (sockets.stat().st_uid, sockets.stat().st_mode & 0o777) == (0, 0o700)
    for sock in sockets.iterdir():  # QMP, serial, VNC: root's alone
        assert (sock.stat().st_uid, sock.stat().st_mode & 0o777) == (0, 0o600), sock
    delete_all(cloud)


def test_qemu_killed_from_outside_shows_shutoff(lab: LabCloud) -> None:
    cloud = lab
    server = create(cloud, "victim")
    wait_status(cloud, server.id, "ACTIVE")
    started = time.monotonic()
    os.kill(qemu_pids(cloud)[server.id], signal.SIGKILL)

    def shutoff() -> s.Server | None:
        now = cloud.client.server(server.id)
        return now if now.status == "SHUTOFF" else None

    now = wait_for(shutoff, 30, "SHUTOFF", every=0.05)
    elapsed = time.monotonic() - started
    print(f"QEMU killed: SHUTOFF after {elapsed:.2f} s (sync interval {SYNC} s)")
    assert elapsed < SYNC + 0.5  # the period, plus the converging pass and the report
    assert "QEMU process exited (killed by SIGKILL)" in now.fault
    # stopped through the normal path: a start brings it back
    wait_status(cloud, server.id, "SHUTOFF")
    cloud.client.server_action(server.id, "start")
    wait_status(cloud, server.id, "ACTIVE")
    assert not cloud.client.server(server.id).fault
    delete_all(cloud)


def test_api_and_agent_restarts_leave_guests_alone(lab: LabCloud) -> None:
    cloud = lab
    server = create(cloud, "steady")
    wait_status(cloud, server.id, "ACTIVE")
    wait_for(lambda: "nubes-tiny: ready" in cloud.client.console_log(server.id), 120, "boot")
    pid = qemu_pids(cloud)[server.id]
    restart_api(cloud)
    restart_agent(cloud)
    time.sleep(3 * SYNC)
    now = wait_status(cloud, server.id, "ACTIVE")
    assert now.ready_at is not None and not now.fault
    assert qemu_pids(cloud) == {server.id: pid}
    assert cloud.client.console_log(server.id).count("nubes-tiny: ready") == 1, "it rebooted"
    cloud.client.server_action(server.id, "stop")  # and both still manage it
    wait_status(cloud, server.id, "SHUTOFF")
    delete_all(cloud)


def api_crash(cloud: LabCloud, point: str) -> None:
    """Restart the API with a crash point armed."""
    restart_api(cloud, NUBES_FAULT_API_CRASH=point)


def expect_crash(cloud: LabCloud, call: object) -> None:
    with pytest.raises(ApiError) as err:
        call()  # type: ignore[operator]
    assert err.value.status == 0, err.value.detail  # no answer: the API died
    wait_for(lambda: api_pid(cloud) is None, 10, "the API to die")
    restart_api(cloud)


def test_api_killed_during_create_and_delete(lab: LabCloud) -> None:
    cloud = lab
    host = cloud.client.hosts()[0]

    # killed inside the create transaction: nothing of it exists after the restart
    api_crash(cloud, "create-before-commit")
    key = str(uuid.uuid4())
    expect_crash(cloud, lambda: create(cloud, "half", key))
    assert cloud.client.servers() == []
    assert cloud.client.hosts()[0].used_ram_mb == host.used_ram_mb
    gc_clean(cloud)
    retried = create(cloud, "half", key)  # the client's retry creates it once
    wait_status(cloud, retried.id, "ACTIVE")

    # killed after the commit, before answering: the create stands and the retry gets it
    api_crash(cloud, "create-after-commit")
    key = str(uuid.uuid4())
    expect_crash(cloud, lambda: create(cloud, "whole", key))
    (whole,) = [x for x in cloud.client.servers() if x.name == "whole"]
    wait_status(cloud, whole.id, "ACTIVE")
    assert create(cloud, "whole", key).id == whole.id

    # killed right after a delete committed: the delete carries on after the restart
    api_crash(cloud, "delete-after-commit")
    expect_crash(cloud, lambda: cloud.client.delete_server(whole.id))
    wait_gone(cloud, whole.id)
    assert_host_has(cloud, {retried.id})
    delete_all(cloud)


def test_database_locked_answers_503_and_guests_keep_running(lab: LabCloud) -> None:
    cloud = lab
    server = create(cloud, "dbwait")
    wait_status(cloud, server.id, "ACTIVE")
    pid, agent = qemu_pids(cloud)[server.id], agent_pid(cloud)
    restart_api(cloud, NUBES_DB_TIMEOUT="1")
    db = sqlite3.connect(cloud.state_dir / "nubes.db", isolation_level=None, timeout=30)
    db.execute("BEGIN IMMEDIATE")  # another process holds the write lock: every write waits
    try:
        with pytest.raises(ApiError) as err:
            create(cloud, "blocked")
        assert err.value.status == 503, err.value.detail
        assert "database" in err.value.detail
        assert [x.name for x in cloud.client.servers()] == ["dbwait"]  # reads take no lock
        time.sleep(8)  # longer than host_down_after: a while, for agents and guests
        with pytest.raises(ApiError) as err:
            cloud.client.server_action(server.id, "reboot")
        assert err.value.status == 503
        assert cloud.client.server(server.id).id == server.id
    finally:
        db.rollback()
        db.close()
    assert qemu_pids(cloud) == {server.id: pid} and agent_pid(cloud) == agent
    hosts_up(cloud)
    wait_status(cloud, server.id, "ACTIVE")  # the host is back up with its guest
    cloud.client.server_action(server.id, "stop")  # and changes converge again
    wait_status(cloud, server.id, "SHUTOFF")
    delete_all(cloud)
    restart_api(cloud)


@pytest.fixture
def pg_lab(tmp_path: Path) -> Iterator[tuple[LabCloud, PgCluster]]:
    """A 1-host lab whose API keeps its state in a PostgreSQL server of its own."""
    why = unavailable()
    if why:
        pytest.skip(why)
    cluster = PgCluster().start()
    try:
        url = cluster.create_database("lab")
        cloud = start_lab(tmp_path, 1, NUBES_DATABASE_URL=url, NUBES_DB_TIMEOUT="2")
        try:
            yield cloud, cluster
        finally:
            stop_lab(cloud)
    finally:
        cluster.stop()


def pg_ctl(cluster: PgCluster, *args: str) -> None:
    runuser = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    argv = [*runuser, str(cluster.bin / "pg_ctl"), "-D", str(cluster.data), *args]
    subprocess.run(argv, check=True, capture_output=True, timeout=120)


def test_postgresql_down_answers_503_and_guests_keep_running(
    pg_lab: tuple[LabCloud, PgCluster],
) -> None:
    cloud, cluster = pg_lab
    cloud.nubes("image", "build", "tiny")
    cloud.client.create_network(s.NetworkCreate(name="net1", cidr="10.41.0.0/24"))
    server = create(cloud, "pgwait")
    wait_status(cloud, server.id, "ACTIVE")
    pid, agent = qemu_pids(cloud)[server.id], agent_pid(cloud)
    pg_ctl(cluster, "-m", "fast", "stop")  # the server goes away, connections and all
    try:
        for _ in range(2):  # at once, and after a while (longer than host_down_after)
            with pytest.raises(ApiError) as err:
                cloud.client.server(server.id)
            assert err.value.status == 503, err.value.detail
            assert "database" in err.value.detail
            time.sleep(8)
    finally:
        pg_ctl(cluster, "-l", str(cluster.root / "server.log"), "-w", "-t", "60", "start")
    assert qemu_pids(cloud) == {server.id: pid} and agent_pid(cloud) == agent
    hosts_up(cloud)
    wait_status(cloud, server.id, "ACTIVE")
    cloud.client.server_action(server.id, "stop")  # and changes converge again
    wait_status(cloud, server.id, "SHUTOFF")
    delete_all(cloud)


def test_disk_full_during_create(lab: LabCloud) -> None:
    cloud = lab
    instances = host_dir(cloud) / "instances"
    on_host = "/" + str(instances.relative_to(cloud.host_root()))
    # a small disk for the host's instances, mounted in the host's own mount namespace
    small = "/tmp/nubes-small-disk"
    cloud.in_host_mounts(["sh", "-ec", (
        f"mkdir -p {small} && mount -t tmpfs -o size=32m nubes-small {small} && "
        f"mkdir {small}/instances && mount --bind {small}/instances {on_host}"
    )])  # fmt: skip
    filler = cloud.host_path(f"{small}/filler")
    try:
        restart_agent(cloud)  # its mount namespace now has the small disk
        before = create(cloud, "before")
        wait_status(cloud, before.id, "ACTIVE")
        pid = qemu_pids(cloud)[before.id]
        fill(filler)
        full = create(cloud, "full")
        failed = wait_status(cloud, full.id, "ERROR")
        print(f"disk full: {failed.fault}")
        assert "no space left" in failed.fault.lower(), failed.fault
        # nothing half-made, and the running guest untouched
        assert_host_has(cloud, {before.id})
        assert qemu_pids(cloud)[before.id] == pid
        assert cloud.client.server(before.id).status == "ACTIVE"
        cloud.client.delete_server(full.id)
        wait_gone(cloud, full.id)
        filler.unlink()
        after = create(cloud, "after")
        wait_status(cloud, after.id, "ACTIVE")
        delete_all(cloud)
    finally:
        cloud.in_host_mounts(["umount", "-l", on_host], check=False)
        cloud.in_host_mounts(["umount", "-l", small], check=False)
        restart_agent(cloud)


def fill(path: Path) -> None:
    """Write until the filesystem is full, to the last block."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
