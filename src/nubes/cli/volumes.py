"""nubes volume ... and the server commands of its lifecycle: add-volume, remove-volume,
snapshot, rebuild, resize."""

from __future__ import annotations

import typer

from nubes.cli.common import Output, OutputOpt, client, handle_errors, show
from nubes.cli.servers import COLS as SERVER_COLS
from nubes.schemas import volumes as sv

volume_app = typer.Typer(
    help="Volumes: qcow2 disks kept on one host, attached hot to a server of that host. "
    "They outlive their server (detached when it is deleted).",
    no_args_is_help=True,
)
COLS = ("name", "status", "size_gb", "host", "server", "image", "id")
IMAGE_COLS = ("name", "status", "disk_format", "size", "id")


@volume_app.command("create")
@handle_errors
def create(
    name: str = typer.Argument(..., help="volume name (unique in the project)"),
    size: int = typer.Option(..., "--size", help="GiB"),
    image: str = typer.Option(None, help="copy this image onto it (blank without)"),
    host: str = typer.Option(None, help="admin only: the host to keep it on"),
    output: Output = OutputOpt,
) -> None:
    """Make a volume; the scheduler puts it on the host with the most disk left. Attach it to
    a server of that same host (`nubes server add-volume`)."""
    body = sv.VolumeCreate(name=name, size_gb=size, image=image, host=host)
    show(client().create_volume(body), COLS, output)


@volume_app.command("list")
@handle_errors
def list_(output: Output = OutputOpt) -> None:
    """The project's volumes, their host and server."""
    show(client().volumes(), COLS, output)


@volume_app.command("show")
@handle_errors
def show_(volume: str, output: Output = OutputOpt) -> None:
    """One volume, by name or id."""
    show(client().volume(volume), COLS, output)


@volume_app.command("delete")
@handle_errors
def delete(volume: str, output: Output = OutputOpt) -> None:
    """Delete a detached volume and its data."""
    show(client().delete_volume(volume), COLS, output)


def register(server_app: typer.Typer) -> None:
    """The lifecycle commands, under `nubes server`."""

    @server_app.command("add-volume")
    @handle_errors
    def add_volume(server: str, volume: str, output: Output = OutputOpt) -> None:
        """Attach a volume hot: the guest sees a new virtio disk (/dev/vdX) whose serial is
        the volume id's first 20 characters. Both must be on the same host."""
        show(client().attach_volume(server, volume), COLS, output)

    @server_app.command("remove-volume")
    @handle_errors
    def remove_volume(server: str, volume: str, output: Output = OutputOpt) -> None:
        """Detach a volume hot: the guest is asked to release the disk (unmount it first);
        `available` once it has."""
        show(client().detach_volume(server, volume), COLS, output)

    @server_app.command("snapshot")
    @handle_errors
    def snapshot(
        server: str,
        name: str = typer.Option(..., "--name", help="the new image's name"),
        output: Output = OutputOpt,
    ) -> None:
        """An image of the server's disk at one point (the guest is paused for the copy),
        flattened; it boots as a new server once `active`."""
        show(client().snapshot_server(server, name), IMAGE_COLS, output)

    @server_app.command("rebuild")
    @handle_errors
    def rebuild(
        server: str,
        image: str = typer.Option(None, help="the new disk's image (default: its own)"),
        output: Output = OutputOpt,
    ) -> None:
        """A new disk from the image, keeping the id, ports and addresses. The old disk's
        data is lost; cloud-init sees a new instance-id."""
        show(client().rebuild_server(server, image), SERVER_COLS, output)

    @server_app.command("resize")
    @handle_errors
    def resize(
        server: str,
        flavor: str = typer.Option(..., help="the new flavor"),
        output: Output = OutputOpt,
    ) -> None:
        """Cold: stop, grow the disk, start with the flavor's vCPUs and RAM, on the same host.
        A smaller disk is refused."""
        show(client().resize_server(server, flavor), SERVER_COLS, output)
