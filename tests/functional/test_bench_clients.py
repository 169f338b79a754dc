"""A tiny run of bench/clients.py: the real openstack CLI and nubes' own, side by side."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from tests.openstack_env import OPENSTACK

BENCH = Path(__file__).resolve().parents[2] / "bench" / "clients.py"


@pytest.mark.skipif(not OPENSTACK.exists(), reason=f"{OPENSTACK} is missing: `make deps`")
def test_bench_clients_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_clients", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    bench.main(["--rounds", "1", "--servers", "3"])
    out = capsys.readouterr().out
    waited = re.search(r"openstack +([\d.]+) ms +nubes +([\d.]+) ms +openstack / nubes", out)
    assert waited and float(waited.group(1)) > 0 and float(waited.group(2)) > 0, out
    assert "server create, no --wait" in out
    listed = re.search(r"servers/detail +([\d.]+) ms \((\d+) pages\)", out)
    assert listed and listed.group(2) == "1", out  # 3 servers: one page
