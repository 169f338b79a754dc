"""Image imports from URLs, bounded so that no number of slow ones can starve the API.

An import from a URL downloads while its request waits. Run in the common threadpool, 40 slow
ones (a server that sends a byte a minute) held every thread: creates, and the heartbeats'
writes with them, waited, and hosts were judged down. Here at most `url_imports_at_once`
download at a time, in threads of their own; `url_imports_waiting` more wait without a thread;
any beyond are refused at once (503). Each import has a total time
(`url_import_timeout`) and size (`max_upload_bytes`) bound."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar
from weakref import WeakKeyDictionary

from anyio import CapacityLimiter, to_thread

from nubes.conf import Settings
from nubes.errors import InvalidInput, ServiceUnavailable

T = TypeVar("T")


@dataclass
class _Imports:
    running: CapacityLimiter
    admitted: int = 0  # downloading or waiting for a slot
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)


_IMPORTS: WeakKeyDictionary[asyncio.AbstractEventLoop, _Imports] = WeakKeyDictionary()


def _imports(settings: Settings) -> _Imports:
    loop = asyncio.get_running_loop()
    found = _IMPORTS.get(loop)
    if found is None:
        found = _IMPORTS[loop] = _Imports(CapacityLimiter(settings.url_imports_at_once))
    return found


@contextmanager
def admission(settings: Settings) -> Iterator[_Imports]:
    """A place for one more import while the block runs, or 503 at once (before anything is
    written). The check and the count happen on the event loop, with no await between."""
    imports = _imports(settings)
    bound = settings.url_imports_at_once + settings.url_imports_waiting
    if imports.admitted >= bound:
        raise ServiceUnavailable(
            f"url: {imports.admitted} image imports are in progress or waiting, the most this "
            "API takes; try again later",
            field="url",
        )
    imports.admitted += 1
    try:
        yield imports
    finally:
        imports.admitted -= 1


async def download(imports: _Imports, work: Callable[..., T], *args: object) -> T:
    """`work(*args)` in a download thread once one of the slots is free (waiting holds none)."""
    return await to_thread.run_sync(work, *args, limiter=imports.running)


def within(chunks: Iterator[bytes], seconds: float) -> Iterator[bytes]:
    """The chunks, as long as they come within `seconds` in all (the read timeout bounds how
    long past it one read may block)."""
    deadline = time.monotonic() + seconds
    for chunk in chunks:
        if time.monotonic() > deadline:
            raise InvalidInput(f"url: the download took longer than {seconds:g} s", field="url")
        yield chunk
