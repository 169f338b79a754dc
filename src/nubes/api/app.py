"""The FastAPI application."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from nubes import faults, openstack, tls
from nubes.api import dashboard, errors
from nubes.api.agent_lane import UsersFirst
from nubes.api.bootstrap import seed_database, write_client_config
from nubes.api.bounds import BoundedBodies
from nubes.api.heartbeat_path import HeartbeatFirst
from nubes.api.routes import (
    agent,
    browser_console,
    console,
    events,
    flavors,
    floatingips,
    gc,
    groups,
    hosts,
    images,
    keypairs,
    metrics,
    migrations,
    networks,
    operations,
    projects,
    quotas,
    secgroups,
    server_lifecycle,
    servers,
    volumes,
)
from nubes.api.timing import RequestTimer
from nubes.conf import Settings
from nubes.control import events as server_events
from nubes.control import gateways
from nubes.control import operations as operation_log
from nubes.control.state import AppState
from nubes.db.engine import make_engine, migrate, session_factory

log = logging.getLogger("nubes.api")


def _expire_loop(state: AppState, stop: threading.Event) -> None:
    """No operation, and so no instance, stays in a transitional state past the bound; server
    events are kept for their retention."""
    while not stop.wait(min(10.0, state.settings.operation_timeout / 4)):
        try:
            with state.sessions() as session:
                if operation_log.expire(session, state.settings.operation_timeout):
                    session.commit()
            with state.sessions() as session:
                if server_events.prune(session, state.settings.events_retention):
                    session.commit()
        except Exception:
            log.exception("expiring stale operations failed")


def client_config_path(settings: Settings) -> str:
    return str(settings.state_dir / "client.json")


def create_app(settings: Settings) -> FastAPI:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    settings.images_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.db_url)
    engine = make_engine(settings.db_url, settings.db_timeout)
    sessions = session_factory(engine)
    if settings.fault_api_crash:  # TEST ONLY
        faults.install_api_hooks(sessions, settings.fault_api_crash)
    # the certificate the API presents to agents' console channels, made anew at each start
    tls.issue_api_client_cert(settings.tls_dir)
    with sessions() as session:
        token = seed_database(session)
    if token:
        url = settings.api_url or f"unix://{settings.api_socket}"
        write_client_config(settings.state_dir / "client.json", url, token)
        log.info("admin token written to %s", settings.state_dir / "client.json")
    stoppers: list[Callable[[], object]] = []

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        # background loops end with the server (tests start many apps in one process)
        for stop in stoppers:
            stop()

    app = FastAPI(
        lifespan=lifespan,
        title="nubes",
        version="0.1.0",
        description="A small IaaS compute service on QEMU.",
    )
    app.state.nubes = AppState(settings=settings, engine=engine, sessions=sessions)
    errors.install(app)
    app.add_middleware(
        BoundedBodies,
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        images_dir=settings.images_dir,
    )
    app.add_middleware(UsersFirst)  # the agents' jobs start after the users' requests
    app.add_middleware(HeartbeatFirst, state=app.state.nubes)
    app.add_middleware(RequestTimer, metrics=app.state.nubes.metrics)  # outermost: all of it
    for module in (
        images,
        flavors,
        keypairs,
        networks,
        servers,
        server_lifecycle,
        volumes,
        migrations,
        events,
        console,
        browser_console,
        groups,
        secgroups,
        floatingips,
        hosts,
        projects,
        quotas,
        operations,
        gc,
        agent,
        metrics,
    ):
        app.include_router(module.router)
    app.include_router(agent.join_router)
    openstack.install(app)  # the OpenStack-compatible subset, on the same state
    dashboard.install(app)  # /ui, after every API route

    expiring = threading.Event()
    threading.Thread(target=_expire_loop, args=(app.state.nubes, expiring), daemon=True).start()
    keeper = gateways.start_keeper(app.state.nubes)
    stoppers.extend([expiring.set, keeper.set, app.state.nubes.notifier.close, engine.dispose])

    @app.get("/v1", tags=["meta"])
    def version() -> dict[str, str]:
        return {"name": "nubes", "version": "0.1.0"}

    return app
