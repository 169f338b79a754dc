"""Prometheus metrics (prometheus-client), one registry per API app (tests run many apps in one
process; the library's global registry would mix them).

What is counted where it happens: API request latency (api/timing.py) and operation durations
(observed after the commit that ends an operation, so a rolled-back end is never counted). What
is state, not events (hosts' capacity and usage, servers by status), is read from the database
at scrape time: every API server sharing the database reports the same cloud-wide figures, and
no counter can drift from the rows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from nubes.db.models import Host, Instance

ENDED = "nubes.operations_ended"  # session.info key: [(kind, result, seconds)]
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OPERATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)


def operation_ended(session: Session, kind: str, result: str, seconds: float) -> None:
    """Called where an operation ends; observed once its transaction commits."""
    session.info.setdefault(ENDED, []).append((kind, result, max(0.0, seconds)))


class CloudCollector(Collector):
    """The cloud's state, read at each scrape (a few aggregate queries, never per row)."""

    def __init__(self, reads: Callable[[], Session]) -> None:
        self.reads = reads

    def collect(self) -> Iterator[Metric]:
        capacity = GaugeMetricFamily(
            "nubes_host_capacity",
            "A host's capacity (before overcommit)",
            labels=["host", "resource"],
        )
        used = GaugeMetricFamily(
            "nubes_host_used", "What a host's instances claim", labels=["host", "resource"]
        )
        up = GaugeMetricFamily(
            "nubes_host_enabled", "1 if the scheduler may place on the host", labels=["host"]
        )
        servers = GaugeMetricFamily("nubes_servers", "Live servers by status", labels=["status"])
        with self.reads() as session:
            for h in session.scalars(select(Host).order_by(Host.name)):
                for res, cap, use in (
                    ("vcpus", h.vcpus, h.used_vcpus),
                    ("ram_mb", h.ram_mb, h.used_ram_mb),
                    ("disk_gb", h.disk_gb, h.used_disk_gb),
                ):
                    capacity.add_metric([h.name, res], cap)
                    used.add_metric([h.name, res], use)
                up.add_metric([h.name], 1.0 if h.enabled else 0.0)
            counts = session.execute(
                select(Instance.status, func.count())
                .where(Instance.deleted_at.is_(None))
                .group_by(Instance.status)
            )
            for status, n in counts:
                servers.add_metric([status], n)
        yield from (capacity, used, up, servers)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(
        default_factory=lambda: CollectorRegistry(auto_describe=True)
    )
    requests: Histogram = field(init=False)
    operations: Histogram = field(init=False)

    def __post_init__(self) -> None:
        self.requests = Histogram(
            "nubes_api_request_duration_seconds",
            "API request latency, by route template (never the raw path), method and status class",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.operations = Histogram(
            "nubes_operation_duration_seconds",
            "From request to end of an operation (create, delete, start, stop, reboot)",
            ["kind", "result"],
            buckets=OPERATION_BUCKETS,
            registry=self.registry,
        )

    def install(self, sessions: sessionmaker[Session], reads: Callable[[], Session]) -> None:
        self.registry.register(CloudCollector(reads))

        @event.listens_for(sessions, "after_commit")
        def _committed(session: Session) -> None:
            for kind, result, seconds in session.info.pop(ENDED, []):
                self.operations.labels(kind, result).observe(seconds)

        @event.listens_for(sessions, "after_transaction_end")
        def _ended(session: Session, transaction: SessionTransaction) -> None:
            if transaction.parent is None:  # rolled back or closed: nothing of it was kept
                session.info.pop(ENDED, None)
