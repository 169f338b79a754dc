"""Installer ISOs on fake drivers: import checks, the CD beside a blank disk, eject."""

from __future__ import annotations

import io
import json
import struct
import subprocess
from pathlib import Path

import pycdlib
import pytest

from nubes.client.core import ApiError
from nubes.schemas import resources as s
from tests.cloud import Cloud, make_image
from tests.functional.conftest import upload


def make_iso(path: Path) -> Path:
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident="INSTALL")
    data = b"installer\n"
    iso.add_fp(io.BytesIO(data), len(data), "/README.;1")
    iso.write(str(path))
    iso.close()
    return path


@pytest.fixture
def iso_cloud(cloud: Cloud, tmp_path: Path) -> Cloud:
    upload(cloud.client, "inst", make_iso(tmp_path / "inst.iso"), "iso")
    upload(cloud.client, "img", make_image(tmp_path / "img.qcow2"))
    cloud.client.create_network(s.NetworkCreate(name="net", cidr="10.20.0.0/24"))
    return cloud


def _create(cloud: Cloud, name: str, image: str = "inst") -> s.Server:
    body = s.ServerCreate(name=name, image=image, flavor="m1.tiny", network="net")
    return cloud.client.create_server(body)


def test_a_server_of_an_iso_boots_the_cd_beside_a_blank_disk(iso_cloud: Cloud) -> None:
    image = next(i for i in iso_cloud.client.images() if i.name == "inst")
    assert (image.disk_format, image.status) == ("iso", "active")
    server = _create(iso_cloud, "box")
    active = iso_cloud.wait_status(server.id, "ACTIVE")
    assert active.cdrom
    agent = iso_cloud.agents[0][0]
    spec = agent.hypervisor.spec(server.id)  # type: ignore[attr-defined]
    assert spec.cdrom is not None and spec.cdrom.suffix == ".iso"
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(spec.disk)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    flavor = next(f for f in iso_cloud.client.flavors() if f.name == "m1.tiny")
    assert info["virtual-size"] == flavor.disk_gb * 1024**3  # blank, the flavor's size
    assert "backing-filename" not in info  # no base: the CD is not the disk's backing file


def test_eject_boots_the_disk_from_then_on(iso_cloud: Cloud) -> None:
    server = _create(iso_cloud, "box")
    iso_cloud.wait_status(server.id, "ACTIVE")
    fake = iso_cloud.agents[0][0].hypervisor
    ejected = iso_cloud.client.server_action("box", "eject")
    assert not ejected.cdrom
    iso_cloud.wait(lambda: ("eject", server.id) in fake.calls, what="the running guest's eject")  # type: ignore[attr-defined]
    assert fake.spec(server.id).cdrom is None  # type: ignore[attr-defined]
    iso_cloud.client.server_action("box", "stop")
    iso_cloud.wait_status("box", "SHUTOFF")
    iso_cloud.client.server_action("box", "start")
    iso_cloud.wait_status("box", "ACTIVE")
    assert fake.spec(server.id).cdrom is None  # type: ignore[attr-defined]
    with pytest.raises(ApiError) as again:
        iso_cloud.client.server_action("box", "eject")
    assert again.value.status == 409


def test_eject_of_a_server_without_a_cd_is_409(iso_cloud: Cloud) -> None:
    server = _create(iso_cloud, "web", image="img")
    assert not server.cdrom
    with pytest.raises(ApiError) as err:
        iso_cloud.client.server_action("web", "eject")
    assert err.value.status == 409 and err.value.field == "action"


def _truncated(path: Path) -> bytes:
    data = bytearray(make_iso(path).read_bytes())
    pvd = 16 * 2048
    data[pvd + 80 : pvd + 84] = struct.pack("<I", 10_000)  # the volume claims 20 MB
    return bytes(data)


@pytest.mark.parametrize("kind", ["qcow2", "random", "short", "truncated-volume", "odd-size"])
def test_hostile_isos_are_422_naming_file(cloud: Cloud, tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bad.iso"
    if kind == "qcow2":
        make_image(path)  # a qcow2 must never be taken for a CD
    elif kind == "random":
        path.write_bytes(bytes(range(256)) * 256)  # 64 KiB, no volume descriptor
    elif kind == "short":
        path.write_bytes(b"\0" * 4096)
    elif kind == "truncated-volume":
        path.write_bytes(_truncated(tmp_path / "good.iso"))
    else:
        path.write_bytes(make_iso(tmp_path / "good.iso").read_bytes() + b"x")
    with pytest.raises(ApiError) as err:
        upload(cloud.client, "bad", path, "iso")
    assert err.value.status == 422 and err.value.field == "file", err.value.detail


def test_eject_after_install_boots_the_disk_after_the_installer_stops(iso_cloud: Cloud) -> None:
    body = s.ServerCreate(
        name="box", image="inst", flavor="m1.tiny", network="net", eject_after_install=True
    )
    server = iso_cloud.client.create_server(body)
    iso_cloud.wait_status(server.id, "ACTIVE")
    fake = iso_cloud.agents[0][0].hypervisor
    spec = fake.spec(server.id)  # type: ignore[attr-defined]
    assert spec.cdrom is not None and spec.cdrom_once  # QEMU runs with -no-reboot
    boots = fake.boots(server.id)  # type: ignore[attr-defined]
    fake.crash(server.id, "QEMU process exited")  # type: ignore[attr-defined]  # installer's end
    iso_cloud.wait(lambda: fake.boots(server.id) > boots, what="the start from the disk")  # type: ignore[attr-defined]
    again = iso_cloud.wait_status(server.id, "ACTIVE")
    assert not again.cdrom and not again.fault
    assert fake.spec(server.id).cdrom is None  # type: ignore[attr-defined]


def test_eject_after_install_needs_an_iso(iso_cloud: Cloud) -> None:
    body = s.ServerCreate(
        name="web", image="img", flavor="m1.tiny", network="net", eject_after_install=True
    )
    with pytest.raises(ApiError) as err:
        iso_cloud.client.create_server(body)
    assert err.value.status == 422 and err.value.field == "eject_after_install"
