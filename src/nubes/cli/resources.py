"""nubes image|flavor|keypair|network|host."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import typer

from nubes.cli.common import Output, OutputOpt, client, console, fail, handle_errors, show
from nubes.schemas import resources as s

image_app = typer.Typer(help="Disk images instances boot from.", no_args_is_help=True)
flavor_app = typer.Typer(help="Instance sizes: vCPUs, RAM, disk.", no_args_is_help=True)
keypair_app = typer.Typer(help="SSH public keys put into instances.", no_args_is_help=True)
network_app = typer.Typer(help="Tenant networks (bridge, DHCP, overlay).", no_args_is_help=True)
host_app = typer.Typer(help="Hosts that run instances.", no_args_is_help=True)

IMAGE_COLS = ("name", "kind", "disk_format", "status", "virtual_size", "kernel", "id")


def read_chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(size):
            yield chunk


def upload_image(
    name: str,
    disk: Path,
    fmt: str,
    kernel: Path | None = None,
    initrd: Path | None = None,
    cmdline: str = "",
    ready_pattern: str = "",
    default_user: str = "",
) -> s.Image:
    """Create the image record and upload its parts; delete the record if any part fails."""
    for path in (disk, kernel, initrd):
        if path is not None and not path.is_file():
            fail(f"no such file: {path}")
    c = client()
    body = s.ImageCreate(
        name=name,
        disk_format=fmt,  # type: ignore[arg-type]
        cmdline=cmdline,
        ready_pattern=ready_pattern,
        default_user=default_user,
    )
    image = c.create_image(body)
    try:
        for part, path in (("kernel", kernel), ("initrd", initrd), ("file", disk)):
            if path is not None:
                with console.status(f"uploading {part} ({path.stat().st_size >> 20} MiB)"):
                    image = c.upload_image_part(image.id, part, read_chunks(path))
    except BaseException:
        c.delete("images", image.id)
        raise
    return image


@image_app.command("import")
@handle_errors
def image_import(
    name: str = typer.Argument(..., help="image name"),
    file: Path | None = typer.Option(None, "--file", help="local disk image file"),
    url: str | None = typer.Option(None, "--url", help="download the image from this URL"),
    fmt: str = typer.Option(
        "qcow2",
        "--format",
        help="qcow2 or raw (a disk image), iso (an installer CD: its servers boot it beside a "
        "blank disk of the flavor's size until `nubes server eject`), or oci-archive, "
        "docker-archive (what `podman save` and `docker save` write) or rootfs (a container "
        "image); checked, not trusted",
    ),
    kernel: Path | None = typer.Option(None, help="kernel for direct boot"),
    initrd: Path | None = typer.Option(None, help="initrd for direct boot"),
    cmdline: str = typer.Option("", help="kernel command line for direct boot"),
    default_user: str = typer.Option("", help="user cloud-init gives the SSH key to"),
    ready_pattern: str = typer.Option(
        "", help="a line the guest prints on its serial console once it is up (`ready`)"
    ),
    output: Output = OutputOpt,
) -> None:
    """Import a disk image (qcow2, raw), an installer ISO, or a container image (an OCI or
    docker archive, uploaded with --file); it is inspected and rejected if unsafe."""
    if bool(file) == bool(url):
        fail("give exactly one of --file or --url")
    if fmt not in ("qcow2", "raw", "iso", "oci-archive", "docker-archive", "rootfs"):
        fail("--format must be qcow2, raw, iso, oci-archive, docker-archive or rootfs")
    if url:
        body = s.ImageCreate(
            name=name,
            disk_format=fmt,  # type: ignore[arg-type]
            url=url,
            default_user=default_user,
            ready_pattern=ready_pattern,
        )
        with console.status(f"downloading {url}"):
            image = client().create_image(body)
    else:
        assert file is not None
        image = upload_image(name, file, fmt, kernel, initrd, cmdline, ready_pattern, default_user)
    show(image, IMAGE_COLS, output)


@image_app.command("build")
@handle_errors
def image_build(
    kind: str = typer.Argument(..., help="tiny (busybox, seconds to boot) or debian"),
    name: str = typer.Option("", help="image name (default: the kind, or <kind>-container)"),
    rebuild: bool = typer.Option(False, help="build again even if a cached build exists"),
    container: bool = typer.Option(
        False,
        "--container",
        help="a container image (runc) named <kind>-container: tiny (busybox) or debian "
        "(Debian 12 from mmdebstrap with cloud-init and OpenSSH, no systemd)",
    ),
) -> None:
    """Build a ready image from Debian packages and import it.

    debian builds (the VM's disk, the container's rootfs) run mmdebstrap from this machine's
    Debian mirror; they are cached in NUBES_CACHE_DIR by their inputs, and share the
    downloaded packages (NUBES_CACHE_DIR/debs)."""
    from nubes.cli import imagebuild

    if container:
        imagebuild.build_container(kind, name or f"{kind}-container", rebuild)
    else:
        imagebuild.build_and_import(kind, name or kind, rebuild)


@image_app.command("list")
@handle_errors
def image_list(output: Output = OutputOpt) -> None:
    """List images."""
    show(client().images(), IMAGE_COLS, output)


@image_app.command("show")
@handle_errors
def image_show(ref: str, output: Output = OutputOpt) -> None:
    """Show one image."""
    show(client().image(ref), IMAGE_COLS, output)


@image_app.command("delete")
@handle_errors
def image_delete(ref: str) -> None:
    """Delete an image no server uses."""
    client().delete("images", ref)
    console.print(f"deleted image {ref}")


@flavor_app.command("list")
@handle_errors
def flavor_list(output: Output = OutputOpt) -> None:
    """List flavors."""
    show(client().flavors(), ("name", "vcpus", "ram_mb", "disk_gb", "id"), output)


@flavor_app.command("create")
@handle_errors
def flavor_create(
    name: str,
    vcpus: int = typer.Option(1, help="virtual CPUs"),
    ram: int = typer.Option(512, help="RAM in MiB"),
    disk: int = typer.Option(4, help="disk in GiB"),
    output: Output = OutputOpt,
) -> None:
    """Create a flavor (admin)."""
    body = s.FlavorCreate(name=name, vcpus=vcpus, ram_mb=ram, disk_gb=disk)
    show(client().create_flavor(body), (), output)


@flavor_app.command("delete")
@handle_errors
def flavor_delete(ref: str) -> None:
    """Delete a flavor no server uses (admin)."""
    client().delete("flavors", ref)
    console.print(f"deleted flavor {ref}")


@keypair_app.command("add")
@handle_errors
def keypair_add(
    name: str,
    public_key: Path = typer.Option(..., "--public-key", help="OpenSSH public key file"),
    output: Output = OutputOpt,
) -> None:
    """Register an existing public key."""
    body = s.KeypairCreate(name=name, public_key=public_key.read_text().strip())
    show(client().create_keypair(body), (), output)


@keypair_app.command("create")
@handle_errors
def keypair_create(
    name: str,
    save: Path = typer.Option(None, help="private key file (default ~/.ssh/nubes-NAME)"),
) -> None:
    """Generate a keypair; the private key is saved with mode 0600 and never stored by nubes."""
    key = client().create_keypair(s.KeypairCreate(name=name))
    dest = save or Path.home() / ".ssh" / f"nubes-{name}"
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.private_key or "")
    console.print(f"created keypair {name} ({key.fingerprint}); private key in {dest}")


@keypair_app.command("list")
@handle_errors
def keypair_list(output: Output = OutputOpt) -> None:
    """List keypairs."""
    show(client().keypairs(), ("name", "fingerprint", "id"), output)


@keypair_app.command("delete")
@handle_errors
def keypair_delete(ref: str) -> None:
    """Delete a keypair."""
    client().delete("keypairs", ref)
    console.print(f"deleted keypair {ref}")


NET_COLS = ("name", "cidr", "gateway", "type", "vni", "mtu", "gateway_host", "id")


@network_app.command("create")
@handle_errors
def network_create(
    name: str,
    cidr: str = typer.Option(..., help="IPv4 range, e.g. 10.20.0.0/24"),
    type_: str = typer.Option(
        None, "--type", help="overlay: geneve where every host has it (default), else vxlan"
    ),
    vni: int = typer.Option(None, help="overlay id (admin only; default: allocated)"),
    port_security: bool = typer.Option(
        True, help="anti-spoofing and security groups on its ports by default"
    ),
    egress: bool = typer.Option(True, help="reach the external network through NAT"),
    external: bool = typer.Option(
        False, help="admin: declare the external network (egress NAT and floating IPs)"
    ),
    uplink: str = typer.Option(
        None, help="--external: each host's interface to it (e.g. eth1; the lab's is ex0)"
    ),
    gateway: str = typer.Option(None, help="--external: its router (default: first address)"),
    output: Output = OutputOpt,
) -> None:
    """Create a tenant network (or, with --external, the cloud's way out)."""
    body = s.NetworkCreate(
        name=name,
        cidr=cidr,
        type=type_,  # type: ignore[arg-type]
        vni=vni,
        port_security=port_security,
        egress=egress,
        external=external,
        uplink=uplink,
        gateway=gateway,
    )
    net = client().create_network(body)
    show(net, NET_COLS, output)
    if net.note and output is Output.table:
        console.print(f"[yellow]note:[/yellow] {net.note}")


@network_app.command("list")
@handle_errors
def network_list(output: Output = OutputOpt) -> None:
    """List networks."""
    show(client().networks(), NET_COLS, output)


@network_app.command("show")
@handle_errors
def network_show(ref: str, output: Output = OutputOpt) -> None:
    """Show one network."""
    show(client().network(ref), NET_COLS, output)


@network_app.command("delete")
@handle_errors
def network_delete(ref: str) -> None:
    """Delete a network with no servers on it."""
    client().delete("networks", ref)
    console.print(f"deleted network {ref}")


HOST_COLS = (
    "name",
    "state",
    "enabled",
    "accel",
    "vcpus",
    "used_vcpus",
    "ram_mb",
    "used_ram_mb",
    "disk_gb",
    "used_disk_gb",
    "instances",
    "joined_via",
    "agent_version",
    "network_driver",
    "overlays",
    "runtimes",
    "last_heartbeat",
)


@host_app.command("list")
@handle_errors
def host_list(output: Output = OutputOpt) -> None:
    """List hosts with their state, accelerator and usage."""
    hosts = client().hosts()
    show(hosts, HOST_COLS, output)
    notes = {h.accel_note for h in hosts if h.accel_note}
    if output is Output.table:
        for note in notes:
            console.print(f"[yellow]note:[/yellow] {note}")


@host_app.command("disable")
@handle_errors
def host_disable(ref: str) -> None:
    """Stop placing new instances on a host (admin)."""
    client().set_host_enabled(ref, False)
    console.print(f"host {ref} disabled")


@host_app.command("enable")
@handle_errors
def host_enable(ref: str) -> None:
    """Place instances on a host again (admin)."""
    client().set_host_enabled(ref, True)
    console.print(f"host {ref} enabled")
