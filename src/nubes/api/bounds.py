"""Request bodies bounded before anything reads them: authentication, routing, validation.

Without it a client with no token could send a body of any size and the API read it whole
(200 MiB took 100 s) before answering 401. Here a body larger than `max_body_bytes` is refused
with 413 as soon as its Content-Length says so, or as soon as a chunked body passes the bound,
whoever sends it. Uploads of image data are the one exception: they are streamed to disk by
their route (after authentication), bounded by `max_upload_bytes` and by the space left on the
image store's disk."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nubes.api.errors import problem

# an image's data (/v1 and Glance's), streamed to disk by its route
UPLOAD_PATHS = re.compile(
    r"/v1/images/[^/]+/(file|kernel|initrd)|/image/v2/images/[^/]+/file/?"
    r"|/v1/agent/hosts/[^/]+/snapshots/[^/]+"  # a host's upload of a server's snapshot
)
KEEP_FREE = 64 << 20  # an upload may not leave the image store's disk with less than this


class BodyTooLarge(HTTPException):
    """A body went past its bound while being read (an HTTPException, so that FastAPI's body
    reading lets it through: anything else there becomes a 400)."""

    title = "Request too large"

    def __init__(self, why: str) -> None:
        super().__init__(413, why)
        self.field = why.split(":", 1)[0]


def upload_room(images_dir: Path, max_upload_bytes: int) -> int:
    """The largest upload the image store takes now: the setting, and the space left."""
    free = shutil.disk_usage(images_dir).free - KEEP_FREE
    return max(0, min(max_upload_bytes, free))


class BoundedBodies:
    """ASGI middleware: 413 for a body over its bound, before any route runs."""

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, max_upload_bytes: int, images_dir: Path
    ) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.max_upload = max_upload_bytes
        self.images_dir = images_dir

    def bound(self, scope: Scope) -> tuple[int, str]:
        if scope["method"] == "PUT" and UPLOAD_PATHS.fullmatch(scope["path"]):
            room = upload_room(self.images_dir, self.max_upload)
            return room, f"file: the upload is larger than the {room} bytes the image store takes"
        return self.max_body, f"body: larger than {self.max_body} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, why = self.bound(scope)
        length = _content_length(scope)
        if length is not None and length > limit:
            await _refuse(scope, receive, send, why)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(why)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started |= message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            if started:
                raise
            await _refuse(scope, receive, send, why)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(scope: Scope, receive: Receive, send: Send, why: str) -> None:
    answer = problem(413, BodyTooLarge.title, why, why.split(":", 1)[0])
    answer.headers["connection"] = "close"  # what the client still sends is not read
    await answer(scope, receive, send)
