"""SQLite transactions begin IMMEDIATE (SQLAlchemy's "begin" event): the write lock is taken at
the start, so racing writers queue instead of failing on a lock upgrade."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from nubes.db.engine import make_engine


def test_a_sqlite_transaction_holds_the_write_lock_from_its_start(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/lock.db"
    first, second = make_engine(url), make_engine(url, timeout=0.1)
    try:
        with first.begin() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
        with first.begin() as conn:
            conn.execute(text("SELECT count(*) FROM t"))  # a read, yet the lock is held
            with pytest.raises(OperationalError, match="locked"), second.begin() as other:
                other.execute(text("SELECT count(*) FROM t"))
        with second.begin() as other:  # released at commit
            other.execute(text("INSERT INTO t VALUES (1)"))
    finally:
        first.dispose()
        second.dispose()
