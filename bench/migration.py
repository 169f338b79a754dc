"""Live migration benchmark: a 256 MiB tiny guest moves between the two hosts of a lab (no
shared disk: its disk is mirrored over NBD, then its memory), back and forth.

For each move: the total time as the API saw it (request → the migration done), QEMU's own
total and its downtime (`query-migrate`'s, the guest paused across the switch-over, which
includes ending the disk mirror; goal <= 100 ms here). Side by side in the same run, the bare
QEMU command line's migration of an idle guest of the same size on this machine (two
processes, loopback, shared disk), so the figure can be read against what QEMU alone does.

Run as root: `.venv/bin/python bench/migration.py [--rounds N]`.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.conftest import LabCloud, start_lab, stop_lab  # noqa: E402

from nubes.hypervisor.qemu.monitor import Monitor  # noqa: E402
from nubes.imagebuild.tiny import READY_LINE  # noqa: E402
from nubes.schemas import resources as s  # noqa: E402


def wait(cond: object, timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(what)


def nubes_moves(cloud: LabCloud, rounds: int) -> list[tuple[float, int, int]]:
    """(API wall seconds, QEMU total ms, downtime ms) per move."""
    c = cloud.client
    c.create_server(
        s.ServerCreate(name="bench", image="tiny", flavor="m1.tiny", network="bench",
                       host=cloud.host_ns(1))
    )  # fmt: skip
    wait(lambda: READY_LINE in c.console_log("bench"), 300, "the guest to boot")
    out = []
    for i in range(rounds):
        target = cloud.host_ns(2 if i % 2 == 0 else 1)
        start = time.perf_counter()
        mig = c.migrate_server("bench", host=target, live=True)
        wait(lambda m=mig: c.migration(m.id).phase in ("done", "failed"), 600, "the move")
        wall = time.perf_counter() - start
        end = c.migration(mig.id)
        if end.phase != "done":
            raise RuntimeError(f"migration failed: {end.error}")
        wait(lambda t=target: (x := c.server("bench")).host == t and not x.task_state, 60, "")
        out.append((wall, end.total_ms, end.downtime_ms))
    c.delete_server("bench")
    return out


def bare_move(ram_mb: int) -> tuple[int, int]:
    """QEMU alone: an idle guest of the same size to a second process on loopback."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)

        def qemu(name: str, *extra: str) -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                ["qemu-system-x86_64", "-nodefaults", "-display", "none",
                 "-machine", "q35,accel=tcg", "-m", str(ram_mb),
                 "-chardev", f"socket,id=qmp,path={d / name}.sock,server=on,wait=off",
                 "-mon", "chardev=qmp,mode=control", *extra]
            )  # fmt: skip

        with socket.socket() as probe:  # a free loopback port (other runs share the machine)
            probe.bind(("127.0.0.1", 0))
            uri = f"tcp:127.0.0.1:{probe.getsockname()[1]}"
        src, dst = qemu("src"), qemu("dst", "-incoming", uri)
        try:
            time.sleep(1.0)
            mon = Monitor(d / "src.sock", timeout=10)
            mon.execute("migrate-set-parameters", {"downtime-limit": 100})
            mon.execute("migrate", {"uri": uri})
            while True:
                info = mon.execute("query-migrate")
                assert isinstance(info, dict)
                if info.get("status") in ("completed", "failed"):
                    return int(info.get("total-time", 0)), int(info.get("downtime", 0))
                time.sleep(0.05)
        finally:
            for p in (src, dst):
                p.kill()
                p.wait()


def measure(rounds: int) -> list[str]:
    """The figures' lines: nubes' moves in a 2-host lab, then bare QEMU's of the same size."""
    cloud = start_lab(Path(tempfile.mkdtemp(prefix="bench-migration-")), 2)
    try:
        cloud.nubes("image", "build", "tiny")
        cloud.nubes("network", "create", "bench", "--cidr", "10.32.0.0/24")
        moves = nubes_moves(cloud, rounds)
    finally:
        stop_lab(cloud)
    bare = [bare_move(256) for _ in range(rounds)]
    lines = [f"live migration of a 256 MiB tiny guest between 2 lab hosts, {rounds} moves:"]
    lines += [
        f"  nubes: API {wall * 1000:7.0f} ms  QEMU total {total:6d} ms  downtime {down:4d} ms"
        for wall, total, down in moves
    ]
    downtime = statistics.median(d for _, _, d in moves)
    lines.append(
        f"  median: API {statistics.median(w for w, _, _ in moves) * 1000:.0f} ms, "
        f"downtime {downtime:.0f} ms (goal <= 100 ms: {'met' if downtime <= 100 else 'NOT met'})"
    )
    lines.append(
        f"  bare QEMU, idle guest, same size, loopback: total "
        f"{statistics.median(t for t, _ in bare):.0f} ms, downtime "
        f"{statistics.median(d for _, d in bare):.0f} ms"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="moves (back and forth)")
    args = parser.parse_args()
    for line in measure(args.rounds):
        print(line)


if __name__ == "__main__":
    main()
