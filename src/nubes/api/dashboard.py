"""The web dashboard at /ui: static files of this package (plain HTML and ES modules, no build
step) and noVNC from Debian's novnc package under /ui/novnc; both with strict headers.

The page holds the user's token in sessionStorage and sends it as a Bearer header: no cookie,
so no cross-site request can act for the user. Its console is api/routes/browser_console.py.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

NOVNC_DIR = Path("/usr/share/novnc")
# scripts only from files of this origin (no inline script, no eval); WebSockets to this
# origin only; no framing (clickjacking) and no form posts elsewhere
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'; object-src 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]


class SecurityHeaders:
    """Adds HEADERS to every answer of the wrapped app (pure ASGI: files stream as they are)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def _no_novnc(novnc_dir: Path) -> ASGIApp:
    async def missing(scope: Scope, receive: Receive, send: Send) -> None:
        answer = PlainTextResponse(
            f"noVNC is not installed on the API's machine ({novnc_dir} is missing): "
            "`apt-get install novnc` gives the dashboard its console",
            status_code=404,
        )
        await answer(scope, receive, send)

    return missing


def install(app: FastAPI, novnc_dir: Path = NOVNC_DIR) -> None:
    static = Path(str(resources.files("nubes.api").joinpath("ui")))
    novnc: ASGIApp = (
        StaticFiles(directory=novnc_dir) if novnc_dir.is_dir() else _no_novnc(novnc_dir)
    )
    # the longer prefix first: Starlette matches mounts in order
    app.mount("/ui/novnc", SecurityHeaders(novnc), name="novnc")
    app.mount("/ui", SecurityHeaders(StaticFiles(directory=static, html=True)), name="ui")

    @app.get("/ui", include_in_schema=False)
    def ui_root() -> RedirectResponse:
        return RedirectResponse("/ui/")
