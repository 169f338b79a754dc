"""Idempotency-Key on creates: the same key and body give the same answer; another body, 409."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from nubes.control.caller import Caller
from nubes.control.state import AppState
from nubes.db.models import IdempotencyKey
from nubes.errors import Conflict, InvalidInput

HEADER = "idempotency-key"
M = TypeVar("M", bound=BaseModel)


def request_digest(request: Request, body: BaseModel) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(f"{request.method} {request.url.path} {canonical}".encode()).hexdigest()


def _replay(state: AppState, who: Caller, key: str, digest: str) -> JSONResponse | None:
    with state.sessions() as session:
        row = session.scalar(
            select(IdempotencyKey).where(
                IdempotencyKey.project_id == who.project_id, IdempotencyKey.key == key
            )
        )
        if row is None:
            return None
        if row.request_sha256 != digest:
            raise Conflict(
                "Idempotency-Key was already used with a different request", field="Idempotency-Key"
            )
        return JSONResponse(json.loads(row.response), status_code=row.status_code)


Store = Callable[[Session, BaseModel], None]


def run_once(
    state: AppState,
    who: Caller,
    request: Request,
    body: BaseModel,
    status: int,
    run: Callable[[Store | None], M],
) -> M | JSONResponse:
    """Without the header: just run. With it: replay a stored answer, or run and store it.

    `run` gets a `store(session, answer)` to call inside its own transaction, so the answer is
    kept exactly when the create is: after a crash between the two, a retry would find the
    resource made but no answer, and fail on its name.
    """
    key = request.headers.get(HEADER)
    if key is None:
        return run(None)
    if not 1 <= len(key) <= 255:
        raise InvalidInput("Idempotency-Key must be 1 to 255 characters", field="Idempotency-Key")
    digest = request_digest(request, body)
    replay = _replay(state, who, key, digest)
    if replay is not None:
        return replay

    def store(session: Session, answer: BaseModel) -> None:
        session.add(
            IdempotencyKey(
                project_id=who.project_id,
                key=key,
                request_sha256=digest,
                status_code=status,
                response=answer.model_dump_json(),
            )
        )

    try:
        return run(store)
    except Conflict:
        # a racing request with the same key committed first (its name, or the key, is taken
        # now): that one wins
        replay = _replay(state, who, key, digest)
        if replay is not None:
            return replay
        raise
