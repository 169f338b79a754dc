"""The agents' lane: the work behind their desired states and reports, one at a time, after
the users' requests in flight.

Each server change wakes its host and its network's gateway host, whose fetches and reports
are CPU work in this one Python process, about as much as the create itself. Run beside a
user's request, they share the interpreter with it and make it several times slower
(bench/control_plane.py, figures in docs/architecture.md). So the agents' work waits in a lane
of its own: one job at a time, and a job starts only once no user's request is in flight, or
after `YIELD_AT_MOST` seconds however busy the users are (agents never starve). A user's
request then shares the interpreter with at most the one job that had started before it came,
and that job pauses its reads for it (`GIVE_WAY_AT_MOST` in all). A request counts for its
first `YIELD_AT_MOST` seconds only, so a long upload does not hold the agents back. The agents
lose nothing they notice: a fetch or a report waits a few milliseconds, beside boots of
seconds and a sync period of two."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar
from weakref import WeakKeyDictionary

from anyio import CapacityLimiter, to_thread
from starlette.types import ASGIApp, Receive, Scope, Send

from nubes.db import engine, sqlite_writers

T = TypeVar("T")

AGENT_THREADS = 1
# seconds an agent's job waits to start while users' requests run, at most (jobs wait side by
# side, not in the lane: the wait costs the agents latency, never throughput)
YIELD_AT_MOST = 0.25
# seconds a started job pauses its reads for users' requests, in all: it holds the lane
# meanwhile, so this bounds the lane's rate under a steady stream of users (1 / 0.02 s)
GIVE_WAY_AT_MOST = 0.02
# a user's request counts as in flight for its first YIELD_AT_MOST seconds only: an upload or
# an import that streams for minutes must not hold the agents back all that while
AGENT_PATHS = ("/v1/agent/", "/v1/join")  # what is not a user's request
# nor are streams that stay open (a user's request in flight makes the agents' jobs wait)
NOT_COUNTED = (*AGENT_PATHS, "/v1/events")


@dataclass
class _Lane:
    limiter: CapacityLimiter = field(default_factory=lambda: CapacityLimiter(AGENT_THREADS))
    users: int = 0  # users' requests in flight
    quiet: asyncio.Event = field(default_factory=asyncio.Event)  # for the event loop
    quiet_now: threading.Event = field(default_factory=threading.Event)  # for the lane's thread

    def __post_init__(self) -> None:
        self.quiet.set()
        self.quiet_now.set()

    def busy(self) -> Callable[[], None]:
        """One more user's request; the function that ends it (once, whoever calls first:
        the request's end, or the timer that stops counting it)."""
        self.users += 1
        self.quiet.clear()
        self.quiet_now.clear()
        counted = [True]

        def done() -> None:
            if counted[0]:
                counted[0] = False
                self.users -= 1
                if self.users == 0:
                    self.quiet.set()
                    self.quiet_now.set()

        timer = asyncio.get_running_loop().call_later(YIELD_AT_MOST, done)

        def ended() -> None:
            timer.cancel()
            done()

        return ended


# one lane per event loop (a test's client may serve each request in a loop of its own)
_LANES: WeakKeyDictionary[asyncio.AbstractEventLoop, _Lane] = WeakKeyDictionary()


def _lane() -> _Lane:
    loop = asyncio.get_running_loop()
    lane = _LANES.get(loop)
    if lane is None:
        lane = _LANES[loop] = _Lane()
    return lane


async def in_agent_lane(fn: Callable[..., T], *args: object) -> T:
    lane = _lane()
    try:
        await asyncio.wait_for(lane.quiet.wait(), YIELD_AT_MOST)
    except TimeoutError:
        pass  # the users keep it busy: go now, beside them
    async with lane.limiter:
        return await to_thread.run_sync(_as_agent, lane, fn, *args)


def _as_agent(lane: _Lane, fn: Callable[..., T], *args: object) -> T:
    """The job, pausing before each statement it reads while users' requests run (the Python
    between its statements would otherwise share the interpreter with them), for
    `GIVE_WAY_AT_MOST` seconds in all."""
    deadline = time.monotonic() + GIVE_WAY_AT_MOST

    def give_way() -> None:
        if not lane.quiet_now.is_set():
            lane.quiet_now.wait(max(0.0, deadline - time.monotonic()))

    engine.before_each_read.set(give_way)  # this thread's copy of the context: this job only
    return in_background(fn, *args)


def in_background(fn: Callable[..., T], *args: object) -> T:
    """`fn` in this thread as background work: its SQLite writes let users' go first."""
    sqlite_writers.background.set(True)  # this thread's copy of the context: this call only
    return fn(*args)


class UsersFirst:
    """ASGI middleware: counts the users' HTTP requests in flight, for the lane above."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(NOT_COUNTED):
            await self.app(scope, receive, send)
            return
        done = _lane().busy()
        try:
            await self.app(scope, receive, send)
        finally:
            done()
