"""nubes floating-ip ...: addresses of the external network, NATed 1:1 to a server."""

from __future__ import annotations

import typer

from nubes.cli.common import Output, OutputOpt, client, handle_errors, show
from nubes.schemas import resources as s

fip_app = typer.Typer(
    help="Floating IPs: an external address that reaches one server (1:1 NAT on its "
    "network's gateway host). The server's security groups still decide what gets in.",
    no_args_is_help=True,
)
COLS = ("address", "server", "fixed_ip", "network", "id")


@fip_app.command("create")
@handle_errors
def create(
    server: str = typer.Option(None, help="associate it with this server at once"),
    output: Output = OutputOpt,
) -> None:
    """Take a free address of the external network for this project."""
    show(client().create_floating_ip(s.FloatingIpCreate(server=server)), COLS, output)


@fip_app.command("list")
@handle_errors
def list_(output: Output = OutputOpt) -> None:
    """The project's floating IPs and what they point to."""
    show(client().floating_ips(), COLS, output)


@fip_app.command("associate")
@handle_errors
def associate(address: str, server: str, output: Output = OutputOpt) -> None:
    """Point a floating IP at a server (its first NIC with egress)."""
    show(client().associate_floating_ip(address, server), COLS, output)


@fip_app.command("disassociate")
@handle_errors
def disassociate(address: str, output: Output = OutputOpt) -> None:
    """Point it at nothing (the project keeps it)."""
    show(client().disassociate_floating_ip(address), COLS, output)


@fip_app.command("delete")
@handle_errors
def delete(address: str) -> None:
    """Give the address back."""
    client().delete_floating_ip(address)
