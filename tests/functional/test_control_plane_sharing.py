"""How the agents' requests share the API with users': heartbeats arriving together are written
in one statement, an unchanged report writes nothing, a host's changed states come at most
`ANSWER_GAP` apart, the agents' work runs at most `AGENT_THREADS` at a time and after the users'
requests in flight, and SQLite's writers in one process queue for the lock in turn, users'
before the agents'."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import event, insert, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from nubes.api import agent_lane
from nubes.api.agent_lane import AGENT_THREADS, UsersFirst, in_agent_lane
from nubes.api.routes import agent as agent_routes
from nubes.api.routes.agent import ANSWER_GAP
from nubes.client import NubesClient
from nubes.control import generations
from nubes.control.caller import HOST_CREDENTIAL_PREFIX, hash_token
from nubes.db import sqlite_writers
from nubes.db.engine import make_engine, read_only
from nubes.db.models import Host, HostCredential, new_id
from nubes.schemas import agent as a
from tests.cloud import Cloud


def statements_of(engine: Any, prefix: str) -> list[str]:
    """A list that fills with the statements `engine` runs that start with `prefix`."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        if sql.lstrip().upper().startswith(prefix):
            seen.append(sql)

    event.listen(engine, "before_cursor_execute", record)
    return seen


def hosts_with_credentials(cloud: Cloud, n: int) -> dict[str, str]:
    """N hosts straight into the database, each with its credential (as if joined)."""
    hosts = {new_id(): HOST_CREDENTIAL_PREFIX + secrets.token_urlsafe(16) for _ in range(n)}
    with cloud.app.state.nubes.engine.begin() as conn:
        conn.execute(
            insert(Host),
            [
                dict(id=h, name=f"sim{i}", address=f"10.254.0.{i + 1}", state_dir="")
                for i, h in enumerate(hosts)
            ],
        )
        conn.execute(
            insert(HostCredential),
            [dict(id=new_id(), secret_sha256=hash_token(c), host_id=h) for h, c in hosts.items()],
        )
    return hosts


def test_heartbeats_arriving_together_are_written_in_one_statement(cloud: Cloud) -> None:
    state = cloud.app.state.nubes
    hosts = hosts_with_credentials(cloud, 12)
    writes = statements_of(state.engine, "UPDATE HOSTS SET LAST_HEARTBEAT")
    clients = {h: NubesClient(cloud.url, c) for h, c in hosts.items()}
    start = threading.Barrier(len(clients))
    failed: list[BaseException] = []

    def beat(host_id: str) -> None:
        start.wait()
        try:
            clients[host_id].heartbeat(host_id)
        except BaseException as exc:  # noqa: BLE001 (shown below)
            failed.append(exc)

    threads = [threading.Thread(target=beat, args=(h,)) for h in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for c in clients.values():
        c.close()
    assert not failed, failed
    with state.reads() as session:
        beaten = session.scalars(select(Host.id).where(Host.last_heartbeat.is_not(None)))
        assert set(hosts) <= set(beaten)
    # each heartbeat alone would be 12 statements; those that arrive within 0.2 s share one (a
    # loaded machine may start the threads over a few of those windows, never over twelve)
    assert 1 <= len(writes) <= len(hosts) // 2, writes


def test_a_report_that_changes_nothing_writes_nothing(cloud: Cloud) -> None:
    ((host_id, credential),) = hosts_with_credentials(cloud, 1).items()
    state = cloud.app.state.nubes
    with NubesClient(cloud.url, credential) as own:
        own.report(host_id, a.Report(instances=[], leftovers=["nubes-i-stray"]))
        writes = statements_of(state.engine, "BEGIN IMMEDIATE")
        writes += statements_of(state.engine, "UPDATE")
        writes += statements_of(state.engine, "INSERT")
        own.report(host_id, a.Report(instances=[], leftovers=["nubes-i-stray"]))
        assert writes == []
        assert state.leftovers["sim0"] == ["nubes-i-stray"]  # still read and kept


def _answer_times(cloud: Cloud, change: Callable[[Session, str], None]) -> list[float]:
    """When one host's agent got each of three changed states, two changes made in a row."""
    ((host_id, credential),) = hosts_with_credentials(cloud, 1).items()
    state = cloud.app.state.nubes
    with NubesClient(cloud.url, credential) as own:
        first = own.desired(host_id, -1, 0)
        answered = [time.monotonic()]
        assert first is not None
        since = first.generation
        for _ in range(2):
            with state.sessions() as session:
                change(session, host_id)
                session.commit()
            got = own.desired(host_id, since, 30)
            answered.append(time.monotonic())
            assert got is not None and got.generation == since + 1
            since = got.generation
    return [b - a for a, b in zip(answered, answered[1:], strict=False)]


@pytest.mark.parametrize("cause", ["neighbour", "echo"])
def test_a_host_is_sent_others_changes_at_most_answer_gap_apart(cloud: Cloud, cause: str) -> None:
    """A burst of changes that reach a host through its networks (a neighbour's port, say), or
    that its own reports caused (a status it reported, shown back): its agent fetches them
    ANSWER_GAP apart, not one each."""

    def change(session: Session, host_id: str) -> None:
        if cause == "neighbour":
            generations.bump_after_commit(session, [host_id])
        else:
            generations.bump(session, [host_id], echo=True)

    gaps = _answer_times(cloud, change)
    # (measured by the client, a little after the API's own stamps)
    assert all(gap >= ANSWER_GAP - 0.1 for gap in gaps), gaps


def test_a_change_to_a_hosts_own_server_is_sent_at_once(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create, a snapshot, a stop of one of its servers: a user waits for it, so no gap,
    even right after the host was sent another state. (A gap of 4 s here: a gapped answer
    and one sent at once differ by far more than a loaded machine's delays.)"""
    monkeypatch.setattr(agent_routes, "ANSWER_GAP", 4.0)

    def own_change(session: Session, host_id: str) -> None:
        generations.bump(session, [host_id])

    gaps = _answer_times(cloud, own_change)
    assert all(gap < 2.0 for gap in gaps), gaps


def test_the_agents_work_runs_at_most_agent_threads_at_a_time() -> None:
    running, most = [0], [0]
    guard = threading.Lock()

    def work() -> None:
        with guard:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with guard:
            running[0] -= 1

    async def many() -> None:
        await asyncio.gather(*(in_agent_lane(work) for _ in range(4 * AGENT_THREADS)))

    asyncio.run(many())
    assert most[0] == AGENT_THREADS


async def _user_request(app: UsersFirst, path: str) -> None:
    """A request for `path` through the middleware."""
    scope = {"type": "http", "path": path, "method": "POST", "headers": []}

    async def nothing() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def ignore(_: Any) -> None:
        return None

    await app(scope, nothing, ignore)


# The lane's bounds, made roomy for the timing tests: what each test tells apart (waited for
# the users or not, side by side or in turn) then differs by far more than a loaded machine's
# scheduling delays, so no bound depends on the machine's speed.
YIELD = 1.0  # for YIELD_AT_MOST
GIVE_WAY = 0.3  # for GIVE_WAY_AT_MOST


@pytest.fixture
def roomy_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_lane, "YIELD_AT_MOST", YIELD)
    monkeypatch.setattr(agent_lane, "GIVE_WAY_AT_MOST", GIVE_WAY)


@pytest.mark.usefixtures("roomy_lane")
def test_an_agents_job_starts_after_the_users_requests_in_flight() -> None:
    async def slow_handler(_scope: Any, _receive: Any, _send: Any) -> None:
        await asyncio.sleep(0.15)

    middleware = UsersFirst(slow_handler)

    async def job_start_while(path: str | None) -> float:
        begin = time.monotonic()
        user = asyncio.create_task(_user_request(middleware, path)) if path else None
        await asyncio.sleep(0.01)  # the request is in flight
        started = await in_agent_lane(time.monotonic) - begin
        if user:
            await user
        return started

    async def runs() -> tuple[float, float, float, float]:
        quiet = await job_start_while(None)
        agent = await job_start_while("/v1/agent/hosts/x/report")  # agents don't hold it back
        short = await job_start_while("/v1/servers")  # a user's request of 0.15 s...
        middleware.app = _forever
        long = await job_start_while("/v1/images/x/file")  # ...and one that never ends
        return quiet, agent, short, long

    quiet, agent, short, long = asyncio.run(runs())
    assert quiet < YIELD / 2 and agent < YIELD / 2, (quiet, agent)  # held back: YIELD
    assert 0.15 - 0.02 <= short < YIELD, short  # once the user's request had ended
    # never held back longer than YIELD_AT_MOST (then it runs beside the users)
    assert YIELD - 0.02 <= long < 2 * YIELD, long


@pytest.mark.usefixtures("roomy_lane")
def test_an_agents_job_pauses_its_reads_while_a_users_request_runs(tmp_path: Any) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/r.db")
    reads, writes = read_only(engine), engine
    entered = threading.Event()

    async def slow_handler(_scope: Any, _receive: Any, _send: Any) -> None:
        entered.set()
        await asyncio.sleep(2 * YIELD)

    middleware = UsersFirst(slow_handler)

    async def run() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        users: list[asyncio.Future[None]] = []
        stamps: dict[str, float] = {}

        def user_in_flight() -> None:
            entered.clear()
            users.append(asyncio.run_coroutine_threadsafe(
                _user_request(middleware, "/v1/servers"), loop
            ))  # fmt: skip
            assert entered.wait(10)

        def job() -> None:
            with reads.connect() as conn:
                begin = time.monotonic()
                conn.execute(text("SELECT 1"))  # no user: at once
                stamps["quiet"] = time.monotonic() - begin
                user_in_flight()
                begin = time.monotonic()
                conn.execute(text("SELECT 2"))  # gives way, GIVE_WAY in all
                conn.execute(text("SELECT 3"))
                stamps["read"] = time.monotonic() - begin
            with writes.begin() as conn:  # a write never waits (it would hold its locks)
                user_in_flight()
                begin = time.monotonic()
                conn.execute(text("CREATE TABLE t (v INTEGER)"))
                stamps["write"] = time.monotonic() - begin

        await in_agent_lane(job)
        for user in users:
            await asyncio.wrap_future(user)
        return stamps

    try:
        stamps = asyncio.run(run())
    finally:
        engine.dispose()
    # it gave way GIVE_WAY in all, not until the user's request counted no more (YIELD)
    assert GIVE_WAY - 0.005 <= stamps["read"] < YIELD, stamps
    # a read with no user, and a write, never pause (a pause would be GIVE_WAY)
    assert stamps["quiet"] < GIVE_WAY / 2 and stamps["write"] < GIVE_WAY / 2, stamps


@pytest.mark.usefixtures("roomy_lane")
def test_the_agents_jobs_wait_side_by_side_not_in_turn() -> None:
    """Under a steady stream of users' requests each job waits YIELD_AT_MOST at most, all of
    them at once: 20 jobs end in about that, not in 20 times it."""

    async def short_handler(_scope: Any, _receive: Any, _send: Any) -> None:
        await asyncio.sleep(0.01)

    middleware = UsersFirst(short_handler)

    async def run() -> float:
        stop = asyncio.Event()

        async def users() -> None:  # two clients, back to back: never quiet
            while not stop.is_set():
                await _user_request(middleware, "/v1/servers")

        streams = [asyncio.create_task(users()) for _ in range(2)]
        await asyncio.sleep(0.05)
        begin = time.monotonic()
        await asyncio.gather(*(in_agent_lane(time.sleep, 0.001) for _ in range(20)))
        took = time.monotonic() - begin
        stop.set()
        await asyncio.gather(*streams)
        return took

    took = asyncio.run(run())
    assert YIELD - 0.02 <= took < 5 * YIELD, took  # in turn: 20 * YIELD


async def _forever(_scope: Any, _receive: Any, _send: Any) -> None:
    await asyncio.sleep(5)


def test_sqlite_users_writers_go_before_the_agents(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Judged by order, not by time: a loaded machine may wake any thread late."""
    # a yield window no scheduling delay can outlast: the agent waits first, the user later
    monkeypatch.setattr(sqlite_writers, "BACKGROUND_YIELD", 60.0)
    lock = sqlite_writers.WriterLock()
    order: list[str] = []
    assert lock.acquire(timeout=1)

    def writer(name: str, background: bool) -> None:
        sqlite_writers.background.set(background)
        assert lock.acquire(timeout=60)
        order.append(name)
        lock.release()

    def until(cond: Any) -> None:
        deadline = time.monotonic() + 30
        while not cond():
            assert time.monotonic() < deadline, "a writer never came to wait"
            time.sleep(0.01)

    agent = threading.Thread(target=writer, args=("agent", True))
    agent.start()
    until(lambda: agent.is_alive())
    time.sleep(0.05)  # the agent's writer waits first
    user = threading.Thread(target=writer, args=("user", False))
    user.start()
    until(lambda: lock._foreground_waiting == 1)  # the user's writer waits too
    lock.release()
    for t in (agent, user):
        t.join(timeout=60)
    assert order == ["user", "agent"]

    # an agent's writer yields for BACKGROUND_YIELD at most: users that keep the lock busy
    # cannot starve it (it gets the lock while they still hammer it)
    monkeypatch.setattr(sqlite_writers, "BACKGROUND_YIELD", 0.05)
    assert lock.acquire(timeout=1)
    stop = threading.Event()

    def busy_users() -> None:
        while not stop.is_set():
            assert lock.acquire(timeout=60)
            time.sleep(0.002)
            lock.release()

    agent = threading.Thread(target=writer, args=("agent late", True))
    agent.start()
    users = [threading.Thread(target=busy_users) for _ in range(3)]
    for t in users:
        t.start()
    lock.release()
    agent.join(timeout=60)
    starved = agent.is_alive()
    stop.set()
    for t in users + [agent]:
        t.join(timeout=60)
    assert not starved and order[-1] == "agent late"


def test_sqlite_writers_in_one_process_take_the_lock_in_turn(tmp_path: Any) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/w.db", timeout=0.5)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (v INTEGER)"))
        order: list[str] = []
        first_holds = threading.Event()

        def first() -> None:
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO t VALUES (1)"))
                first_holds.set()
                time.sleep(0.2)
                order.append("first commits")

        holder = threading.Thread(target=first)
        holder.start()
        first_holds.wait(timeout=10)
        with engine.begin() as conn:  # waits for the first, then goes at once
            order.append("second writes")
            conn.execute(text("INSERT INTO t VALUES (2)"))
        holder.join(timeout=10)
        assert order == ["first commits", "second writes"]
        # a writer that cannot have the lock within the timeout: OperationalError (the API's 503)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (3)"))
            failed: list[BaseException] = []

            def late() -> None:
                try:
                    with engine.begin() as other:
                        other.execute(text("INSERT INTO t VALUES (4)"))
                except BaseException as exc:  # noqa: BLE001 (checked below)
                    failed.append(exc)

            waiter = threading.Thread(target=late)
            waiter.start()
            waiter.join(timeout=10)
        assert len(failed) == 1 and isinstance(failed[0], OperationalError), failed
        assert "this process's other writers held it" in str(failed[0])
        with engine.connect() as conn:
            assert [v for (v,) in conn.execute(text("SELECT v FROM t ORDER BY v"))] == [1, 2, 3]
    finally:
        engine.dispose()


@pytest.fixture
def cloud(tmp_path: Any) -> Any:
    """On SQLite (BEGIN IMMEDIATE marks its write transactions)."""
    c = Cloud(tmp_path, hosts=0, database_url="")  # no agent of its own: only the test writes
    try:
        yield c
    finally:
        c.close()


def test_a_change_to_an_own_server_ends_a_gap_already_begun(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's long-poll was woken by a neighbour's change and is holding back for the gap
    when the user creates a server there: the answer goes then, not at the gap's end (a gap of
    4 s here, far beyond a loaded machine's delays)."""
    monkeypatch.setattr(agent_routes, "ANSWER_GAP", 4.0)
    ((host_id, credential),) = hosts_with_credentials(cloud, 1).items()
    state = cloud.app.state.nubes

    def change(own: bool) -> None:
        with state.sessions() as session:
            if own:
                generations.bump(session, [host_id])
            else:
                generations.bump_after_commit(session, [host_id])
            session.commit()

    with NubesClient(cloud.url, credential) as agent:
        first = agent.desired(host_id, -1, 0)
        assert first is not None
        agent.desired(host_id, first.generation, 0)  # an answer just sent: the gap begins
        change(own=False)
        later = threading.Timer(0.5, change, kwargs={"own": True})
        later.start()
        start = time.monotonic()
        got = agent.desired(host_id, first.generation, 30)
        waited = time.monotonic() - start
        later.join()
    assert got is not None and got.generation >= first.generation + 1
    assert waited < 2.5, waited  # ended by the own change at ~0.5 s, not the gap's 4 s
