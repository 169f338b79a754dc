"""Lab hosts: namespaces on a private underlay bridge; destroy leaves nothing behind."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nubes.lab import Lab, LabError, netns

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path / "lab", name_prefix=f"t{secrets.token_hex(3)}")
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

    # the root namespace has no address on the underlay, not even IPv6 link-local
    out = subprocess.run(
        ["ip", "-o", "addr", "show", "dev", lab.bridge], capture_output=True, text=True
    ).stdout
    assert out.strip() == ""

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
    assert not any(n.startswith(lab.prefix) for n in netns.list_names())
    assert not _link_exists(lab.bridge)
    assert not _link_exists(f"{h1.netns}-ul") and not _link_exists(f"{h2.netns}-ul")
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert not (lab.root / "lab.json").exists()
    again.destroy()  # idempotent


def test_destroy_finds_namespaces_a_lost_state_file_forgot(lab: Lab) -> None:
    lab.create_hosts(1)
    lab.state_path.unlink()
    Lab(lab.root, name_prefix=lab.prefix).destroy()
    assert not netns.exists(f"{lab.prefix}-h1")
    assert not _link_exists(lab.bridge)


def test_names_fit_and_prefixes_are_checked(tmp_path: Path) -> None:
    with pytest.raises(LabError):
        Lab(tmp_path, name_prefix="much-too-long")
    lab = Lab(tmp_path, name_prefix="abcdefgh")
    assert len(f"{lab.host_for(99).netns}-ul") <= 15
    with pytest.raises(LabError):
        lab.host_for(100)
