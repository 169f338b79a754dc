"""Control-plane bench: server creates with 1,000 agents heartbeating and long-polling, beside
the same with none, and the API's CPU per idle agent.

The real `nubes-api` process (fake hypervisor and network drivers) on a throwaway state
directory, on SQLite and on PostgreSQL. N hosts are written to its database with their
credentials (a join each would only slow the set-up); N simulated agents, in a few processes of
asyncio and httpx over HTTPS (keep-alive, the cloud's CA), each register with room for
servers, heartbeat and long-poll at the agent's default intervals (nubes.conf) and report
their instances as the agent does: when the report changed, after a desired state that moved
and shows other statuses than it sees, and when a resync is due. One client then creates and
deletes servers through the API for a while:

- `none`: no agent runs (the hosts read as up); the client itself reports each deleted server
  gone, as its host's agent would, so both runs do the same work per server.
- `agents`: the same with the N agents running; they report.

Measured in one run, side by side: create latency (the POST's) p50/p99 in both, and the API
process's CPU (utime + stime from /proc) over a window with no agent and with N idle ones.
Goals: p99 with agents <= 2x p99 with none; N=1,000 idle agents <= 25% of one core.

    .venv/bin/python bench/control_plane.py [--agents 1000] [--procs 4] [--duration 30]
        [--window 120] [--db sqlite,postgresql] [--api-cpus auto|none|0,...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.pgcluster

import httpx  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from nubes.client.core import KEEPALIVE_SECONDS  # noqa: E402
from nubes.conf import Settings  # noqa: E402
from nubes.control.caller import HOST_CREDENTIAL_PREFIX, hash_token  # noqa: E402
from nubes.db.engine import make_engine  # noqa: E402
from nubes.db.models import Host, HostCredential, new_id, utcnow  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
# --api-cpus: the API, its database and the client on these CPUs, the simulated agents on the
# others (as on a real cloud, where the agents run on other machines); empty: no pinning
PINNING: dict[str, set[int]] = {}


def pinned(role: str) -> Callable[[], None] | None:
    """A preexec_fn that pins the child to `role`'s CPUs (inherited by its threads)."""
    cpus = PINNING.get(role)
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


@dataclass
class Latencies:
    values: list[float] = field(default_factory=list)
    failed: int = 0

    def pct(self, q: float) -> float:
        ordered = sorted(self.values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


@dataclass
class Result:
    db: str
    agents: int
    none: Latencies
    busy: Latencies
    cpu_none: float  # fraction of one core
    cpu_idle: float

    @property
    def per_agent(self) -> float:
        """CPU seconds per second per idle agent, the API's own loops left out."""
        return max(0.0, self.cpu_idle - self.cpu_none) / max(1, self.agents)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def cpu_over(pid: int, seconds: float) -> float:
    """The process's CPU over `seconds`, as a fraction of one core."""
    begin, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - begin) / (time.monotonic() - t0)


class Api:
    """`nubes-api` in a process of its own, over HTTPS on a free port."""

    def __init__(self, root: Path, db_url: str) -> None:
        self.state = root / "state"
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("NUBES_")}
        env.update(
            NUBES_STATE_DIR=str(self.state),
            NUBES_API_PORT=str(self.port),
            NUBES_DATABASE_URL=db_url,
            NUBES_HYPERVISOR_DRIVER="fake",
            NUBES_NETWORK_DRIVER="fake",
        )
        self.log = root / "api.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nubes.api.server"],
                env=env,
                stdout=out,
                stderr=out,
                preexec_fn=pinned("api"),
            )
        self.url = f"https://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while not (self.state / "client.json").exists() or not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start:\n{self.log.read_text()}")
            time.sleep(0.1)
        self.token = json.loads((self.state / "client.json").read_text())["token"]
        self.db_url = db_url or f"sqlite:///{self.state / 'nubes.db'}"

    @property
    def ca(self) -> Path:
        return self.state / "tls" / "ca.pem"

    def _answers(self) -> bool:
        try:
            httpx.get(f"{self.url}/v1", verify=ssl.create_default_context(cafile=str(self.ca)))
            return True
        except (httpx.HTTPError, OSError, ssl.SSLError):
            return False

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def make_hosts(api: Api, n: int) -> list[dict[str, str]]:
    """N hosts and a credential each, straight into the database; up until their agents say
    otherwise (so that creates find room with no agent running)."""
    engine = make_engine(api.db_url)
    hosts, creds, out = [], [], []
    for i in range(n):
        secret = HOST_CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
        row = dict(
            id=new_id(),
            name=f"sim{i:05}",
            address=f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}",
            state_dir="",
            vcpus=1024,
            ram_mb=1 << 20,
            disk_gb=1 << 16,
            last_heartbeat=utcnow() + timedelta(days=1),
            joined_via="join-token",
        )
        hosts.append(row)
        creds.append(dict(id=new_id(), secret_sha256=hash_token(secret), host_id=row["id"]))
        out.append({"id": row["id"], "name": row["name"], "address": row["address"],
                    "credential": secret})  # fmt: skip
    with engine.begin() as conn:
        conn.execute(insert(Host), hosts)
        conn.execute(insert(HostCredential), creds)
    engine.dispose()
    return out


def prepare(api: Api, workdir: Path) -> httpx.Client:
    """The admin's client over HTTPS; an image 'img' and a network 'net'."""
    client = httpx.Client(
        base_url=api.url,
        headers={"Authorization": f"Bearer {api.token}"},
        verify=ssl.create_default_context(cafile=str(api.ca)),
        timeout=30,
    )
    image = workdir / "img.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(image), "64M"], check=True,
                   capture_output=True)  # fmt: skip
    made = client.post("/v1/images", json={"name": "img", "disk_format": "qcow2"})
    made.raise_for_status()
    up = client.put(f"/v1/images/{made.json()['id']}/file", content=image.read_bytes())
    up.raise_for_status()
    net = client.post("/v1/networks", json={"name": "net", "cidr": "10.64.0.0/16"})
    net.raise_for_status()
    return client


def creates(client: httpx.Client, seconds: float, ids: dict[str, str], play_agent: bool,
            tag: str) -> Latencies:  # fmt: skip
    """Create and delete servers one after another for `seconds`; the creates' latencies.
    `play_agent`: no agent runs, so report each deleted server gone, as its agent would."""
    out = Latencies()
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        body = {"name": f"{tag}{i}", "image": "img", "flavor": "m1.tiny", "network": "net"}
        i += 1
        begin = time.perf_counter()
        try:
            made = client.post("/v1/servers", json=body)
            out.values.append(time.perf_counter() - begin)
            made.raise_for_status()
            server = made.json()
            client.delete(f"/v1/servers/{server['id']}").raise_for_status()
            if play_agent:
                gone = {"instances": [{"id": server["id"], "status": "DELETED"}]}
                host_id = ids[server["host"]]
                client.post(f"/v1/agent/hosts/{host_id}/report", json=gone).raise_for_status()
        except httpx.HTTPError:
            out.failed += 1  # a 503 or a timeout: an overloaded API, counted and shown
    return out


# -- the simulated agents (in worker processes) ------------------------------------------------


def observed(desired: dict[str, Any]) -> list[dict[str, Any]]:
    """What the fake hypervisor would show at once: every instance as it is wanted."""
    states = {"deleted": "DELETED", "running": "ACTIVE", "stopped": "SHUTOFF"}
    return [
        {"id": i["id"], "status": states[i["desired_state"]], "ready": True}
        for i in desired["instances"]
    ]


async def one_agent(http: httpx.AsyncClient, host: dict[str, str], settings: Settings,
                    registered: asyncio.Event, count: list[int]) -> None:  # fmt: skip
    auth = {"Authorization": f"Bearer {host['credential']}"}
    base = f"/v1/agent/hosts/{host['id']}"
    body = {
        "name": host["name"], "address": host["address"], "accel": "kvm", "state_dir": "/",
        "vcpus": 1024, "ram_mb": 1 << 20, "disk_gb": 1 << 16, "overlays": "vxlan,geneve",
    }  # fmt: skip
    # hosts come up over a while, as after a power cut, not all in one instant
    await asyncio.sleep(random.uniform(0, settings.heartbeat_interval))
    while not await _ok(http.post("/v1/agent/hosts", json=body, headers=auth)):
        await asyncio.sleep(settings.sync_interval)
    count[0] += 1
    if count[0] == count[1]:
        registered.set()

    async def heartbeats() -> None:
        await asyncio.sleep(random.uniform(0, settings.heartbeat_interval))  # not all at once
        while True:
            await _ok(http.post(f"{base}/heartbeat", headers=auth))
            await asyncio.sleep(settings.heartbeat_interval)

    beating = asyncio.create_task(heartbeats())
    since, last, reported, fetched = -1, None, 0.0, 0.0
    desired: dict[str, Any] = {"instances": [], "generation": -1}
    while True:
        if time.monotonic() - fetched > settings.resync_interval:
            since = -1  # the whole desired state now and then, as the agent does
        params = {"since": since, "wait": settings.poll_timeout * random.uniform(0.8, 1.0)}
        got = http.get(f"{base}/desired", params=params, headers=auth,
                       timeout=settings.poll_timeout + 30)  # fmt: skip
        answer = await _ok(got)
        if answer is None:  # as the agent does: try again a period later
            await asyncio.sleep(settings.sync_interval)
            continue
        if answer.status_code != 304:  # 304: no change, what it has is current
            desired, fetched = answer.json(), time.monotonic()
        report = {"instances": observed(desired), "leftovers": []}
        moved = desired["generation"] != since
        since = desired["generation"]
        shown = {i["id"]: i["status"] for i in desired["instances"]}
        news = report != last or (moved and any(
            shown.get(o["id"], o["status"]) != o["status"] for o in report["instances"]
        ))  # fmt: skip
        if news or time.monotonic() - reported > settings.resync_interval:
            if await _ok(http.post(f"{base}/report", json=report, headers=auth)):
                last, reported = report, time.monotonic()
    beating.cancel()


FAILURES = [0]  # requests that failed (the agent logs them and goes on)


async def _ok(request: Awaitable[httpx.Response]) -> httpx.Response | None:
    try:
        answer = await request
    except httpx.HTTPError:
        FAILURES[0] += 1
        return None
    if answer.status_code >= 400:
        FAILURES[0] += 1
        return None
    return answer


async def agents_main(spec: dict[str, Any]) -> None:
    settings = Settings()
    hosts = spec["hosts"]
    ctx = ssl.create_default_context(cafile=spec["ca"])
    # a client of its own per agent, as each real agent has (its heartbeat and its long-poll
    # on their own connections): one shared pool of thousands of connections costs httpx a
    # scan of all of them per request, which had the simulators eat both cores
    limits = httpx.Limits(max_connections=3, keepalive_expiry=KEEPALIVE_SECONDS)
    clients = [
        httpx.AsyncClient(base_url=spec["url"], verify=ctx, limits=limits, timeout=60)
        for _ in hosts
    ]
    try:
        registered = asyncio.Event()
        count = [0, len(hosts)]
        tasks = [
            asyncio.create_task(one_agent(http, h, settings, registered, count))
            for http, h in zip(clients, hosts, strict=True)
        ]
        await registered.wait()
        print("ready", flush=True)
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            t.result()  # an agent that failed fails the worker, loudly
    finally:
        for http in clients:
            await http.aclose()


def worker(path: str) -> None:
    asyncio.run(agents_main(json.loads(Path(path).read_text())))


# -- the run ---------------------------------------------------------------------------------


def start_agents(api: Api, hosts: list[dict[str, str]], procs: int,
                 workdir: Path) -> list[subprocess.Popen[str]]:  # fmt: skip
    workers = []
    for p in range(procs):
        mine = hosts[p::procs]
        if not mine:
            continue
        spec = workdir / f"agents{p}.json"
        spec.write_text(json.dumps({"url": api.url, "ca": str(api.ca), "hosts": mine}))
        workers.append(
            subprocess.Popen(
                [sys.executable, __file__, "--worker", str(spec)],
                stdout=subprocess.PIPE,
                text=True,
                preexec_fn=pinned("agents"),
            )
        )
    for w in workers:
        assert w.stdout is not None
        line = w.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"an agents' process failed (exit {w.poll()})")
    return workers


def run(db: str, db_url: str, agents: int, procs: int, duration: float, window: float,
        settle: float = 15.0) -> Result:  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="nubes-cp-") as tmp:
        workdir = Path(tmp)
        api = Api(workdir, db_url)
        workers: list[subprocess.Popen[str]] = []
        try:
            hosts = make_hosts(api, agents)
            ids = {h["name"]: h["id"] for h in hosts}
            client = prepare(api, workdir)
            none = creates(client, duration, ids, play_agent=True, tag="n")
            cpu_none = cpu_over(api.proc.pid, window)
            workers = start_agents(api, hosts, procs, workdir)
            time.sleep(settle)  # the registrations' burst is over
            cpu_idle = cpu_over(api.proc.pid, window)
            busy = creates(client, duration, ids, play_agent=False, tag="a")
            for w in workers:
                if w.poll() is not None:
                    raise RuntimeError(f"an agents' process died (exit {w.returncode})")
            client.close()
        finally:
            for w in workers:
                w.send_signal(signal.SIGTERM)
            for w in workers:
                w.wait(timeout=20)
            api.close()
        return Result(db, agents, none, busy, cpu_none, cpu_idle)


def report(r: Result) -> list[str]:
    s = Settings()
    ratio = r.busy.pct(0.99) / r.none.pct(0.99) if r.none.values else 0.0
    lines = [
        f"{r.db}, {r.agents} agents (heartbeat {s.heartbeat_interval:g} s, long-poll "
        f"{s.poll_timeout:g} s):",
        f"  {'creates':<22} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7}",
        f"  {'no agent':<22} {len(r.none.values):>6} {r.none.pct(0.5):>8.2f} "
        f"{r.none.pct(0.99):>8.2f} {r.none.failed:>7}",
        f"  {f'{r.agents} agents':<22} {len(r.busy.values):>6} {r.busy.pct(0.5):>8.2f} "
        f"{r.busy.pct(0.99):>8.2f} {r.busy.failed:>7}",
        f"  p99 with agents / without: {ratio:.2f}x (goal <= 2x: "
        + ("met)" if ratio <= 2 else "not met)"),
        f"  API CPU: {r.cpu_none:.1%} of a core with no agent, {r.cpu_idle:.1%} with "
        f"{r.agents} idle; {r.per_agent * 1e3:.3f} ms/s per idle agent, "
        f"{r.per_agent * 1000:.1%} of a core per 1,000 (goal <= 25%: "
        + ("met)" if r.per_agent * 1000 <= 0.25 else "not met)"),
    ]
    return lines


def databases(which: list[str], cleanup: list[Callable[[], None]]) -> Iterator[tuple[str, str]]:
    for db in which:
        if db == "sqlite":
            yield db, ""
        elif db == "postgresql":
            from tests.pgcluster import PgCluster, unavailable

            if why := unavailable():
                print(f"postgresql: skipped ({why})")
                continue
            cluster = PgCluster(durable=True).start()
            cleanup.append(cluster.stop)
            yield db, cluster.create_database("cp")
        else:
            raise SystemExit(f"unknown database {db!r}: sqlite or postgresql")


def pin(api_cpus_arg: str) -> None:
    """The agents' simulators on CPUs of their own: in a real cloud they are other machines, and
    here, sharing the API's and the client's CPUs, they slowed both (the client's own clock
    counted the waits for a CPU it shared with them)."""
    mine = os.sched_getaffinity(0)
    if api_cpus_arg == "none" or (api_cpus_arg == "auto" and len(mine) < 2):
        print("API, client and agents share all CPUs")
        return
    api_cpus = {min(mine)} if api_cpus_arg == "auto" else {
        int(c) for c in api_cpus_arg.split(",")
    }  # fmt: skip
    others = mine - api_cpus
    if not others or not api_cpus <= mine:
        raise SystemExit(f"--api-cpus {api_cpus_arg}: leave the agents a CPU of their own")
    PINNING.update(api=api_cpus, agents=others)
    os.sched_setaffinity(0, api_cpus)  # the client, and a PostgreSQL server started from here
    print(f"API, its database and the client on CPUs {sorted(api_cpus)}; agents on", sorted(others))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=4, help="processes the agents run in")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of creates, each run")
    ap.add_argument(
        "--window",
        type=float,
        default=Settings().resync_interval,
        help="seconds of idle CPU measured (default: one resync period, so that each agent's "
        "heartbeats, long-polls and resync are all in it; a short window can fall between "
        "their waves and read a fraction)",
    )
    ap.add_argument("--db", default="sqlite,postgresql", help="sqlite, postgresql or both")
    ap.add_argument(
        "--api-cpus",
        default="auto",
        help="the API, its database and the creating client (which only waits on it) on these "
        "CPUs, e.g. 0; the simulated agents, which stand for other machines, on the others. "
        "auto (the default): CPU 0 where there are two or more; none: everything shares all",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return
    pin(args.api_cpus)
    cleanup: list[Callable[[], None]] = []
    try:
        for db, url in databases(args.db.split(","), cleanup):
            result = run(db, url, args.agents, args.procs, args.duration, args.window)
            print("\n".join(report(result)), flush=True)
    finally:
        for fn in reversed(cleanup):
            fn()


if __name__ == "__main__":
    main()
