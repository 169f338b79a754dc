"""The API's side of the console channel: it dials the agent that holds the instance.

Mutual TLS with the cloud's CA (the agent's side and the reasons are in agent/consoles.py):
the API checks the agent's certificate names that host's id (`tls.host_server_name`), the
agent checks the API's client certificate. Nothing is read from a host's disk or /run.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass

from nubes import tls
from nubes.conf import Settings
from nubes.db.models import Host
from nubes.errors import Conflict, ServiceUnavailable
from nubes.schemas.console import ChannelAnswer, ChannelRequest

CONNECT_TIMEOUT = 10.0
ANSWER_LIMIT = 4096


@dataclass(frozen=True)
class Endpoint:
    host_name: str
    address: str
    port: int
    server_name: str


def endpoint(host: Host) -> Endpoint:
    if not host.console_port:
        raise Conflict(
            f"host {host.name} serves no consoles (its agent could not listen: see its log)",
            field="server",
        )
    return Endpoint(
        host.name, host.address or "127.0.0.1", host.console_port, tls.host_server_name(host.id)
    )


def client_context(settings: Settings) -> ssl.SSLContext:
    """Trusts the cloud's CA alone and presents the API's client certificate, which the API
    issues at each start (`tls.issue_api_client_cert`, from create_app): made once, by one
    process, never by two requests at a time."""
    directory = settings.tls_dir
    cert, key = directory / "api-client.pem", directory / "api-client.key"
    return tls.mutual_client_context((directory / "ca.pem").read_bytes(), cert, key)


def _line(request: ChannelRequest) -> bytes:
    return request.model_dump_json().encode() + b"\n"


def _check(ep: Endpoint, line: bytes) -> None:
    try:
        answer = ChannelAnswer.model_validate_json(line)
    except ValueError as exc:
        raise ServiceUnavailable(f"host {ep.host_name} answered the console channel badly") from exc
    if not answer.ok:
        raise Conflict(f"host {ep.host_name}: {answer.error}", field="server")


def _unreachable(ep: Endpoint, exc: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"cannot reach host {ep.host_name}'s console channel at {ep.address}:{ep.port}: {exc}"
    )


def call(
    settings: Settings, ep: Endpoint, request: ChannelRequest, wait: float = CONNECT_TIMEOUT
) -> bytes:
    """One request that ends with the agent's data (`log`, `vnc-password`, `exec`), from a
    sync route; `wait`: how long the agent may take to answer after the connection."""
    try:
        raw = socket.create_connection((ep.address, ep.port), timeout=CONNECT_TIMEOUT)
        raw.settimeout(wait)
        with client_context(settings).wrap_socket(raw, server_hostname=ep.server_name) as conn:
            conn.sendall(_line(request))
            stream = conn.makefile("rb")
            _check(ep, stream.readline(ANSWER_LIMIT))
            return stream.read(request.max_bytes) or b""
    except (OSError, ssl.SSLError) as exc:
        raise _unreachable(ep, exc) from exc


async def open_stream(
    settings: Settings, ep: Endpoint, request: ChannelRequest
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A `serial` or `vnc` stream to the agent, ready for raw bytes both ways."""
    context = await asyncio.to_thread(client_context, settings)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                ep.address, ep.port, ssl=context, server_hostname=ep.server_name
            ),
            CONNECT_TIMEOUT,
        )
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        raise _unreachable(ep, exc) from exc
    try:
        writer.write(_line(request))
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), CONNECT_TIMEOUT)
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        writer.close()
        raise _unreachable(ep, exc) from exc
    try:
        _check(ep, line)
    except BaseException:
        writer.close()
        raise
    return reader, writer
