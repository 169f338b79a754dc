"""The `nubes` command."""

from __future__ import annotations

import typer

from nubes.cli import (
    console,
    events,
    floatingips,
    hostjoin,
    migrate,  # noqa: F401 (registers `server migrate` on server_app)
    openstack,
    ops,
    quotas,
    resources,
    secgroups,
    servers,
    services,
    ssh,
    tenancy,
    volumes,
)

app = typer.Typer(
    help="nubes: a small IaaS cloud on QEMU. Start with `nubes up` or `nubes lab up`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
volumes.register(servers.server_app)
app.add_typer(servers.server_app, name="server")
app.add_typer(volumes.volume_app, name="volume")
app.add_typer(console.console_app, name="console")
app.add_typer(resources.image_app, name="image")
app.add_typer(resources.flavor_app, name="flavor")
app.add_typer(resources.keypair_app, name="keypair")
app.add_typer(resources.network_app, name="network")
hostjoin.register(resources.host_app)
app.add_typer(resources.host_app, name="host")
app.add_typer(tenancy.group_app, name="group")
app.add_typer(secgroups.sg_app, name="security-group")
app.add_typer(floatingips.fip_app, name="floating-ip")
app.add_typer(tenancy.project_app, name="project")
app.add_typer(quotas.quota_app, name="quota")
app.add_typer(openstack.openstack_app, name="openstack")
app.add_typer(services.lab_app, name="lab")
app.command("up")(services.up)
app.command("ssh")(ssh.ssh)
app.add_typer(ops.operation_app, name="operation")
app.command("gc")(ops.gc)
app.command("events")(events.events)


def main() -> None:
    app()
