"""The OpenStack clients against nubes' own, side by side in one run.

An in-process cloud on fake drivers (tests/openstack_env.py: the API over HTTPS on loopback,
a project `team` with a network, an image and the clouds.yaml `nubes openstack clouds-yaml`
prints), then:

- `openstack server create --wait` against `nubes server create --wait` of the same server,
  each a new process as a user runs it, alternating, `--rounds` times each (goal: openstack
  <= 1.2x nubes), and the same without `--wait`;
- listing `--servers` servers a page of 100 at a time: Nova's `GET /servers/detail` against
  `GET /v1/servers`, over the same HTTPS listener, the time per page.

    .venv/bin/python bench/clients.py [--rounds 5] [--servers 1000] [--db sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.*

import httpx  # noqa: E402
from tests.openstack_env import OPENSTACK, OpenStackCloud  # noqa: E402

from nubes.schemas import quotas as sq  # noqa: E402
from nubes.schemas import resources as s  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NUBES = ROOT / ".venv" / "bin" / "nubes"
PAGE = 100


def timed(argv: list[str], env: dict[str, str]) -> float:
    begin = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True, timeout=300)
    return time.perf_counter() - begin


def creates(osc: OpenStackCloud, rounds: int, wait: bool = True) -> tuple[list[float], list[float]]:
    """Seconds per `create [--wait]` through each client, alternating; each server deleted."""
    waiting = ["--wait"] if wait else []
    ours = dict(
        os.environ,
        NUBES_URL=osc.https_url,
        NUBES_TOKEN=osc.team_token,
        NUBES_CA_FILE=str(osc.https.ca_file),
    )
    theirs: list[float] = []
    mine: list[float] = []
    for i in range(rounds):
        theirs.append(timed([
            str(OPENSTACK), "--os-cloud", "nubes", "server", "create", "--image", "tiny",
            "--flavor", "m1.tiny", "--network", "blue", *waiting, f"os{i}",
        ], osc.cli.env))  # fmt: skip
        mine.append(timed([
            str(NUBES), "server", "create", f"nb{i}", "--image", "tiny", "--flavor", "m1.tiny",
            "--network", "blue", *waiting,
        ], ours))  # fmt: skip
        for name in (f"os{i}", f"nb{i}"):
            osc.team.delete_server(name)
    return theirs, mine


def pages(client: httpx.Client, path: str, headers: dict[str, str], key: str) -> list[float]:
    """Seconds per page, following markers (the last page is the first with fewer items)."""
    took: list[float] = []
    marker = ""
    while True:
        begin = time.perf_counter()
        params = {"limit": str(PAGE)} | ({"marker": marker} if marker else {})
        got = client.get(path, params=params, headers=headers)
        got.raise_for_status()
        took.append(time.perf_counter() - begin)
        items = got.json()[key] if key else got.json()
        if len(items) < PAGE:
            return took
        marker = items[-1]["id"]


def listing(osc: OpenStackCloud, servers: int) -> tuple[list[float], list[float]]:
    admin = osc.cloud.client
    admin.set_quotas("team", sq.QuotaUpdate(servers=-1, vcpus=-1, ram_mb=-1))
    osc.team.create_network(s.NetworkCreate(name="big", cidr="10.32.0.0/20"))  # room for all
    for i in range(servers):
        osc.team.create_server(
            s.ServerCreate(name=f"l{i}", image="tiny", flavor="m1.tiny", network="big")
        )
    keystone = osc.keystone_token()
    with httpx.Client(base_url=osc.https_url, verify=str(osc.https.ca_file), timeout=60) as http:
        nova = pages(http, "/compute/v2.1/servers/detail", {"X-Auth-Token": keystone}, "servers")
        ours = pages(http, "/v1/servers", {"Authorization": f"Bearer {osc.team_token}"}, "")
    return nova, ours


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:8.1f} ms"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="creates through each client")
    ap.add_argument("--servers", type=int, default=1000, help="servers listed through each API")
    ap.add_argument("--db", default="sqlite", help="sqlite (default) or a PostgreSQL URL")
    args = ap.parse_args(argv)
    if not OPENSTACK.exists():
        raise SystemExit(f"{OPENSTACK} is missing: `make deps` makes it")
    with tempfile.TemporaryDirectory(prefix="nubes-clients-") as tmp:
        # room on the one fake host for every server listed
        room = {"cpu_allocation_ratio": 1000.0, "ram_allocation_ratio": 1000.0,
                "disk_allocation_ratio": 1000.0}  # fmt: skip
        osc = OpenStackCloud(Path(tmp), "" if args.db == "sqlite" else args.db, **room)
        try:
            theirs, mine = creates(osc, args.rounds)
            theirs_now, mine_now = creates(osc, args.rounds, wait=False)
            nova, ours = listing(osc, args.servers)
        finally:
            osc.close()
    ratio = statistics.median(theirs) / statistics.median(mine)
    print(f"server create --wait, median of {args.rounds} (each a new process):")
    print(f"  openstack {ms(theirs)}   nubes {ms(mine)}   openstack / nubes: {ratio:.2f}x "
          f"(goal <= 1.2x: {'met' if ratio <= 1.2 else 'not met'})")  # fmt: skip
    print("  (openstack's --wait looks again every 5 s: the server is ACTIVE long before)")
    print(
        f"server create, no --wait: openstack {ms(theirs_now)}   nubes {ms(mine_now)}   "
        f"openstack / nubes: {statistics.median(theirs_now) / statistics.median(mine_now):.2f}x"
    )
    print(f"server list, {args.servers} servers, pages of {PAGE}, median per page:")
    print(f"  Nova's /servers/detail {ms(nova)} ({len(nova)} pages)   "
          f"nubes /v1/servers {ms(ours)} ({len(ours)} pages)   "
          f"ratio {statistics.median(nova) / statistics.median(ours):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
