"""Lifecycle bench (issue 13, item 7): a server's snapshot against `qemu-img convert` by hand.

Snapshot: `POST /v1/servers/{id}/snapshot` until the image is `active`, on an in-process cloud
(API + agent; the fake hypervisor, so the guest's pause is not in it: a QMP stop/cont costs a
few ms). That is the agent's pass, the flattening `qemu-img convert` of the disk chain (a
qcow2 overlay with its own data over the cached image), the upload to the API, the API's
inspection of the upload as for any import (qemu-img info, sha256) and its store. By hand:
`qemu-img convert -O qcow2` of the very same chain to a file, nothing else. Interleaved
rounds, medians; goal snapshot / by hand <= 1.2x. The host's copy step alone (the same
`qemu-img convert`, under the agent's prlimit) is shown too: the rest is moving the bytes to
the API (upload, fsync, inspection), which the hand-run convert does not do.

    .venv/bin/python bench/lifecycle.py [--base-mb 256] [--written-mb 128] [--rounds 3]

Then, in the same run, live migration of a 256 MiB tiny guest between the two hosts of a real
lab (bench/migration.py: total time and downtime, goal downtime <= 100 ms, beside bare QEMU's);
`--migration-rounds 0` leaves it out (it needs root and a lab).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.cloud

from tests.cloud import Cloud  # noqa: E402

from bench._common import median, row, timed  # noqa: E402
from nubes.agent import lifecycle  # noqa: E402
from nubes.schemas import resources as s  # noqa: E402

MIB = 1024 * 1024


@dataclass
class SnapshotTimes:
    snapshot: list[float] = field(default_factory=list)
    by_hand: list[float] = field(default_factory=list)
    flatten: list[float] = field(default_factory=list)  # the agent's copy step alone
    image_bytes: int = 0


def _base_image(path: Path, mb: int) -> Path:
    """A qcow2 whose every MiB holds data (random: nothing compresses or is skipped as zero)."""
    raw = path.with_suffix(".raw")
    with raw.open("wb") as fh:
        for _ in range(mb):
            fh.write(os.urandom(MIB))
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True
    )
    raw.unlink()
    return path


def _write_overlay(disk: Path, mb: int) -> None:
    """The guest's own writes, in its overlay: every other MiB of the first 2*mb."""
    cmds = []
    for i in range(mb):
        cmds += ["-c", f"write -P {i % 250 + 1} {2 * i * MIB} {MIB}"]
    subprocess.run(["qemu-io", "-f", "qcow2", *cmds, str(disk)], check=True, capture_output=True)


def snapshot_vs_convert(root: Path, base_mb: int, written_mb: int, rounds: int) -> SnapshotTimes:
    cloud = Cloud(root, hosts=1)
    times = SnapshotTimes()
    try:
        c = cloud.client
        image = c.create_image(s.ImageCreate(name="base", disk_format="qcow2"))
        base = _base_image(root / "base.qcow2", base_mb)
        with base.open("rb") as fh:
            c.upload_image_part(image.id, "file", iter(lambda: fh.read(MIB), b""))
        c.create_network(s.NetworkCreate(name="net", cidr="10.20.0.0/24"))
        flavor = s.FlavorCreate(name="bench", vcpus=1, ram_mb=256, disk_gb=1 + base_mb // 1024)
        c.create_flavor(flavor)
        body = s.ServerCreate(name="web", image="base", flavor="bench", network="net")
        server = cloud.wait_status(c.create_server(body).id, "ACTIVE", timeout=120)
        agent = cloud.agents[0][0]
        disk = agent.layout.disk(server.id)
        _write_overlay(disk, written_mb)
        out = root / "by-hand.qcow2"
        for r in range(rounds):

            def by_hand() -> None:
                argv = ["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "qcow2"]
                subprocess.run([*argv, str(disk), str(out)], check=True)

            def snapshot(name: str = f"snap{r}") -> None:
                c.snapshot_server("web", name)
                deadline = time.monotonic() + 600
                while (got := c.image(name)).status == "queued":
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"snapshot {name} still queued")
                    time.sleep(0.01)
                if got.status != "active":
                    raise RuntimeError(f"snapshot {name}: {got.error}")
                times.image_bytes = got.size

            times.by_hand.append(timed(by_hand))
            out.unlink()
            times.flatten.append(timed(lambda: lifecycle.convert(disk, out)))
            out.unlink()
            times.snapshot.append(timed(snapshot))
            c.delete("images", f"snap{r}")
    finally:
        cloud.close()
    return times


def report(t: SnapshotTimes, base_mb: int, written_mb: int) -> list[str]:
    snap, hand = median(t.snapshot), median(t.by_hand)
    return [
        f"snapshot of a {base_mb} MiB image + {written_mb} MiB written "
        f"({t.image_bytes / MIB:.0f} MiB flattened), {len(t.snapshot)} rounds, medians:",
        row("snapshot (API -> image active)", snap, hand),
        row("  of which the host's flattening copy", median(t.flatten), hand),
        f"{'':<44} goal snapshot / by hand <= 1.2: {'met' if snap / hand <= 1.2 else 'NOT met'}",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-mb", type=int, default=256)
    parser.add_argument("--written-mb", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="snapshots (and hand-run converts)")
    parser.add_argument(
        "--migration-rounds", type=int, default=4, help="live migrations; 0: none (no lab)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nubes-bench-lifecycle-") as tmp:
        t = snapshot_vs_convert(Path(tmp), args.base_mb, args.written_mb, args.rounds)
    for line in report(t, args.base_mb, args.written_mb):
        print(line, flush=True)
    if args.migration_rounds > 0:
        from bench.migration import measure  # a 2-host lab: only when asked for

        for line in measure(args.migration_rounds):
            print(line, flush=True)


if __name__ == "__main__":
    main()
