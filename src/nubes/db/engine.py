"""Engine and session factory; migrations run at start-up."""

from __future__ import annotations

import select
import sqlite3
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from nubes.db import sqlite_writers
from nubes.db.sqlite_writers import QueuedWriters

MIGRATIONS = Path(__file__).parent / "migrations"


# Called before each statement of a read-only transaction in this context, if set: background
# readers (the API's agents' lane) wait there while users' requests run. Only reads: a writer
# waiting there would hold its locks, and the users would wait for it.
before_each_read: ContextVar[Callable[[], None] | None] = ContextVar(
    "before_each_read", default=None
)


def make_engine(url: str, timeout: float = 30.0) -> Engine:
    """timeout: how long a statement waits for a lock (SQLite) or a connection (PostgreSQL)
    before OperationalError, which the API answers with 503."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": timeout, "factory": QueuedWriters},
            pool_size=20,
        )
        _sqlite_write_locks(engine, timeout)
    else:
        engine = create_engine(
            url,
            pool_size=20,
            max_overflow=20,
            pool_timeout=timeout,
            connect_args={"connect_timeout": max(1, round(timeout))},
        )
        _drop_closed_connections(engine)
    event.listen(engine, "before_cursor_execute", _before_statement)
    return engine


def _before_statement(conn: Connection, *_: Any) -> None:
    hook = before_each_read.get()
    if hook is not None and conn.get_execution_options().get(READ_ONLY, False):
        hook()


def _drop_closed_connections(engine: Engine) -> None:
    """Replace pooled connections the server has closed, before they are used.

    Not pool_pre_ping: its SELECT 1 is a round trip on every checkout, i.e. on every request.
    An idle connection's socket has nothing to read unless the server has said goodbye (the
    FATAL message and EOF it sends when it stops, restarts or terminates the backend), so a
    poll with no timeout tells a closed one from a live one at the cost of a system call. The
    pool then connects afresh; if the server is still away that fails with OperationalError
    (the API's 503) and a later request connects again once it is back.
    """

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        if dbapi_conn.closed or _readable(dbapi_conn.fileno()):
            raise DisconnectionError("the database server closed this connection")


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))  # POLLHUP and POLLERR are reported too


READ_ONLY = "nubes_read_only"  # execution option: this connection's transactions only read


def no_flush_wait(conn: Connection) -> None:
    """This transaction's COMMIT returns without waiting for its WAL to reach the disk
    (PostgreSQL's `synchronous_commit = off`, for this transaction only; a no-op on SQLite).

    Only for writes whose loss in a crash of the database server costs nothing lasting: a
    heartbeat (sent again 10 s later), a generation bump that only wakes agents (they fetch
    on their own anyway). What they save is the wait for a disk flush with each one's row
    locks held: those rows (hosts') are the ones users' creates claim, so a create waited for
    agents' flushes, queued behind their own. Never for a change someone was told is made,
    nor for one that writes events (an event seen and then lost could see its id reused)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL synchronous_commit = off")


def read_only(engine: Engine) -> Engine:
    """The same engine and pool for transactions that only read. On SQLite they begin
    DEFERRED: WAL gives them a snapshot and they take no lock, where BEGIN IMMEDIATE would queue
    every read (a heartbeat's credential check, an agent's desired state, any GET) behind the
    writers and SQLite's sleeping busy handler. On PostgreSQL nothing changes."""
    return engine.execution_options(**{READ_ONLY: True})


def _sqlite_write_locks(engine: Engine, timeout: float) -> None:
    """WAL, and BEGIN IMMEDIATE so racing writers queue instead of failing on lock upgrade
    (DEFERRED for connections marked read-only: `read_only`)."""

    writers = sqlite_writers.lock_for(str(engine.url))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.writer_lock = writers
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        # WAL + NORMAL: still crash-safe (no corruption); skips an fsync per commit
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        cur.close()

    # SQLAlchemy's recipe for pysqlite (its SQLite docs, "Serializable isolation / Savepoints /
    # Transactional DDL"): the driver's own BEGIN is off (isolation_level None above) and the
    # "begin" event emits ours, IMMEDIATE so the write lock is taken at the start.
    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(READ_ONLY, False):
            conn.exec_driver_sql("BEGIN")
            return
        dbapi_conn: Any = conn.connection.dbapi_connection
        try:  # this process's writers first (sqlite_writers.py)
            dbapi_conn.take_write_lock(timeout)
        except sqlite3.OperationalError as exc:  # as SQLAlchemy wraps SQLite's own "locked"
            raise OperationalError("BEGIN IMMEDIATE", None, exc) from exc
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            dbapi_conn.let_go()
            raise


def migrate(url: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url)
    command.upgrade(cfg, "head")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
