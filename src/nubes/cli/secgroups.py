"""nubes security-group ...: what may reach a server, and what it may start."""

from __future__ import annotations

import typer
from rich.table import Table

from nubes.cli.common import Output, OutputOpt, client, console, handle_errors, show
from nubes.schemas import resources as s

sg_app = typer.Typer(
    help="Security groups: stateful firewall rules on servers' ports (Neutron's semantics). "
    "Every project has `default`: egress anywhere, ingress only from its own members.",
    no_args_is_help=True,
)
rule_app = typer.Typer(help="Rules of a security group.", no_args_is_help=True)
sg_app.add_typer(rule_app, name="rule")
COLS = ("name", "description", "rules", "id")
RULE_COLS = ("id", "direction", "protocol", "port_min", "port_max", "remote_ip", "remote_group")


def _summary(g: s.SecurityGroup) -> dict[str, str]:
    rules = []
    for r in g.rules:
        ports = ""
        if r.port_min is not None:
            ports = f":{r.port_min}" + (f"-{r.port_max}" if r.port_max != r.port_min else "")
        remote = r.remote_ip or (f"group {r.remote_group}" if r.remote_group else "anywhere")
        rules.append(f"{r.direction} {r.protocol}{ports} {remote}")
    return {"name": g.name, "description": g.description, "rules": "; ".join(rules), "id": g.id}


@sg_app.command("create")
@handle_errors
def create(
    name: str,
    description: str = typer.Option("", help="free text"),
    output: Output = OutputOpt,
) -> None:
    """Create a group (it allows all egress and no ingress until you add rules)."""
    group = client().create_security_group(
        s.SecurityGroupCreate(name=name, description=description)
    )
    show(group, COLS, output)


@sg_app.command("list")
@handle_errors
def list_(output: Output = OutputOpt) -> None:
    """List the project's groups and their rules."""
    groups = client().security_groups()
    if output is Output.json:
        show(groups, (), output)
        return
    table = Table(*COLS)
    for g in groups:
        row = _summary(g)
        table.add_row(*(row[c] for c in COLS))
    console.print(table)


@sg_app.command("show")
@handle_errors
def show_(ref: str, output: Output = OutputOpt) -> None:
    """Show a group and its rules."""
    group = client().security_group(ref)
    if output is Output.json:
        show(group, (), output)
        return
    console.print(f"[bold]{group.name}[/bold] ({group.id}) {group.description}")
    show(group.rules, RULE_COLS, output)


@sg_app.command("delete")
@handle_errors
def delete(ref: str) -> None:
    """Delete a group no server uses (`default` stays)."""
    client().delete_security_group(ref)


@rule_app.command("create")
@handle_errors
def rule_create(
    group: str = typer.Argument(..., help="the group that gets the rule"),
    ingress: bool = typer.Option(
        True, "--ingress/--egress", help="what may reach its members, or what they may start"
    ),
    protocol: str = typer.Option("any", help="tcp, udp, icmp or any"),
    port: str = typer.Option(None, help="PORT or FROM-TO (tcp and udp)"),
    remote_ip: str = typer.Option(None, help="only from (ingress) or to (egress) this CIDR"),
    remote_group: str = typer.Option(None, help="only from or to this group's members"),
    output: Output = OutputOpt,
) -> None:
    """Add a rule: allowed traffic, and its replies (rules are stateful)."""
    port_min = port_max = None
    if port:
        low, _, high = port.partition("-")
        try:
            port_min, port_max = int(low), int(high or low)
        except ValueError:
            raise typer.BadParameter(
                f"{port!r}: give PORT or FROM-TO", param_hint="--port"
            ) from None
    body = s.SecurityGroupRuleCreate(
        direction="ingress" if ingress else "egress",
        protocol=protocol,  # type: ignore[arg-type]
        port_min=port_min,
        port_max=port_max,
        remote_ip=remote_ip,
        remote_group=remote_group,
    )
    show(client().create_security_group_rule(group, body), RULE_COLS, output)


@rule_app.command("delete")
@handle_errors
def rule_delete(rule_id: str) -> None:
    """Delete a rule (by the id `security-group show` lists)."""
    client().delete_security_group_rule(rule_id)
