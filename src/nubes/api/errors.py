"""Exceptions to application/problem+json. Users never see a traceback or a host path."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from nubes.api import redact
from nubes.errors import NubesError
from nubes.schemas.common import first_problem

log = logging.getLogger("nubes.api")
PROBLEM = "application/problem+json"


def problem(
    status: int, title: str, detail: str, field: str | None = None, kind: str = "about:blank"
) -> JSONResponse:
    body: dict[str, object] = {"type": kind, "title": title, "status": status}
    body["detail"] = detail
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


class RejectNul:
    """ASGI middleware: a NUL in the path or query string gets a 422 before any route runs
    (PostgreSQL's driver refuses NUL even as a query parameter: it would be a 500)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query: bytes = scope.get("query_string", b"")
            if "\0" in scope["path"] or b"%00" in query or b"\0" in query:
                answer = problem(422, "Invalid input", "url: NUL characters are not allowed", "url")
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)


def install(app: FastAPI) -> None:
    app.add_middleware(RejectNul)

    @app.exception_handler(NubesError)
    async def _nubes(request: Request, exc: NubesError) -> JSONResponse:
        if exc.status >= 500:
            log.error("%s: %s", type(exc).__name__, exc.message)
        detail = redact.for_caller(getattr(request.state, "caller", None), exc.message)
        if detail != exc.message:
            log.info("answered %d with a redacted detail: %s", exc.status, exc.message)
        return problem(exc.status, exc.title, detail, exc.field, exc.type)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        field, detail = first_problem(exc.errors())
        return problem(422, "Invalid input", detail, field)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        title, field = getattr(exc, "title", "Error"), getattr(exc, "field", None)
        return problem(exc.status_code, title, str(exc.detail), field)

    @app.exception_handler(OperationalError)
    async def _db_down(_: Request, exc: OperationalError) -> JSONResponse:
        log.error("database unavailable: %s", exc.orig)
        return problem(503, "Service unavailable", "the database is unavailable; try again")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return problem(500, "Internal error", "an unexpected error occurred; see the API log")
