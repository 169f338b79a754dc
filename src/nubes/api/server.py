"""`nubes-api`: plain HTTP on a UNIX socket (0600: local clients) and HTTPS on TCP.

The TCP listener speaks only TLS, with a certificate from the cloud's own CA (nubes/tls.py):
other machines' agents and remote CLIs pin that CA. A plain HTTP request there fails its
handshake."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import uvicorn

from nubes import tls
from nubes.api.app import create_app
from nubes.conf import Settings, get_settings

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


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = get_settings()
    app = create_app(settings)
    files = tls.issue_server_cert(settings.tls_dir, server_names(settings))
    sock = settings.api_socket
    sock.unlink(missing_ok=True)
    unix = uvicorn.Server(uvicorn.Config(app, uds=str(sock), log_level="warning"))
    https = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            # longer than an agent's heartbeat interval: each heartbeat reuses its connection
            # instead of a new TLS handshake (uvicorn's default is 5 s)
            timeout_keep_alive=max(75, 2 * round(settings.heartbeat_interval)),
            ssl_certfile=str(files.cert),
            ssl_keyfile=str(files.key),
        )
    )
    listeners = tcp_sockets(settings)

    async def serve() -> None:
        tasks = [
            asyncio.create_task(unix.serve()),
            asyncio.create_task(https.serve(sockets=listeners)),
        ]
        while not unix.started or not sock.exists():
            await asyncio.sleep(0.05)
        os.chmod(sock, 0o600)
        where = ", ".join(f"https://{a}:{settings.api_port}" for a in settings.listen_addresses)
        log.info("nubes API on unix:%s and %s (CA %s)", sock, where, files.ca_cert)
        await asyncio.gather(*tasks)

    asyncio.run(serve())


if __name__ == "__main__":
    main()
