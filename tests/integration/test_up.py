"""`nubes up`: API + agent in one command, inside a throwaway namespace standing in for a host."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nubes.client import ApiError, NubesClient
from nubes.lab.lab import kill_namespace_processes
from nubes.network import netns
from tests.integration.conftest import CACHE, needs_root

pytestmark = pytest.mark.integration


@pytest.fixture
def host_ns(tmp_path: Path) -> Iterator[str]:
    needs_root()
    name = "tup" + secrets.token_hex(3)
    netns.create(name)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    before = set(netns.list_names("qgw-"))
    try:
        yield name
    finally:
        kill_namespace_processes(name)
        # its networks' gateway namespaces, made in `ip netns exec`'s own mount namespace
        # (a test artefact: on a machine `nubes up` runs in the root one) and their dnsmasq
        marker = str(tmp_path).encode()
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue
        for gw in set(netns.list_names("qgw-")) - before:
            kill_namespace_processes(gw)
            netns.delete(gw)
        netns.delete(name)


def start_up(ns: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "nubes.cli", "up"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def wait_client(state: Path, timeout: float = 60) -> NubesClient:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            token = json.loads((state / "client.json").read_text())["token"]
            client = NubesClient(f"unix://{state / 'api.sock'}", token)
            if [h for h in client.hosts() if h.state == "up"]:
                return client
        except (OSError, ValueError, ApiError):
            pass
        time.sleep(0.3)
    raise AssertionError("nubes up did not come up")


def qemu_pids(ns: str) -> list[int]:
    return [p for p in netns.pids(ns) if b"qemu-system" in Path(f"/proc/{p}/cmdline").read_bytes()]


def test_up_runs_a_cloud_and_restarting_it_keeps_guests(host_ns: str, tmp_path: Path) -> None:
    state = tmp_path / "s"
    env = dict(os.environ, NUBES_STATE_DIR=str(state), NUBES_CACHE_DIR=str(CACHE),
               NUBES_API_PORT=str(20000 + secrets.randbelow(20000)))  # fmt: skip
    env.pop("NUBES_URL", None)
    env.pop("NUBES_TOKEN", None)
    up = start_up(host_ns, env, tmp_path / "up.log")
    try:
        client = wait_client(state)
        cli = [sys.executable, "-m", "nubes.cli"]
        subprocess.run([*cli, "image", "build", "tiny"], env=env, check=True, capture_output=True)
        subprocess.run([*cli, "network", "create", "n1", "--cidr", "10.40.0.0/24"], env=env,
                       check=True, capture_output=True)  # fmt: skip
        subprocess.run([*cli, "server", "create", "s1", "--image", "tiny", "--network", "n1",
                        "--wait"], env=env, check=True, capture_output=True)  # fmt: skip
        pids = qemu_pids(host_ns)
        assert len(pids) == 1
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=30)  # agent and API get 10 s together, then SIGKILL
        except subprocess.TimeoutExpired:
            raise AssertionError((tmp_path / "up.log").read_text()[-4000:]) from None
        assert qemu_pids(host_ns) == pids, "stopping nubes up must not stop guests"
        up = start_up(host_ns, env, tmp_path / "up.log")
        client = wait_client(state)
        time.sleep(3)
        server = client.server("s1")
        assert server.status == "ACTIVE", server
        assert qemu_pids(host_ns) == pids
        assert client.console_log("s1").count("nubes-tiny: ready") == 1
        client.delete_server("s1")
        deadline = time.monotonic() + 60
        while qemu_pids(host_ns) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert qemu_pids(host_ns) == []
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
