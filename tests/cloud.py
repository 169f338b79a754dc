"""An in-process cloud for tests: the real API on a UNIX socket plus agents in threads."""

from __future__ import annotations

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
from nubes.client import NubesClient
from nubes.conf import Settings


class Cloud:
    def __init__(self, root: Path, hosts: int = 1, **overrides: Any) -> None:
        self.root = root
        defaults: dict[str, Any] = dict(
            state_dir=root / "state",
            hypervisor_driver="fake",
            network_driver="fake",
            heartbeat_interval=0.5,
            host_down_after=3.0,
            sync_interval=0.5,
        )
        defaults.update(overrides)
        self.settings = Settings(**defaults)
        self.app = create_app(self.settings)
        sock = self.settings.api_socket
        self.server = uvicorn.Server(uvicorn.Config(self.app, uds=str(sock), log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        token = json.loads((self.settings.state_dir / "client.json").read_text())["token"]
        self.url, self.token = f"unix://{sock}", token
        self.client = NubesClient(self.url, token)
        self.agents: list[tuple[Agent, threading.Event, list[threading.Thread]]] = []
        for i in range(hosts):
            self.start_agent(f"host{i + 1}", f"10.255.0.{11 + i}")

    def start_agent(self, name: str, address: str = "") -> Agent:
        settings = self.settings.model_copy(update={"host_name": name, "host_address": address})
        agent = build_agent(settings, NubesClient(self.url, self.token))
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
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.client.close()


def make_image(path: Path, fmt: str = "qcow2", size: str = "64M") -> Path:
    subprocess.run(
        ["qemu-img", "create", "-f", fmt, str(path), size], check=True, capture_output=True
    )
    return path
