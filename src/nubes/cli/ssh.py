"""nubes ssh: the real OpenSSH client to an instance, as its image's default user.

The instance's address is reached from the host that serves its network's gateway: for a lab
host (a network namespace named like the host) through `ip netns exec`. Host keys go to a
known_hosts file of nubes keyed by instance id (HostKeyAlias), so a new instance that gets an
old address never trips a "host key changed" warning, and a changed key of the same instance
still does.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import typer

from nubes.cli.common import client, console, fail, handle_errors
from nubes.cli.services import state_dir
from nubes.client import ApiError, NubesClient
from nubes.schemas import resources as s

NETNS_DIR = Path("/run/netns")


def _allows_ssh(c: NubesClient, server: s.Server) -> bool:
    """Does one of the server's groups let tcp/22 in from anywhere or a CIDR (a gateway's
    address is no group member)? True when it cannot tell."""
    if not server.security_groups or not all(n.port_security for n in server.nics):
        return True
    try:
        groups = [c.security_group(g) for g in server.security_groups]
    except ApiError:
        return True
    for g in groups:
        for r in g.rules:
            if r.direction != "ingress" or r.remote_group or r.protocol not in ("tcp", "any"):
                continue
            if r.port_min is None or (r.port_min <= 22 <= (r.port_max or r.port_min)):
                return True
    return False


def known_hosts_file() -> Path:
    return Path.home() / ".ssh" / "nubes_known_hosts"


def private_key(key_name: str) -> Path | None:
    """The key `nubes keypair create` saved for this keypair, if it is here."""
    if not key_name:
        return None
    path = Path.home() / ".ssh" / f"nubes-{key_name}"
    return path if path.is_file() else None


def _gateway_in(names: list[str], network_id: str) -> str | None:
    return next((n for n in names if n.startswith("qgw-") and n.endswith("-" + network_id)), None)


def route_namespace(c: NubesClient, server: s.Server, network: str) -> list[str] | None:
    """The command prefix that runs ssh where the network's gateway lives: its namespace on
    this machine, or on a lab host (in that host's own mount namespace); None: from here."""
    try:
        net = c.network(network)
    except ApiError:
        return None
    here = sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []
    found = _gateway_in(here, net.id)
    if found:
        return ["ip", "netns", "exec", found]
    try:  # a lab host: its namespaces are in its own mount namespace, seen through its holder
        holders = json.loads((state_dir() / "lab" / "lab.json").read_text()).get("holders", {})
    except (OSError, ValueError):
        holders = {}
    for host in (h for h in (net.gateway_host, server.host) if h):
        if host not in holders:
            continue
        where = Path(f"/proc/{int(holders[host])}/root/run/netns")
        names = sorted(p.name for p in where.iterdir()) if where.is_dir() else []
        found = _gateway_in(names, net.id)
        if found:  # only its network namespace: ssh still sees this machine's files
            return ["nsenter", f"--net={where / found}", "--"]
    return None


def ssh_argv(
    server: s.Server,
    address: str,
    user: str,
    key: Path | None,
    prefix: list[str] | None,
    command: list[str],
    extra: list[str] | None = None,
) -> list[str]:
    known = known_hosts_file()
    argv = list(prefix or [])
    argv += [
        "ssh",
        "-o", "StrictHostKeyChecking=accept-new",
        "-o", f"UserKnownHostsFile={known}",
        "-o", f"HostKeyAlias=nubes-{server.id}",
        "-o", "ConnectTimeout=10",
    ]  # fmt: skip
    if key is not None:
        argv += ["-i", str(key)]
    argv += [*(extra or []), "-l", user, address]
    if command:
        argv += ["--", *command]
    return argv


def ssh(
    name: str = typer.Argument(..., help="server name or id"),
    command: list[str] = typer.Argument(None, help="command to run (after --)"),
    user: str = typer.Option("", "--user", "-l", help="default: the image's default user"),
    identity: Path = typer.Option(None, "--identity", "-i", help="private key file"),
    network: str = typer.Option("", help="which network's address (default: the first)"),
) -> None:
    """SSH into a server with the real OpenSSH client: nubes ssh web1 [-- CMD...]."""
    argv = build(name, command or [], user, identity, network)
    os.execvp(argv[0], argv)  # noqa: S606 - argv list; ssh's exit status is ours


@handle_errors
def build(
    name: str, command: list[str], user: str, identity: Path | None, network: str
) -> list[str]:
    if shutil.which("ssh") is None:
        fail("ssh is not installed (apt-get install openssh-client)")
    c = client()
    server = c.server(name)
    if not server.addresses:
        fail(f"server {server.name} has no address")
    net = network or next(iter(server.addresses))
    if net not in server.addresses or not server.addresses[net]:
        fail(f"server {server.name} has no address on network {net}")
    address = server.addresses[net][0]
    if not user:
        try:
            user = c.image(server.image).default_user
        except ApiError:
            user = ""
        user = user or "root"
    key = identity or private_key(server.key_name)
    prefix = route_namespace(c, server, net)
    if prefix and os.geteuid() != 0:
        fail(f"reaching {server.name} through its network's gateway namespace needs root")
    if not _allows_ssh(c, server):
        console.print(
            f"[yellow]note:[/yellow] no security group of {server.name} lets tcp/22 in from "
            "its gateway; if this hangs: nubes security-group rule create "
            f"{(server.security_groups or ['default'])[0]} --ingress --protocol tcp --port 22"
        )
    known = known_hosts_file()
    known.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    known.touch(mode=0o600, exist_ok=True)
    sys.stdout.flush()
    return ssh_argv(server, address, user, key, prefix, command)
