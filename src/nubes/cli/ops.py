"""nubes operation ... and nubes gc."""

from __future__ import annotations

import typer
from rich.table import Table

from nubes.cli.common import Output, OutputOpt, client, console, handle_errors, show

operation_app = typer.Typer(
    help="The log of requests on servers: steps, holder, errors.", no_args_is_help=True
)
COLS = ("id", "kind", "status", "holder", "server_id", "error", "created_at")


@operation_app.command("list")
@handle_errors
def operation_list(
    server: str = typer.Option(None, help="only this server's operations"),
    output: Output = OutputOpt,
) -> None:
    """Recent operations, newest first."""
    show(client().operations(server), COLS, output)


@operation_app.command("show")
@handle_errors
def operation_show(op_id: str, output: Output = OutputOpt) -> None:
    """One operation with its steps."""
    op = client().operation(op_id)
    if output is Output.json:
        show(op, COLS, output)
        return
    console.print(f"[bold]{op.kind}[/bold] {op.id}: {op.status} (held by {op.holder})")
    if op.error:
        console.print(f"[red]error:[/red] {op.error}")
    table = Table("step", "state", "at")
    for step in op.steps:
        table.add_row(step.step, step.state, step.at)
    console.print(table)


@handle_errors
def gc(
    dry_run: bool = typer.Option(False, "--dry-run", help="only show what is left over"),
    output: Output = OutputOpt,
) -> None:
    """Show (and with no --dry-run, remove or repair) anything left over.

    Hosts list what nothing wants: instances (QEMU, disk) the desired state does not name are
    removed only by this command without --dry-run, on each host's next pass. The database side
    (ports without a server, host usage that differs from the sum of its servers) is repaired
    unless --dry-run.
    """
    report = client().gc(repair=not dry_run)
    if output is Output.json:
        show(report, (), output)
        return
    left = [f"{host}: {item}" for host, items in report.hosts.items() for item in items]
    for line in report.repaired:
        console.print(f"repaired: {line}")
    for line in left + report.database:
        console.print(f"left over: {line}")
    if not left and not report.database:
        console.print("nothing is left over")
