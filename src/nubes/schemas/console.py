"""Wire models of the consoles."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class VncAccess(BaseModel):
    password: str  # one-time: new connections may use it for expires_in seconds
    expires_in: int
    websocket: str  # API path of the VNC stream (binary frames, bearer token)


class ConsoleTicket(BaseModel):
    """What a browser needs to open a VNC console: the WebSocket path carries only the one-time
    ticket; the VNC password is one-time too."""

    websocket: str  # API path, ticket included: good once, for expires_in seconds
    expires_in: int
    password: str


class ChannelRequest(BaseModel):
    """The first line the API sends on its TLS channel to an agent (one JSON object).

    `log`: the console log's last max_bytes, then the agent closes. `serial`, `vnc`: raw bytes
    both ways after the answer. `vnc-password`: sets a one-time VNC password."""

    op: Literal["log", "serial", "vnc", "vnc-password"]
    instance: str = Field(pattern=r"^[A-Za-z0-9-]{1,64}$")
    max_bytes: int = Field(default=4 * 1024 * 1024, ge=0, le=64 * 1024 * 1024)
    password: str = Field(default="", max_length=64)
    expires_in: int = Field(default=60, ge=1, le=3600)


class ChannelAnswer(BaseModel):
    """The agent's one JSON line in reply: ok, or why not."""

    ok: bool
    error: str = ""
