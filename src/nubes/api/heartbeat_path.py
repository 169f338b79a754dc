"""A host's own heartbeat, answered before FastAPI's routing.

A thousand hosts send one every 10 s, and under FastAPI each paid for matching the path
against every route, resolving dependencies and building a Request: most of an idle cloud's API
CPU (bench/control_plane.py, figures in docs/architecture.md). Here a heartbeat whose credential
is the host's own is one statement in a thread (control/heartbeat.py) and a bare 204. Anything
else (another credential, an unknown host, a bad path) goes on to the route, which gives the
precise 401/403/404."""

from __future__ import annotations

import re

from anyio import CapacityLimiter, to_thread
from starlette.types import ASGIApp, Receive, Scope, Send

from nubes.control import heartbeat
from nubes.control.state import AppState

_PATH = re.compile(r"/v1/agent/hosts/([0-9a-f-]{1,64})/heartbeat")

# A thousand hosts' heartbeats may not fill the threadpool: on SQLite they wait there for the
# write lock, and a request holding it needs a thread to finish (its session's close); with
# every thread a waiting heartbeat, all would wait out the lock's 30 s timeout.
HEARTBEAT_THREADS = 4


class HeartbeatFirst:
    """ASGI middleware: own-host heartbeats short of the router, everything else untouched."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state
        self.limiter: CapacityLimiter | None = None  # made in the serving event loop

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
        if not token:
            return False
        if self.limiter is None:
            self.limiter = CapacityLimiter(HEARTBEAT_THREADS)
        return await to_thread.run_sync(
            heartbeat.beat_as_own_host, self.state.engine, host_id, token, limiter=self.limiter
        )
