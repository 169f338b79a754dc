"""Request dependencies: the database session and the caller behind the bearer token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from nubes.control.caller import HOST_CREDENTIAL_PREFIX, Caller, hash_token
from nubes.control.state import AppState
from nubes.db.models import Host, HostCredential, Token
from nubes.errors import Forbidden, HostFenced, Unauthorized


# Dependencies that do no I/O are `async def`: FastAPI runs a sync one in the threadpool, a
# thread hop per dependency per request (a third of a heartbeat's cost, with 1,000 agents).
async def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.nubes
    return state


def db_session(
    request: Request, state: Annotated[AppState, Depends(app_state)]
) -> Iterator[Session]:
    """A GET only reads (no SQLite write lock taken for it); anything else may write."""
    factory = state.reads if request.method in ("GET", "HEAD") else state.sessions
    with factory() as session:
        yield session


def authenticate(state: AppState, header: str) -> Caller:
    """The caller behind an `Authorization: Bearer` header (HTTP requests and websockets).

    Its own short session: a request's main transaction must not start before it needs to."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    token = token.strip()
    with state.reads() as session:
        if token.startswith(HOST_CREDENTIAL_PREFIX):
            found = session.execute(
                select(HostCredential.host_id, Host.fenced_at)
                .join(Host, Host.id == HostCredential.host_id)
                .where(HostCredential.secret_sha256 == hash_token(token))
            ).first()
            if found is None:
                raise Unauthorized("invalid or revoked host credential")
            if found.fenced_at is not None:  # kept, to tell its agent why: see HostFenced
                raise HostFenced("this host is fenced (evacuated): destroy its guests")
            return Caller(project_id="", role="host", host_id=found.host_id)
        row = session.scalar(select(Token).where(Token.token_sha256 == hash_token(token)))
        if row is None:
            raise Unauthorized("invalid token")
        return Caller(project_id=row.project_id, role=row.role)


def any_caller(request: Request, state: Annotated[AppState, Depends(app_state)]) -> Caller:
    who = authenticate(state, request.headers.get("authorization", ""))
    request.state.caller = who  # error answers are redacted for non-admins (api/errors.py)
    return who


async def caller(who: Annotated[Caller, Depends(any_caller)]) -> Caller:
    """A user: admin or a project's member. A host's credential is for the agent API only."""
    if who.role == "host":
        raise Forbidden("a host credential may use only the agent API")
    return who


async def admin(who: Annotated[Caller, Depends(caller)]) -> Caller:
    if not who.is_admin:
        raise Forbidden("this needs an admin token")
    return who


async def agent(who: Annotated[Caller, Depends(any_caller)]) -> Caller:
    if who.role not in ("admin", "host"):
        raise Forbidden("this needs a host credential")
    return who


def require_own_host(who: Caller, host_id: str) -> None:
    """Kubernetes' node authorizer, in one line: a host speaks only for itself."""
    if who.role == "host" and who.host_id != host_id:
        raise Forbidden("a host credential speaks only for its own host", field="host")


SessionDep = Annotated[Session, Depends(db_session)]
CallerDep = Annotated[Caller, Depends(caller)]
AdminDep = Annotated[Caller, Depends(admin)]
AgentDep = Annotated[Caller, Depends(agent)]
StateDep = Annotated[AppState, Depends(app_state)]
