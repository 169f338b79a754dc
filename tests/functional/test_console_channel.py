"""The console channel between the API and an agent: mutual TLS from the cloud's CA.

Real sockets and TLS on loopback, a real agent ConsoleServer; the hypervisor is the fake one
with a UNIX echo socket standing in for QEMU's serial socket."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nubes import tls
from nubes.agent.consoles import CERT_FILE, KEY_FILE, ConsoleServer
from nubes.agent.layout import HostLayout
from nubes.conf import Settings
from nubes.control import consoles
from nubes.errors import Conflict, ServiceUnavailable
from nubes.hypervisor.fake import FakeHypervisorDriver
from nubes.schemas.console import ChannelRequest

HOST_ID = "11111111-2222-4333-8444-555555555555"
INSTANCE = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"


class EchoConsoles(FakeHypervisorDriver):
    """The fake hypervisor, with a serial console that echoes upper-cased."""

    def __init__(self, sock: Path) -> None:
        super().__init__()
        self.sock = sock

    def console_socket(self, instance_id: str, kind: str) -> Path | None:
        return self.sock if kind == "serial" else None


@dataclass
class Channel:
    settings: Settings  # the API's
    endpoint: consoles.Endpoint
    layout: HostLayout
    host_dir: Path


def _echo_server(path: Path, stop: threading.Event) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    server.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data.upper())
    server.close()


def _host_cert(api_tls: Path, host_dir: Path, host_id: str) -> None:
    key_pem, key = tls.make_host_key()
    cert = tls.sign_host_csr(api_tls, tls.host_csr(key, host_id), host_id)
    tls.write_private(host_dir / KEY_FILE, key_pem)
    (host_dir / CERT_FILE).write_bytes(cert)


@pytest.fixture
def channel(tmp_path: Path) -> Iterator[Channel]:
    settings = Settings(state_dir=tmp_path / "api")
    ca = tls.ensure_ca(settings.tls_dir).read_bytes()
    tls.issue_api_client_cert(settings.tls_dir)  # as the API does at start
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    _host_cert(settings.tls_dir, host_dir, HOST_ID)
    layout = HostLayout(host_dir)
    layout.make()
    layout.instance_dir(INSTANCE).mkdir(parents=True)
    layout.console_log(INSTANCE).write_bytes(b"boot\n" * 10 + b"nubes-tiny: ready\n")
    stop = threading.Event()
    echo = tmp_path / "serial.sock"
    threading.Thread(target=_echo_server, args=(echo, stop), daemon=True).start()
    context = tls.mutual_server_context(ca, host_dir / CERT_FILE, host_dir / KEY_FILE)
    server = ConsoleServer(layout, EchoConsoles(echo), context, "127.0.0.1", 0)
    port = server.start()
    ep = consoles.Endpoint("h1", "127.0.0.1", port, tls.host_server_name(HOST_ID))
    try:
        yield Channel(settings, ep, layout, host_dir)
    finally:
        server.stop()
        stop.set()


def test_the_api_reads_the_console_log_over_mutual_tls(channel: Channel) -> None:
    request = ChannelRequest(op="log", instance=INSTANCE)
    data = consoles.call(channel.settings, channel.endpoint, request)
    assert data.endswith(b"nubes-tiny: ready\n") and data.count(b"boot") == 10
    short = ChannelRequest(op="log", instance=INSTANCE, max_bytes=6)
    assert consoles.call(channel.settings, channel.endpoint, short) == b"ready\n"
    # an instance not (yet) on the host has an empty log; its serial console is refused
    other = "bbbbbbbb-bbbb-4ccc-8ddd-eeeeeeeeeeee"
    assert (
        consoles.call(channel.settings, channel.endpoint, ChannelRequest(op="log", instance=other))
        == b""
    )
    with pytest.raises(Conflict, match="not on this host"):
        consoles.call(
            channel.settings, channel.endpoint, ChannelRequest(op="serial", instance=other)
        )


def test_the_serial_stream_is_spliced_both_ways(channel: Channel) -> None:
    async def talk() -> bytes:
        request = ChannelRequest(op="serial", instance=INSTANCE)
        reader, writer = await consoles.open_stream(channel.settings, channel.endpoint, request)
        writer.write(b"hello console")
        await writer.drain()
        got = b""
        while len(got) < 13:
            got += await asyncio.wait_for(reader.read(100), 10)
        writer.close()
        return got

    assert asyncio.run(talk()) == b"HELLO CONSOLE"
    with pytest.raises(Conflict, match="no vnc console"):
        asyncio.run(
            consoles.open_stream(
                channel.settings, channel.endpoint, ChannelRequest(op="vnc", instance=INSTANCE)
            )
        )


def _answered(channel: Channel, context: ssl.SSLContext) -> bool:
    """Whether the agent answered a log request made with this TLS context. With TLS 1.3 the
    server checks the client's certificate after the client's side of the handshake is done:
    a refusal is then an alert, or a closed connection, at the first read."""
    raw = socket.create_connection(("127.0.0.1", channel.endpoint.port), timeout=10)
    line = ChannelRequest(op="log", instance=INSTANCE).model_dump_json().encode() + b"\n"
    try:
        with context.wrap_socket(raw, server_hostname=channel.endpoint.server_name) as conn:
            conn.sendall(line)
            return conn.recv(4096).startswith(b'{"ok": true')
    except (ssl.SSLError, ConnectionError):
        return False


def test_only_the_apis_client_certificate_opens_the_channel(
    channel: Channel, tmp_path: Path
) -> None:
    ca = (channel.settings.tls_dir / "ca.pem").read_bytes()
    api = consoles.client_context(channel.settings)
    assert _answered(channel, api)  # the API's own client certificate
    # no client certificate at all
    assert not _answered(channel, tls.client_context(ca))
    # another host's serving certificate, from the same CA, is not a client certificate
    other_dir = tmp_path / "other-host"
    other_dir.mkdir()
    _host_cert(channel.settings.tls_dir, other_dir, "99999999-2222-4333-8444-555555555555")
    as_host = tls.mutual_client_context(ca, other_dir / CERT_FILE, other_dir / KEY_FILE)
    assert not _answered(channel, as_host)
    # a client certificate from another CA
    stranger = tmp_path / "stranger"
    files = tls.issue_api_client_cert(stranger)
    assert not _answered(channel, tls.mutual_client_context(ca, files.cert, files.key))


def test_the_api_refuses_an_agent_serving_another_hosts_certificate(channel: Channel) -> None:
    impostor = consoles.Endpoint(
        "h2", "127.0.0.1", channel.endpoint.port, tls.host_server_name("another-host-id")
    )
    with pytest.raises(ServiceUnavailable, match="console channel"):
        consoles.call(channel.settings, impostor, ChannelRequest(op="log", instance=INSTANCE))


def test_a_signed_certificate_names_only_the_host_that_asked(tmp_path: Path) -> None:
    from cryptography import x509

    _, key = tls.make_host_key()
    pem = tls.sign_host_csr(tmp_path, tls.host_csr(key, "not-me"), HOST_ID)
    cert = x509.load_pem_x509_certificate(pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [tls.host_server_name(HOST_ID)]
    assert tls.issued_by(pem, (tmp_path / "ca.pem").read_bytes())
    with pytest.raises(ValueError, match="PEM"):
        tls.sign_host_csr(tmp_path, b"garbage", HOST_ID)


def test_a_host_down_is_a_clear_503(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "api")
    tls.issue_api_client_cert(settings.tls_dir)
    with contextlib.closing(socket.socket()) as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    ep = consoles.Endpoint("h9", "127.0.0.1", port, tls.host_server_name(HOST_ID))
    with pytest.raises(ServiceUnavailable, match="cannot reach host h9"):
        consoles.call(settings, ep, ChannelRequest(op="log", instance=INSTANCE))
