"""Scheduler bench: placements through the API's scheduling path vs the bare database.

With H fake hosts (default 1,000) it makes N placements (default 10,000) of each kind, in
interleaved blocks so that the machine's other load falls on all of them alike:

- `bare`: the same writes with the database driver alone on one held connection, one
  transaction each: INSERT an instance row and UPDATE its host's usage (the host chosen
  round-robin: no choice at all).
- `placement`: `compute.schedule`, what `compute.create` runs to place a server: choose a host
  (the best few candidates by SQL's ORDER BY free RAM ... LIMIT, an index walk, then the filters
  in Python), claim it with the conditional UPDATE, and INSERT the instance row (plain Core
  statements), in a transaction of its own on a pooled SQLAlchemy connection.
- `in-session`: the same inside an ORM session, as the API's request holds one: the session's
  own cost (about 0.1 ms a transaction here) is what the API pays per request, whatever it does.
- `create`: all of `compute.create` on top: lookups and validation, IPAM (port, MAC), the
  operation log, the generation bump and the response (what `POST /v1/servers` runs, less HTTP).

    .venv/bin/python bench/scheduler.py [--hosts 1000] [--placements 10000] [--db sqlite,postgresql]

The goals at 1,000 hosts on SQLite: placement >= 25% of bare, creates >= 100/s. PostgreSQL is
a throwaway cluster with Debian's server (durable settings: fsync and synchronous_commit on).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.pgcluster

from sqlalchemy import event, insert, select  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from nubes.api.bootstrap import seed_database  # noqa: E402
from nubes.conf import Settings  # noqa: E402
from nubes.control import compute  # noqa: E402
from nubes.control.caller import Caller  # noqa: E402
from nubes.control.state import AppState  # noqa: E402
from nubes.db.engine import make_engine, migrate, session_factory  # noqa: E402
from nubes.db.models import Flavor, Host, Image, Instance, Network, Project, new_id, utcnow  # noqa: E402
from nubes.scheduler.filters import Request  # noqa: E402
from nubes.schemas import resources as s  # noqa: E402

KINDS = ("bare", "placement", "in-session", "create")
BARE_INSERT = (
    "INSERT INTO instances (id, project_id, name, image_id, flavor_id, host_id, vcpus, ram_mb,"
    " disk_gb, status, task_state, desired_state, reboot_gen, hard_reboot, fault, key_name,"
    " public_key, user_data, created_at, updated_at)"
    " VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, 'BUILD', '', 'running', 0, {false},"
    " '', '', '', '', {p}, {p})"
)
BARE_UPDATE = (
    "UPDATE hosts SET used_vcpus = used_vcpus + {p}, used_ram_mb = used_ram_mb + {p},"
    " used_disk_gb = used_disk_gb + {p} WHERE id = {p}"
)


@dataclass
class Fixture:
    state: AppState
    who: Caller
    image_id: str
    flavor: Flavor
    host_ids: list[str]


@dataclass
class Timings:
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return len(self.latencies) / sum(self.latencies) if self.latencies else 0.0

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


def setup(url: str, hosts: int, placements: int, synchronous: str = "") -> Fixture:
    """Schema, the admin project, 1 image, 1 network big enough, `hosts` hosts with room for
    every placement of all three kinds."""
    migrate(url)
    settings = Settings(database_url=url, host_down_after=86400.0, state_dir=Path("/nonexistent"))
    engine = make_engine(url)
    if synchronous and engine.dialect.name == "sqlite":
        # after nubes' own connect hook: bare and nubes share the engine, so both get it
        event.listen(engine, "connect", lambda c, _: c.execute(f"PRAGMA synchronous={synchronous}"))
    sessions = session_factory(engine)
    with sessions() as session:
        seed_database(session)
        project = session.scalar(select(Project).where(Project.name == "admin"))
        flavor = session.scalar(select(Flavor).where(Flavor.name == "m1.tiny"))
        assert project is not None and flavor is not None
        image = Image(project_id=project.id, name="img", disk_format="qcow2", status="active")
        net = Network(
            project_id=project.id, name="net", cidr="10.64.0.0/16", gateway="10.64.0.1", vni=5000
        )
        session.add_all([image, net])
        per_host = -(-3 * placements // hosts) + 1
        rows = [
            dict(
                id=new_id(),
                name=f"h{i:05}",
                vcpus=per_host,
                ram_mb=per_host * flavor.ram_mb,
                disk_gb=per_host * flavor.disk_gb,
                last_heartbeat=utcnow() + timedelta(days=1),
                state_dir="",
            )
            for i in range(hosts)
        ]
        session.execute(insert(Host), rows)
        session.commit()
        who = Caller(project_id=project.id, role="admin")
        state = AppState(settings=settings, engine=engine, sessions=sessions)
        return Fixture(state, who, image.id, flavor, [r["id"] for r in rows])


def bare(fx: Fixture, n: int, names: Iterator[int], out: Timings) -> None:
    """The driver alone: each transaction one INSERT and one UPDATE, then COMMIT."""
    engine = fx.state.engine
    sqlite = engine.dialect.name == "sqlite"
    p = "?" if sqlite else "%s"
    ins = BARE_INSERT.format(p=p, false="0" if sqlite else "false")
    upd = BARE_UPDATE.format(p=p)
    f = fx.flavor
    conn = engine.raw_connection()
    try:
        cur = conn.cursor()
        for _ in range(n):
            i = next(names)
            host = fx.host_ids[i % len(fx.host_ids)]
            now = utcnow()
            begin = time.perf_counter()
            if sqlite:
                cur.execute("BEGIN IMMEDIATE")  # what every nubes transaction does on SQLite
            cur.execute(
                ins,
                (new_id(), fx.who.project_id, f"raw{i}", fx.image_id, f.id, host,
                 f.vcpus, f.ram_mb, f.disk_gb, now, now),
            )  # fmt: skip
            cur.execute(upd, (f.vcpus, f.ram_mb, f.disk_gb, host))
            conn.commit()
            out.latencies.append(time.perf_counter() - begin)
    finally:
        conn.close()


def place(fx: Fixture, n: int, names: Iterator[int], out: Timings, session: bool = False) -> None:
    """compute.schedule, the scheduling path of compute.create (choose and claim a host, write
    the instance row), each in a transaction of its own: on a pooled connection, or with
    `session` inside an ORM session as the API's request holds one."""
    f = fx.flavor
    engine = fx.state.engine
    sessions: sessionmaker[Session] = fx.state.sessions
    for _ in range(n):
        i = next(names)
        begin = time.perf_counter()
        req = Request(f.vcpus, f.ram_mb, f.disk_gb, overlay="vxlan")
        values = dict(
            project_id=fx.who.project_id, name=f"{'s' if session else 'p'}{i}",
            image_id=fx.image_id, flavor_id=f.id,
            vcpus=f.vcpus, ram_mb=f.ram_mb, disk_gb=f.disk_gb,
        )  # fmt: skip
        if session:
            with sessions() as s:
                compute.schedule(s.connection(), req, fx.state.settings, values)
                s.commit()
        else:
            with engine.begin() as conn:
                compute.schedule(conn, req, fx.state.settings, values)
        out.latencies.append(time.perf_counter() - begin)


def place_in_session(fx: Fixture, n: int, names: Iterator[int], out: Timings) -> None:
    place(fx, n, names, out, session=True)


def create(fx: Fixture, n: int, names: Iterator[int], out: Timings) -> None:
    """All of compute.create, as the POST /v1/servers route calls it."""
    for _ in range(n):
        body = s.ServerCreate(name=f"c{next(names)}", image="img", flavor="m1.tiny", network="net")
        begin = time.perf_counter()
        compute.create(fx.state, body, fx.who)
        out.latencies.append(time.perf_counter() - begin)


RUNNERS: dict[str, Callable[[Fixture, int, Iterator[int], Timings], None]] = {
    "bare": bare,
    "placement": place,
    "in-session": place_in_session,
    "create": create,
}


def run(url: str, hosts: int, placements: int, creates: int, kinds: tuple[str, ...] = KINDS,
        synchronous: str = "", rounds: int = 50) -> dict[str, Timings]:  # fmt: skip
    """Each kind's count split into `rounds` interleaved blocks."""
    fx = setup(url, hosts, max(placements, creates), synchronous)
    timings = {k: Timings() for k in kinds}
    names = {k: itertools.count() for k in kinds}
    total = {k: creates if k == "create" else placements for k in kinds}
    try:
        for r in range(rounds):
            for kind in kinds:
                n = total[kind] * (r + 1) // rounds - total[kind] * r // rounds
                RUNNERS[kind](fx, n, names[kind], timings[kind])
        check_usage(fx)
    finally:
        fx.state.engine.dispose()
    return timings


def check_usage(fx: Fixture) -> None:
    """Host usage must equal the sum of its live instances, after all that."""
    from sqlalchemy import func

    with fx.state.sessions() as session:
        sums = dict(
            session.execute(
                select(Instance.host_id, func.sum(Instance.ram_mb)).group_by(Instance.host_id)
            ).all()
        )
        for host in session.scalars(select(Host)):
            assert host.used_ram_mb == (sums.get(host.id) or 0), host.name


def report(db: str, hosts: int, timings: dict[str, Timings], note: str = "") -> list[str]:
    base = timings["bare"].rate if "bare" in timings else 0.0
    lines = [f"{db}{note}, {hosts} hosts:"]
    for kind, t in timings.items():
        ratio = f"{t.rate / base:6.1%} of bare" if base and kind != "bare" else ""
        if ratio and kind == "placement":
            ratio += " (goal >= 25%: " + ("met)" if t.rate >= base / 4 else "not met)")
        if kind == "create":
            ratio += " (goal >= 100/s: " + ("met)" if t.rate >= 100 else "not met)")
        lines.append(
            f"  {kind:<10} {len(t.latencies):>6} in {sum(t.latencies):6.2f} s"
            f"  {t.rate:8.0f}/s  p50 {t.pct(0.5):6.2f} ms  p99 {t.pct(0.99):6.2f} ms  {ratio}"
        )
    return lines


def databases(which: list[str], cleanup: list[Callable[[], None]]) -> Iterator[tuple[str, str]]:
    for db in which:
        if db == "sqlite":
            tmp = tempfile.TemporaryDirectory(prefix="nubes-bench-")
            cleanup.append(tmp.cleanup)
            yield db, f"sqlite:///{tmp.name}/bench.db"
        elif db == "postgresql":
            from tests.pgcluster import PgCluster, unavailable

            if why := unavailable():
                print(f"postgresql: skipped ({why})")
                continue
            cluster = PgCluster(durable=True).start()
            cleanup.append(cluster.stop)
            yield db, cluster.create_database("bench")
        else:
            raise SystemExit(f"unknown database {db!r}: sqlite or postgresql")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--placements", type=int, default=10000, help="bare and placement runs")
    ap.add_argument("--creates", type=int, default=1000, help="full compute.create runs")
    ap.add_argument(
        "--sqlite-synchronous",
        default="",
        help="e.g. FULL: an fsync per commit (nubes runs SQLite with NORMAL, WAL)",
    )
    ap.add_argument("--db", default="sqlite,postgresql", help="sqlite, postgresql or both")
    ap.add_argument("--kinds", default=",".join(KINDS), help=",".join(KINDS))
    args = ap.parse_args(argv)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    cleanup: list[Callable[[], None]] = []
    try:
        for db, url in databases(args.db.split(","), cleanup):
            sync = args.sqlite_synchronous if db == "sqlite" else ""
            timings = run(url, args.hosts, args.placements, args.creates, kinds, sync)
            note = f" (synchronous={sync})" if sync else ""
            print("\n".join(report(db, args.hosts, timings, note)), flush=True)
    finally:
        for fn in reversed(cleanup):
            fn()


if __name__ == "__main__":
    main()
