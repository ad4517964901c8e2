"""A real PostgreSQL server for the tests, in a temporary folder on a free loopback port.

Debian's ``postgresql`` package ships the server programs under
``/usr/lib/postgresql/<version>/bin`` (not on PATH). ``initdb`` refuses to run as root, so
as root the server's programs run as the ``postgres`` user (``runuser -u postgres --``) in a
folder it owns; as another user they run as that user. The cluster trusts connections from
127.0.0.1 (no password; only the machine's own users can reach it), listens on no public
address, syncs nothing to disk (``fsync=off``: a test server) and is removed when stopped.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["server_bin_dir", "PostgresServer", "raw_connect", "raw_sql", "rows_of", "copy_ledger"]


def server_bin_dir() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: the newest Debian version, else PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name)
                   if Path(p).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """Start with :meth:`start`, connect with :attr:`url`, end with :meth:`stop`."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.folder = Path(tempfile.mkdtemp(prefix="leaktrace-pg-"))
        self.data = self.folder / "data"
        self.port = _free_port()
        self.as_postgres = os.geteuid() == 0
        self.url = f"postgresql://leaktrace@127.0.0.1:{self.port}/leaktrace"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout,
                              cwd=self.folder)

    def start(self) -> None:
        if self.as_postgres:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "leaktrace", "-A", "trust",
                  "-E", "UTF8", "--locale=C", "--no-sync")
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=50")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l",
                  str(self.folder / "server.log"), "-w", "-t", "60", "start")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "leaktrace",
                  "leaktrace")

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def site_url(self, site: str) -> str:
        return f"{self.url}?site={site}"


class _RawPostgres:
    """A psycopg connection in a site's schema that reads ``?`` placeholders like sqlite3 and
    commits like it (``commit``, or leaving a ``with`` block without an error)."""

    def __init__(self, url: str):
        import psycopg

        from forensics.ledger.db import parse_postgres_url

        location = parse_postgres_url(url)
        self._db = psycopg.connect(location.conninfo)
        self._db.execute(f'SET search_path TO "{location.site}"')

    def execute(self, sql: str, params=()):
        return self._db.execute(sql.replace("?", "%s"), tuple(params))

    def commit(self) -> None:
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, kind, *exc) -> None:
        if kind is None:
            self._db.commit()
        else:
            self._db.rollback()


def raw_connect(ledger):
    """A connection to a ledger's tables behind leaktrace's back (a tamperer with write
    access), with sqlite3's calls (``execute`` with ``?``, ``commit``, ``close``, ``with``):
    a SQLite file, or a PostgreSQL ``...?site=NAME`` URL (in that site's schema)."""
    if str(ledger).startswith("postgresql://"):
        return _RawPostgres(str(ledger))
    import sqlite3

    return sqlite3.connect(ledger)


def raw_sql(ledger, *statements: str) -> None:
    """Run and commit ``statements`` on a ledger's tables (:func:`raw_connect`)."""
    db = raw_connect(ledger)
    for s in statements:
        db.execute(s)
    db.commit()
    db.close()


def rows_of(db, table: str = "exports") -> dict[int, dict]:
    """``{id: row as a dict}`` of a table, through a :func:`raw_connect` connection."""
    cur = db.execute(f"SELECT * FROM {table} ORDER BY id")
    names = [d[0] for d in cur.description]
    return {r[0]: dict(zip(names, r)) for r in cur.fetchall()}


#: Tables a ledger copy takes over, parents first; identity columns whose counter follows.
_COPIED = ("meta", "recipients", "exports", "deliveries", "access", "sources")
_IDENTITY = ("exports", "deliveries", "access")


def copy_ledger(source, folder: Path, request):
    """A copy of the ledger at ``source`` for one test: for SQLite the file copied into
    ``folder``; for PostgreSQL a new site holding the same rows (ledger_id included), made
    with leaktrace's own tables and its identity counters moved past the copied ids."""
    if not str(source).startswith("postgresql://"):
        target = Path(folder) / "ledger.sqlite"
        shutil.copy(source, target)
        return target
    from conftest import new_ledger_location
    from forensics.ledger import Ledger
    from forensics.ledger.db import parse_postgres_url

    target = new_ledger_location("postgresql", request, folder)
    Ledger(target).close()  # the site's tables, as leaktrace makes them
    old, new = parse_postgres_url(source).site, parse_postgres_url(target).site
    with raw_connect(target) as db:
        db.execute("DELETE FROM meta")
        for table in _COPIED:
            db.execute(f'INSERT INTO "{new}".{table} SELECT * FROM "{old}".{table}')
        for table in _IDENTITY:
            db.execute(f"SELECT setval(pg_get_serial_sequence('\"{new}\".{table}', 'id'), "
                       f'COALESCE((SELECT MAX(id) FROM "{new}".{table}), 0) + 1, false)')
    return target
