"""Wire models of the consoles."""

from __future__ import annotations

from pydantic import BaseModel


class VncAccess(BaseModel):
    password: str  # one-time: new connections may use it for expires_in seconds
    expires_in: int
    websocket: str  # API path of the VNC stream (binary frames, bearer token)
