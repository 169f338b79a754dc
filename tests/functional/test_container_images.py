"""Container images through the API: OCI and docker archives are flattened into the store's
rootfs format; hostile archives are refused with a 4xx naming `file` and nothing is stored."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nubes.client import ApiError
from nubes.schemas import resources as s
from tests.cloud import Cloud
from tests.ociarchive import BASE, Entry, docker_archive, oci_archive


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    c = Cloud(tmp_path, hosts=0, max_container_image_bytes=1 << 20)
    try:
        yield c
    finally:
        c.close()


def upload(cloud: Cloud, name: str, path: Path, fmt: str) -> s.Image:
    image = cloud.client.create_image(s.ImageCreate(name=name, disk_format=fmt))  # type: ignore[arg-type]
    return cloud.client.upload_image_part(image.id, "file", iter([path.read_bytes()]))


def stored_names(cloud: Cloud, image: s.Image) -> set[str]:
    with tarfile.open(cloud.settings.images_dir / f"{image.id}.rootfs") as tar:
        return set(tar.getnames())


@pytest.mark.parametrize("fmt", ["oci-archive", "docker-archive"])
def test_an_archive_becomes_a_container_image(cloud: Cloud, tmp_path: Path, fmt: str) -> None:
    upper = [
        Entry("etc/.wh.old"),
        Entry("etc/hostname", b"y\n"),
        Entry("bin/ls", type=tarfile.LNKTYPE, linkname="bin/busybox"),
    ]
    make = oci_archive if fmt == "oci-archive" else docker_archive
    image = upload(cloud, "web", make(tmp_path / "a.tar", [BASE, upper]), fmt)
    assert (image.status, image.disk_format, image.kind) == ("active", "rootfs", "container")
    names = stored_names(cloud, image)
    assert {"image.json", "rootfs/bin/sh", "rootfs/etc/hostname", "rootfs/bin/ls"} <= names
    assert "rootfs/etc/old" not in names  # the whiteout removed it
    with tarfile.open(cloud.settings.images_dir / f"{image.id}.rootfs") as tar:
        hostname = tar.extractfile("rootfs/etc/hostname")
        assert hostname is not None and hostname.read() == b"y\n"  # the upper layer wins
    assert cloud.client.image("web").kind == "container"


HOSTILE: dict[str, list[Entry]] = {
    "path traversal": [Entry("../../etc/cron.d/x", b"* * * * * root sh\n")],
    "path traversal in the middle": [Entry("etc/../../../x", b"x")],
    "absolute symlink out": [
        Entry("etc/shadow-link", type=tarfile.SYMTYPE, linkname="/etc/shadow")
    ],
    "relative symlink climbing out": [
        Entry("etc/up", type=tarfile.SYMTYPE, linkname="../../../root")
    ],
    "write through a symlink": [
        Entry("bin/escape", type=tarfile.SYMTYPE, linkname="/tmp"),
        Entry("bin/escape/x", b"x"),
    ],
    "hard link to a host file": [Entry("etc/pw", type=tarfile.LNKTYPE, linkname="/etc/passwd")],
    "device node": [Entry("dev-mem", type=tarfile.CHRTYPE)],
    "block device": [Entry("sda", type=tarfile.BLKTYPE)],
    "setuid file": [Entry("bin/su", b"x", mode=0o4755)],
    "oversized layer": [Entry("big", b"\0" * (2 << 20))],
}


@pytest.mark.parametrize("what", sorted(HOSTILE))
@pytest.mark.parametrize("fmt", ["oci-archive", "docker-archive"])
def test_hostile_archives_are_refused(cloud: Cloud, tmp_path: Path, what: str, fmt: str) -> None:
    make = oci_archive if fmt == "oci-archive" else docker_archive
    path = make(tmp_path / "h.tar", [BASE, HOSTILE[what]])
    with pytest.raises(ApiError) as err:
        upload(cloud, "hostile", path, fmt)
    assert 400 <= err.value.status < 500, err.value.detail
    assert err.value.field == "file", err.value.detail
    assert cloud.client.image("hostile").status != "active"
    assert [p.name for p in cloud.settings.images_dir.iterdir()] == []
    print(f"{what}: {err.value.status} {err.value.detail}")


def test_not_an_archive_is_refused(cloud: Cloud, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ApiError) as err:
        upload(cloud, "junk", junk, "oci-archive")
    assert err.value.status == 422 and err.value.field == "file"


def test_a_url_import_of_an_archive_is_refused(cloud: Cloud) -> None:
    with pytest.raises(ApiError) as err:
        cloud.client.create_image(
            s.ImageCreate(name="u", disk_format="oci-archive", url="https://example.com/x.tar")
        )
    assert err.value.status == 422 and err.value.field == "url"


def test_the_tiny_container_image_passes_its_own_checks(tmp_path: Path) -> None:
    from nubes.imagebuild.tinycontainer import build_tiny_container

    cloud = Cloud(tmp_path, hosts=0)  # the default bounds: busybox is 2 MB
    try:
        built = build_tiny_container(tmp_path / "cache")
        assert build_tiny_container(tmp_path / "cache") == built  # cached
        image = upload(cloud, "tiny-container", built, "rootfs")
        assert (image.status, image.kind) == ("active", "container")
        names = stored_names(cloud, image)
        assert {"rootfs/bin/init", "rootfs/bin/busybox", "rootfs/etc/nubes/seed.awk"} <= names
    finally:
        cloud.close()


def test_a_container_goes_only_to_a_host_that_runs_runc(make_cloud: Any, tmp_path: Path) -> None:
    """Fake hosts run qemu only: a container image finds no host, and says why."""
    from nubes.imagebuild.tinycontainer import build_tiny_container

    cloud = make_cloud(hosts=2)
    built = build_tiny_container(tmp_path / "cache")
    upload(cloud, "tiny-container", built, "rootfs")
    body = s.ServerCreate(name="c1", image="tiny-container", flavor="m1.tiny", network="net")
    with pytest.raises(ApiError) as err:
        cloud.client.create_server(body)
    assert err.value.status == 409, err.value.detail
    assert "runtime: this host does not run containers (runc)" in err.value.detail
    vm = cloud.client.create_server(body.model_copy(update={"name": "v1", "image": "img"}))
    assert vm.kind == "vm"
    hosts = cloud.client.hosts()
    assert {h.runtimes for h in hosts} == {"qemu"}
