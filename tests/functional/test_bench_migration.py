"""A tiny run of bench/migration.py's side-by-side reference: QEMU alone migrates an idle
guest between two processes here (what nubes' figures are read against)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "migration.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_migration", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU")
def test_bare_reference_move_reports_total_and_downtime() -> None:
    total, downtime = load_bench().bare_move(64)
    assert total > 0
    assert 0 <= downtime <= total
