"""An in-process cloud for tests: the real API on a UNIX socket plus agents in threads."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from nubes.agent.agent import Agent
from nubes.agent.main import build_agent
from nubes.api.app import create_app
from nubes.api.server import release_long_polls_on_exit
from nubes.client import NubesClient
from nubes.conf import Settings


class Api:
    """One API server (its own app, state directory and socket) on the cloud's database."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        sock = settings.api_socket
        self.server = uvicorn.Server(uvicorn.Config(self.app, uds=str(sock), log_level="warning"))
        self.thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        self.url = f"unix://{sock}"

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()  # more listeners may join it (openstack_env)
        notifier = self.app.state.nubes.notifier
        await asyncio.gather(
            self.server.serve(), release_long_polls_on_exit([self.server], notifier)
        )

    def close(self) -> None:
        self.server.should_exit = True  # the app's shutdown stops its loops and its pool
        self.thread.join(timeout=10)


class Cloud:
    """`apis` > 1 starts more API servers on the same database (PostgreSQL): agents talk to the
    first; `self.apis[i].url` reaches the others."""

    def __init__(self, root: Path, hosts: int = 1, apis: int = 1, **overrides: Any) -> None:
        self.root = root
        defaults: dict[str, Any] = dict(
            state_dir=root / "state",
            hypervisor_driver="fake",
            network_driver="fake",
            qemu_user="",  # fake guests run as nobody in particular
            heartbeat_interval=0.5,
            host_down_after=3.0,
            sync_interval=0.5,
        )
        defaults.update(overrides)
        self.settings = Settings(**defaults)
        self.apis = [Api(self.settings)]
        for i in range(2, apis + 1):
            shared = {"state_dir": root / f"state-api{i}", "database_url": self.settings.db_url}
            other = self.settings.model_copy(update=shared)
            self.apis.append(Api(other))
        self.app = self.apis[0].app
        token = json.loads((self.settings.state_dir / "client.json").read_text())["token"]
        self.url, self.token = self.apis[0].url, token
        self.client = NubesClient(self.url, token)
        self.agents: list[tuple[Agent, threading.Event, list[threading.Thread]]] = []
        self.credentials: dict[str, str] = {}
        for i in range(hosts):
            self.start_agent(f"host{i + 1}", f"10.255.0.{11 + i}")

    def start_agent(self, name: str, address: str = "", hypervisor: Any = None) -> Agent:
        """`hypervisor`: an earlier agent's, for the same host coming back with its guests."""
        settings = self.settings.model_copy(update={"host_name": name, "host_address": address})
        agent = build_agent(settings, NubesClient(self.url, self.host_credential(name)))
        if hypervisor is not None:
            agent.hypervisor = agent.instances.hypervisor = hypervisor
        agent.register()
        stop = threading.Event()
        threads = [
            threading.Thread(target=agent.run, args=(stop,), daemon=True),
            threading.Thread(target=agent.heartbeat_loop, args=(stop,), daemon=True),
        ]
        for t in threads:
            t.start()
        self.agents.append((agent, stop, threads))
        return agent

    def host_credential(self, name: str) -> str:
        """The host's own credential, by the join a real machine makes (kept per name: an agent
        started again for the same host is the same joined machine)."""
        if name not in self.credentials:
            token = self.client.create_join_token(600).token
            with NubesClient(self.url, "") as anonymous:
                self.credentials[name] = anonymous.join(token, name).credential
        return self.credentials[name]

    def stop_agent(self, agent: Agent) -> None:
        for entry in list(self.agents):
            if entry[0] is agent:
                entry[1].set()
                for t in entry[2]:
                    t.join(timeout=30)
                self.agents.remove(entry)

    def wait(self, predicate: Any, timeout: float = 30.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    def wait_status(self, ref: str, status: str, timeout: float = 30.0) -> Any:
        def check() -> Any:
            s = self.client.server(ref)
            if s.status == "ERROR" and status != "ERROR":
                raise AssertionError(f"{ref} went to ERROR: {s.fault}")
            return s if s.status == status and not s.task_state else None

        return self.wait(check, timeout, f"{ref} to be {status}")

    def close(self) -> None:
        for agent, _, _ in list(self.agents):
            self.stop_agent(agent)
        for api in self.apis:
            api.close()
        self.client.close()


def make_image(path: Path, fmt: str = "qcow2", size: str = "64M") -> Path:
    subprocess.run(
        ["qemu-img", "create", "-f", fmt, str(path), size], check=True, capture_output=True
    )
    return path
