"""The wire shape of a server event (GET /v1/events, one per SSE `data:` line)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel


class ServerEvent(BaseModel):
    id: int  # also the SSE `id:`; send it back as Last-Event-ID to resume after it
    kind: Literal["create", "update", "delete"]
    server: str  # the server's id
    name: str
    project: str
    status: str
    task_state: str
    ready: bool  # the guest said it is ready (what `server create --wait` waits for)
    at: datetime
