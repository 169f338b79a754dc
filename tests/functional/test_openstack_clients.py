"""The real `openstack` CLI (python-openstackclient) and openstacksdk, from their own venv,
drive an in-process nubes cloud over HTTPS: every step asserts on the clients' JSON, and a
failed command's `--debug` output is in the failure message."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cloud import make_image
from tests.openstack_env import ANSIBLE_PLAYBOOK, OPENSTACK, OpenStackCli, OpenStackCloud
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


@pytest.fixture(autouse=True)
def debug_output(osc: OpenStackCloud) -> Iterator[None]:
    """The last client command's --debug output, printed after each test: pytest shows it
    with a failed assertion (a command that fails has it in its own message)."""
    osc.cli.debug = ""
    yield
    if osc.cli.debug:
        print(f"--- the last openstack command's --debug output:\n{osc.cli.debug[-30000:]}")


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
    log = cli.run("console", "log", "show", "web1", fmt=False)
    assert isinstance(log, str)
    cli.run("security", "group", "create", "life", fmt=False)
    cli.run("server", "add", "security", "group", "web1", "life", fmt=False)
    assert set(osc.team.server("web1").security_groups) == {"default", "life"}
    cli.run("server", "remove", "security", "group", "web1", "life", fmt=False)
    assert osc.team.server("web1").security_groups == ["default"]
    cli.run("server", "reboot", "web1", fmt=False)
    wait_for(cli, "web1", "ACTIVE")
    listed = cli.run("server", "list")
    assert [s["Name"] for s in listed if s["ID"] == created["id"]] == ["web1"]
    cli.run("server", "delete", "--wait", "web1", fmt=False)
    gone = cli.run("server", "show", created["id"], check=False)
    assert gone.returncode != 0 and "No Server found" in gone.stderr
    assert all(s.name != "web1" for s in osc.team.servers())


def test_image_create_file(osc: OpenStackCloud) -> None:
    data = make_image(osc.root / "upload.qcow2").read_bytes()
    (osc.root / "upload.qcow2").write_bytes(data)
    made = osc.cli.run(
        "image", "create", "--file", str(osc.root / "upload.qcow2"), "--disk-format", "qcow2",
        "--container-format", "bare", "uploaded",
    )  # fmt: skip
    assert made["name"] == "uploaded"
    shown = osc.cli.run("image", "show", "uploaded")
    assert shown["status"] == "active" and shown["size"] == len(data)
    assert shown["checksum"] == hashlib.md5(data, usedforsecurity=False).hexdigest()
    assert osc.team.image("uploaded").status == "active"
    osc.cli.run("image", "set", "--property", "os_distro=debian", "uploaded", fmt=False)
    assert osc.cli.run("image", "show", "uploaded")["properties"]["os_distro"] == "debian"
    osc.cli.run("image", "delete", "uploaded", fmt=False)
    assert "uploaded" not in {i["Name"] for i in osc.cli.run("image", "list")}


def test_network_and_subnet_create(osc: OpenStackCloud) -> None:
    net = osc.cli.run("network", "create", "red")
    assert net["name"] == "red" and net["status"] == "ACTIVE" and net["subnets"] == []
    subnet = osc.cli.run(
        "subnet", "create", "--network", "red", "--subnet-range", "10.40.0.0/24", "red-v4"
    )
    assert subnet["cidr"] == "10.40.0.0/24" and subnet["network_id"] == net["id"]
    assert subnet["gateway_ip"] == "10.40.0.1" and subnet["name"] == "red-v4"
    shown = osc.cli.run("network", "show", "red")
    assert shown["subnets"] == [subnet["id"]]
    nubes = osc.team.network("red")  # the subnet made the nubes network, with the same id
    assert nubes.id == net["id"] and nubes.cidr == "10.40.0.0/24"
    assert [s["Name"] for s in osc.cli.run("subnet", "list", "--network", "red")] == ["red-v4"]


def test_security_group_rule_create(osc: OpenStackCloud) -> None:
    rule = osc.cli.run(
        "security", "group", "rule", "create", "default", "--protocol", "tcp", "--dst-port", "22"
    )
    assert rule["port_range_min"] == 22 and rule["protocol"] == "tcp"
    assert rule["direction"] == "ingress"
    group = osc.cli.run("security", "group", "create", "web")
    osc.cli.run(
        "security", "group", "rule", "create", "web", "--protocol", "tcp", "--dst-port",
        "80:81", "--remote-ip", "192.0.2.0/24",
    )  # fmt: skip
    rules = osc.cli.run("security", "group", "rule", "list", "web")
    assert any(r["Port Range"] == "80:81" and r["IP Range"] == "192.0.2.0/24" for r in rules)
    nubes = osc.team.security_group("web")
    assert nubes.id == group["id"]
    assert any(r.port_min == 80 and r.remote_ip == "192.0.2.0/24" for r in nubes.rules)


def test_floating_ip_create_and_set(osc: OpenStackCloud) -> None:
    cli = osc.cli
    server = cli.run(
        "server", "create", "--image", "tiny", "--flavor", "m1.tiny", "--network", "blue",
        "--wait", "fip1",
    )  # fmt: skip
    fip = cli.run("floating", "ip", "create", "public")
    address = fip["floating_ip_address"]
    assert address.startswith("198.51.100.") and fip["port_id"] is None
    ports = cli.run("port", "list", "--server", server["id"])
    assert len(ports) == 1
    port = cli.run("port", "show", ports[0]["ID"])
    assert port["device_id"] == server["id"] and port["status"] == "ACTIVE"
    assert port["security_group_ids"] == [osc.team.security_group("default").id]
    cli.run("floating", "ip", "set", "--port", ports[0]["ID"], address, fmt=False)
    shown = cli.run("floating", "ip", "show", address)
    assert shown["port_id"] == ports[0]["ID"]
    assert shown["fixed_ip_address"] == ports[0]["Fixed IP Addresses"][0]["ip_address"]
    assert address in json.dumps(cli.run("server", "show", "fip1")["addresses"])
    assert [f.server for f in osc.team.floating_ips() if f.address == address] == ["fip1"]
    cli.run("floating", "ip", "unset", "--port", address, fmt=False)
    cli.run("floating", "ip", "delete", address, fmt=False)
    cli.run("server", "delete", "--wait", "fip1", fmt=False)


SDK_SCRIPT = """
import json, openstack
conn = openstack.connect(cloud="nubes")
server = conn.create_server(
    "sdk1", image="tiny", flavor="m1.tiny", network="blue", wait=True, auto_ip=True,
    timeout=120,
)
# what the SDK computes (public_v4, private_v4) comes with the cloud layer's get_server
server = conn.get_server(server.id)
print(json.dumps({"id": server.id, "status": server.status,
                  "public_v4": server.public_v4, "private_v4": server.private_v4}))
"""


def test_sdk_create_server_with_auto_ip(osc: OpenStackCloud) -> None:
    made = osc.cli.python(SDK_SCRIPT)
    assert made["status"] == "ACTIVE"
    assert made["private_v4"].startswith("10.30.0.")
    assert made["public_v4"].startswith("198.51.100.")
    fips = {f.address: f.server for f in osc.team.floating_ips()}
    assert fips[made["public_v4"]] == "sdk1"


PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
    - name: create
      openstack.cloud.server:
        cloud: nubes
        name: ans1
        image: tiny
        flavor: m1.tiny
        network: blue
        auto_ip: true
        wait: true
        timeout: 120
    - name: info
      openstack.cloud.server_info:
        cloud: nubes
        name: ans1
    - name: delete
      openstack.cloud.server:
        cloud: nubes
        name: ans1
        state: absent
        wait: true
"""


@pytest.mark.skipif(not ANSIBLE_PLAYBOOK.exists(), reason=f"{ANSIBLE_PLAYBOOK} is missing")
def test_ansible_server_playbook(osc: OpenStackCloud) -> None:
    """Ansible's openstack.cloud.server (the SDK's create_server with auto_ip), then its facts
    and its removal."""
    path = osc.root / "server.yml"
    path.write_text(PLAYBOOK)
    results = osc.cli.playbook(path)
    assert results["create"]["changed"] and results["create"]["server"]["status"] == "ACTIVE"
    [server] = results["info"]["servers"]
    assert server["name"] == "ans1" and server["status"] == "ACTIVE"
    assert server["access_ipv4"].startswith("198.51.100.")
    assert results["delete"]["changed"]
    assert all(s.name != "ans1" for s in osc.team.servers())
