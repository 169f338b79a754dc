"""Wire models of the consoles."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator


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

    op: Literal["log", "serial", "vnc", "vnc-password", "exec"]
    instance: str = Field(pattern=r"^[A-Za-z0-9-]{1,64}$")
    max_bytes: int = Field(default=4 * 1024 * 1024, ge=0, le=64 * 1024 * 1024)
    password: str = Field(default="", max_length=64)
    expires_in: int = Field(default=60, ge=1, le=3600)
    argv: list[str] = Field(default=[], max_length=64)  # exec: the command (containers)
    timeout: int = Field(default=60, ge=1, le=3600)  # exec: seconds before it is killed


class ExecRequest(BaseModel):
    """`nubes server exec`: a command run in a container (runc exec), output bounded."""

    command: list[str] = Field(min_length=1, max_length=64)
    timeout: int = Field(default=60, ge=1, le=3600, description="seconds before it is killed")

    @field_validator("command")
    @classmethod
    def _fits(cls, v: list[str]) -> list[str]:
        # the request to the agent is one line of at most 4 KiB (agent/consoles.py)
        if sum(len(a.encode()) + 8 for a in v) > 3072:
            raise ValueError("the command is longer than 3 KiB")
        if any("\0" in a for a in v):
            raise ValueError("NUL in the command")
        return v


class ExecResult(BaseModel):
    exit_status: int  # the command's; 128+N when killed by signal N (a timeout: SIGKILL)
    stdout: str  # the last EXEC_OUTPUT_MAX bytes of each, UTF-8 with replacements
    stderr: str
    timed_out: bool = False


EXEC_OUTPUT_MAX = 1 << 20


class ChannelAnswer(BaseModel):
    """The agent's one JSON line in reply: ok, or why not."""

    ok: bool
    error: str = ""
