from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from nubes.client import NubesClient
from nubes.db.engine import migrate
from nubes.db.models import Host, Instance
from nubes.schemas import resources as s
from tests.cloud import Cloud, make_image
from tests.pgcluster import PgCluster


@pytest.fixture(scope="session")
def pg_template(postgres: PgCluster) -> str:
    """A database migrated once from scratch; each test gets a copy (faster than migrating)."""
    url = postgres.create_database("migrated")
    migrate(url)
    return url.rsplit("/", 1)[1]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every functional test runs on both: "" is SQLite under the cloud's state directory."""
    if request.param == "sqlite":
        yield ""
        return
    postgres: PgCluster = request.getfixturevalue("postgres")
    url = postgres.create_database(template=request.getfixturevalue("pg_template"))
    yield url
    postgres.drop_database(url)


@pytest.fixture
def cloud(tmp_path: Path, database_url: str) -> Iterator[Cloud]:
    c = Cloud(tmp_path, hosts=1, database_url=database_url)
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


def prepare(cloud: Cloud, tmp_path: Path) -> Cloud:
    """An image 'img' and a network 'net', as in `ready`."""
    upload(cloud.client, "img", make_image(tmp_path / f"img-{id(cloud)}.qcow2"))
    cloud.client.create_network(s.NetworkCreate(name="net", cidr="10.20.0.0/24"))
    return cloud


@pytest.fixture
def make_cloud(tmp_path: Path, database_url: str) -> Iterator[Callable[..., Cloud]]:
    """Clouds of any shape (hosts=, apis=) on this test's database, prepared and closed."""
    made: list[Cloud] = []

    def make(**kw: Any) -> Cloud:
        root = tmp_path / f"cloud{len(made)}"
        made.append(Cloud(root, database_url=database_url, **kw))
        return prepare(made[-1], root)

    try:
        yield make
    finally:
        for c in made:
            c.close()


def usage_mismatches(cloud: Cloud) -> list[str]:
    """Hosts whose recorded usage differs from the sum of their live instances."""
    with cloud.app.state.nubes.sessions() as session:
        sums = {
            host_id: (int(v), int(r), int(d))
            for host_id, v, r, d in session.execute(
                select(
                    Instance.host_id,
                    func.sum(Instance.vcpus),
                    func.sum(Instance.ram_mb),
                    func.sum(Instance.disk_gb),
                )
                .where(Instance.deleted_at.is_(None))
                .group_by(Instance.host_id)
            )
        }
        return [
            f"{h.name}: used {(h.used_vcpus, h.used_ram_mb, h.used_disk_gb)} != {sums[h.id]}"
            for h in session.scalars(select(Host))
            if (h.used_vcpus, h.used_ram_mb, h.used_disk_gb) != sums.get(h.id, (0, 0, 0))
        ]
