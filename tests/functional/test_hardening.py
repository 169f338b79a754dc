"""Hardening seen from the API: image URLs into private networks refused (and the vetted address
pinned), no redirects followed, and host paths hidden from tenants in faults and errors."""

from __future__ import annotations

import secrets
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nubes.client import ApiError, NubesClient
from nubes.control.caller import hash_token
from nubes.control.images import download
from nubes.db.models import Project, Token
from nubes.schemas import resources as s
from tests.cloud import Cloud, make_image


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    c = Cloud(tmp_path, hosts=1)
    try:
        yield c
    finally:
        c.close()


def member(cloud: Cloud) -> NubesClient:
    """A token of a new, ordinary project."""
    token = secrets.token_urlsafe(16)
    with cloud.app.state.nubes.sessions() as session:
        project = Project(name=f"tenant-{secrets.token_hex(3)}")
        session.add(project)
        session.flush()
        session.add(Token(token_sha256=hash_token(token), project_id=project.id, role="member"))
        session.commit()
    return NubesClient(cloud.url, token)


class Files(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    hosts: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.hosts.append(self.headers.get("Host", ""))
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/good")
            self.end_headers()
            return
        body = self.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[int, type[Files]]]:
    """An HTTP server on loopback with a good image, one with a backing file, and a redirect."""
    evil = tmp_path / "evil.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw",
         str(evil), "1G"],
        check=True,
    )  # fmt: skip
    handler = type("Handler", (Files,), {"hosts": []})
    handler.files = {
        "/good": make_image(tmp_path / "good.qcow2").read_bytes(),
        "/evil": evil.read_bytes(),
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


PRIVATE_URLS = [
    "http://127.0.0.1:{port}/good",
    "http://localhost:{port}/good",
    "http://[::1]:{port}/good",
    "http://[::ffff:127.0.0.1]:{port}/good",
    "http://0.0.0.0:{port}/good",
    "http://169.254.169.254/latest/meta-data",
    "http://10.1.2.3/x.qcow2",
    "http://192.168.0.1/x.qcow2",
    "http://100.64.0.1/x.qcow2",
    "http://[fd00::1]/x.qcow2",
    "file:///etc/passwd",
    "ftp://example.com/x.qcow2",
]


def test_image_urls_into_private_networks_are_refused(
    cloud: Cloud, web: tuple[int, type[Files]]
) -> None:
    port, handler = web
    for n, url in enumerate(PRIVATE_URLS):
        body = s.ImageCreate(name=f"ssrf-{n}", disk_format="qcow2", url=url.format(port=port))
        with pytest.raises(ApiError) as err:
            cloud.client.create_image(body)
        assert (err.value.status, err.value.field) == (422, "url"), (url, err.value.detail)
    assert handler.hosts == [], "a refused URL was fetched"
    assert cloud.client.images() == []


def test_allowed_private_urls_import_without_following_redirects(
    tmp_path: Path, web: tuple[int, type[Files]]
) -> None:
    port, _ = web
    cloud = Cloud(tmp_path / "c", hosts=0, allow_private_image_urls=True)
    try:
        base = f"http://127.0.0.1:{port}"
        good = cloud.client.create_image(
            s.ImageCreate(name="good", disk_format="qcow2", url=f"{base}/good")
        )
        assert good.status == "active"
        for name, field in (("redirect", "url"), ("evil", "file"), ("missing", "url")):
            body = s.ImageCreate(name=name, disk_format="qcow2", url=f"{base}/{name}")
            with pytest.raises(ApiError) as err:
                cloud.client.create_image(body)
            assert (err.value.status, err.value.field) == (422, field), err.value.detail
        assert [i.name for i in cloud.client.images()] == ["good"]
        assert sorted(p.name for p in cloud.settings.images_dir.iterdir()) == [f"{good.id}.qcow2"]
    finally:
        cloud.close()


def test_download_connects_to_the_vetted_address(web: tuple[int, type[Files]]) -> None:
    """A second DNS lookup at connect time could answer differently (rebinding): the download
    goes to the address that was checked, with the name only in the Host header."""
    port, handler = web
    got = b"".join(download(f"http://rebind.invalid:{port}/good", "127.0.0.1"))
    assert got == handler.files["/good"]
    assert handler.hosts == [f"rebind.invalid:{port}"]


def test_tenants_see_no_host_paths(cloud: Cloud, tmp_path: Path) -> None:
    admin = cloud.client
    tenant = member(cloud)
    image = admin.create_image(s.ImageCreate(name="img", disk_format="qcow2"))
    admin.upload_image_part(image.id, "file", iter([make_image(tmp_path / "i.qcow2").read_bytes()]))
    secret_path = "/var/lib/nubes/hosts/h1/instances/x/disk.qcow2"
    cloud.agents[0][0].hypervisor.fail_spawn("*", f"Could not open '{secret_path}': denied")  # type: ignore[attr-defined]
    for client in (admin, tenant):
        client.create_network(s.NetworkCreate(name="net", cidr="10.20.0.0/24"))
        client.create_server(
            s.ServerCreate(name="web", image="img", flavor="m1.tiny", network="net")
        )
    failed = {}
    for who, client in (("admin", admin), ("tenant", tenant)):
        failed[who] = cloud.wait(
            lambda c=client: (x := c.server("web")).status == "ERROR" and x,  # type: ignore[misc]
            what="ERROR",
        )
    assert secret_path in failed["admin"].fault
    assert "/var/lib" not in failed["tenant"].fault and "<host path>" in failed["tenant"].fault
    (op,) = [o for o in tenant.operations() if o.kind == "create"]
    assert op.error and "/var/lib" not in op.error
    # error answers too: a qcow2 qemu-img cannot open quotes the upload's temp file
    bad = tmp_path / "bad.qcow2"
    data = bytearray(make_image(tmp_path / "b.qcow2").read_bytes())
    data[96:100] = (7).to_bytes(4, "big")  # refcount_order 7: entries wider than 64 bits
    bad.write_bytes(bytes(data))
    details = {}
    for who, client in (("admin", admin), ("tenant", tenant)):
        img = client.create_image(s.ImageCreate(name="bad", disk_format="qcow2"))
        with pytest.raises(ApiError) as err:
            client.upload_image_part(img.id, "file", iter([bad.read_bytes()]))
        assert (err.value.status, err.value.field) == (422, "file")
        details[who] = err.value.detail
    assert str(cloud.settings.images_dir) in details["admin"], details
    assert str(cloud.settings.state_dir) not in details["tenant"], details
    tenant.close()


def test_nul_characters_are_refused_everywhere(cloud: Cloud) -> None:
    """PostgreSQL cannot hold NUL: refused as input on every database, never a 500."""
    http = cloud.client
    for method, path, body in (
        ("GET", "/v1/servers/a%00b", None),
        ("GET", "/v1/operations?server=a%00", None),
        ("POST", "/v1/servers", {"name": "x", "image": "i", "flavor": "f", "network": "n",
                                 "user_data": "#!/bin/sh\n\0"}),
        ("POST", "/v1/keypairs", {"name": "k", "public_key": "ssh-ed25519 AAAA\0"}),
    ):  # fmt: skip
        with pytest.raises(ApiError) as err:
            http.request(method, path, json=body)
        assert err.value.status == 422, (path, err.value.detail)
        assert "NUL" in err.value.detail
