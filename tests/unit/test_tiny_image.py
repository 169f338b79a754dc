"""The tiny image's parts: cpio writer, module order, the guest's seed parser, build cache."""

from __future__ import annotations

import gzip
import io
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from nubes.imagebuild import tiny
from nubes.imagebuild.cpio import CpioWriter
from nubes.storage.seed import (
    SeedData,
    SeedNic,
    render_meta_data,
    render_network_config,
    render_user_data,
)

BUSYBOX = shutil.which("busybox")


def test_cpio_round_trips_through_cpio_tool(tmp_path: Path) -> None:
    arc = CpioWriter()
    arc.add_file("bin/tool", b"#!/bin/sh\necho hi\n", 0o755)
    arc.add_symlink("bin/sh", "busybox")
    arc.add_chardev("dev/console", 5, 1)
    arc.add_dir("root", 0o700)
    out = io.BytesIO()
    arc.write(out)
    assert len(out.getvalue()) % 4 == 0
    listing = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=out.getvalue(), capture_output=True, check=True
    ).stdout.decode()
    lines = {line.split()[-1] if "->" not in line else line.split()[-3]: line for line in
             listing.splitlines()}  # fmt: skip
    assert list(lines) == ["bin", "bin/sh", "bin/tool", "dev", "dev/console", "root"]
    assert lines["bin/tool"].startswith("-rwxr-xr-x")
    assert lines["dev/console"].startswith("crw-------")
    assert lines["root"].startswith("drwx------")
    assert "bin/sh -> busybox" in lines["bin/sh"]
    with pytest.raises(ValueError):
        arc.add_file("../escape", b"")


def test_module_order_puts_dependencies_first(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text(
        "kernel/a/virtio_ring.ko:\n"
        "kernel/a/virtio.ko: kernel/a/virtio_ring.ko\n"
        "kernel/n/virtio_net.ko: kernel/n/net_failover.ko kernel/c/failover.ko "
        "kernel/a/virtio.ko kernel/a/virtio_ring.ko\n"
        "kernel/n/net_failover.ko: kernel/c/failover.ko\n"
        "kernel/c/failover.ko:\n"
        "kernel/b/virtio_blk.ko: kernel/a/virtio.ko kernel/a/virtio_ring.ko\n"
    )
    order = tiny.module_load_order(tmp_path, ["virtio_net", "virtio-blk", "not_here"])
    assert order == [
        "kernel/a/virtio_ring.ko",
        "kernel/a/virtio.ko",
        "kernel/c/failover.ko",
        "kernel/n/net_failover.ko",
        "kernel/n/virtio_net.ko",
        "kernel/b/virtio_blk.ko",
    ]


def _guest_parse(tmp_path: Path, data: SeedData) -> dict[str, str]:
    if BUSYBOX is None:
        pytest.skip("busybox-static is not installed")
    seed_dir, out = tmp_path / "seed", tmp_path / "out"
    seed_dir.mkdir()
    out.mkdir()
    (seed_dir / "meta-data").write_text(render_meta_data(data))
    (seed_dir / "user-data").write_text(render_user_data(data))
    (seed_dir / "network-config").write_text(render_network_config(data))
    awk = resources.files("nubes.imagebuild").joinpath("files", "tiny-seed.awk")
    files = [str(seed_dir / n) for n in ("meta-data", "user-data", "network-config")]
    subprocess.run(
        [BUSYBOX, "awk", "-v", f"OUT={out}", "-f", str(awk), *files], check=True, timeout=30
    )
    return {p.name: p.read_text() for p in out.iterdir()}


def test_guest_parser_reads_what_we_render(tmp_path: Path) -> None:
    dns = ("10.0.0.1", "9.9.9.9")
    data = SeedData(
        instance_id="i-42",
        hostname="web1",
        public_keys=("ssh-ed25519 AAAAkey1 a@b",),
        user_data="#cloud-config\nhostname: mine\nssh_authorized_keys: ['ssh-rsa AAAA== c@d']",
        network=(
            SeedNic("52:54:00:12:34:56", "10.0.0.5/24", "10.0.0.1", dns, 1450),
            SeedNic("52:54:00:AB:CD:EF"),
        ),
    )
    got = _guest_parse(tmp_path, data)
    assert got["hostname"] == "mine\n"  # cloud-config wins, as with cloud-init
    assert got["instance-id"] == "i-42\n"
    assert got["user-data-kind"] == "cloud-config\n"
    assert got["keys"] == "ssh-ed25519 AAAAkey1 a@b\nssh-rsa AAAA== c@d\n"
    assert got["nics"] == (
        "eth0 52:54:00:12:34:56 eth0 1450 10.0.0.5/24 0.0.0.0/0>10.0.0.1 10.0.0.1,9.9.9.9\n"
        "eth1 52:54:00:ab:cd:ef eth1 - - - -\n"
    )


def test_guest_parser_ignores_script_user_data(tmp_path: Path) -> None:
    data = SeedData(
        instance_id="i-43",
        hostname="web2",
        public_keys=("ssh-ed25519 AAAAkey1 a@b",),
        user_data="#!/bin/sh\nhostname: evil\nssh_authorized_keys: x\n",
    )
    got = _guest_parse(tmp_path, data)
    assert got["hostname"] == "web2\n"
    assert got["user-data-kind"] == "script\n"
    assert got["keys"] == "ssh-ed25519 AAAAkey1 a@b\n"
    assert got["nics"] == ""


def _have_inputs() -> bool:
    try:
        tiny.find_inputs()
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _have_inputs(), reason="cloud kernel, busybox or dropbear missing")
def test_build_is_complete_and_cached(tmp_path: Path) -> None:
    messages: list[str] = []
    built = tiny.build_tiny(tmp_path, messages.append)
    assert "console=tty0 console=ttyS0" in built.cmdline  # ttyS0 last: /dev/console
    assert built.disk_format == "qcow2"
    for path in (built.disk, built.kernel, built.initrd):
        assert path.is_file()
    listing = subprocess.run(
        ["cpio", "-it", "--quiet"], input=gzip.decompress(built.initrd.read_bytes()),
        capture_output=True, check=True,
    ).stdout.decode().split()  # fmt: skip
    for name in ("init", "bin/busybox", "bin/dropbear", "lib/modules/virtio_net.ko",
                 "etc/acpi/PWRF/00000080", "etc/nubes/seed.awk", "dev/console"):  # fmt: skip
        assert name in listing
    assert not any(m.startswith("tiny image") and "cached" in m for m in messages)
    again = tiny.build_tiny(tmp_path, messages.append)
    assert again == built
    assert "cached" in messages[-1]
    assert [p.name for p in tmp_path.iterdir()] == [built.disk.parent.name]  # no temp left
