"""Who holds which secret in a real lab: the admin token stays with the admin; each host holds
only its own credential, in a 0600 file; QEMU and dnsmasq inherit none; a removed host is
refused at once; agents reach the API over the underlay by HTTPS only."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nubes.schemas import resources as s
from tests.integration.conftest import LabCloud, start_lab, stop_lab

pytestmark = pytest.mark.integration


@pytest.fixture
def lab2(tmp_path: Path) -> Iterator[LabCloud]:
    cloud = start_lab(tmp_path, 2)
    try:
        yield cloud
    finally:
        stop_lab(cloud)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def test_no_process_on_a_host_holds_a_secret_it_should_not(lab2: LabCloud) -> None:
    cloud = lab2
    cloud.nubes("image", "build", "tiny")
    cloud.nubes("network", "create", "net", "--cidr", "10.20.0.0/24")
    for i, host in enumerate(("h1", "h2"), 1):
        cloud.nubes(
            "server", "create", f"g{i}", "--image", "tiny", "--network", "net",
            "--host", f"{cloud.prefix}-{host}", "--wait",
        )  # fmt: skip
    admin_token = json.loads((cloud.state_dir / "client.json").read_text())["token"].encode()
    credentials = {}
    for i in (1, 2):
        me = cloud.host_dir(i) / "identity.json"
        assert me.stat().st_mode & 0o777 == 0o600
        assert json.loads(me.read_text())["api_url"].startswith("https://10.254.")
        credentials[i] = json.loads(me.read_text())["credential"].encode()
    seen: dict[str, int] = {}
    for i in (1, 2):
        for pid in cloud.host_pids(i):
            environ = _read(Path(f"/proc/{pid}/environ"))
            cmdline = _read(Path(f"/proc/{pid}/cmdline"))
            kind = (
                "qemu" if b"qemu-system" in cmdline
                else "dnsmasq" if b"dnsmasq" in cmdline
                else "agent" if b"nubes.agent" in cmdline
                else "other"
            )  # fmt: skip
            seen[kind] = seen.get(kind, 0) + 1
            assert admin_token not in environ + cmdline, f"{kind} {pid} holds the admin token"
            for j, cred in credentials.items():
                assert cred not in environ + cmdline, f"{kind} {pid} on h{i}: h{j}'s credential"
            assert b"NUBES_TOKEN" not in environ
    assert seen.get("qemu") == 2 and seen.get("agent") == 2 and seen.get("dnsmasq", 0) >= 1
    hosts = {h.name: h for h in cloud.client.hosts()}
    assert {h.joined_via for h in hosts.values()} == {"join-token"}

    # removing a host revokes its credential: its agent's next request is refused
    cloud.client.delete_server("g2")
    deadline = time.monotonic() + 60
    while any(sv.name == "g2" for sv in cloud.client.servers()):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    out = cloud.nubes("host", "remove", cloud.host_ns(1), check=False)
    assert "has 1 server" in out  # g1 is still there
    cloud.nubes("host", "remove", cloud.host_ns(2))
    log = cloud.state_dir / "lab" / f"{cloud.host_ns(2)}.log"
    deadline = time.monotonic() + 30
    while b"invalid or revoked host credential" not in _read(log):
        assert time.monotonic() < deadline, "the removed host's agent was not refused"
        time.sleep(0.5)
    assert cloud.host_ns(2) not in {h.name for h in cloud.client.hosts()}
    assert cloud.client.server("g1").status == "ACTIVE"
    assert isinstance(cloud.client.server("g1"), s.Server)
