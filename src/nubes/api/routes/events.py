"""GET /v1/events: server state changes as server-sent events, resumable with Last-Event-ID.

A stream holds no thread and no database session while it waits: it waits on the API's watcher
(control/watch.py, the agents' long-poll wake-up) and reads the events in a worker thread,
briefly, when they came. A member sees its project's servers, an admin every project's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from nubes.api.deps import CallerDep, StateDep
from nubes.control import events
from nubes.control.state import EVENTS, AppState
from nubes.errors import InvalidInput
from nubes.schemas.events import ServerEvent

router = APIRouter(prefix="/v1/events", tags=["events"])
BATCH = 500  # events read per query
KEEPALIVE = 15.0  # seconds between comments on an idle stream (proxies, dead peers)


def _read(state: AppState, after: int, project: str | None) -> tuple[list[str], int, int]:
    """(SSE messages after `after`, the last id sent, the newest id of all)."""
    with state.reads() as session:
        rows, newest = events.after(session, after, project, BATCH)
        messages = []
        for r in rows:
            wire = ServerEvent(
                id=r.id,
                kind=r.kind,  # type: ignore[arg-type]
                server=r.server_id,
                name=r.name,
                project=r.project_id,
                status=r.status,
                task_state=r.task_state,
                ready=r.ready,
                at=r.at,
            )
            messages.append(f"id: {r.id}\nevent: server\ndata: {wire.model_dump_json()}\n\n")
        return messages, (rows[-1].id if rows else after), newest


def _start(state: AppState) -> int:
    with state.reads() as session:
        return events.newest(session)


async def _stream(state: AppState, after: int | None, project: str | None) -> AsyncIterator[str]:
    # a new client: what happens from now on
    last = after if after is not None else await to_thread.run_sync(_start, state)
    # EventSource reconnects after a second; an id alone sets the id it resumes after (the
    # stream's start), so a drop before the first event loses nothing either
    yield f"retry: 1000\nid: {last}\n\n"
    while not state.notifier.released:
        messages, last, newest = await to_thread.run_sync(_read, state, last, project)
        for m in messages:
            yield m
        if len(messages) == BATCH:
            continue  # more are waiting
        # past `newest` only what commits after this read: the watcher wakes us for it
        if not await state.notifier.wait(EVENTS, newest, KEEPALIVE):
            yield ": keepalive\n\n"


def _last_id(header: str | None, after: int | None) -> int | None:
    if header is None or not header.strip():
        return after
    try:
        value = int(header)
    except ValueError:
        raise InvalidInput("Last-Event-ID: not an event id", field="Last-Event-ID") from None
    if value < 0:
        raise InvalidInput("Last-Event-ID: not an event id", field="Last-Event-ID")
    return value


@router.get("", response_class=StreamingResponse, include_in_schema=False)
async def stream_events(
    who: CallerDep,
    state: StateDep,
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[
        int | None, Query(ge=0, le=2**62, description="resume after this id (0: all kept)")
    ] = None,
) -> StreamingResponse:
    """Never ends by itself (a comment every 15 s when idle). Without Last-Event-ID or `after`
    it starts at the newest event; with one, every kept event after it comes first."""
    start = _last_id(last_event_id, after)
    project = None if who.is_admin else who.project_id
    return StreamingResponse(
        _stream(state, start, project),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )
