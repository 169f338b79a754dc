"""`nubes-api`: plain HTTP on a UNIX socket (0600: local clients) and HTTPS on TCP.

The TCP listener speaks only TLS, with a certificate from the cloud's own CA (nubes/tls.py):
other machines' agents and remote CLIs pin that CA. A plain HTTP request there fails its
handshake."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
from collections.abc import Sequence

import uvicorn

from nubes import tls
from nubes.api.app import create_app
from nubes.client.core import KEEPALIVE_SECONDS
from nubes.conf import Settings, get_settings
from nubes.control.state import AppState
from nubes.control.watch import Notifier

log = logging.getLogger("nubes.api")


def tcp_sockets(settings: Settings) -> list[socket.socket]:
    socks = []
    for address in settings.listen_addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, settings.api_port))
        sock.set_inheritable(True)
        socks.append(sock)
    return socks


def server_names(settings: Settings) -> list[str]:
    extra = [n.strip() for n in settings.api_tls_names.split(",") if n.strip()]
    return [*settings.listen_addresses, "localhost", socket.gethostname(), *extra]


async def release_long_polls_on_exit(servers: Sequence[uvicorn.Server], notifier: Notifier) -> None:
    """uvicorn lets running requests finish before the app's shutdown, and a waiting long-poll
    would hold that up for a whole poll_timeout: answer them as soon as a server is told to
    exit (SIGTERM, SIGINT or `should_exit`)."""
    while not any(s.should_exit for s in servers):
        await asyncio.sleep(0.1)
    notifier.release()


# gen0 after 20,000 net new container objects (CPython's default: 700), a full collection at
# most every 100 gen1 ones (default 10): docs/architecture.md, "Control plane"
GC_THRESHOLDS = (20_000, 20, 100)


def quiet_collector() -> None:
    """With 1,000 agents' long-polls waiting (~100 objects each, each living up to a minute),
    CPython's collector ran a full collection every 4-7 s, 130-300 ms each, walking every
    module, class and route the app had built, and every request in flight stalled for it.
    What exists now lives as long as the process: frozen, out of the collector's sight; and
    collections made rarer, as their garbage is a few MB at most."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = get_settings()
    app = create_app(settings)
    state: AppState = app.state.nubes
    files = tls.issue_server_cert(settings.tls_dir, server_names(settings))
    sock = settings.api_socket
    sock.unlink(missing_ok=True)
    unix = uvicorn.Server(uvicorn.Config(app, uds=str(sock), log_level="warning"))
    https = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            # longer than the clients keep an idle connection (uvicorn's default is 5 s): each
            # heartbeat reuses its connection instead of a new TLS handshake
            timeout_keep_alive=round(KEEPALIVE_SECONDS) + 15,
            ssl_certfile=str(files.cert),
            ssl_keyfile=str(files.key),
        )
    )
    listeners = tcp_sockets(settings)
    quiet_collector()

    async def serve() -> None:
        tasks = [
            asyncio.create_task(unix.serve()),
            asyncio.create_task(https.serve(sockets=listeners)),
            asyncio.create_task(release_long_polls_on_exit([unix, https], state.notifier)),
        ]
        while not unix.started or not sock.exists():
            await asyncio.sleep(0.05)
        os.chmod(sock, 0o600)
        where = ", ".join(f"https://{a}:{settings.api_port}" for a in settings.listen_addresses)
        log.info("nubes API on unix:%s and %s (CA %s)", sock, where, files.ca_cert)
        await asyncio.gather(*tasks)

    # uvloop when installed (uvicorn[standard]), as `uvicorn.run` would pick: its TLS and
    # sockets are in C, where asyncio's own TLS is Python (half an idle agent's cost)
    with asyncio.Runner(loop_factory=https.config.get_loop_factory()) as runner:
        runner.run(serve())


if __name__ == "__main__":
    main()
