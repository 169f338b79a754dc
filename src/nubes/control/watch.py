"""The long-polls' watcher: one asyncio task per API process wakes exactly the waiting agents
whose host's generation moved, so a thousand waiting agents hold no thread and cost nothing
until a change concerns them.

A commit in this process wakes the long-polls of the hosts it bumped directly (`notify`, from
the threadpool the sync routes run in; control/generations.py says which hosts). Every `period`
seconds the watcher re-reads every host's generation, for changes that another API server
sharing the database made (and at once for a change whose hosts are not known, `notify(None)`).
Reading a thousand hosts' generations on every commit had made each create cost a thousand-row
read (bench/control_plane.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
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
    _released: bool = False
    # hosts with a change to one of their own servers not yet sent (`own`), and the long-polls
    # holding back an answer for the gap (`gap`), which such a change ends at once
    _own: set[str] = field(default_factory=set)
    _gapped: dict[str, set[asyncio.Future[None]]] = field(default_factory=dict)

    def notify(self, host_ids: Collection[str] | None = None) -> None:
        """This process committed a change for these hosts: wake their long-polls at once, with
        no database read. `None`: a change whose hosts are not known here (a host removed, say):
        re-read every generation now. Thread-safe and cheap."""
        loop, poke = self._loop, self._poke
        if loop is None or poke is None or loop.is_closed():
            return
        if host_ids is None:
            loop.call_soon_threadsafe(poke.set)
        elif host_ids:
            loop.call_soon_threadsafe(self._wake_hosts, frozenset(host_ids))

    def own(self, host_ids: Collection[str]) -> None:
        """A committed change to these hosts' own servers (a user waits for it): their next
        answer skips the gap, and one waiting out its gap goes now. Thread-safe."""
        self._own.update(host_ids)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._end_gaps, frozenset(host_ids))

    def taken(self, host_id: str) -> None:
        """The host's desired state is about to be read: what it was owed is in it."""
        self._own.discard(host_id)

    async def gap(self, host_id: str, seconds: float) -> None:
        """Up to `seconds`, unless a change to one of the host's own servers comes first."""
        if seconds <= 0 or host_id in self._own:
            return
        held: asyncio.Future[None] = self._start().create_future()
        self._gapped.setdefault(host_id, set()).add(held)
        try:
            await asyncio.wait([held], timeout=seconds)
        finally:
            mine = self._gapped.get(host_id)
            if mine is not None:
                mine.discard(held)
                if not mine:
                    del self._gapped[host_id]

    def _end_gaps(self, host_ids: frozenset[str]) -> None:
        for host_id in host_ids:
            for held in self._gapped.get(host_id, ()):
                if not held.done():
                    held.set_result(None)

    async def wait(self, host_id: str, since: int, timeout: float) -> bool:
        """Until the host's generation is no longer `since` (True), or `timeout` seconds
        (False)."""
        if self._released:
            return False
        loop = self._start()
        waiter = _Waiter(since, loop.create_future())
        self._waiters.setdefault(host_id, set()).add(waiter)
        try:
            done, _ = await asyncio.wait([waiter.woken], timeout=timeout)
            return bool(done) and not self._released
        finally:
            mine = self._waiters.get(host_id)
            if mine is not None:
                mine.discard(waiter)
                if not mine:
                    del self._waiters[host_id]

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        """The server is shutting down: every long-poll answers now (no change), and any new one
        at once. Called in the server's event loop."""
        self._released = True
        for waiters in self._waiters.values():
            for w in waiters:
                if not w.woken.done():
                    w.woken.set_result(None)

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

    def _wake_hosts(self, host_ids: frozenset[str]) -> None:
        # their generation moved in a commit that is done: each waiter's route re-reads it
        for host_id in host_ids:
            for w in self._waiters.get(host_id, ()):
                if not w.woken.done():
                    w.woken.set_result(None)

    def _wake(self, generations: dict[str, int]) -> None:
        # a waiter registers right after reading its generation; comparing with the current
        # one (not with the last seen) cannot miss a change made in between
        for host_id, waiters in self._waiters.items():
            now = generations.get(host_id)  # None: the host was removed; its agent is told
            for w in waiters:
                if now != w.since and not w.woken.done():
                    w.woken.set_result(None)
