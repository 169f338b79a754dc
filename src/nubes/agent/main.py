"""`nubes-agent`: one per host."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time

from nubes.agent import guestuser
from nubes.agent.agent import Agent
from nubes.agent.drivers import make_hypervisor, make_network
from nubes.agent.imagecache import ImageCache
from nubes.agent.instances import InstanceReconciler
from nubes.agent.layout import HostLayout
from nubes.client import ApiError, NubesClient, identity
from nubes.conf import Settings, get_settings
from nubes.metadata.server import MetadataServer

log = logging.getLogger("nubes.agent")
SECRET_ENV = ("NUBES_TOKEN", "NUBES_JOIN_TOKEN")


def build_agent(settings: Settings, client: NubesClient) -> Agent:
    host_name = settings.host_name or socket.gethostname()
    layout = HostLayout(settings.hosts_dir / host_name)
    layout.make()
    hypervisor = make_hypervisor(settings, layout)
    network = make_network(settings, layout)
    images = ImageCache(layout.images, client)  # downloaded: a host shares no disk with the API
    reconciler = InstanceReconciler(
        layout,
        hypervisor,
        network,
        images,
        guest=guestuser.resolve(settings),
        crash_after=settings.fault_crash_after,
    )
    agent = Agent(settings, client, hypervisor, network, layout, reconciler, host_name)
    if settings.network_driver != "fake":  # fake networks have no bridges to listen on
        agent.metadata_server = MetadataServer(agent.metadata)
    return agent


def register_until_up(agent: Agent, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            agent.register()
            return True
        except ApiError as exc:
            log.warning("cannot register yet: %s", exc.detail)
            stop.wait(1.0)
    return False


def joined_client(settings: Settings) -> tuple[Settings, NubesClient]:
    """The client of the API this host joined, with its own credential; exits when the host
    has not joined. Nothing secret stays in the environment the agent's children inherit."""
    for name in SECRET_ENV:
        os.environ.pop(name, None)
    host_name = settings.host_name or socket.gethostname()
    host_dir = settings.hosts_dir / host_name
    me = identity.load(host_dir)
    if me is None:
        sys.exit(
            f"host {host_name} has not joined a cloud (no {host_dir / identity.FILE}): on the "
            "API machine run `nubes host token create`, then here the command it prints"
        )
    if not settings.host_address and me.address:
        settings = settings.model_copy(update={"host_address": me.address})
    ca = identity.ca_pem(host_dir)
    return settings, NubesClient(me.api_url, me.credential, ca_pem=ca)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings, client = joined_client(get_settings())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    agent = build_agent(settings, client)
    if not register_until_up(agent, stop):
        return
    beat = threading.Thread(target=agent.heartbeat_loop, args=(stop,), daemon=True)
    beat.start()
    started = time.monotonic()
    agent.run(stop)
    # stopping the agent never stops guests: they are adopted again at the next start
    log.info("agent stopped after %.0f s; guests keep running", time.monotonic() - started)


if __name__ == "__main__":
    main()
