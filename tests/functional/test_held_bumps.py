"""A change's deferred bumps never wait for a host's row another transaction holds
(control/generations.py `_bump_free`): a user's create does not wait for an agent's report,
a batch of heartbeats or another bump; the held host is bumped once its row is let go."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy import select, text

from nubes.db.models import Host
from nubes.schemas import resources as s
from tests.cloud import Cloud


def generation(cloud: Cloud, name: str) -> int:
    with cloud.app.state.nubes.engine.connect() as conn:
        return int(conn.scalar(select(Host.generation).where(Host.name == name)) or 0)


def test_a_create_does_not_wait_for_a_held_peer_row(
    make_cloud: Callable[..., Cloud], database_url: str
) -> None:
    if not database_url:
        pytest.skip("PostgreSQL's row locks: on SQLite a writer holds the whole database")
    cloud = make_cloud(hosts=2)
    body = {"image": "img", "flavor": "m1.tiny", "network": "net"}
    # host2 has a port on net (and serves its gateway): a create on host1 bumps it after commit
    cloud.client.create_server(s.ServerCreate(name="b", host="host2", **body))
    cloud.stop_agent(cloud.agents[1][0])  # no heartbeat of host2 waits behind the lock below
    before = generation(cloud, "host2")
    holder = cloud.app.state.nubes.engine.connect()
    made: list[s.Server] = []
    try:
        holder.begin()  # as a heartbeat's batch or a report does: host2's row held
        holder.execute(text("UPDATE hosts SET last_heartbeat = last_heartbeat WHERE name='host2'"))
        creating = threading.Thread(
            target=lambda: made.append(
                cloud.client.create_server(s.ServerCreate(name="a", host="host1", **body))
            )
        )
        creating.start()
        creating.join(timeout=60)
        answered = not creating.is_alive()
        held = generation(cloud, "host2")
    finally:
        holder.rollback()
        holder.close()
    creating.join(timeout=60)
    assert answered, "the create waited for the held row"
    assert made and made[0].host == "host1"
    assert held == before  # skipped while held...
    deadline = time.monotonic() + 60
    while generation(cloud, "host2") == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert generation(cloud, "host2") == before + 1  # ...and bumped once let go, once
