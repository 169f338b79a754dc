"""nubes host token create | join | remove: machines entering and leaving the cloud."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import typer

from nubes.cli import daemon
from nubes.cli.common import client, console, fail, handle_errors
from nubes.client import NubesClient, fetch_pinned_ca, identity

_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# what the agent must not inherit from the shell that joined it
_NOT_FOR_AGENTS = ("NUBES_TOKEN", "NUBES_URL", "NUBES_JOIN_TOKEN")


def parse_duration(text: str) -> int:
    match = _DURATION.match(text.strip())
    if not match:
        raise typer.BadParameter(
            "a number with s, m, h or d, e.g. 30m or 1h", param_hint="--expires"
        )
    return int(match.group(1)) * _UNIT[match.group(2)]


def token_create(
    expires: str = typer.Option("1h", "--expires", help="how long the token is good: 30m, 1h, 2d"),
) -> None:
    """Make a one-time join token for a new machine (admin) and print the command to run there."""
    made = client().create_join_token(parse_duration(expires))
    console.print(f"join token (good once, until {made.expires_at:%Y-%m-%d %H:%M} UTC):")
    print(made.token)
    console.print("on the new machine (Debian, as root, the repo checked out): make deps, then")
    print(f"  {made.command}")


def state_dir() -> Path:
    return Path(os.environ.get("NUBES_STATE_DIR", "/var/lib/nubes"))


def agent_env(name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _NOT_FOR_AGENTS}
    env.update(NUBES_STATE_DIR=str(state_dir()), NUBES_HOST_NAME=name)
    return env


def join(
    url: str = typer.Argument(..., help="the API, e.g. https://192.0.2.10:8774"),
    token: str = typer.Option("", "--token", help="from `nubes host token create`"),
    name: str = typer.Option("", "--name", help="this host's name (default: the hostname)"),
    address: str = typer.Option(
        "", "--address", help="the address other hosts reach this one at (overlay tunnels)"
    ),
    foreground: bool = typer.Option(False, help="run the agent in this process, not detached"),
) -> None:
    """Join this machine to a cloud and start its agent.

    The token pins the cloud's CA: the API must present a CA with that fingerprint, or nothing
    is sent. The host's own credential is kept 0600 in its state directory. Run again with no
    token to start the agent of a host that has joined already."""
    name = name or socket.gethostname()
    host_dir = state_dir() / "hosts" / name
    me = identity.load(host_dir)
    if me is None:
        if not token:
            fail(f"host {name} has not joined yet: --token is needed (nubes host token create)")
        _, _, fingerprint = token.partition(".")
        if not re.fullmatch(r"[0-9a-fA-F]{64}", fingerprint):
            fail("--token: not a join token (it ends in '.' and the CA's 64-hex fingerprint)")
        if not url.startswith("https://"):
            fail(f"{url}: the API is joined over https:// only")
        ca = fetch_pinned_ca(url, fingerprint)
        with NubesClient(url, "", ca_pem=ca) as api:
            joined = api.join(token, name)
        me = identity.HostIdentity(url, joined.host_id, name, joined.credential, address)
        identity.save(host_dir, me, ca)
        console.print(f"joined {url} as host {name} ({joined.host_id})")
    elif token:
        console.print(f"host {name} has joined {me.api_url} already; the token is not used")
    env = agent_env(name)
    if address:
        env["NUBES_HOST_ADDRESS"] = address
    argv = daemon.python_argv("nubes.agent.main")
    if foreground:
        sys.stdout.flush()
        os.execve(argv[0], argv, env)
    pidfile = host_dir / "agent.pid"
    if daemon.read_pid(pidfile) is not None:
        console.print(f"the agent of {name} is running already (pid {pidfile.read_text()})")
        return
    with (host_dir / "agent.log").open("ab") as log:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pidfile.write_text(str(proc.pid))
    console.print(f"agent started (pid {proc.pid}, log {host_dir / 'agent.log'})")


def remove(
    ref: str = typer.Argument(..., help="host name or id"),
    force: bool = typer.Option(False, help="also when it has servers: they go to ERROR"),
) -> None:
    """Remove a host (admin): its credential stops working at once."""
    client().remove_host(ref, force=force)
    console.print(f"host {ref} removed; its credential is revoked")


def evacuate(
    ref: str = typer.Argument(..., help="host name or id; it must be down (no heartbeat)"),
    yes: bool = typer.Option(False, "--yes", help="yes, lose the data of its servers' disks"),
) -> None:
    """Rebuild the servers of a host that is down on other hosts (admin).

    The host is fenced first: its credential stops working, and its agent,
    if it ever comes back, destroys its copies of the servers instead of
    running them. Each server is rebuilt elsewhere from its image with the
    same id, ports and addresses: THE DATA ON ITS DISK IS LOST (the disk
    stayed on the dead host), AND SO ARE THE HOST'S VOLUMES: they become
    errors, detached, and the servers come up without them. Refused (409)
    while the host is up."""
    if not yes:
        fail(
            f"evacuating {ref} rebuilds its servers from their images: the data on their "
            "disks is lost, its volumes are lost too (error, detached; the servers come up "
            "without them), and the host is fenced for good. Run again with --yes to do it."
        )
    done = client().evacuate_host(ref)
    console.print(f"host {done.host} fenced: its credential is refused from now on")
    for server, host in sorted(done.moved.items()):
        console.print(f"server {server}: rebuilding on {host}")
    for server, why in sorted(done.failed.items()):
        console.print(f"server {server}: NOT moved ({why}); evacuate again to retry")
    for volume in done.volumes_lost:
        console.print(f"volume {volume}: lost with {done.host} (error, detached)")
    if done.failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    token_app = typer.Typer(
        help="One-time tokens that let a new machine join.", no_args_is_help=True
    )
    token_app.command("create")(handle_errors(token_create))
    app.add_typer(token_app, name="token")
    app.command("join")(handle_errors(join))
    app.command("remove")(handle_errors(remove))
    app.command("evacuate")(handle_errors(evacuate))
