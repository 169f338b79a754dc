"""Helpers shared by the benchmarks: timing, medians, a throwaway lab."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.integration.conftest import LabCloud


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def wait_for_text(path: Path, text: str, timeout: float, offset: int = 0) -> float:
    """Seconds until `text` appears in the file after `offset`; raises on timeout."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        try:
            with path.open("rb") as fh:
                fh.seek(offset)
                if text.encode() in fh.read():
                    return time.perf_counter() - start
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    raise TimeoutError(f"{text!r} not in {path} after {timeout} s")


def median(values: list[float]) -> float:
    return statistics.median(values)


def row(label: str, ours: float, theirs: float, unit: str = "s") -> str:
    return (
        f"{label:<44} nubes {ours:8.3f}{unit}   reference {theirs:8.3f}{unit}   "
        f"ratio {ours / theirs:6.2f}"
    )


def plug_bare_tap(netns: str, tap: str, bridge: str) -> None:
    """The hand-made way, for the bare-QEMU side of a comparison: a tap on a bridge."""
    ns = ["ip", "netns", "exec", netns]
    subprocess.run([*ns, "ip", "tuntap", "add", "dev", tap, "mode", "tap"], check=True)
    subprocess.run([*ns, "ip", "link", "set", tap, "master", bridge, "up"], check=True)


def network_bridge(cloud: LabCloud) -> str:
    """The bridge of the lab host's one network (its gateway host keeps it while it exists)."""
    return next(
        line.split(":")[1].strip().split("@")[0]
        for line in cloud.in_host(["ip", "-o", "link"]).splitlines()
        if ": nbr" in line
    )
