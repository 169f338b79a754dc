"""Fixtures shared by every test directory."""

from __future__ import annotations

import gc
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


@pytest.fixture(autouse=True)
def _short_collections() -> None:
    """Each test starts with the heap earlier tests left frozen (collected first), so CPython's
    full collections scan only what this test makes. Otherwise they scanned everything the
    session had built up: 1.3-1.8 s pauses after a few hundred tests (2 million objects), which
    stopped the in-process agents' heartbeats and the API alike, so that a create right after
    one found every host 'down' past the tests' 3 s."""
    gc.collect()
    gc.freeze()
