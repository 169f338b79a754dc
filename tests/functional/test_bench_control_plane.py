"""A tiny run of bench/control_plane.py on both databases: the real API over HTTPS, simulated
agents in two processes, creates and deletes with and without them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.pgcluster import PgCluster

BENCH = Path(__file__).resolve().parents[2] / "bench" / "control_plane.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_control_plane", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_bench_smoke(db: str, request: pytest.FixtureRequest) -> None:
    bench = load_bench()
    url = ""
    if db == "postgresql":
        postgres: PgCluster = request.getfixturevalue("postgres")
        url = postgres.create_database("cp")
    result = bench.run(db, url, agents=6, procs=2, duration=1.0, window=0.5, settle=0.2)
    assert result.none.values and result.busy.values
    assert result.cpu_idle >= 0 and result.per_agent >= 0  # a short window may see no tick
    lines = bench.report(result)
    assert lines[0].startswith(f"{db}, 6 agents")
    assert "p99 with agents / without" in lines[4] and "per idle agent" in lines[5]
