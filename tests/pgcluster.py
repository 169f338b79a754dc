"""A throwaway PostgreSQL cluster in a temporary directory (Debian's server binaries).

Run as the `postgres` user when we are root (initdb refuses root), listening on a random port on
127.0.0.1 and on a UNIX socket in its own directory; `stop()` kills it and deletes everything.
Used by the tests (session fixture `postgres`) and by bench/scheduler.py.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg2

ROOT = Path("/usr/lib/postgresql")


def find_bin() -> Path | None:
    """The newest installed server's bin directory, if any."""
    found = sorted(ROOT.glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


def unavailable() -> str | None:
    """Why a cluster cannot be started here, or None."""
    if find_bin() is None:
        return f"no PostgreSQL server under {ROOT} (Debian package postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root but there is no postgres user to run the server as"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    def __init__(self, durable: bool = False) -> None:
        """`durable=False` turns fsync off: a test cluster has nothing to keep."""
        bindir = find_bin()
        if bindir is None:
            raise RuntimeError(unavailable())
        self.bin = bindir
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="nubes-pg-"))
        self.data = self.root / "data"
        self.port = 0
        self._names = itertools.count(1)
        self._user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        if self._user is not None:
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)

    def _run(self, *argv: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._user is not None else []
        subprocess.run(
            [*prefix, *argv], check=True, capture_output=True, timeout=120, cwd=self.root
        )

    def _configure(self) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": "300",
            "shared_buffers": "64MB",
            "fsync": "on" if self.durable else "off",
            "synchronous_commit": "on" if self.durable else "off",
            "full_page_writes": "on" if self.durable else "off",
        }
        with (self.data / "postgresql.conf").open("a") as fh:
            fh.writelines(f"{k} = {v}\n" for k, v in settings.items())

    def start(self) -> PgCluster:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--no-sync", "--no-instructions",
        )  # fmt: skip
        for attempt in range(3):
            self.port = free_port()  # another process may take it first: then try another
            self._configure()
            try:
                self._run(
                    str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                    str(self.root / "server.log"), "-w", "-t", "60", "start",
                )  # fmt: skip
                return self
            except subprocess.CalledProcessError:
                if attempt == 2:
                    raise
        return self

    def stop(self) -> None:
        """Stop the server (immediately: nothing to keep) and delete the directory."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")
        except OSError:
            return ""

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{dbname}"

    def _admin(self, sql: str) -> None:
        conn = psycopg2.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres"
        )
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def create_database(self, prefix: str = "t", template: str = "") -> str:
        """A new database, empty or a copy of `template`; returns its SQLAlchemy URL."""
        name = f"{prefix}{next(self._names)}"
        copy = f' TEMPLATE "{template}"' if template else ""
        self._admin(f'CREATE DATABASE "{name}"{copy}')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
