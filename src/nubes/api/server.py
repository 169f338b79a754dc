"""`nubes-api`: serve the API on a UNIX socket (local clients, lab agents) and on TCP."""

from __future__ import annotations

import asyncio
import logging
import os

import uvicorn

from nubes.api.app import create_app
from nubes.conf import get_settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = get_settings()
    app = create_app(settings)
    sock = settings.api_socket
    sock.unlink(missing_ok=True)
    servers = [
        uvicorn.Server(uvicorn.Config(app, uds=str(sock), log_level="warning")),
        uvicorn.Server(
            uvicorn.Config(app, host=settings.api_host, port=settings.api_port, log_level="warning")
        ),
    ]

    async def serve() -> None:
        tasks = [asyncio.create_task(s.serve()) for s in servers]
        while not any(s.started for s in servers) or not sock.exists():
            await asyncio.sleep(0.05)
        os.chmod(sock, 0o600)
        logging.getLogger("nubes.api").info(
            "nubes API on unix:%s and http://%s:%d", sock, settings.api_host, settings.api_port
        )
        await asyncio.gather(*tasks)

    asyncio.run(serve())


if __name__ == "__main__":
    main()
