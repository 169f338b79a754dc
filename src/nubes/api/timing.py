"""ASGI middleware: each HTTP request's latency into /metrics, labelled by the route's path
template (`/v1/servers/{ref}`), never the raw path: label values stay as few as the routes."""

from __future__ import annotations

import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nubes.control.metrics import Metrics

UNMATCHED = "unmatched"  # a 404 on no route, or an answer before routing (413, NUL)
# answered short of the router (api/heartbeat_path.py), so no route in the scope
HEARTBEAT = re.compile(r"/v1/agent/hosts/[^/]+/heartbeat")
HEARTBEAT_ROUTE = "/v1/agent/hosts/{host_id}/heartbeat"  # its route's own template


class RequestTimer:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            # the router put the matched route in the scope it shares with us
            route = getattr(scope.get("route"), "path", None)
            if route is None:
                route = HEARTBEAT_ROUTE if HEARTBEAT.fullmatch(scope["path"]) else UNMATCHED
            if route != "/v1/events":  # a stream's length says nothing of latency
                self.metrics.requests.labels(route, scope["method"], f"{status // 100}xx").observe(
                    time.perf_counter() - start
                )
