"""The operation log, bounded transitional states, and gc."""

from __future__ import annotations

import time

from nubes.schemas import resources as s
from tests.cloud import Cloud


def create(cloud: Cloud, name: str) -> s.Server:
    body = s.ServerCreate(name=name, image="img", flavor="m1.tiny", network="net")
    return cloud.client.create_server(body)


def test_create_operation_lists_its_steps(ready: Cloud) -> None:
    server = create(ready, "web1")
    ready.wait_status(server.id, "ACTIVE")

    def done() -> s.Operation | None:
        ops = ready.client.operations("web1")
        return ops[0] if ops and ops[0].status == "done" else None

    op = ready.wait(done, what="create operation to finish")
    assert op.kind == "create" and op.holder == "host1"
    steps = [step.step for step in op.steps]
    assert steps == [
        "accepted",
        "scheduled on host1",
        "image",
        "disk",
        "seed",
        "ports",
        "qemu",
        "active",
    ]
    # the host's steps carry the host's own clock: in order, between accepted and active
    times = [step.at for step in op.steps]
    assert times == sorted(times) and len(set(times[2:7])) > 1
    ready.client.server_action("web1", "stop")
    ready.wait_status("web1", "SHUTOFF")
    kinds = [(o.kind, o.status) for o in ready.client.operations("web1")]
    assert kinds[0] == ("stop", "done")
    assert ready.client.operation(op.id).id == op.id


def test_failed_create_operation_has_the_error_and_rollback(ready: Cloud) -> None:
    ready.agents[0][0].hypervisor.fail_spawn("*", "injected: qemu would not start")  # type: ignore[attr-defined]
    server = create(ready, "bad")
    ready.wait_status(server.id, "ERROR")

    def failed() -> s.Operation | None:
        ops = ready.client.operations("bad")
        return ops[0] if ops and ops[0].status == "failed" else None

    op = ready.wait(failed, what="create operation to fail")
    assert "injected" in op.error
    steps = [step.step for step in op.steps]
    assert "rolled back" in steps and "qemu" not in steps


def test_stale_operations_expire(ready: Cloud) -> None:
    from nubes.control import operations

    ready.stop_agent(ready.agents[0][0])  # nobody carries the create out
    server = create(ready, "stuck")
    with ready.app.state.nubes.sessions() as session:
        assert operations.expire(session, older_than=0.0) == 1
        session.commit()
    stuck = ready.client.server(server.id)
    assert stuck.status == "ERROR" and "did not finish" in stuck.fault


def test_gc_dry_run_then_repair(ready: Cloud) -> None:
    server = create(ready, "web1")
    ready.wait_status(server.id, "ACTIVE")
    agent = ready.agents[0][0]
    stray = agent.layout.instances / "00000000-dead-beef-0000-000000000000"
    stray.mkdir()
    # an instance nothing names is reported and kept: only `nubes gc` removes one
    left = {"host1": [f"instance {stray.name}"]}
    ready.wait(lambda: ready.client.gc(repair=False).hosts == left, what="the stray reported")
    time.sleep(2 * ready.settings.sync_interval)
    report = ready.client.gc(repair=False)
    assert stray.exists() and report.database == [] and report.hosts == left
    # the database drifts (as a crash between two writes could make it): gc finds and repairs
    with ready.app.state.nubes.sessions() as session:
        from nubes.db.models import Host

        host = session.query(Host).one()
        host.used_ram_mb += 999
        session.commit()
    report = ready.client.gc(repair=False)
    assert len(report.database) == 1 and "usage" in report.database[0]
    repaired = ready.client.gc(repair=True)
    assert repaired.repaired and repaired.database == []
    assert ready.client.hosts()[0].used_ram_mb == 256
    ready.wait(lambda: not stray.exists(), what="the agent to remove the stray on gc")
    ready.wait(lambda: ready.client.gc(repair=False).hosts == {"host1": []}, what="no leftovers")
    assert ready.client.server(server.id).status == "ACTIVE"  # what is wanted stays
