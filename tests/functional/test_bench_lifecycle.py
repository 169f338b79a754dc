"""A tiny run of bench/lifecycle.py: a snapshot and the hand-run convert of the same chain."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "lifecycle.py"


def test_bench_lifecycle_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_lifecycle", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    bench.main(["--base-mb", "8", "--written-mb", "4", "--rounds", "1", "--migration-rounds", "0"])
    out = capsys.readouterr().out
    line = re.search(r"nubes +([\d.]+)s +reference +([\d.]+)s +ratio +([\d.]+)", out)
    assert line and float(line.group(1)) > 0 and float(line.group(2)) > 0, out
    flattened = re.search(r"\((\d+) MiB flattened\)", out)
    assert flattened and int(flattened.group(1)) >= 8, out  # the base's data and the overlay's
