from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nubes.client import NubesClient
from nubes.schemas import resources as s
from tests.cloud import Cloud, make_image


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    c = Cloud(tmp_path, hosts=1)
    try:
        yield c
    finally:
        c.close()


def upload(client: NubesClient, name: str, path: Path, fmt: str = "qcow2") -> s.Image:
    image = client.create_image(s.ImageCreate(name=name, disk_format=fmt))  # type: ignore[arg-type]
    return client.upload_image_part(image.id, "file", iter([path.read_bytes()]))


@pytest.fixture
def ready(cloud: Cloud, tmp_path: Path) -> Cloud:
    """A cloud with an image 'img' and a network 'net'."""
    upload(cloud.client, "img", make_image(tmp_path / "img.qcow2"))
    cloud.client.create_network(s.NetworkCreate(name="net", cidr="10.20.0.0/24"))
    return cloud
