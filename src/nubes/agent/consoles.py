"""The agent's console channel: the API reaches an instance's console log, serial port and VNC
here, over mutual TLS, and never through a shared filesystem.

The agent listens on its host address (NUBES_AGENT_CONSOLE_PORT, 8775) with a serving
certificate the cloud's CA issued for this host's id (`ensure_certificate`), and accepts only
a client certificate from that CA made for client authentication with the API's name: what the
kubelet's port is to the Kubernetes API server. A connection carries one request (a JSON line,
`schemas.console.ChannelRequest`), the agent answers one JSON line, then, for `serial` and
`vnc`, splices the connection to QEMU's UNIX socket until either side closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import ssl
import threading
from pathlib import Path

from pydantic import ValidationError

from nubes import tls
from nubes.agent.layout import HostLayout
from nubes.client import NubesClient
from nubes.errors import DriverError
from nubes.hypervisor.base import HypervisorDriver
from nubes.schemas.console import EXEC_OUTPUT_MAX, ChannelAnswer, ChannelRequest, ExecResult
from nubes.storage import consolelog

log = logging.getLogger("nubes.agent.consoles")
CERT_FILE, KEY_FILE = "console.pem", "console.key"
RENEW_BEFORE = dt.timedelta(days=30)
REQUEST_LIMIT = 4096  # bytes of the request line
REQUEST_TIMEOUT = 10.0
CHUNK = 64 * 1024


def ensure_certificate(client: NubesClient, host_dir: Path, host_id: str, ca_pem: bytes) -> None:
    """A serving certificate for this host, asked for when missing, near its end, or made by
    another CA. The private key is made here and never leaves the host."""
    cert, key = host_dir / CERT_FILE, host_dir / KEY_FILE
    if cert.exists() and key.exists():
        pem = cert.read_bytes()
        fresh = tls.cert_expires(pem) - dt.datetime.now(dt.UTC) > RENEW_BEFORE
        if fresh and tls.issued_by(pem, ca_pem):
            return
    key_pem, private = tls.make_host_key()
    signed = client.host_certificate(host_id, tls.host_csr(private, host_id).decode())
    tls.write_private(key, key_pem)
    cert.write_bytes(signed.encode())


class ConsoleServer:
    """The listener, on an event loop of its own thread (the agent's main loop is sync)."""

    def __init__(
        self,
        layout: HostLayout,
        hypervisor: HypervisorDriver,
        context: ssl.SSLContext,
        address: str,
        port: int,
    ) -> None:
        self.layout, self.hypervisor, self.context = layout, hypervisor, context
        self.address, self.port = address, port
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Listen; the port bound (port 0 asks the kernel for a free one)."""
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, self.address, self.port, ssl=self.context)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        log.info("consoles served on %s:%d (mutual TLS)", self.address, self.port)
        return self.port

    def stop(self) -> None:
        if self._server is None:
            return
        server = self._server

        async def close() -> None:
            server.close()
            await server.wait_closed()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            peer = writer.get_extra_info("peercert")
            if tls.peer_common_name(peer) != tls.API_CLIENT_NAME:
                await _answer(writer, "only the cloud's API may open consoles here")
                return
            try:
                line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
                request = ChannelRequest.model_validate_json(line[:REQUEST_LIMIT])
            except (TimeoutError, ValueError, ValidationError) as exc:
                await _answer(writer, f"bad request: {str(exc)[:200]}")
                return
            await self._serve(request, reader, writer)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            log.debug("console channel closed: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(
        self, request: ChannelRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        here = self.layout.instance_dir(request.instance).is_dir()
        if request.op == "log":  # an instance still being built has an empty log
            path = self.layout.console_log(request.instance)
            try:
                data = await asyncio.to_thread(consolelog.read_tail, path, request.max_bytes)
            except OSError:
                data = b""
            await _answer(writer)
            writer.write(data if here else b"")
            await writer.drain()
        elif not here:
            await _answer(writer, f"instance {request.instance} is not on this host")
        elif request.op == "exec":
            try:
                argv = self.hypervisor.exec_argv(request.instance, request.argv)
            except DriverError as exc:
                await _answer(writer, str(exc))
                return
            await _answer(writer)
            result = await _run(argv, request.timeout)
            writer.write(result.model_dump_json().encode() + b"\n")
            await writer.drain()
        elif request.op == "vnc-password":
            try:
                await asyncio.to_thread(
                    self.hypervisor.set_vnc_password,
                    request.instance,
                    request.password,
                    request.expires_in,
                )
            except DriverError as exc:
                await _answer(writer, str(exc))
                return
            await _answer(writer)
        else:
            await self._splice(request, reader, writer)

    async def _splice_process(
        self, argv: list[str], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            await _splice_process_io(argv, reader, writer)
        except OSError as exc:
            await _answer(writer, f"no console: {exc}")

    async def _splice(
        self, request: ChannelRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if request.op == "serial":  # a container's console: a shell on a pty of its own
            try:
                argv = self.hypervisor.exec_argv(request.instance, ["/bin/sh"], tty=True)
            except DriverError:
                argv = []  # a VM: its serial port
            if argv:
                await self._splice_process(argv, reader, writer)
                return
        path = self.hypervisor.console_socket(request.instance, request.op)
        try:
            if path is None:
                raise OSError("this hypervisor has no such console")
            q_reader, q_writer = await asyncio.open_unix_connection(str(path))
        except OSError as exc:
            await _answer(writer, f"no {request.op} console: is the server running? ({exc})")
            return
        await _answer(writer)
        pumps = [
            asyncio.create_task(_pump(reader, q_writer)),
            asyncio.create_task(_pump(q_reader, writer)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            q_writer.close()
            with contextlib.suppress(Exception):
                await q_writer.wait_closed()


async def _splice_process_io(
    argv: list[str], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    await _answer(writer)
    pumps = [
        asyncio.create_task(_pump_to_process(reader, proc.stdin)),
        asyncio.create_task(_pump(proc.stdout, writer)),
    ]
    try:
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in pumps:
            task.cancel()
        if proc.returncode is None:
            proc.kill()  # runc exec passes it on to the shell
        await proc.wait()


async def _pump_to_process(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    while data := await source.read(CHUNK):
        sink.write(data)
        await sink.drain()
    sink.close()


async def _run(argv: list[str], timeout: int) -> ExecResult:
    """Run to the end or the timeout (then SIGKILL: runc exec passes it on); the last
    EXEC_OUTPUT_MAX bytes of stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    timed_out = False
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        timed_out = True
        proc.kill()
        out, err = await proc.communicate()
    code = proc.returncode if proc.returncode is not None else -1
    return ExecResult(
        exit_status=128 - code if code < 0 else code,
        stdout=out[-EXEC_OUTPUT_MAX:].decode(errors="replace"),
        stderr=err[-EXEC_OUTPUT_MAX:].decode(errors="replace"),
        timed_out=timed_out,
    )


async def _answer(writer: asyncio.StreamWriter, error: str = "") -> None:
    answer = ChannelAnswer(ok=not error, error=error)
    writer.write(json.dumps(answer.model_dump()).encode() + b"\n")
    await writer.drain()


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    while data := await source.read(CHUNK):
        sink.write(data)
        await sink.drain()
