"""nubes server ... and nubes console ..."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

from nubes.cli import events
from nubes.cli.common import (
    Output,
    OutputOpt,
    client,
    console,
    error,
    fail,
    handle_errors,
    show,
)
from nubes.cli.tenancy import print_explanation
from nubes.client import ApiError, NubesClient
from nubes.schemas import resources as s

server_app = typer.Typer(help="Instances: create, inspect, power, delete.", no_args_is_help=True)
console_app = typer.Typer(
    help="Serial console of an instance.", invoke_without_command=True, no_args_is_help=True
)
COLS = (
    "name",
    "status",
    "task_state",
    "host",
    "kind",
    "image",
    "flavor",
    "group",
    "addresses",
    "id",
)


def wait_for(c: NubesClient, ref: str, timeout: float, ready: bool) -> s.Server:
    """Until ACTIVE (and, if asked, guest-ready) or ERROR; progress on the terminal. The server
    is read again when the event stream says it changed (polling if the stream is not there or
    breaks)."""
    deadline = time.monotonic() + timeout
    stream = events.changes(c)  # connected before the first read: no change falls between
    try:
        with console.status("waiting") as status:
            while True:
                server = c.server(ref)
                phase = server.status + (f"/{server.task_state}" if server.task_state else "")
                status.update(f"{server.name}: {phase}")
                if server.status == "ERROR":
                    fail(f"server {server.name} failed: {server.fault}")
                if server.status == "ACTIVE" and not server.task_state:
                    if not ready or server.ready_at is not None:
                        return server
                    status.update(f"{server.name}: ACTIVE, waiting for the guest to be ready")
                if time.monotonic() > deadline:
                    fail(f"timed out after {timeout:.0f} s: {server.name} is {phase}")
                if not events.until_change(stream, server.id):
                    stream = None
                    time.sleep(0.3)
    finally:
        if stream is not None:
            stream.close()


@server_app.command("create")
@handle_errors
def create(
    name: str = typer.Argument(..., help="server name; also its hostname"),
    image: str = typer.Option(..., help="image name or id"),
    flavor: str = typer.Option("m1.tiny", help="flavor name or id"),
    network: list[str] = typer.Option(
        ...,
        help="NET or NET:IP, repeatable: one NIC each, in order (IP: a free address of NET)",
    ),
    mac: str = typer.Option(None, help="the first NIC's MAC (default: allocated)"),
    port_security: bool = typer.Option(
        True, help="anti-spoofing and security groups on its NICs (default: the network's)"
    ),
    allowed_address: list[str] = typer.Option(
        [], help="IP\\[/LEN]\\[,MAC], repeatable: the NICs may also send from it (e.g. a macvlan)"
    ),
    security_group: list[str] = typer.Option(
        [], help="repeatable (default: the project's `default` group)"
    ),
    key: str = typer.Option(None, help="keypair name"),
    user_data: Path = typer.Option(None, help="cloud-init user-data file (passed through)"),
    host: str = typer.Option(None, help="place on this host (admin only)"),
    group: str = typer.Option(None, help="server group (its policy guides the placement)"),
    explain: bool = typer.Option(
        False, help="show each host's verdict per filter and its weight; create nothing"
    ),
    wait: bool = typer.Option(False, help="wait until the guest is ready"),
    timeout: float = typer.Option(600, help="seconds --wait waits"),
    eject_after_install: bool = typer.Option(
        False,
        help="an installer ISO's server: its installer's first reboot or poweroff ejects the "
        "CD and boots the installed disk (else: `nubes server eject`)",
    ),
    output: Output = OutputOpt,
) -> None:
    """Create a server from an image on a network. From an installer ISO (`image import
    --format iso`): the ISO as a CD-ROM, booted first, beside a blank disk of the flavor's
    size; install over `nubes console`, then `nubes server eject`."""
    nics = []
    for i, item in enumerate(network):
        net, _, ip = item.partition(":")
        nics.append(s.NicRequest(network=net, ip=ip or None, mac=mac if i == 0 else None))
    pairs = []
    for item in allowed_address:
        ip, _, pair_mac = item.partition(",")
        pairs.append(s.AllowedAddress(ip=ip, mac=pair_mac or None))
    body = s.ServerCreate(
        name=name,
        image=image,
        flavor=flavor,
        networks=nics,
        port_security=port_security,
        allowed_addresses=pairs,
        security_groups=security_group,
        key_name=key,
        user_data=user_data.read_text() if user_data else None,
        host=host,
        group=group,
        eject_after_install=eject_after_install,
    )
    c = client()
    if explain:
        ex = c.explain_server(body)
        if output is Output.json:
            show(ex, (), output)
        else:
            print_explanation(ex)
        return
    server = c.create_server(body)
    if wait:
        server = wait_for(c, server.id, timeout, ready=True)
    show(server, COLS, output)


@server_app.command("add-security-group")
@handle_errors
def add_security_group(server: str, group: str) -> None:
    """Put a server in a security group (its rules apply at once, to running guests too)."""
    client().add_server_security_group(server, group)


@server_app.command("remove-security-group")
@handle_errors
def remove_security_group(server: str, group: str) -> None:
    """Take a server out of a security group."""
    client().remove_server_security_group(server, group)


@server_app.command("list")
@handle_errors
def list_(output: Output = OutputOpt) -> None:
    """List servers."""
    show(client().servers(), COLS, output)


@server_app.command(
    "exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
@handle_errors
def exec_(
    ref: str = typer.Argument(..., help="the container server's name or id"),
    command: list[str] = typer.Argument(
        ..., help="the command and its arguments, after --", show_default=False
    ),
    timeout: int = typer.Option(60, help="seconds before the command is killed"),
) -> None:
    """Run a command in a container server as its root (runc exec): nubes server exec c1 --
    ip addr. Its output is printed, and its exit status is this command's."""
    result = client().exec(ref, command, timeout)
    sys.stdout.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.write(result.stderr)
    if result.timed_out:
        error(f"timed out after {timeout} s: killed")
    raise typer.Exit(result.exit_status)


@server_app.command("show")
@handle_errors
def show_(ref: str, output: Output = OutputOpt) -> None:
    """Show one server."""
    show(client().server(ref), COLS, output)


@server_app.command("delete")
@handle_errors
def delete(
    refs: list[str] = typer.Argument(..., help="server names or ids", show_default=False),
    wait: bool = typer.Option(False, help="wait until everything is removed"),
    timeout: float = typer.Option(120, help="seconds --wait waits"),
) -> None:
    """Delete servers and everything they had on their hosts: nubes server delete web1 web2."""
    c = client()
    deleted, failed = [], 0
    for ref in refs:  # one that cannot go does not stop the others
        try:
            deleted.append(c.delete_server(ref))
        except ApiError as exc:
            error(exc.detail)
            failed += 1
    if wait and deleted:
        deadline = time.monotonic() + timeout
        with console.status(f"deleting {', '.join(srv.name for srv in deleted)}"):
            for server in deleted:
                while not _gone(c, server.id):
                    if time.monotonic() > deadline:
                        fail(f"timed out waiting for {server.name} to go")
                    time.sleep(0.3)
    for server in deleted:
        console.print(f"deleted server {server.name}")
    if failed:
        fail(f"{failed} of {len(refs)} servers could not be deleted")


def _gone(c: NubesClient, server_id: str) -> bool:
    try:
        c.server(server_id)
    except ApiError as exc:
        if exc.status == 404:
            return True
        raise
    return False


def _action(ref: str, action: str, hard: bool = False, wait: bool = False) -> None:
    c = client()
    server = c.server_action(ref, action, hard)
    if wait:
        deadline = time.monotonic() + 120
        with console.status(f"{action} {server.name}"):
            while server.task_state and time.monotonic() < deadline:
                time.sleep(0.3)
                server = c.server(server.id)
    console.print(f"{server.name}: {action} requested ({server.status})")


@server_app.command("start")
@handle_errors
def start(ref: str, wait: bool = typer.Option(False)) -> None:
    """Power a stopped server on."""
    _action(ref, "start", wait=wait)


@server_app.command("stop")
@handle_errors
def stop(ref: str, wait: bool = typer.Option(False)) -> None:
    """Shut a server down (ACPI, then forced after a timeout)."""
    _action(ref, "stop", wait=wait)


@server_app.command("reboot")
@handle_errors
def reboot(
    ref: str,
    hard: bool = typer.Option(False, help="reset at once instead of a clean reboot"),
    wait: bool = typer.Option(False),
) -> None:
    """Reboot a server."""
    _action(ref, "reboot", hard, wait)


@server_app.command("eject")
@handle_errors
def eject(ref: str = typer.Argument(..., help="server name or id")) -> None:
    """Take the installer CD out of a server made from an ISO image: it boots from its disk
    from now on (a running guest loses the CD at once and finds its disk at its next boot;
    later starts never get the CD back)."""
    _action(ref, "eject")


@console_app.command("log")
@handle_errors
def console_log(
    ref: str, tail: int = typer.Option(0, help="only the last N lines (0 = all)")
) -> None:
    """Print the serial console output so far."""
    typer.echo(client().console_log(ref, tail), nl=False)
