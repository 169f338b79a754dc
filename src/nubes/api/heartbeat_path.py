"""A host's own heartbeat, answered before FastAPI's routing, and written with its neighbours'.

A thousand hosts send one every 10 s. Under FastAPI each paid for matching the path against
every route, resolving dependencies and building a Request: most of an idle cloud's API CPU.
And each was a write transaction of its own: a hundred a second, on SQLite each taking the one
write lock, so a user's create queued behind them (bench/control_plane.py, figures in
docs/architecture.md). Here the heartbeats that arrive within `GATHER_SECONDS` are checked and
written in one transaction (group commit, control/heartbeat.py), and each is answered 204 once
that transaction has committed, as before. Anything else (another credential, an unknown host,
a bad path) goes on to the route, which gives the precise 401/403/404."""

from __future__ import annotations

import asyncio
import re

from anyio import to_thread
from sqlalchemy import Engine
from starlette.types import ASGIApp, Receive, Scope, Send

from nubes.api.agent_lane import in_background
from nubes.control import heartbeat
from nubes.control.state import AppState

_PATH = re.compile(r"/v1/agent/hosts/([0-9a-f-]{1,64})/heartbeat")

# a heartbeat waits at most this long for others to share its transaction: small beside the
# heartbeat interval (10 s) and the down time (60 s), large beside 100 arrivals a second
GATHER_SECONDS = 0.2
BATCH_MAX = 500  # hosts in one statement (SQLite's bound on parameters is far above)


class GroupCommit:
    """Heartbeats gathered for a moment, then checked and written in one transaction; each
    caller learns whether its own was its host's. One transaction runs at a time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.loop = asyncio.get_running_loop()
        self.pending: dict[str, tuple[str, asyncio.Future[bool]]] = {}
        self.flusher: asyncio.Task[None] | None = None

    async def beat(self, host_id: str, sha256: str) -> bool:
        earlier = self.pending.get(host_id)
        if earlier is not None and earlier[0] == sha256:
            return await asyncio.shield(earlier[1])  # the same host twice: one write
        if earlier is not None:
            # another credential for the same host: the route judges the newcomer alone
            return False
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.pending[host_id] = (sha256, future)
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.create_task(self._flush())
        # shielded: a caller gone away does not cancel what the others wait for
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        try:
            await self._flush_pending()
        finally:
            # ended by anything else (cancelled at shutdown, a bug): no caller waits forever, and
            # no later heartbeat of the same host joins a future nobody will resolve
            left, self.pending = self.pending, {}
            for _, future in left.values():
                if not future.done():
                    future.set_exception(RuntimeError("heartbeat not written"))

    async def _flush_pending(self) -> None:
        while self.pending:
            await asyncio.sleep(GATHER_SECONDS)
            batch = dict(list(self.pending.items())[:BATCH_MAX])
            for host_id in batch:
                del self.pending[host_id]
            try:
                good = await to_thread.run_sync(
                    in_background,
                    heartbeat.beat_own_hosts,
                    self.engine,
                    {h: s for h, (s, _) in batch.items()},
                )
            except Exception as exc:  # the database failed them all: each caller gets a 500
                for _, future in batch.values():
                    future.set_exception(exc)
                continue
            for host_id, (_, future) in batch.items():
                future.set_result(host_id in good)


class HeartbeatFirst:
    """ASGI middleware: own-host heartbeats short of the router, everything else untouched."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state
        self.commits: GroupCommit | None = None  # made in the serving event loop, below

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            found = _PATH.fullmatch(scope["path"])
            if found and await self._beat(found.group(1), scope):
                await send({"type": "http.response.start", "status": 204, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
        await self.app(scope, receive, send)

    async def _beat(self, host_id: str, scope: Scope) -> bool:
        token = ""
        for name, value in scope["headers"]:
            if name == b"authorization":
                token = value.decode("latin-1").partition(" ")[2].strip()
        sha256 = heartbeat.credential_sha256(token)
        if sha256 is None:
            return False
        if self.commits is None or self.commits.loop is not asyncio.get_running_loop():
            # (a test's client may serve each request in an event loop of its own)
            self.commits = GroupCommit(self.state.engine)
        return await self.commits.beat(host_id, sha256)
