"""The real `openstack` CLI (python-openstackclient) and openstacksdk, from their own venv,
drive an in-process nubes cloud over HTTPS: every step asserts on the clients' JSON, and a
failed command's `--debug` output is in the failure message."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.openstack_env import OPENSTACK, OpenStackCli, OpenStackCloud
from tests.pgcluster import PgCluster

pytestmark = pytest.mark.skipif(
    not OPENSTACK.exists(), reason=f"{OPENSTACK} is missing: `make deps` makes it"
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def osc(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OpenStackCloud]:
    """One cloud per database for the module's tests, which use names of their own."""
    url = ""
    postgres: PgCluster | None = None
    if request.param == "postgresql":
        postgres = request.getfixturevalue("postgres")
        url = postgres.create_database(template=request.getfixturevalue("pg_template"))
    env = OpenStackCloud(tmp_path_factory.mktemp(f"openstack-{request.param}"), url)
    try:
        yield env
    finally:
        env.close()
        if postgres is not None:
            postgres.drop_database(url)


def wait_for(cli: OpenStackCli, server: str, status: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    shown: dict[str, Any] = {}
    while time.monotonic() < deadline:
        shown = cli.run("server", "show", server)
        if shown["status"] == status and not shown.get("OS-EXT-STS:task_state"):
            return shown
        time.sleep(0.5)
    raise AssertionError(f"{server} is {shown.get('status')}, not {status}\n{cli.debug[-20000:]}")


def test_token_issue(osc: OpenStackCloud) -> None:
    token = osc.cli.run("token", "issue")
    assert token["id"].startswith("ks_")
    assert token["project_id"] == osc.project_id
    assert token["user_id"] == osc.project_id
    assert token["expires"]


def test_image_flavor_network_lists(osc: OpenStackCloud) -> None:
    images = osc.cli.run("image", "list")
    assert [i["Name"] for i in images] == ["tiny"]
    assert images[0]["Status"] == "active"
    flavors = {f["Name"]: f for f in osc.cli.run("flavor", "list")}
    assert flavors["m1.tiny"]["RAM"] == 256 and flavors["m1.tiny"]["VCPUs"] == 1
    networks = {n["Name"] for n in osc.cli.run("network", "list")}
    assert {"blue", "public"} <= networks


def test_keypair_create(osc: OpenStackCloud, tmp_path: Path) -> None:
    generated = osc.cli.run("keypair", "create", "gen", fmt=False)
    assert "PRIVATE KEY" in generated
    public = tmp_path / "k.pub"
    public.write_text(_pubkey(tmp_path))
    made = osc.cli.run("keypair", "create", "--public-key", str(public), "k1")
    assert made["name"] == "k1" and made["fingerprint"]
    names = {k["Name"] for k in osc.cli.run("keypair", "list")}
    assert {"gen", "k1"} <= names


def _pubkey(tmp_path: Path) -> str:
    import subprocess

    key = tmp_path / "id"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
        check=True,
        capture_output=True,
    )
    return key.with_suffix(".pub").read_text()


def test_server_lifecycle(osc: OpenStackCloud) -> None:
    cli = osc.cli
    cli.run("keypair", "create", "life-key", fmt=False)
    created = cli.run(
        "server", "create", "--image", "tiny", "--flavor", "m1.tiny", "--network", "blue",
        "--key-name", "life-key", "--wait", "web1",
    )  # fmt: skip
    assert created["status"] == "ACTIVE"
    shown = cli.run("server", "show", "web1")
    assert shown["id"] == created["id"] and shown["key_name"] == "life-key"
    assert "blue" in json.dumps(shown["addresses"])
    assert osc.team.server("web1").status == "ACTIVE"  # one state, two APIs
    cli.run("server", "stop", "web1", fmt=False)
    wait_for(cli, "web1", "SHUTOFF")
    cli.run("server", "start", "web1", fmt=False)
    wait_for(cli, "web1", "ACTIVE")
    cli.run("server", "reboot", "web1", fmt=False)
    wait_for(cli, "web1", "ACTIVE")
    listed = cli.run("server", "list")
    assert [s["Name"] for s in listed if s["ID"] == created["id"]] == ["web1"]
    cli.run("server", "delete", "--wait", "web1", fmt=False)
    gone = cli.run("server", "show", created["id"], check=False)
    assert gone.returncode != 0 and "No Server found" in gone.stderr
    assert all(s.name != "web1" for s in osc.team.servers())
