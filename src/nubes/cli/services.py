"""nubes up (API + agent on this machine) and nubes lab (N hosts in network namespaces)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import typer

from nubes.cli import daemon
from nubes.cli.common import console, fail, handle_errors
from nubes.client import NubesClient
from nubes.lab import Lab, LabHost
from nubes.lab.lab import EXT_UPLINK, OUTSIDE_CIDR, OUTSIDE_IP
from nubes.network import netns, ovs_daemons
from nubes.schemas import resources as s

lab_app = typer.Typer(
    help="A multi-host cloud on this machine: each host a network namespace with its agent.",
    no_args_is_help=True,
)


def state_dir() -> Path:
    return Path(os.environ.get("NUBES_STATE_DIR", "/var/lib/nubes"))


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NUBES_TOKEN", "NUBES_URL")}
    env["NUBES_STATE_DIR"] = str(state_dir())
    return env


def api_port() -> int:
    return int(os.environ.get("NUBES_API_PORT", "8774"))


def admin_client() -> NubesClient:
    sd = state_dir()
    token = json.loads((sd / "client.json").read_text())["token"]
    return NubesClient(f"unix://{sd / 'api.sock'}", token)


def join_argv(url: str, name: str, host_dir: Path, address: str = "") -> list[str]:
    """`nubes host join … --foreground` for a host: with a fresh one-time token the first time,
    with none once the host has joined (its identity file is kept in its state directory).
    The process becomes the agent: it holds its own credential and no admin token."""
    argv = [*daemon.python_argv("nubes.cli"), "host", "join", url, "--name", name]
    if address:
        argv += ["--address", address]
    if not (host_dir / "identity.json").exists():
        with admin_client() as admin:
            argv += ["--token", admin.create_join_token(600).token]
    return [*argv, "--foreground"]


def up() -> None:
    """Run the API and an agent on this machine's own network stack until Ctrl-C.

    Guests keep running when this stops; the next `nubes up` adopts them again.
    """
    if os.geteuid() != 0:
        fail("nubes up needs root (bridges, taps and QEMU)")
    # Ctrl-C and SIGTERM stop it even when started in the background, where the shell left
    # SIGINT ignored (and Python then never raises KeyboardInterrupt)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    env = base_env()
    # one machine: the agent serves consoles to the API on a free loopback port it registers
    env.setdefault("NUBES_AGENT_CONSOLE_PORT", "0")
    sd = state_dir()
    daemon.start_api(sd, env)
    name = os.environ.get("NUBES_HOST_NAME") or socket.gethostname()
    url = f"https://127.0.0.1:{api_port()}"  # the same path as a second machine's agent
    agent = subprocess.Popen(join_argv(url, name, sd / "hosts" / name), env=env)
    console.print(f"nubes is up: state in {sd}; press Ctrl-C to stop (guests keep running)")
    try:
        agent.wait()
    except KeyboardInterrupt:
        pass
    finally:
        # both at once: the whole stop takes one grace period at most, whatever each is doing
        started = time.monotonic()
        api = daemon.read_pid(sd / "api.pid")
        daemon.stop_pids([agent.pid, *([api] if api else [])])
        (sd / "api.pid").unlink(missing_ok=True)
        console.print(f"nubes stopped in {time.monotonic() - started:.1f} s; guests keep running")


def _lab() -> Lab:
    # NUBES_LAB_PREFIX lets tests run a lab beside a user's own
    prefix = os.environ.get("NUBES_LAB_PREFIX") or None
    underlay = os.environ.get("NUBES_LAB_UNDERLAY") or None
    return Lab(state_dir() / "lab", name_prefix=prefix, underlay_cidr=underlay, api_port=api_port())


def lab_api_env(lab: Lab) -> dict[str, str]:
    """The API of a lab also listens on the underlay, where the lab's hosts reach it."""
    env = base_env()
    env["NUBES_API_LISTEN"] = lab.api_address
    return env


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
    """The host joins the lab's API over the underlay (TCP+TLS, its own token) and runs its
    agent, as a second machine would."""
    # the host's own state directory, as its mount namespace has it (the API sees none of it)
    host_dir = lab.host_root(host) / str(state_dir() / "hosts" / host.name).lstrip("/")
    argv = join_argv(lab.api_url, host.name, host_dir, host.underlay_ip)
    log = lab.root / f"{host.name}.log"
    env = base_env()
    chosen = lab.root / "network_driver"  # what `lab up --network-driver` chose, for restarts too
    if chosen.exists():
        env["NUBES_NETWORK_DRIVER"] = chosen.read_text().strip()
    pid = lab.spawn(host, argv, log, env)
    # `host join --foreground` becomes the agent once it has joined: until then no agent runs
    deadline = time.monotonic() + 60
    while not _is_agent_process(pid):
        if not daemon.read_pid_alive(pid) or time.monotonic() > deadline:
            fail(f"the agent of {host.name} did not start; see {log}")
        time.sleep(0.05)
    return pid


def _is_agent_process(pid: int) -> bool:
    try:
        return b"nubes.agent.main" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


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
def lab_up(
    hosts: int = typer.Option(1, min=1, max=16, help="number of hosts"),
    network_driver: str = typer.Option(
        "", help="the hosts' network driver: linuxbridge or ovs (default: NUBES_NETWORK_DRIVER)"
    ),
) -> None:
    """Start the API and N lab hosts, each with its own agent."""
    if os.geteuid() != 0:
        fail("nubes lab needs root (network namespaces)")
    if network_driver not in ("", "linuxbridge", "ovs"):
        fail(f"unknown network driver {network_driver!r} (linuxbridge, ovs)")
    if network_driver == "ovs" and not ovs_daemons.installed():
        fail("Open vSwitch is not installed (make deps installs openvswitch-switch)")
    sd = state_dir()
    lab = _lab()
    if network_driver:
        lab.root.mkdir(parents=True, exist_ok=True)
        (lab.root / "network_driver").write_text(network_driver + "\n")
    with console.status("starting the API"):
        lab.ensure_bridge()  # the API listens on the underlay too
        daemon.start_api(sd, lab_api_env(lab))
    token = json.loads((sd / "client.json").read_text())["token"]
    with console.status(f"creating {hosts} host(s)"):
        made = lab.create_hosts(hosts)
        for host in made:
            if not agent_pids(host):
                spawn_agent(lab, host)
    client = NubesClient(f"unix://{sd / 'api.sock'}", token)
    with console.status("waiting for the agents to register"):
        wait_hosts(client, {h.name for h in made}, 60)
    if not any(n.external for n in client.networks()):
        client.create_network(
            s.NetworkCreate(
                name="public",
                cidr=OUTSIDE_CIDR,
                external=True,
                uplink=EXT_UPLINK,
                gateway=OUTSIDE_IP,
            )
        )
    console.print(f"lab up: {', '.join(h.name for h in made)}; try `nubes host list`")


@lab_app.command("down")
@handle_errors
def lab_down(
    keep_state: bool = typer.Option(False, help="keep the database and images"),
) -> None:
    """Remove every lab host, guest, process and device, and stop the API."""
    lab = _lab()
    hosts = state_dir() / "hosts"  # each lab host's agent keeps its instances under it
    try:
        lab.destroy(guests=[d.name for d in hosts.glob("*/instances/*") if d.is_dir()])
    finally:
        daemon.stop_api(state_dir())  # whatever the hosts left, no API keeps running
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
    lab = _lab()
    pid = daemon.start_api(sd, lab_api_env(lab) if lab.hosts else base_env())
    console.print(f"API restarted (pid {pid})")
