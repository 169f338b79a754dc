"""nubes quota show | set."""

from __future__ import annotations

import typer
from rich.table import Table

from nubes.cli.common import Output, OutputOpt, client, console, handle_errors, show
from nubes.schemas.quotas import QuotaSet, QuotaUpdate

quota_app = typer.Typer(
    help="Quotas per project: servers, vCPUs, RAM, images, volumes, networks...",
    no_args_is_help=True,
)
Opt = typer.Option(None, help="-1: unlimited")


@quota_app.command("show")
@handle_errors
def quota_show(
    project: str = typer.Argument(None, help="name or id (default: the token's own project)"),
    output: Output = OutputOpt,
) -> None:
    """A project's limits and what it uses."""
    print_quotas(client().quotas(project), output)


@quota_app.command("set")
@handle_errors
def quota_set(
    project: str,
    servers: int = Opt,
    vcpus: int = Opt,
    ram: int = typer.Option(None, "--ram", help="MiB; -1: unlimited"),
    images: int = Opt,
    volumes: int = Opt,
    networks: int = Opt,
    security_groups: int = Opt,
    security_group_rules: int = Opt,
    floating_ips: int = Opt,
    default: list[str] = typer.Option(
        [], "--default", help="put this resource back on the default (repeatable)"
    ),
    output: Output = OutputOpt,
) -> None:
    """Admin: set a project's own limits (those not named keep theirs)."""
    given = dict(
        servers=servers,
        vcpus=vcpus,
        ram_mb=ram,
        images=images,
        volumes=volumes,
        networks=networks,
        security_groups=security_groups,
        security_group_rules=security_group_rules,
        floating_ips=floating_ips,
    )
    values: dict[str, int | None] = {k: v for k, v in given.items() if v is not None}
    values |= {name.replace("-", "_"): None for name in default}
    print_quotas(client().set_quotas(project, QuotaUpdate(**values)), output)


def print_quotas(q: QuotaSet, output: Output) -> None:
    if output is Output.json:
        show(q, (), output)
        return
    table = Table("resource", "limit", "used", title=f"project {q.project}")
    for item in q.quotas:
        limit = "unlimited" if item.limit == -1 else str(item.limit)
        table.add_row(item.resource, limit + (" (default)" if item.default else ""), str(item.used))
    console.print(table)
