"""A server-sent events parser (the WHATWG rules nubes' stream uses: id, event, data, retry,
comments), over the lines httpx gives."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    """One dispatched block: `data` is "" for a block with no data (an id alone, a comment):
    nothing to show, but its id still counts for resuming."""

    id: str | None
    event: str
    data: str


def parse(lines: Iterable[str]) -> Iterator[Message]:
    ident: str | None = None
    data: list[str] = []
    event, seen = "", False
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if seen:
                yield Message(ident, event or "message", "\n".join(data))
            ident, event, data, seen = None, "", [], False
            continue
        seen = True
        if line.startswith(":"):
            continue  # a comment (keepalive): still a block, so the reader can look up
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id" and "\0" not in value:
            ident = value
        elif name == "event":
            event = value
        elif name == "data":
            data.append(value)
