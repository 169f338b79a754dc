"""The metadata HTTP server inside the agent: one listener per served network.

Each listener is a TCP socket on 169.254.169.254:80 made inside the network's gateway namespace
and bound to its device there (SO_BINDTODEVICE), so an accepted connection can only have come
from that network, and its replies go back to it (tenants with the same CIDR on one host stay
apart). IP_FREEBIND lets it bind before the address is up. The answer depends on (network,
source address) only.
"""

from __future__ import annotations

import logging
import socket
import threading
from contextlib import nullcontext
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from nubes.metadata.content import METADATA_IP, Answer, MetadataTable, answer, lookup
from nubes.network import netns

log = logging.getLogger("nubes.metadata")
IP_FREEBIND = 15  # linux/in.h; not exported by the socket module
Endpoint = tuple[str | None, str]  # (network namespace, None for ours; device)


class MetadataService:
    """The table the agent keeps up to date, and the answers from it. Thread-safe."""

    def __init__(self) -> None:
        self._table: MetadataTable = {}
        self._lock = threading.Lock()

    def set_table(self, table: MetadataTable) -> None:
        with self._lock:
            self._table = table

    def ask(self, network_id: str, source_ip: str, path: str) -> Answer:
        with self._lock:
            meta = lookup(self._table, network_id, source_ip)
        return answer(meta, path)


class _Handler(BaseHTTPRequestHandler):
    server: _Listener
    server_version = "nubes-metadata"
    sys_version = ""
    timeout = 10  # a guest that opens a connection and says nothing is dropped

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._reply(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._reply(head=True)

    def _reply(self, head: bool) -> None:
        # who asks: the bridge this socket is bound to and the peer address; never a header
        result = self.server.service.ask(self.server.network_id, self.client_address[0], self.path)
        self.send_response(result.status)
        self.send_header("Content-Type", result.content_type)
        self.send_header("Content-Length", str(len(result.body)))
        self.end_headers()
        if not head:
            self.wfile.write(result.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("metadata %s: " + format, self.server.network_id, *args)


class _Listener(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    max_clients = 32  # per network: guests cannot make the agent spawn threads without bound

    def __init__(
        self, service: MetadataService, network_id: str, endpoint: Endpoint, port: int
    ) -> None:
        self.service = service
        self.network_id = network_id
        self.endpoint = endpoint
        namespace, bridge = endpoint
        self._slots = threading.BoundedSemaphore(self.max_clients)
        # a socket belongs for good to the namespace it was made in
        with netns.inside(namespace) if namespace else nullcontext():
            super().__init__((METADATA_IP, port), _Handler, bind_and_activate=False)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, bridge.encode())
            self.socket.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            self.server_bind()
            self.server_activate()
        except BaseException:
            self.server_close()
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # busy: the guest retries
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class MetadataServer:
    """Listeners for the networks this host serves."""

    def __init__(self, service: MetadataService, port: int = 80) -> None:
        self.service = service
        self.port = port
        self._listeners: dict[str, tuple[_Listener, threading.Thread]] = {}

    def serve(self, endpoints: dict[str, Endpoint]) -> None:
        """Listen for exactly these networks (network id -> (namespace or None, device)).
        Never raises: one that cannot be listened on now is tried again at the next call."""
        for network_id in list(self._listeners):
            if self._listeners[network_id][0].endpoint != endpoints.get(network_id):
                self._stop(network_id)
        for network_id, endpoint in endpoints.items():
            if network_id in self._listeners:
                continue
            where = "/".join(p for p in endpoint if p)
            try:
                listener = _Listener(self.service, network_id, endpoint, self.port)
            except (OSError, RuntimeError) as exc:  # RuntimeError: the namespace went
                log.warning("metadata: cannot listen in %s: %s", where, exc)
                continue
            thread = threading.Thread(
                target=listener.serve_forever, name=f"metadata-{network_id}", daemon=True
            )
            thread.start()
            self._listeners[network_id] = (listener, thread)
            log.info("metadata service on %s:%d in %s", METADATA_IP, self.port, where)

    def endpoints(self) -> dict[str, Endpoint]:
        return {n: lt[0].endpoint for n, lt in self._listeners.items()}

    def _stop(self, network_id: str) -> None:
        listener, thread = self._listeners.pop(network_id)
        listener.shutdown()
        listener.server_close()
        thread.join(timeout=5)

    def close(self) -> None:
        for network_id in list(self._listeners):
            self._stop(network_id)
