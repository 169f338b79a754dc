"""nubes ssh: the real OpenSSH client to an instance, as its image's default user.

The instance's address is reached from the host that serves its network's gateway: for a lab
host (a network namespace named like the host) through `ip netns exec`. Host keys go to a
known_hosts file of nubes keyed by instance id (HostKeyAlias), so a new instance that gets an
old address never trips a "host key changed" warning, and a changed key of the same instance
still does.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import typer

from nubes.cli.common import client, fail, handle_errors
from nubes.client import ApiError, NubesClient
from nubes.schemas import resources as s

NETNS_DIR = Path("/run/netns")


def known_hosts_file() -> Path:
    return Path.home() / ".ssh" / "nubes_known_hosts"


def private_key(key_name: str) -> Path | None:
    """The key `nubes keypair create` saved for this keypair, if it is here."""
    if not key_name:
        return None
    path = Path.home() / ".ssh" / f"nubes-{key_name}"
    return path if path.is_file() else None


def route_namespace(c: NubesClient, server: s.Server, network: str) -> str | None:
    """The network namespace to run ssh in: the lab host serving the network's gateway."""
    candidates: list[str] = []
    try:
        # an admin sees where the gateway is; others go through the instance's own host
        gateway_host = getattr(c.network(network), "gateway_host", None)
    except ApiError:
        gateway_host = None
    candidates += [h for h in (gateway_host, server.host) if h]
    for name in candidates:
        if (NETNS_DIR / name).exists():
            return name
    return None


def ssh_argv(
    server: s.Server,
    address: str,
    user: str,
    key: Path | None,
    netns: str | None,
    command: list[str],
    extra: list[str] | None = None,
) -> list[str]:
    known = known_hosts_file()
    argv = ["ip", "netns", "exec", netns] if netns else []
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
    netns = route_namespace(c, server, net)
    if netns and os.geteuid() != 0:
        fail(f"reaching {server.name} through lab host {netns} needs root (ip netns exec)")
    known = known_hosts_file()
    known.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    known.touch(mode=0o600, exist_ok=True)
    sys.stdout.flush()
    return ssh_argv(server, address, user, key, netns, command)
