"""What every OpenStack route shares: routers that answer with and without a trailing slash,
errors in each service's own shape, the caller behind `X-Auth-Token`, loose body parsing and
the clients' time formats."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from nubes.api import redact
from nubes.api.deps import StateDep
from nubes.control.caller import Caller
from nubes.errors import BadRequest, NubesError, Unauthorized
from nubes.openstack import tokens
from nubes.schemas.common import first_problem

log = logging.getLogger("nubes.api")


class NotAcceptable(NubesError):
    status = 406
    title = "Not acceptable"


Handler = Callable[[Request], Coroutine[Any, Any, Response]]

# Nova's fault names by status (nova/api/openstack/wsgi.py's shape)
NOVA_FAULTS = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "itemNotFound",
    405: "badMethod",
    406: "notAcceptable",
    409: "conflictingRequest",
    413: "overLimit",
    415: "badMediaType",
    501: "notImplemented",
    503: "serviceUnavailable",
}
TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}
NEUTRON_TYPES = {400: "HTTPBadRequest", 401: "HTTPUnauthorized", 403: "HTTPForbidden"}
NEUTRON_TYPES |= {404: "HTTPNotFound", 409: "HTTPConflict", 503: "HTTPServiceUnavailable"}


def error_body(service: str, status: int, message: str) -> dict[str, Any]:
    if service == "compute":
        return {NOVA_FAULTS.get(status, "computeFault"): {"code": status, "message": message}}
    if service == "network":
        kind = NEUTRON_TYPES.get(status, "HTTPInternalServerError")
        return {"NeutronError": {"type": kind, "message": message, "detail": ""}}
    title = TITLES.get(status, "Error")
    if service == "identity":
        return {"error": {"code": status, "message": message, "title": title}}
    return {"code": status, "title": title, "message": message}  # Glance


def error(service: str, status: int, message: str) -> JSONResponse:
    return JSONResponse(error_body(service, status, message), status_code=status)


def _as_error(service: str, request: Request, exc: Exception) -> JSONResponse | None:
    """The service's error answer for what a handler raised (None: not ours to answer)."""
    if isinstance(exc, NubesError):
        if exc.status >= 500:
            log.error("%s: %s", type(exc).__name__, exc.message)
        status = 400 if exc.status == 422 else exc.status  # OpenStack says 400 for bad input
        who = getattr(request.state, "caller", None)
        return error(service, status, redact.for_caller(who, exc.message))
    if isinstance(exc, RequestValidationError | ValidationError):
        return error(service, 400, first_problem(exc.errors())[1])
    if isinstance(exc, HTTPException):
        return error(service, exc.status_code, str(exc.detail))
    return None


def route_class(service: str, before: Callable[[Request], None] | None = None) -> type[APIRoute]:
    """A route class whose errors come in `service`'s shape. `before` runs first and may
    refuse the request (compute's microversion check); headers it leaves in
    `request.state.os_headers` go on every answer, errors included."""

    class OsRoute(APIRoute):
        def get_route_handler(self) -> Handler:
            inner = super().get_route_handler()

            async def handler(request: Request) -> Response:
                try:
                    if before is not None:
                        before(request)
                    response = await inner(request)
                except Exception as exc:
                    answer = _as_error(service, request, exc)
                    if answer is None:
                        raise
                    response = answer
                for name, value in getattr(request.state, "os_headers", {}).items():
                    response.headers[name] = value
                return response

            return handler

    return OsRoute


class OsRouter(APIRouter):
    """Every path also answers with a trailing slash (no 307 redirects for a POST)."""

    def add_api_route(self, path: str, endpoint: Callable[..., Any], **kw: Any) -> None:
        super().add_api_route(path, endpoint, **kw)
        if not path.endswith("/"):
            other = dict(kw, include_in_schema=False, name=f"{kw.get('name') or path}-slash")
            super().add_api_route(path + "/", endpoint, **other)


def make_router(service: str, prefix: str, before: Callable[[Request], None] | None = None) -> Any:
    """Out of /openapi.json: OpenStack's own API reference documents these routes, and they
    authenticate by X-Auth-Token, not by the bearer token the rest of the document uses."""
    return OsRouter(
        prefix=prefix,
        route_class=route_class(service, before),
        tags=[f"openstack {service}"],
        include_in_schema=False,
    )


def os_caller(request: Request, state: StateDep) -> Caller:
    token = request.headers.get("x-auth-token", "").strip()
    if not token:
        raise Unauthorized("X-Auth-Token is missing: get a token from /identity/v3/auth/tokens")
    who = tokens.verify(state, token)
    request.state.caller = who  # error answers are redacted for non-admins
    return who


OsCaller = Annotated[Caller, Depends(os_caller)]


# --- bodies: permissive about what they do not know, precise about what is wrong ---


def section(body: Any, key: str) -> dict[str, Any]:
    value = body.get(key) if isinstance(body, dict) else None
    if not isinstance(value, dict):
        raise BadRequest(f"{key}: the body needs a {key!r} object", field=key)
    return value


def text(d: dict[str, Any], key: str, *, required: bool = False, where: str = "") -> str | None:
    field = f"{where}.{key}" if where else key
    value = d.get(key)
    if value is None:
        if required:
            raise BadRequest(f"{field}: required", field=field)
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{field}: must be a string", field=field)
    if "\0" in value:  # PostgreSQL refuses NUL even in a lookup: it would be a 500
        raise BadRequest(f"{field}: NUL characters are not allowed", field=field)
    return value


def integer(d: dict[str, Any], key: str, where: str = "") -> int | None:
    value = d.get(key)
    field = f"{where}.{key}" if where else key
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise BadRequest(f"{field}: must be an integer", field=field)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{field}: must be an integer", field=field) from None


def flag(value: Any) -> bool | None:
    """Booleans as clients send them: true, "True", "false", "0", "None" (no filter)."""
    if isinstance(value, bool) or value is None:
        return value
    low = str(value).strip().lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    return None


def last_segment(ref: str) -> str:
    """imageRef and flavorRef may be links: their last segment is the id."""
    return ref.rstrip("/").rsplit("/", 1)[-1]


def limit_of(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        n = int(value)
    except ValueError:
        raise BadRequest("limit: must be an integer", field="limit") from None
    if n < 0:
        raise BadRequest("limit: must not be negative", field="limit")
    return n


def page(rows: list[Any], marker: str | None, limit: int | None, key: str = "id") -> list[Any]:
    """The rows after `marker` (by `key`), at most `limit` of them; an unknown marker: 400."""
    if marker:
        ids = [getattr(r, key) if not isinstance(r, dict) else r[key] for r in rows]
        if marker not in ids:
            raise BadRequest(f"marker: {marker!r} not found", field="marker")
        rows = rows[ids.index(marker) + 1 :]
    return rows if limit is None else rows[:limit]


# --- times ---


def iso_z(when: datetime | None) -> str | None:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ") if when else None


def usage_time(when: datetime | None) -> str | None:
    """OS-SRV-USG times: no zone (Terraform breaks on a Z)."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f") if when else None


def derived_id(kind: str, of: str) -> str:
    """A stable id for something nubes does not store (a network's subnet, a service)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"nubes:{kind}:{of}"))
