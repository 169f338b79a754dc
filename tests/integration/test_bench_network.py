"""bench/network.py still runs (a few ports each way) and leaves no namespace behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nubes.network import netns

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "network.py"


def test_network_bench_smoke() -> None:
    before = set(netns.list_names())
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--ports",
            "3",
            "--rounds",
            "1",
            "--megabytes",
            "20",
            "--tp-rounds",
            "1",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"speedup \d+\.\dx", proc.stdout), proc.stdout
    assert re.search(r"rtnl.py vs pyroute2 \d+\.\dx", proc.stdout), proc.stdout
    assert re.search(r"ratio \d+\.\d\d \(goal <= 1.2\)", proc.stdout), proc.stdout
    assert re.search(r"overlay/bare underlay \d+\.\d\d", proc.stdout), proc.stdout
    assert re.search(r"overlay/host to host +\d+\.\d\d", proc.stdout), proc.stdout
    if "Open vSwitch: not installed" not in proc.stdout:
        assert re.search(r"OVS/Linux bridge \d+\.\d\d \(goal <= 2\)", proc.stdout), proc.stdout
        assert re.search(r"OVS\+Geneve/LB\+VXLAN \d+\.\d\d", proc.stdout), proc.stdout
    assert set(netns.list_names()) == before
