"""Where a ledger lives: a SQLite file, or a site of a PostgreSQL database.

:class:`forensics.ledger.Ledger` talks to both through the same few calls of a DB-API
connection (``execute`` with ``?`` placeholders, ``executemany``, ``in_transaction``,
``close``). For SQLite that is the standard library's ``sqlite3`` connection itself; for
PostgreSQL it is :class:`PostgresConnection`, a thin adapter over a psycopg 3 connection
(LGPL-3.0, an optional dependency: ``pip install 'leaktrace[postgresql]'``).

PostgreSQL ledgers
------------------
Given as a libpq connection URL, ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE``
(``postgres://`` too), with any libpq parameters (``sslmode=require``...) and one of ours,
``site=NAME``: each site is a PostgreSQL schema of its own (default ``leaktrace``) holding the
ledger's tables, so that a site has its own ``ledger_id``, its own hash chains and its own
write lock, and sites of one database never wait on each other. The password is better
kept in ``~/.pgpass`` or ``PGPASSWORD`` than in the URL; the URL shown in messages and JSON
never carries it.

Write transactions
------------------
SQLite: ``BEGIN IMMEDIATE`` takes the database's write lock at the start of the transaction,
so concurrent writers queue (for up to 60 s) instead of both reading the same chain head.
PostgreSQL: ``BEGIN`` then ``pg_advisory_xact_lock`` on a 64-bit key derived from the
site's schema name (``hashtextextended``): the same queue, held until ``COMMIT`` or
``ROLLBACK``, per site. Readers take no lock on either backend.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from watermark.errors import LedgerError

__all__ = ["is_server_url", "PostgresLocation", "parse_postgres_url", "PostgresConnection",
           "database_errors", "DEFAULT_SITE", "SITE_PATTERN", "INSTALL_HINT"]

#: The site (PostgreSQL schema) of a URL without ``site=``.
DEFAULT_SITE = "leaktrace"
#: What a site name may be: a lower-case unquoted PostgreSQL identifier.
SITE_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,62}")
INSTALL_HINT = "pip install 'leaktrace[postgresql]' (psycopg 3, LGPL-3.0)"
_SCHEMES = ("postgresql", "postgres")


def is_server_url(value) -> bool:
    """Whether ``value`` (a str or path) names a PostgreSQL ledger rather than a file.

    Raises
    ------
    LedgerError
        ``value`` has another URL scheme (``postgresq://``, ``mysql://``, ``file://``...): it
        is refused rather than taken as a file path, which would record exports in a stray
        file named like the URL.
    """
    text = str(value)
    if any(text.startswith(f"{s}://") for s in _SCHEMES):
        return True
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]+)://", text)  # not a drive letter, C:/
    if scheme:
        raise LedgerError(f"{text}: unsupported ledger URL scheme '{scheme.group(1)}'; a ledger "
                          "is a file path or postgresql://user@host:port/db?site=NAME")
    return False


@dataclass(frozen=True)
class PostgresLocation:
    """A parsed ``postgresql://`` ledger URL.

    Attributes
    ----------
    conninfo : str
        The URL handed to libpq: ``site`` removed, everything else as given.
    site : str
        The schema holding this site's tables.
    display : str
        The URL without its password, as messages and JSON show it (``site`` included).
    """

    conninfo: str
    site: str
    display: str


def parse_postgres_url(url: str) -> PostgresLocation:
    """Split a PostgreSQL ledger URL into what libpq reads and the site.

    Raises
    ------
    LedgerError
        Not a ``postgresql://`` URL, no database name, a ``site`` given twice, or a site that
        is not a lower-case identifier (letters, digits, ``_``; at most 63 characters).
    """
    parts = urlsplit(str(url))
    if parts.scheme not in _SCHEMES:
        raise LedgerError(f"{url}: not a PostgreSQL URL (postgresql://user@host:port/db)")
    if parts.path in ("", "/"):
        raise LedgerError(f"{_without_password(parts)}: the URL names no database; write "
                          "postgresql://user@host:port/DATABASE")
    query = parse_qsl(parts.query, keep_blank_values=True)
    sites = [v for k, v in query if k == "site"]
    if len(sites) > 1:
        raise LedgerError(f"{_without_password(parts)}: site is given {len(sites)} times")
    site = sites[0] if sites else DEFAULT_SITE
    if not SITE_PATTERN.fullmatch(site):
        raise LedgerError(f"{_without_password(parts)}: site {site!r} is not a valid site "
                          "name (lower-case letters, digits and _, starting with a letter or _, "
                          "at most 63 characters)")
    rest = [(k, v) for k, v in query if k != "site"]
    conninfo = urlunsplit(parts._replace(query=urlencode(rest)))
    shown = urlunsplit(urlsplit(_without_password(parts))._replace(
        query=urlencode(rest + [("site", site)])))
    return PostgresLocation(conninfo=conninfo, site=site, display=shown)


def _without_password(parts) -> str:
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def _psycopg():
    try:
        import psycopg
    except ImportError:
        raise LedgerError(f"a PostgreSQL ledger needs psycopg 3: {INSTALL_HINT}") from None
    return psycopg


def database_errors() -> tuple[type[BaseException], ...]:
    """The exception classes a database driver raises (sqlite3's, psycopg's if installed)."""
    try:
        import psycopg
    except ImportError:
        return (sqlite3.DatabaseError,)
    return (sqlite3.DatabaseError, psycopg.Error)


class PostgresConnection:
    """A psycopg connection to one site, with the calls :class:`~forensics.ledger.Ledger`
    makes of a ``sqlite3`` connection.

    Statements are written with ``?`` placeholders (SQLite's) and sent with ``%s`` (psycopg's);
    the ledger's SQL holds no other ``?`` or ``%``. The connection is in autocommit mode, so
    that each read is a statement of its own, and write transactions are opened explicitly
    with :meth:`begin_write`.

    Parameters
    ----------
    location : PostgresLocation
    read_only : bool
        Every transaction read-only (``default_transaction_read_only``): a reader cannot
        change the ledger even by mistake.

    Raises
    ------
    LedgerError
        psycopg is not installed, or the server cannot be reached or refuses the login.
    """

    def __init__(self, location: PostgresLocation, *, read_only: bool):
        psycopg = _psycopg()
        self.location = location
        try:
            self._conn = psycopg.connect(location.conninfo, autocommit=True, connect_timeout=30)
        except psycopg.Error as exc:
            raise LedgerError(f"{location.display}: cannot connect to the ledger's database "
                              f"({_first_line(exc)})") from None
        self._transaction_status = psycopg.pq.TransactionStatus
        with self._conn.cursor() as cur:
            if read_only:
                cur.execute("SET default_transaction_read_only = on")
            cur.execute("SELECT set_config('search_path', %s, false)",
                        (f'"{location.site}"',))

    # -- the sqlite3-like calls ------------------------------------------------------------
    def execute(self, sql: str, params=()):
        with self._connection_kept():
            return self._conn.execute(sql.replace("?", "%s"), tuple(params))

    def executemany(self, sql: str, rows) -> None:
        with self._connection_kept(), self._conn.cursor() as cur:
            cur.executemany(sql.replace("?", "%s"), [tuple(r) for r in rows])

    @contextlib.contextmanager
    def _connection_kept(self):
        """A lost connection (the server stopped or restarted, the network dropped) becomes
        one :class:`LedgerError` naming the database; what was committed before is kept."""
        psycopg = _psycopg()
        try:
            yield
        except psycopg.OperationalError as exc:
            raise LedgerError(f"{self.location.display}: lost the connection to the ledger's "
                              f"database ({_first_line(exc)}); every export committed before "
                              "is kept") from None

    @property
    def in_transaction(self) -> bool:
        return self._conn.info.transaction_status != self._transaction_status.IDLE

    def close(self) -> None:
        self._conn.close()

    # -- what only PostgreSQL needs ---------------------------------------------------------
    def begin_write(self) -> None:
        """Open a write transaction holding the site's lock (see the module docstring)."""
        self._conn.execute("BEGIN")
        self._conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                           (f"leaktrace ledger {self.location.site}",))

    def site_exists(self) -> bool:
        return self._conn.execute("SELECT EXISTS(SELECT 1 FROM pg_namespace WHERE nspname = %s)",
                                  (self.location.site,)).fetchone()[0]

    def create_site(self) -> None:
        """Create the site's schema if it does not exist (under the site's lock, so that two
        writers opening a new site at once do not collide)."""
        self.begin_write()
        try:
            if not self.site_exists():
                self._conn.execute(f'CREATE SCHEMA "{self.location.site}"')
            self._conn.execute("COMMIT")
        except BaseException:
            if self.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def tables(self) -> set[str]:
        return {r[0] for r in self._conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (self.location.site,))}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
