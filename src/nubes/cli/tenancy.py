"""nubes project ... (admin) and nubes group ... (server groups)."""

from __future__ import annotations

import typer
from rich.table import Table

from nubes.cli.common import Output, OutputOpt, client, console, handle_errors, show
from nubes.schemas import resources as s

project_app = typer.Typer(help="Projects (tenants) and their tokens (admin).", no_args_is_help=True)
group_app = typer.Typer(
    help="Server groups: affinity or anti-affinity between servers.", no_args_is_help=True
)
GROUP_COLS = ("name", "policy", "members", "hosts", "id")
POLICIES = ("affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity")


@project_app.command("create")
@handle_errors
def project_create(name: str, output: Output = OutputOpt) -> None:
    """Create a project and a member token for it (shown once: save it)."""
    c = client()
    created = c.create_project(s.ProjectCreate(name=name))
    if output is Output.json:
        show(created, (), output)
        return
    console.print(f"created project {created.name} ({created.id})")
    console.print("its member token (shown only now; nubes keeps only its hash):")
    typer.echo(created.token)
    console.print("use it with:")
    typer.echo(f"  export NUBES_URL={c.url} NUBES_TOKEN={created.token}")


@project_app.command("list")
@handle_errors
def project_list(output: Output = OutputOpt) -> None:
    """List projects."""
    show(client().projects(), ("name", "id", "created_at"), output)


@group_app.command("create")
@handle_errors
def group_create(
    name: str,
    policy: str = typer.Option(
        ..., help="affinity | anti-affinity | soft-affinity | soft-anti-affinity"
    ),
    output: Output = OutputOpt,
) -> None:
    """Create a server group; servers join it with `server create --group NAME`."""
    if policy not in POLICIES:
        raise typer.BadParameter(f"must be one of {', '.join(POLICIES)}", param_hint="--policy")
    body = s.GroupCreate(name=name, policy=policy)  # type: ignore[arg-type]
    show(client().create_group(body), GROUP_COLS, output)


@group_app.command("list")
@handle_errors
def group_list(output: Output = OutputOpt) -> None:
    """List server groups with their members and the hosts they run on."""
    show(client().groups(), GROUP_COLS, output)


@group_app.command("show")
@handle_errors
def group_show(ref: str, output: Output = OutputOpt) -> None:
    """Show one server group."""
    show(client().group(ref), GROUP_COLS, output)


@group_app.command("delete")
@handle_errors
def group_delete(ref: str) -> None:
    """Delete a server group with no servers in it."""
    client().delete("groups", ref)
    console.print(f"deleted group {ref}")


def print_explanation(ex: s.Explanation) -> None:
    """One row per host, best first: each filter's verdict, the weight, and why it failed."""
    table = Table("host", *ex.filters, "weight", "why not")
    for h in ex.hosts:
        cells = ["[green]pass[/green]" if f.passed else "[red]FAIL[/red]" for f in h.filters]
        weight = "" if h.weight is None else f"{h.weight:.3f}"
        why = "; ".join(f"{f.name}: {f.reason}" for f in h.filters if not f.passed)
        name = f"[bold]{h.host}[/bold] *" if h.host == ex.chosen else h.host
        table.add_row(name, *cells, weight, why)
    console.print(table)
    console.print(f"weighers: {', '.join(ex.weighers)} (each normalised to 0..1, then multiplied)")
    if ex.chosen:
        console.print(f"a create now would go to [bold]{ex.chosen}[/bold] (*); nothing was created")
    else:
        console.print("[red]no valid host[/red]: a create now would fail; nothing was created")
