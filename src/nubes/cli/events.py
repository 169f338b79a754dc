"""nubes events, and the event-driven wait of `server create --wait`."""

from __future__ import annotations

from collections.abc import Generator

import typer

from nubes.cli.common import Output, OutputOpt, client, console, handle_errors
from nubes.client import ApiError, NubesClient
from nubes.schemas.events import ServerEvent

Stream = Generator[ServerEvent | None]


@handle_errors
def events(
    after: int = typer.Option(None, help="resume after this event id (0: every event kept)"),
    output: Output = OutputOpt,
) -> None:
    """Server state changes as they happen, until Ctrl-C. A dropped connection is opened again
    and resumes after the last event shown (Last-Event-ID): none is lost or shown twice."""
    try:
        for ev in client().events(after=after):
            if ev is not None:
                show_event(ev, output)
    except KeyboardInterrupt:
        pass


def show_event(ev: ServerEvent, output: Output) -> None:
    if output is Output.json:
        print(ev.model_dump_json(), flush=True)
        return
    phase = ev.status + (f"/{ev.task_state}" if ev.task_state else "")
    ready = " ready" if ev.ready and ev.status == "ACTIVE" else ""
    console.print(
        f"{ev.at:%Y-%m-%d %H:%M:%S}  #{ev.id}  {ev.name}  {ev.kind}  {phase}{ready}  {ev.server}",
        highlight=False,
    )


def changes(c: NubesClient) -> Stream | None:
    """A stream of changes, connected (what changes from now on comes on it), for a wait to
    look again when its server changed; None if the API has none (polling then)."""
    stream = c.events(reconnect=False, ticks=True)
    try:
        next(stream)  # the stream's start: connected
    except (ApiError, StopIteration):
        stream.close()
        return None
    return stream


def until_change(stream: Stream | None, server_id: str) -> bool:
    """Block until the server changed or a keepalive came (15 s at most); False when the
    stream is gone (the caller polls from then on)."""
    if stream is None:
        return False
    try:
        for ev in stream:
            if ev is None or ev.server == server_id:
                return True
    except ApiError:
        pass
    return False
