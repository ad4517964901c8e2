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

__all__ = ["server_bin_dir", "PostgresServer", "raw_sql"]


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


def raw_sql(ledger, *statements: str) -> None:
    """Run SQL on a ledger's tables behind leaktrace's back (a tamperer with write access):
    a SQLite file, or a PostgreSQL ``...?site=NAME`` URL (run in that site's schema)."""
    text = str(ledger)
    if not text.startswith("postgresql://"):
        import sqlite3

        db = sqlite3.connect(ledger)
        for s in statements:
            db.execute(s)
        db.commit()
        db.close()
        return
    import psycopg

    from forensics.ledger_db import parse_postgres_url

    location = parse_postgres_url(text)
    with psycopg.connect(location.conninfo) as db:
        db.execute(f'SET search_path TO "{location.site}"')
        for s in statements:
            db.execute(s)

