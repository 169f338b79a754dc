"""The agents' lane: the work behind their desired states and reports, a thread at a time.

Each server change wakes its host and its network's gateway host, whose fetches and reports
are CPU work in this one Python process. Run in the common threadpool, a handful of them ran
beside a user's create and shared the interpreter with it, which made the create several times
slower (bench/control_plane.py, figures in docs/architecture.md). In one lane of their own they
queue behind each other instead, and a user's request shares the interpreter with at most one
of them. The agents lose nothing they notice: a fetch or a report waits a few milliseconds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar
from weakref import WeakKeyDictionary

from anyio import CapacityLimiter, to_thread

T = TypeVar("T")


AGENT_THREADS = 2
# one limiter per event loop (a test's client may serve each request in a loop of its own)
_LANES: WeakKeyDictionary[asyncio.AbstractEventLoop, CapacityLimiter] = WeakKeyDictionary()


async def in_agent_lane(fn: Callable[..., T], *args: object) -> T:
    loop = asyncio.get_running_loop()
    lane = _LANES.get(loop)
    if lane is None:
        lane = _LANES[loop] = CapacityLimiter(AGENT_THREADS)
    return await to_thread.run_sync(fn, *args, limiter=lane)
