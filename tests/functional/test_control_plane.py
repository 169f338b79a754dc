"""The control plane's cheap paths keep their answers: an unchanged long-poll says so with 304,
a shutdown answers waiting long-polls at once, reads do not wait for SQLite's write lock, and a
heartbeat checks its credential inside its one statement."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import text

from nubes.client import NubesClient
from nubes.client.core import ApiError
from nubes.conf import Settings
from tests.cloud import Api, Cloud


def own_client(cloud: Cloud) -> tuple[NubesClient, str]:
    agent = cloud.agents[0][0]
    return NubesClient(cloud.url, cloud.credentials["host1"]), agent.host_id


def test_an_unchanged_long_poll_answers_304_and_a_change_answers_at_once(cloud: Cloud) -> None:
    client, host_id = own_client(cloud)
    with client:
        now = client.desired(host_id, -1, 0)
        assert now is not None
        begin = time.monotonic()
        assert client.desired(host_id, now.generation, 0.5) is None  # no change: 304
        assert time.monotonic() - begin >= 0.5
        # a change for this host wakes the poll long before its wait is over
        woken: list[object] = []
        poll = threading.Thread(
            target=lambda: woken.append(client.desired(host_id, now.generation, 30))
        )
        begin = time.monotonic()
        poll.start()
        time.sleep(0.3)
        with cloud.app.state.nubes.sessions() as session:
            from nubes.control import generations

            generations.bump(session, [host_id])
            session.commit()
        poll.join(timeout=10)
        assert time.monotonic() - begin < 10
        (answer,) = woken
        assert answer is not None and answer.generation == now.generation + 1  # type: ignore[attr-defined]


def test_a_heartbeat_with_another_hosts_or_an_unknown_credential_is_refused(cloud: Cloud) -> None:
    host1 = cloud.agents[0][0].host_id
    cloud.start_agent("host2", "10.255.0.12")
    cloud.wait(lambda: len(cloud.client.hosts()) == 2, what="host2")
    with NubesClient(cloud.url, cloud.credentials["host2"]) as other:
        with pytest.raises(ApiError) as refused:
            other.heartbeat(host1)
        assert refused.value.status == 403
    with NubesClient(cloud.url, cloud.credentials["host1"]) as own:
        own.heartbeat(host1)  # its own: accepted
    with NubesClient(cloud.url, "nh_not-a-credential") as forged:
        with pytest.raises(ApiError) as unknown:
            forged.heartbeat(host1)
        assert unknown.value.status == 401


def test_reads_do_not_wait_for_an_open_write_transaction(cloud: Cloud) -> None:
    if not cloud.settings.db_url.startswith("sqlite"):
        pytest.skip("SQLite's write lock")
    state = cloud.app.state.nubes
    with state.sessions() as writer:
        writer.execute(text("UPDATE hosts SET enabled = enabled"))  # holds the write lock
        begin = time.monotonic()
        assert cloud.client.flavors()  # a GET
        assert cloud.client.hosts()
        assert time.monotonic() - begin < 5  # the lock's busy timeout is 30 s
        writer.rollback()


def test_a_shutdown_answers_waiting_long_polls_at_once(cloud: Cloud) -> None:
    settings: Settings = cloud.settings.model_copy(
        update={"state_dir": cloud.root / "state-second", "database_url": cloud.settings.db_url}
    )
    second = Api(settings)
    client = NubesClient(second.url, cloud.credentials["host1"])
    host_id = cloud.agents[0][0].host_id
    now = client.desired(host_id, -1, 0)
    assert now is not None
    answers: list[object] = []
    poll = threading.Thread(
        target=lambda: answers.append(client.desired(host_id, now.generation, 55))
    )
    poll.start()
    time.sleep(0.5)
    begin = time.monotonic()
    second.close()
    poll.join(timeout=20)
    assert answers == [None] and time.monotonic() - begin < 5
    client.close()
