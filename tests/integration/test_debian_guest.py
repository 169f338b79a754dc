"""Issue: real guests. A Debian guest with real cloud-init and OpenSSH in a 1-host lab.

Debian boots take minutes under software emulation, so one test does it all with two first
boots (in parallel) and one reboot: cloud-init's work, `nubes ssh`, the metadata service and
its identity check, reboot stability, and a new instance-id for a recreated instance.
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import time
from pathlib import Path

import pycdlib
import pytest
from websockets.sync.client import unix_connect

from nubes.imagebuild.debian import READY_LINE
from tests.integration.conftest import LabCloud, start_lab, stop_lab

# two first boots and a reboot: minutes each under software emulation on a busy machine
pytestmark = [pytest.mark.integration, pytest.mark.timeout(2700)]

USER_DATA = """#cloud-config
write_files:
  - path: /var/tmp/from-user-data
    content: "written by the user's cloud-config\\n"
"""
META = "http://169.254.169.254/openstack/latest/meta_data.json"


def wait_ready(cloud: LabCloud, names: list[str], count: int = 1, timeout: float = 900) -> None:
    """Until each console shows cloud-init's end `count` times (a reboot adds one)."""
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            server = cloud.client.server(name)
            assert server.status != "ERROR", server.fault
            if cloud.client.console_log(name).count(READY_LINE) >= count:
                pending.discard(name)
        time.sleep(3)
    if pending:
        logs = {n: cloud.client.console_log(n, 40) for n in pending}
        raise AssertionError(f"not ready after {timeout:.0f} s: {logs}")


def ssh(cloud: LabCloud, name: str, *command: str, check: bool = True) -> str:
    """Like ssh, `nubes ssh` hands the remote shell one command line: quote the words."""
    out = cloud.nubes("ssh", name, "--", shlex.join(command), check=check, timeout=120)
    # the first connection to an instance says it added its key
    return "\n".join(ln for ln in out.splitlines() if not ln.startswith("Warning: ")).strip()


def seed_meta_data(cloud: LabCloud, server_id: str) -> str:
    seed = cloud.host_dir() / "instances" / server_id / "seed.iso"
    iso = pycdlib.PyCdlib()
    iso.open(str(seed))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, rr_path="/meta-data")
    finally:
        iso.close()
    return out.getvalue().decode()


@pytest.fixture
def lab(tmp_path: Path) -> LabCloud:
    cloud = start_lab(tmp_path, 1)
    # keys and known_hosts of this test stay in its own home
    home = tmp_path / "home"
    home.mkdir()
    cloud.env["HOME"] = str(home)
    yield cloud  # type: ignore[misc]
    stop_lab(cloud)


def test_debian_guest_cloud_init_ssh_metadata_reboot(lab: LabCloud, tmp_path: Path) -> None:
    cloud = lab
    started = time.monotonic()
    out = cloud.nubes("image", "build", "debian", timeout=1800)
    print(out)
    image = cloud.client.image("debian")
    assert image.default_user == "debian" and image.ready_pattern == READY_LINE
    assert not image.kernel  # boots from its own disk, like a downloaded cloud image
    cloud.nubes("network", "create", "net1", "--cidr", "10.30.0.0/24")
    cloud.nubes("keypair", "create", "k1")
    # `nubes ssh` reaches them from their gateway: the default group lets in only its members
    cloud.nubes(
        "security-group", "rule", "create", "default", "--ingress", "--protocol", "tcp",
        "--port", "22",
    )  # fmt: skip
    assert (Path(cloud.env["HOME"]) / ".ssh" / "nubes-k1").stat().st_mode & 0o777 == 0o600
    ud = tmp_path / "user-data.yaml"
    ud.write_text(USER_DATA)
    common = ["--image", "debian", "--flavor", "m1.small", "--network", "net1", "--key", "k1"]
    cloud.nubes("server", "create", "web1", *common, "--user-data", str(ud))
    cloud.nubes("server", "create", "web2", *common)
    wait_ready(cloud, ["web1", "web2"])
    print(f"two first boots ready {time.monotonic() - started:.0f} s after the test began")
    web1, web2 = cloud.client.server("web1"), cloud.client.server("web2")
    ip1, ip2 = web1.addresses["net1"][0], web2.addresses["net1"][0]
    print(f"web1 {web1.id} {ip1}, web2 {web2.id} {ip2}")
    # --wait's readiness is the same signal, seen by the agent at its next sync
    deadline = time.monotonic() + 30
    while cloud.client.server("web1").ready_at is None:
        assert time.monotonic() < deadline, "ready_at never set"
        time.sleep(1)

    # cloud-init did its work: hostname, user-data, the static address from IPAM
    assert "status: done" in ssh(cloud, "web1", "cloud-init", "status")
    assert ssh(cloud, "web1", "hostname") == "web1"
    assert ssh(cloud, "web1", "cat", "/var/tmp/from-user-data") == (
        "written by the user's cloud-config"
    )
    addrs = ssh(cloud, "web1", "ip", "-4", "-o", "addr", "show")
    assert f"inet {ip1}/24" in addrs, addrs
    assert "mtu 1450" in ssh(cloud, "web1", "ip", "-o", "link", "show", "eth0")  # the network's
    assert ssh(cloud, "web1", "cat", "/var/lib/cloud/data/instance-id") == web1.id

    # the metadata service knows each instance by where its request came from
    doc = json.loads(ssh(cloud, "web1", "curl", "-sf", META))
    assert (doc["uuid"], doc["name"]) == (web1.id, "web1")
    assert "k1" in doc["public_keys"]
    forged = ssh(
        cloud, "web1", "curl", "-sf", "-H", f"X-Forwarded-For: {ip2}",
        "-H", f"X-Instance-ID: {web2.id}", "-H", f"X-Real-IP: {ip2}", META,
    )  # fmt: skip
    assert json.loads(forged)["uuid"] == web1.id
    ec2 = "http://169.254.169.254/latest/meta-data/"
    assert ssh(cloud, "web1", "curl", "-sf", ec2 + "instance-id") == web1.id
    assert ssh(cloud, "web1", "curl", "-sf", ec2 + "local-ipv4") == ip1
    assert "cloud-config" in ssh(cloud, "web1", "curl", "-sf", ec2.replace("meta", "user"))
    doc2 = json.loads(ssh(cloud, "web2", "curl", "-sf", META))
    assert (doc2["uuid"], doc2["name"]) == (web2.id, "web2")
    # web1 taking web2's address is stopped at its port: it still cannot read web2's data
    spoof = ssh(
        cloud, "web1", "sh", "-c", f"sudo ip addr add {ip2}/32 dev eth0 && "
        f"curl -s -m 5 --interface {ip2} {META}; echo rc=$?",
    )  # fmt: skip
    assert web2.id not in spoof and "rc=0" not in spoof, spoof
    ssh(cloud, "web1", "sudo", "ip", "addr", "del", f"{ip2}/32", "dev", "eth0")

    # reboot keeps hostname, address, key and instance-id (and the console log)
    cloud.nubes("server", "reboot", "web1", "--wait", timeout=300)
    wait_ready(cloud, ["web1"], count=2)
    assert ssh(cloud, "web1", "hostname") == "web1"
    assert f"inet {ip1}/24" in ssh(cloud, "web1", "ip", "-4", "-o", "addr", "show")
    assert ssh(cloud, "web1", "cat", "/var/lib/cloud/data/instance-id") == web1.id
    assert json.loads(ssh(cloud, "web1", "curl", "-sf", META))["uuid"] == web1.id
    assert cloud.client.console_log("web1").count(READY_LINE) == 2

    # consoles: the serial port through the API's websocket, and a one-time VNC password
    token = json.loads((cloud.state_dir / "client.json").read_text())["token"]
    with unix_connect(
        str(cloud.state_dir / "api.sock"),
        f"ws://nubes/v1/servers/{web1.id}/console",
        additional_headers={"Authorization": f"Bearer {token}"},
    ) as ws:
        ws.send(b"\r")
        seen = b""
        deadline = time.monotonic() + 60
        while b"login:" not in seen and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                seen += ws.recv(timeout=5)  # type: ignore[operator]
        assert b"web1 login:" in seen, seen[-500:]
    out = cloud.nubes("console", "url", "web1")
    assert "password:" in out and f"/v1/servers/{web1.id}/vnc" in out

    # a recreated instance of the same name is a new instance to cloud-init
    cloud.nubes("server", "delete", "web2", "--wait")
    cloud.nubes("server", "create", "web2", *common)
    new = cloud.client.server("web2")
    assert new.id != web2.id
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            meta = seed_meta_data(cloud, new.id)
            break
        except Exception:
            time.sleep(1)
    assert f"instance-id: {new.id}" in meta and web2.id not in meta
    cloud.nubes("server", "delete", "web2", "--wait")
    print(f"whole test {time.monotonic() - started:.0f} s")
