"""nubes server migrate: move a server to another host (admin)."""

from __future__ import annotations

import time

import typer

from nubes.cli.common import client, console, fail, handle_errors
from nubes.cli.servers import server_app


@server_app.command("migrate")
@handle_errors
def migrate(
    ref: str = typer.Argument(..., help="the server's name or id"),
    host: str = typer.Option(None, "--host", help="target host (default: the scheduler picks)"),
    live: bool = typer.Option(
        False, "--live", help="keep the guest running: disk over NBD, then memory, no reboot"
    ),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="follow it until it ends"),
    timeout: float = typer.Option(900, help="seconds --wait waits"),
) -> None:
    """Move a server to another host that shares no disk with its own (admin only).

    Without --live the guest is shut down, its disk copied and it starts on the target.
    A failure before the switch-over leaves it where it was.
    """
    c = client()
    mig = c.migrate_server(ref, host=host, live=live)
    kind = "live migration" if live else "cold migration"
    console.print(f"{kind} {mig.id}: {mig.source} → {mig.target}")
    if not wait:
        return
    deadline = time.monotonic() + timeout
    with console.status(f"{mig.phase}") as status:
        while mig.phase in ("preparing", "migrating") and time.monotonic() < deadline:
            time.sleep(0.5)
            mig = c.migration(mig.id)
            status.update(f"{mig.source} → {mig.target}: {mig.phase}")
    if mig.phase == "done":
        extra = f", downtime {mig.downtime_ms} ms" if live else ""
        console.print(f"done on {mig.target} in {mig.total_ms} ms{extra}")
    elif mig.phase == "failed":
        fail(f"migration failed, the server stays on {mig.source}: {mig.error}")
    else:
        fail(f"still {mig.phase} after {timeout:.0f}s (nubes migration show {mig.id})")
