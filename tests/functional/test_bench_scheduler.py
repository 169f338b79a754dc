"""A tiny run of bench/scheduler.py on both databases: it works and keeps usage exact."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.pgcluster import PgCluster

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scheduler.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scheduler", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_bench_smoke(db: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    bench = load_bench()
    if db == "sqlite":
        url = f"sqlite:///{tmp_path}/bench.db"
    else:
        postgres: PgCluster = request.getfixturevalue("postgres")
        url = postgres.create_database("bench")
    timings = bench.run(url, hosts=20, placements=60, creates=10, rounds=3)
    assert [len(t.latencies) for t in timings.values()] == [60, 60, 60, 10]
    lines = bench.report(db, 20, timings)
    assert lines[0] == f"{db}, 20 hosts:"
    assert "of bare" in lines[2] and all(t.rate > 0 for t in timings.values())
