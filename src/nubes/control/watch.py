"""The long-polls' watcher: one asyncio task per API process wakes exactly the waiting agents
whose host's generation moved, so a thousand waiting agents hold no thread and cost nothing
until a change concerns them.

It re-reads every host's generation at once when this process commits a change (`notify`, from
the threadpool the sync routes run in) and every `period` seconds otherwise, for changes that
another API server sharing the database made.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from anyio import to_thread

log = logging.getLogger("nubes.api")


@dataclass(eq=False)
class _Waiter:
    since: int
    woken: asyncio.Future[None]


@dataclass
class Notifier:
    """`read` returns {host id: generation} (it runs in a worker thread, briefly)."""

    read: Callable[[], dict[str, int]]
    period: float = 1.0
    _waiters: dict[str, set[_Waiter]] = field(default_factory=dict)
    _loop: asyncio.AbstractEventLoop | None = None
    _poke: asyncio.Event | None = None
    _task: asyncio.Task[None] | None = None

    def notify(self) -> None:
        """This process committed a change: look now (thread-safe, cheap, coalesced)."""
        loop, poke = self._loop, self._poke
        if loop is not None and poke is not None and not loop.is_closed():
            loop.call_soon_threadsafe(poke.set)

    async def wait(self, host_id: str, since: int, timeout: float) -> None:
        """Until the host's generation is no longer `since`, or `timeout` seconds."""
        loop = self._start()
        waiter = _Waiter(since, loop.create_future())
        self._waiters.setdefault(host_id, set()).add(waiter)
        try:
            await asyncio.wait([waiter.woken], timeout=timeout)
        finally:
            mine = self._waiters.get(host_id)
            if mine is not None:
                mine.discard(waiter)
                if not mine:
                    del self._waiters[host_id]

    def close(self) -> None:
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)

    def _start(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use (or a test's new server in this process)
            self._loop, self._poke, self._waiters = loop, asyncio.Event(), {}
            self._task = loop.create_task(self._run())
        return loop

    async def _run(self) -> None:
        assert self._poke is not None
        while True:
            try:
                await asyncio.wait_for(self._poke.wait(), self.period)
            except TimeoutError:
                pass
            self._poke.clear()
            if not self._waiters:
                continue
            try:
                generations = await to_thread.run_sync(self.read)
            except Exception:
                log.exception("reading the hosts' generations failed")
                await asyncio.sleep(self.period)
                continue
            self._wake(generations)

    def _wake(self, generations: dict[str, int]) -> None:
        # a waiter registers right after reading its generation; comparing with the current
        # one (not with the last seen) cannot miss a change made in between
        for host_id, waiters in self._waiters.items():
            now = generations.get(host_id)  # None: the host was removed; its agent is told
            for w in waiters:
                if now != w.since and not w.woken.done():
                    w.woken.set_result(None)
