"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pgcluster import PgCluster, unavailable


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgCluster]:
    """A throwaway PostgreSQL cluster for the whole run, stopped and deleted even on failure."""
    why = unavailable()
    if why:
        pytest.skip(why)
    cluster = PgCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
