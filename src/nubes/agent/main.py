"""`nubes-agent`: one per host."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nubes import tls
from nubes.agent import consoles, guestuser
from nubes.agent.agent import Agent
from nubes.agent.consoles import ConsoleServer
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
    if settings.hypervisor_driver == "qemu":
        from nubes.agent.migrations import MigrationReconciler
        from nubes.hypervisor.mux import MuxDriver
        from nubes.hypervisor.qemu.driver import QemuDriver
        from nubes.hypervisor.qemu.migration import QemuMigration

        # where runc runs too, QEMU's driver is under the one that picks per instance
        vm = hypervisor.vm if isinstance(hypervisor, MuxDriver) else hypervisor
        assert isinstance(vm, QemuDriver)
        guard = settings.network_driver != "fake"  # nftables only where the host has a network
        agent.migrations = MigrationReconciler(
            reconciler,
            QemuMigration(vm),
            guard,
            fetch_log=lambda mig_id: client.incoming_console_log(agent.host_id, mig_id),
        )
    if settings.network_driver != "fake":  # fake networks have no bridges to listen on
        agent.metadata_server = MetadataServer(agent.metadata)
    return agent


def register_until_up(
    agent: Agent, stop: threading.Event, before: Callable[[], None] = lambda: None
) -> bool:
    while not stop.is_set():
        try:
            before()
            agent.register()
            return True
        except ApiError as exc:
            if agent.heard(exc, stop):  # before any pass: nothing runs beside the teardown
                agent.destroy_everything()
                return False
            log.warning("cannot register yet: %s", exc.detail)
            stop.wait(1.0)
    return False


@dataclass
class Joined:
    settings: Settings
    client: NubesClient
    host_dir: Path
    identity: identity.HostIdentity
    ca_pem: bytes


def console_starter(agent: Agent, joined: Joined) -> Callable[[], None]:
    """Starts the console channel once, with a certificate the API signs (so it needs the API:
    it runs in the registration loop). A port that cannot be bound leaves the agent running
    without consoles, said in its log and by the API."""
    started: list[ConsoleServer] = []

    def start() -> None:
        if started or not joined.ca_pem:
            return
        consoles.ensure_certificate(
            joined.client, joined.host_dir, joined.identity.host_id, joined.ca_pem
        )
        context = tls.mutual_server_context(
            joined.ca_pem,
            joined.host_dir / consoles.CERT_FILE,
            joined.host_dir / consoles.KEY_FILE,
        )
        settings = joined.settings
        server = ConsoleServer(
            agent.layout,
            agent.hypervisor,
            context,
            settings.host_address or "127.0.0.1",
            settings.agent_console_port,
        )
        try:
            agent.console_port = server.start()
        except OSError as exc:
            log.error("cannot serve consoles on port %d: %s", settings.agent_console_port, exc)
        started.append(server)

    return start


def joined_client(settings: Settings) -> Joined:
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
    client = NubesClient(me.api_url, me.credential, ca_pem=ca)
    return Joined(settings, client, host_dir, me, ca or b"")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    joined = joined_client(get_settings())
    settings = joined.settings
    stop = threading.Event()
    agent = build_agent(settings, joined.client)

    def on_signal(*_: object) -> None:
        stop.set()
        agent.wake()  # the loop stops now, not at the end of its wait

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    if not register_until_up(agent, stop, console_starter(agent, joined)):
        return
    beat = threading.Thread(target=agent.heartbeat_loop, args=(stop,), daemon=True)
    beat.start()
    started = time.monotonic()
    agent.run(stop)
    # stopping the agent never stops guests: they are adopted again at the next start
    log.info("agent stopped after %.0f s; guests keep running", time.monotonic() - started)


if __name__ == "__main__":
    main()
