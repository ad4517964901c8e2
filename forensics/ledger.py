"""The export ledger: who received which marked copy of which film.

One SQLite file (``sqlite3`` from the standard library). Default location, first match wins:
the ``--ledger PATH`` option; the environment variable ``LEAKTRACE_LEDGER``;
``$XDG_DATA_HOME/leaktrace/ledger.sqlite`` (``~/.local/share/leaktrace/ledger.sqlite``).

Tables
------
``recipients``
    ``number`` (the 32-bit recipient number carried in the mark), ``name`` (unique), ``created_utc``.
``exports``
    one row per marked copy written: recipient number, source SOP Instance UID, source path and
    SHA-256, output path, output SOP Instance UID and SHA-256, payload (hex of the coded bits),
    key fingerprint (never the key), UTC time, and ``record_hash``: SHA-256 over the previous
    record's hash and this record's content, so that an edited, deleted, inserted or reordered
    record breaks the chain (:meth:`Ledger.verify`).

Transactions
------------
Every change is one transaction (``BEGIN IMMEDIATE``, so concurrent writers queue rather than
interleave). :meth:`Ledger.record_export` takes a callable that writes the output file inside
the transaction: the row is committed only if the file was written, and the file is removed
if the row cannot be committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from watermark.errors import LedgerError

__all__ = ["Ledger", "ExportRecord", "default_ledger_path", "LEDGER_ENV"]

LEDGER_ENV = "LEAKTRACE_LEDGER"
SCHEMA_VERSION = 1
_GENESIS = "0" * 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS recipients (
    number      INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_utc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS exports (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient_number   INTEGER NOT NULL REFERENCES recipients(number),
    source_sop_uid     TEXT NOT NULL,
    source_path        TEXT NOT NULL,
    source_sha256      TEXT NOT NULL,
    output_path        TEXT NOT NULL,
    output_sop_uid     TEXT NOT NULL,
    output_sha256      TEXT NOT NULL,
    payload            TEXT NOT NULL,
    key_fingerprint    TEXT NOT NULL,
    created_utc        TEXT NOT NULL,
    prev_hash          TEXT NOT NULL,
    record_hash        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS exports_source ON exports(source_sop_uid);
"""

_CONTENT_FIELDS = ("recipient_number", "source_sop_uid", "source_path", "source_sha256",
                   "output_path", "output_sop_uid", "output_sha256", "payload",
                   "key_fingerprint", "created_utc")


@dataclass(frozen=True)
class ExportRecord:
    """One row of ``exports`` (see the module docstring for the fields)."""

    id: int
    recipient_number: int
    recipient_name: str
    source_sop_uid: str
    source_path: str
    source_sha256: str
    output_path: str
    output_sop_uid: str
    output_sha256: str
    payload: str
    key_fingerprint: str
    created_utc: str
    prev_hash: str
    record_hash: str

    def as_dict(self) -> dict:
        return asdict(self)


def default_ledger_path() -> Path:
    """Where the ledger lives when ``--ledger`` is not given (see the module docstring)."""
    env = os.environ.get(LEDGER_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "leaktrace" / "ledger.sqlite"


def _record_hash(prev_hash: str, content: dict) -> str:
    body = json.dumps({k: content[k] for k in _CONTENT_FIELDS}, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class Ledger:
    """An open ledger. Use as a context manager, or call :meth:`close`.

    Parameters
    ----------
    path : path-like or None
        The SQLite file; ``None`` for :func:`default_ledger_path`.
    create : bool
        Create the file (and its folder) if it does not exist. Detection opens with
        ``create=False``: a missing ledger is an error there, not a new empty one.

    Raises
    ------
    LedgerError
        The file is missing (and ``create`` is false), is not SQLite, or is not a leaktrace
        ledger.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, create: bool = True):
        self.path = Path(path).expanduser() if path is not None else default_ledger_path()
        if not self.path.exists():
            if not create:
                raise LedgerError(f"{self.path}: no ledger there (give one with --ledger or "
                                  f"{LEDGER_ENV}; `leaktrace embed` creates it)")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LedgerError(f"{self.path}: cannot create the ledger folder ({exc})") from None
        try:
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA busy_timeout = 60000")
            with self._write():
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    self._db.execute(statement)
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                                 (str(SCHEMA_VERSION),))
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path}: not a leaktrace ledger ({exc})") from None

    # -- plumbing -----------------------------------------------------------------------
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- recipients ---------------------------------------------------------------------
    def recipient_number(self, name: str, *, create: bool = False) -> int | None:
        """The number of the recipient called ``name``; with ``create``, register it if new.

        Numbers are assigned 1, 2, 3, ... in order of registration.

        Raises
        ------
        LedgerError
            An empty name, or one longer than 1000 characters.
        """
        name = name.strip()
        if not name or len(name) > 1000:
            raise LedgerError("a recipient name must have 1 to 1000 characters")
        row = self._db.execute("SELECT number FROM recipients WHERE name = ?", (name,)).fetchone()
        if row or not create:
            return row[0] if row else None
        with self._write() as db:
            row = db.execute("SELECT number FROM recipients WHERE name = ?", (name,)).fetchone()
            if row:
                return row[0]
            cur = db.execute("INSERT INTO recipients(name, created_utc) VALUES (?, ?)",
                             (name, _utc_now()))
            return int(cur.lastrowid)

    def recipients(self) -> dict[int, str]:
        """All recipients: ``{number: name}``."""
        return dict(self._db.execute("SELECT number, name FROM recipients ORDER BY number"))

    # -- exports ------------------------------------------------------------------------
    def record_export(self, write_output: Callable[[], dict], *, recipient_number: int,
                      source_sop_uid: str, source_path: str, source_sha256: str,
                      payload: str, key_fingerprint: str) -> ExportRecord:
        """Write an output file and record it, all or nothing.

        Parameters
        ----------
        write_output : callable
            Called inside the transaction; writes the file atomically and returns a dict with
            ``output_path``, ``output_sop_uid`` and ``output_sha256``. If it raises, nothing
            is recorded. If the record cannot be committed, the file it wrote is removed.

        Returns
        -------
        ExportRecord
        """
        out_path = None
        try:
            with self._write() as db:
                written = write_output()
                out_path = written["output_path"]
                prev = db.execute("SELECT record_hash FROM exports ORDER BY id DESC LIMIT 1").fetchone()
                prev_hash = prev[0] if prev else _GENESIS
                content = dict(recipient_number=recipient_number, source_sop_uid=source_sop_uid,
                               source_path=source_path, source_sha256=source_sha256,
                               output_path=str(out_path), output_sop_uid=written["output_sop_uid"],
                               output_sha256=written["output_sha256"], payload=payload,
                               key_fingerprint=key_fingerprint, created_utc=_utc_now())
                record_hash = _record_hash(prev_hash, content)
                cur = db.execute(
                    f"INSERT INTO exports({', '.join(_CONTENT_FIELDS)}, prev_hash, record_hash) "
                    f"VALUES ({', '.join('?' * (len(_CONTENT_FIELDS) + 2))})",
                    [content[k] for k in _CONTENT_FIELDS] + [prev_hash, record_hash],
                )
                export_id = int(cur.lastrowid)
        except sqlite3.DatabaseError as exc:
            if out_path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(out_path)
            raise LedgerError(f"{self.path}: could not record the export ({exc}); "
                              f"the output file was removed") from None
        return self.export(export_id)

    _SELECT = ("SELECT e.id, e.recipient_number, r.name, e.source_sop_uid, e.source_path, "
               "e.source_sha256, e.output_path, e.output_sop_uid, e.output_sha256, e.payload, "
               "e.key_fingerprint, e.created_utc, e.prev_hash, e.record_hash "
               "FROM exports e LEFT JOIN recipients r ON r.number = e.recipient_number")

    def export(self, export_id: int) -> ExportRecord:
        row = self._db.execute(self._SELECT + " WHERE e.id = ?", (export_id,)).fetchone()
        if row is None:
            raise LedgerError(f"{self.path}: no export with id {export_id}")
        return ExportRecord(*row)

    def exports(self) -> list[ExportRecord]:
        """Every export, oldest first."""
        return [ExportRecord(*row) for row in self._db.execute(self._SELECT + " ORDER BY e.id")]

    def key_fingerprints(self) -> set[str]:
        """Fingerprints of the keys that made the recorded exports."""
        return {r[0] for r in self._db.execute("SELECT DISTINCT key_fingerprint FROM exports")}

    def verify(self) -> list[str]:
        """Check the hash chain. Returns a list of problems, empty when the chain is intact.

        Each problem names the record (its id) and what is wrong: content that does not match
        its hash (edited), a previous-hash link that does not match the record before it
        (a record deleted, inserted or moved).
        """
        problems, prev_hash = [], _GENESIS
        for rec in self.exports():
            content = {k: getattr(rec, k) for k in _CONTENT_FIELDS}
            if rec.prev_hash != prev_hash:
                problems.append(f"export {rec.id}: does not follow the record before it "
                                "(a record was deleted, inserted or reordered here)")
            if _record_hash(rec.prev_hash, content) != rec.record_hash:
                problems.append(f"export {rec.id}: content does not match its hash (edited)")
            prev_hash = rec.record_hash
        return problems
