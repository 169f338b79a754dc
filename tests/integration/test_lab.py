"""Lab hosts: namespaces on a private underlay bridge; destroy leaves nothing behind."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nubes.lab import Lab, LabError, LabHost
from nubes.network import netns

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    port = 20000 + secrets.randbelow(20000)  # not a running API's 8774
    lab = Lab(tmp_path / "lab", name_prefix=f"t{secrets.token_hex(3)}", api_port=port)
    try:
        yield lab
    finally:
        Lab(tmp_path / "lab", name_prefix=lab.prefix).destroy()


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0


def _ping(lab: Lab, host_index: int, ip: str) -> bool:
    argv = lab.exec_argv(lab.hosts[host_index], ["busybox", "ping", "-c", "3", "-W", "1", ip])
    return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0


def test_two_hosts_ping_each_other_and_destroy_leaves_nothing(lab: Lab, tmp_path: Path) -> None:
    h1, h2 = lab.create_hosts(2)
    assert lab.create_hosts(2) == [h1, h2]  # idempotent
    assert (h1.netns, h1.underlay_ip) == (f"{lab.prefix}-h1", "10.255.0.11")
    assert (h2.netns, h2.underlay_ip) == (f"{lab.prefix}-h2", "10.255.0.12")
    assert _ping(lab, 0, h2.underlay_ip)
    assert _ping(lab, 1, h1.underlay_ip)

    # the root namespace (the API machine) has one address on the underlay, and no IPv6
    out = subprocess.run(
        ["ip", "-o", "addr", "show", "dev", lab.bridge], capture_output=True, text=True
    ).stdout
    assert [line.split()[3] for line in out.splitlines()] == [f"{lab.api_address}/24"]
    # and the hosts reach it at the API's port only
    assert _connects(lab, h1, lab.api_port) and not _connects(lab, h1, lab.api_port + 1)
    assert not _ping(lab, 0, lab.api_address)

    # an agent-like process in h2, found again by a lab loaded from the state file
    pid = lab.spawn(h2, ["sleep", "600"], tmp_path / "h2.log", {"NUBES_X": "1"})
    time.sleep(0.2)
    again = Lab(lab.root)
    assert again.prefix == lab.prefix and again.hosts == [h1, h2]
    st = again.status()
    assert st.bridge_exists and [h.netns and h.veth for h in st.hosts] == [True, True]
    assert pid in st.hosts[1].pids
    assert b"NUBES_X=1" in Path(f"/proc/{pid}/environ").read_bytes()

    again.destroy()
    guard = subprocess.run(["nft", "list", "table", "inet", lab.guard_table], capture_output=True)
    assert guard.returncode != 0  # the guard went with the lab
    assert not any(n.startswith(lab.prefix) for n in netns.list_names())
    assert not _link_exists(lab.bridge)
    assert not _link_exists(f"{h1.netns}-ul") and not _link_exists(f"{h2.netns}-ul")
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert not (lab.root / "lab.json").exists()
    again.destroy()  # idempotent


def _connects(lab: Lab, host: LabHost, port: int) -> bool:
    """Whether a TCP connect from the host to a listener of the root namespace gets through."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", port))  # every address: only the guard decides
        listener.listen()
        probe = (
            "import socket,sys\n"
            "try:\n"
            f"    socket.create_connection(({lab.api_address!r}, {port}), timeout=2)\n"
            "except OSError:\n"
            "    sys.exit(1)\n"
        )
        argv = lab.exec_argv(host, [sys.executable, "-c", probe])
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0


def test_underlay_in_use_is_refused(lab: Lab, tmp_path: Path) -> None:
    lab.create_hosts(1)
    second = Lab(tmp_path / "other", name_prefix=f"t{secrets.token_hex(3)}")
    with pytest.raises(LabError) as exc:
        second.ensure_bridge()
    assert "in use here already" in str(exc.value) and lab.bridge in str(exc.value)
    second.destroy()


def test_destroy_finds_namespaces_a_lost_state_file_forgot(lab: Lab) -> None:
    (host,) = lab.create_hosts(1)
    sleeper = lab.host_root(host).parent.name  # the pid that holds the host's mount namespace
    lab.state_path.unlink()
    Lab(lab.root, name_prefix=lab.prefix).destroy()
    assert not netns.exists(f"{lab.prefix}-h1")
    assert not _link_exists(lab.bridge)
    assert not Path(f"/proc/{sleeper}").exists(), "the host's mount namespace is still held"
    assert not [
        m for m in Path("/proc/self/mountinfo").read_text().splitlines() if str(lab.root) in m
    ]


def test_names_fit_and_prefixes_are_checked(tmp_path: Path) -> None:
    with pytest.raises(LabError):
        Lab(tmp_path, name_prefix="much-too-long")
    lab = Lab(tmp_path, name_prefix="abcdefgh")
    assert len(f"{lab.host_for(99).netns}-ul") <= 15
    with pytest.raises(LabError):
        lab.host_for(100)
