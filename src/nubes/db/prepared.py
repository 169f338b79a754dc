"""Statements compiled once per database and run on the driver's cursor, for the hot path.

A placement is two small statements in one transaction (claim the host, write the instance). On
SQLite each takes the database some 30 µs, and SQLAlchemy's work around a Core execution (cache
key, execution context, parameter and result processing) cost more than that again
(bench/scheduler.py). These statements are still SQLAlchemy's: compiled from Core once per
dialect, their values passed through the same bind processors (SQLite's datetime text, say), and
a driver error goes through SQLAlchemy's handling, so callers see the usual
`sqlalchemy.exc.IntegrityError` / `OperationalError` and a dropped connection is invalidated.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement


def driver_execute(conn: Connection, sql: str, args: Any) -> Any:
    """`cursor.execute(sql, args)` on the connection's driver connection; returns the cursor.

    A driver error is raised as SQLAlchemy raises it from `Connection.execute` (wrapped, the
    connection invalidated if it was a disconnect): `_handle_dbapi_exception` is private, but it
    is that very path, and nothing public does all of it.
    """
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql, args)
    except conn.dialect.loaded_dbapi.Error as e:
        conn._handle_dbapi_exception(e, sql, args, cursor, None)
    return cursor


@dataclass(frozen=True)
class _Compiled:
    sql: str
    # positional paramstyles (SQLite's qmark): (name, bind processor or None) in order
    plan: tuple[tuple[str, Callable[[Any], Any] | None], ...] | None
    processors: Mapping[str, Callable[[Any], Any]]

    def args(self, params: Mapping[str, Any]) -> Any:
        """The driver's arguments for `params` (by bind name), each through its processor."""
        if self.plan is not None:
            return tuple([params[n] if p is None else p(params[n]) for n, p in self.plan])
        if not self.processors:
            return params
        out = dict(params)
        for name, process in self.processors.items():
            if name in out:
                out[name] = process(out[name])
        return out


class Prepared:
    """One Core statement, compiled for each dialect that runs it."""

    def __init__(self, statement: ClauseElement, column_keys: Sequence[str] | None = None) -> None:
        self.statement = statement
        self.column_keys = list(column_keys) if column_keys is not None else None
        # one entry per engine (each has its own dialect object): dropped with the engine
        self._compiled: weakref.WeakKeyDictionary[Dialect, _Compiled] = weakref.WeakKeyDictionary()

    def compiled(self, dialect: Dialect) -> _Compiled:
        found = self._compiled.get(dialect)
        if found is None:  # two threads may both compile: same result, no lock needed
            c = self.statement.compile(dialect=dialect, column_keys=self.column_keys)
            assert isinstance(c, SQLCompiler)
            processors = {}
            for name, bind in c.binds.items():
                process = bind.type.dialect_impl(dialect).bind_processor(dialect)
                if process is not None:
                    processors[name] = process
            plan = None
            if c.positional and c.positiontup is not None:
                plan = tuple((name, processors.get(name)) for name in c.positiontup)
            found = self._compiled[dialect] = _Compiled(c.string, plan, processors)
        return found

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """Run with `params` (by bind name); returns the driver's cursor (rows, rowcount)."""
        c = self.compiled(conn.dialect)
        return driver_execute(conn, c.sql, c.args(params))


def defaults(table: Table) -> Callable[[], dict[str, Any]]:
    """A function giving a new row of `table` with every column: its Python-side default
    (called, if callable, as an INSERT would) or None. What the ORM would have filled in."""
    fixed: dict[str, Any] = {}
    called: list[tuple[str, Callable[[], Any]]] = []
    for column in table.columns:
        default = column.default
        if default is None or not (default.is_scalar or default.is_callable):
            fixed[column.key] = None
        elif default.is_callable:
            # SQLAlchemy wraps a no-argument function in `lambda ctx: fn()`: call fn itself
            make = default.arg  # type: ignore[attr-defined]
            plain = getattr(make, "__wrapped__", None) or functools.partial(make, None)
            called.append((column.key, plain))
        else:
            fixed[column.key] = default.arg  # type: ignore[attr-defined]

    def row() -> dict[str, Any]:
        return fixed | {key: make() for key, make in called}

    return row
