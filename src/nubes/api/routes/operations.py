from __future__ import annotations

import json

from fastapi import APIRouter, Query
from sqlalchemy import select

from nubes.api import redact
from nubes.api.deps import Caller, CallerDep, SessionDep
from nubes.api.paging import PageDep, paginate
from nubes.control import lookup
from nubes.db.models import Instance, Operation
from nubes.errors import NotFound
from nubes.schemas import resources as s

router = APIRouter(prefix="/v1/operations", tags=["operations"])


def to_wire(op: Operation, who: Caller) -> s.Operation:
    return s.Operation(
        id=op.id,
        kind=op.kind,
        server_id=op.instance_id,
        status=op.status,
        holder=op.holder,
        steps=[s.OperationStep(**step) for step in json.loads(op.steps)],
        error=redact.for_caller(who, op.error),
        created_at=op.created_at,
        updated_at=op.updated_at,
    )


@router.get("")
def list_operations(
    session: SessionDep,
    who: CallerDep,
    page: PageDep,
    server: str | None = Query(default=None, max_length=64, description="server name or id"),
) -> list[s.Operation]:
    """Newest first (then by id), a page at a time (api/paging.py)."""
    query = select(Operation).where(Operation.project_id == who.project_id)
    if server:
        query = query.where(
            Operation.instance_id == lookup.owned(session, Instance, server, who, "server").id
        )
    keys = (Operation.created_at, Operation.id)
    rows = paginate(session, query, keys, page, descending=True)
    return [to_wire(op, who) for op in rows]


@router.get("/{op_id}")
def show_operation(op_id: str, session: SessionDep, who: CallerDep) -> s.Operation:
    op = session.get(Operation, op_id)
    if op is None or op.project_id != who.project_id:
        raise NotFound(f"operation {op_id!r} not found", field="id")
    return to_wire(op, who)
