"""nubes up (API + agent on this machine) and nubes lab (N hosts in network namespaces)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import typer

from nubes.cli import daemon
from nubes.cli.common import console, fail, handle_errors
from nubes.client import NubesClient
from nubes.lab import Lab, LabHost, netns

lab_app = typer.Typer(
    help="A multi-host cloud on this machine: each host a network namespace with its agent.",
    no_args_is_help=True,
)


def state_dir() -> Path:
    return Path(os.environ.get("NUBES_STATE_DIR", "/var/lib/nubes"))


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env["NUBES_STATE_DIR"] = str(state_dir())
    return env


def up() -> None:
    """Run the API and an agent on this machine's own network stack until Ctrl-C.

    Guests keep running when this stops; the next `nubes up` adopts them again.
    """
    if os.geteuid() != 0:
        fail("nubes up needs root (bridges, taps and QEMU)")
    env = base_env()
    sd = state_dir()
    daemon.start_api(sd, env)
    token = json.loads((sd / "client.json").read_text())["token"]
    env.update(NUBES_URL=f"unix://{sd / 'api.sock'}", NUBES_TOKEN=token)
    agent = subprocess.Popen(daemon.python_argv("nubes.agent.main"), env=env)
    console.print(f"nubes is up: state in {sd}; press Ctrl-C to stop (guests keep running)")
    try:
        agent.wait()
    except KeyboardInterrupt:
        pass
    finally:
        daemon.stop_pid(agent.pid)
        daemon.stop_api(sd)


def _lab() -> Lab:
    # NUBES_LAB_PREFIX lets tests run a lab beside a user's own
    return Lab(state_dir() / "lab", name_prefix=os.environ.get("NUBES_LAB_PREFIX") or None)


def agent_pids(host: LabHost) -> list[int]:
    """The agent processes running inside a lab host's namespace."""
    found = []
    for pid in netns.pids(host.netns):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"nubes.agent.main" in cmdline:
            found.append(pid)
    return found


def spawn_agent(lab: Lab, host: LabHost) -> int:
    sd = state_dir()
    token = json.loads((sd / "client.json").read_text())["token"]
    env = base_env()
    env.update(
        NUBES_URL=f"unix://{sd / 'api.sock'}",
        NUBES_TOKEN=token,
        NUBES_HOST_NAME=host.name,
        NUBES_HOST_ADDRESS=host.underlay_ip,
    )
    return lab.spawn(
        host, daemon.python_argv("nubes.agent.main"), lab.root / f"{host.name}.log", env
    )


def wait_hosts(client: NubesClient, names: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        up_hosts = {h.name for h in client.hosts() if h.state == "up"}
        if names <= up_hosts:
            return
        time.sleep(0.2)
    fail(f"hosts did not register within {timeout:.0f} s; see {state_dir() / 'lab'}/*.log")


@lab_app.command("up")
@handle_errors
def lab_up(hosts: int = typer.Option(1, min=1, max=16, help="number of hosts")) -> None:
    """Start the API and N lab hosts, each with its own agent."""
    if os.geteuid() != 0:
        fail("nubes lab needs root (network namespaces)")
    sd = state_dir()
    env = base_env()
    with console.status("starting the API"):
        daemon.start_api(sd, env)
    token = json.loads((sd / "client.json").read_text())["token"]
    lab = _lab()
    with console.status(f"creating {hosts} host(s)"):
        made = lab.create_hosts(hosts)
        for host in made:
            if not agent_pids(host):
                spawn_agent(lab, host)
    client = NubesClient(f"unix://{sd / 'api.sock'}", token)
    with console.status("waiting for the agents to register"):
        wait_hosts(client, {h.name for h in made}, 60)
    console.print(f"lab up: {', '.join(h.name for h in made)}; try `nubes host list`")


@lab_app.command("down")
@handle_errors
def lab_down(
    keep_state: bool = typer.Option(False, help="keep the database and images"),
) -> None:
    """Remove every lab host, guest, process and device, and stop the API."""
    lab = _lab()
    hosts = state_dir() / "hosts"  # each lab host's agent keeps its instances under it
    lab.destroy(guests=[d.name for d in hosts.glob("*/instances/*") if d.is_dir()])
    daemon.stop_api(state_dir())
    if not keep_state:
        shutil.rmtree(state_dir(), ignore_errors=True)
    console.print("lab down: no hosts, namespaces or guests are left")


@lab_app.command("status")
@handle_errors
def lab_status() -> None:
    """What the lab has now."""
    console.print(_lab().status())


@lab_app.command("restart-agent")
@handle_errors
def lab_restart_agent(host: str = typer.Argument(..., help="lab host name, e.g. nubes-h1")) -> None:
    """Stop a host's agent (SIGTERM) and start it again; its guests keep running."""
    lab = _lab()
    target = lab.host(host)
    for pid in agent_pids(target):
        daemon.stop_pid(pid)
    pid = spawn_agent(lab, target)
    console.print(f"agent of {host} restarted (pid {pid})")


@lab_app.command("restart-api")
@handle_errors
def lab_restart_api() -> None:
    """Stop the API (SIGTERM) and start it again; agents and guests carry on."""
    sd = state_dir()
    daemon.stop_api(sd)
    pid = daemon.start_api(sd, base_env())
    console.print(f"API restarted (pid {pid})")
