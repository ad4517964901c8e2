"""The export ledger: who received which marked copy of which film.

One SQLite file (``sqlite3`` from the standard library), created readable by its owner only
(mode 0600), or one site of a PostgreSQL database given as ``postgresql://user@host:port/db``
with an optional ``?site=NAME`` (psycopg 3, the ``postgresql`` extra; see
:mod:`forensics.ledger.db`). Both hold the same tables (:mod:`forensics.ledger.schema`) and
behave the same through :class:`Ledger`. Default location, first match wins: the ``--ledger``
option; the environment variable ``LEAKTRACE_LEDGER`` (a path or a URL);
``$XDG_DATA_HOME/leaktrace/ledger.sqlite`` (``~/.local/share/leaktrace/ledger.sqlite``).

Tables
------
``meta``
    ``schema_version`` and ``ledger_id``: 16 random bytes (hex) drawn when the ledger is
    created. Marks are made and detected with the site key scoped to it
    (:meth:`watermark.keys.SiteKey.scoped`), because recipient numbers are per ledger: a mark
    recorded in this ledger is not found with another ledger, even one sharing the site key.
``recipients``
    ``number`` (the 32-bit recipient number carried in the mark), ``name`` (unique, Unicode
    NFC, no control characters), ``created_utc``.
``exports``
    one row per marked copy written: recipient number and name, source SOP Instance UID,
    source path and SHA-256, output path, output SOP Instance UID and SHA-256, payload (hex of
    the coded bits), key fingerprint (the site key's, never the key), UTC time, and
    ``record_hash``: SHA-256 over the previous record's hash and this record's content, so that
    an edited, deleted, inserted or reordered record breaks the chain (:meth:`Ledger.verify`).
    The recipient's name is part of the content, so renaming or swapping recipients in
    ``recipients`` is reported too. Exactly: ``record_hash = sha256(prev_hash +
    json.dumps(content, sort_keys=True, separators=(",", ":")))`` in hex, where ``content``
    holds the fields from ``recipient_number`` to ``created_utc`` and the first record's
    ``prev_hash`` is 64 zeros.
``deliveries``
    what a DICOM node (:mod:`forensics.gateway`) sent to whom: one row per instance sent
    over the network, written ``pending`` before the C-STORE and set to ``delivered`` or
    ``failed`` after its response, with the export it sent (``export_id``; NULL for an
    instance passed unmarked by configuration), the SOP Instance UID sent, the receiver's AE
    title, the route (``store``, ``move``, ``get``) and the DIMSE status. Not part of the hash
    chain (a row changes state once); the marked copy it sent is.
``access``
    who looked: one row per ``detect``, ``trace``, ``ledger list``, ``ledger export``,
    ``ledger audit`` and gateway transfer (:class:`AccessEvent`): ``who`` (the ``--operator``
    name or the OS user; the gateway's AE title), ``peer`` (the receiving AE title of a
    gateway transfer, else empty), ``host``, ``action``, ``what`` (canonical JSON: the leak's
    SHA-256, the export ids and count, or the instance sent), ``outcome`` (``traced``,
    ``not_found``, ``error``, ``listed``, ``exported``, ``delivered``, ``failed``),
    ``detail`` and the UTC time. Hash-chained like ``exports`` but on a chain of its own
    (same rule, fields :data:`ACCESS_CONTENT_FIELDS`; :meth:`Ledger.check_access`), so that
    checkpoints of the exports stay what they are. Added to an older ledger the first time it
    is opened for writing; readers cope with its absence (no accesses).
``deidentifications``
    per export made with ``embed --deidentify`` (:mod:`forensics.deidentify`): the export's
    id, the PS3.15 options applied (JSON list) and the keyed mapping (JSON: the source's
    Patient ID, Patient's Name, Study, Series and SOP Instance UIDs beside the copy's
    pseudonyms and UIDs, and the date shift in days), written in the export's transaction, so
    that an authorised investigator can map a de-identified copy back to its source study
    (``leaktrace ledger reidentify``). Not part of the hash chain; added to an older ledger
    the first time it is opened for writing.
``sources``
    per exported source film (by SHA-256), its keypoint features
    (:func:`forensics.register.film_features`), so that ``leaktrace trace`` can find the film
    a leak shows without reading every original.

Chain head
----------
The newest record's hash (:attr:`ChainCheck.head_hash`) stands for the whole chain. The
chain is not keyed, so someone who can write the file can delete the newest records, append
records, or recompute every hash from a changed record on; only a head noted outside the
ledger catches that (:meth:`Ledger.check` with ``expect_head``, ``leaktrace ledger verify
--expect-head``), or better a signed checkpoint of the ledger's Merkle tree
(:mod:`forensics.ledger.checkpoint`, ``leaktrace ledger checkpoint`` and ``ledger verify
--checkpoint``), whose leaves are the records' canonical content (:func:`record_content`).
:func:`export_table` writes the records with their hashes and the check as CSV or JSON.

Transactions
------------
Every change is one transaction that holds the ledger's write lock from its start (SQLite
``BEGIN IMMEDIATE``; PostgreSQL a per-site advisory lock, :mod:`forensics.ledger.db`), so
concurrent writers (``embed`` processes, the gateway) queue rather than interleave: each
reads the chain head only once it is the sole writer, and no two records share a
predecessor. :meth:`Ledger.record_export` registers the recipient (if new) and calls a function
that writes the output file inside the same transaction: the recipient and the row are
committed only if the file was written, and the file is removed if the row cannot be committed.

Key binding
-----------
A ledger's exports are made with one site key, whose fingerprint each record holds. Once the
ledger holds exports, an export under a key none of them was made with is refused
(:meth:`Ledger.check_key`, applied by :meth:`Ledger.record_export` inside its transaction)
unless the caller says ``new_key=True`` on purpose (a key rotation): a ledger silently split
between two keys traces each half only with its own key. An empty ledger accepts any key.

Readers (``Ledger(path, create=False)``) open the file read-only and never change it; a file
that is not a leaktrace ledger (empty, another SQLite database, not SQLite) is refused.

Ledgers of schema 1 (leaktrace 0.1.0, before ``ledger_id``) can still be read: their marks were
made with the unscoped site key, so :attr:`Ledger.ledger_id` is ``None`` and detection uses the
site key itself. No new exports are recorded in them.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import secrets
import socket
import sqlite3
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields as dataclass_fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from watermark.errors import LedgerError, LedgerKeyError

from .db import PostgresConnection, database_errors, is_server_url, parse_postgres_url
from .schema import create_statements

if TYPE_CHECKING:
    from watermark.keys import SiteKey

__all__ = ["Ledger", "ExportRecord", "ChainCheck", "PendingDelivery", "DeliveryRecord",
           "AccessEvent", "AccessRecord", "ACCESS_CONTENT_FIELDS", "log_access",
           "DELIVERY_STATES", "export_table", "EXPORT_FORMATS",
           "default_ledger_path", "ledger_exists", "normalise_recipient", "record_content",
           "LEDGER_ENV",
           "MAX_NAME_LENGTH"]

LEDGER_ENV = "LEAKTRACE_LEDGER"
SCHEMA_VERSION = 2
MAX_NAME_LENGTH = 1000
_GENESIS = "0" * 64
_LEDGER_TABLES = {"meta", "recipients", "exports"}
#: Fields of a ``deidentifications`` mapping that hold [source value, the copy's value]
_PSEUDONYM_FIELDS = ("patient_id", "patient_name", "study_uid", "series_uid", "sop_uid")

#: States of a row of ``deliveries``
DELIVERY_STATES = ("pending", "delivered", "failed")

# Fields covered by the record hash, per schema version (schema 1 had no recipient name).
_CONTENT_FIELDS = ("recipient_number", "recipient_name", "source_sop_uid", "source_path",
                   "source_sha256", "output_path", "output_sop_uid", "output_sha256", "payload",
                   "key_fingerprint", "created_utc")
_CONTENT_FIELDS_V1 = tuple(f for f in _CONTENT_FIELDS if f != "recipient_name")
#: Fields of an ``access`` row covered by its record hash (the rule of ``exports``).
ACCESS_CONTENT_FIELDS = ("who", "peer", "host", "action", "what", "outcome", "detail",
                         "created_utc")

# Characters a name must not contain besides categories Cc (controls: newline, tab, escape...)
# and Cs (lone surrogates): line/paragraph separators and the bidirectional embedding,
# override and isolate controls, which can make a name display as another.
_FORBIDDEN_IN_NAMES = frozenset("\u2028\u2029\u202a\u202b\u202c\u202d\u202e"
                                "\u2066\u2067\u2068\u2069")


@dataclass(frozen=True)
class ExportRecord:
    """One row of ``exports`` (see the module docstring for the fields).

    ``recipient_name`` is the name recorded with the export (covered by the hash chain).
    """

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


@dataclass(frozen=True)
class PendingDelivery:
    """An instance about to be sent over the network: the receiver's AE title, the route
    (``store``: forwarded from the PACS; ``move``, ``get``: retrieved for a recipient) and a
    free-text detail (e.g. the calling AE title)."""

    destination: str
    route: str
    detail: str = ""


@dataclass(frozen=True)
class DeliveryRecord:
    """One row of ``deliveries`` (see the module docstring)."""

    id: int
    export_id: int | None
    sop_instance_uid: str
    source_sop_uid: str
    destination: str
    recipient_name: str
    route: str
    status: str
    detail: str
    created_utc: str
    updated_utc: str

    def as_dict(self) -> dict:
        return asdict(self)


_DELIVERY_FIELDS = tuple(f.name for f in dataclass_fields(DeliveryRecord))


@dataclass(frozen=True)
class AccessEvent:
    """One access to record in ``access`` (see the module docstring).

    Parameters
    ----------
    who : str
        The operator (``--operator``), else the OS user; for a gateway transfer the gateway's
        AE title.
    action : str
        ``detect``, ``trace``, ``ledger list``, ``ledger export``, ``ledger audit``,
        ``ledger reidentify``, ``gateway transfer``.
    what : dict
        What was looked at, JSON-ready: ``{"leak_sha256": ...}``, ``{"export_ids": "1-40",
        "count": 40}``, or for a transfer the instance, study and export.
    outcome : str
    detail : str
        E.g. ``recipient 3``, the error message, the DIMSE status.
    peer : str
        The receiving AE title of a gateway transfer.
    host : str or None
        ``None``: this machine's name (:func:`socket.gethostname`).
    """

    who: str
    action: str
    what: dict
    outcome: str
    detail: str = ""
    peer: str = ""
    host: str | None = None


@dataclass(frozen=True)
class AccessRecord:
    """One row of ``access``; ``what`` is the canonical JSON text (:attr:`what_dict`)."""

    id: int
    who: str
    peer: str
    host: str
    action: str
    what: str
    outcome: str
    detail: str
    created_utc: str
    prev_hash: str
    record_hash: str

    @property
    def what_dict(self) -> dict:
        """``what`` parsed (``{}`` when a tampered row holds no JSON object)."""
        try:
            value = json.loads(self.what)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def as_dict(self) -> dict:
        return asdict(self)


_ACCESS_FIELDS = tuple(f.name for f in dataclass_fields(AccessRecord))


def default_ledger_path() -> Path | str:
    """Where the ledger lives when ``--ledger`` is not given (see the module docstring): a
    path, or the ``postgresql://`` URL that ``LEAKTRACE_LEDGER`` holds (as a str)."""
    env = os.environ.get(LEDGER_ENV)
    if env and is_server_url(env):
        return env
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "leaktrace" / "ledger.sqlite"


def ledger_exists(location: str | os.PathLike | None = None) -> bool:
    """Whether a ledger is there to open read-only: the file exists (a folder is no ledger),
    or the PostgreSQL database holds the URL's site. ``None``: :func:`default_ledger_path`.

    Raises
    ------
    LedgerError
        The PostgreSQL server cannot be reached (or psycopg is not installed).
    """
    where = location if location is not None else default_ledger_path()
    if not is_server_url(where):
        return Path(where).expanduser().is_file()
    db = PostgresConnection(parse_postgres_url(str(where)), read_only=True)
    try:
        return bool(db.site_exists())
    finally:
        db.close()


def normalise_recipient(name: str) -> str:
    """The canonical form of a recipient name: Unicode NFC, surrounding spaces removed.

    Two spellings that look the same (a precomposed "é" and "e" + combining accent) become
    one recipient.

    Raises
    ------
    LedgerError
        The name is empty (or only spaces), longer than :data:`MAX_NAME_LENGTH` characters,
        or contains a control character (newline, tab, escape...), a line or paragraph
        separator or a bidirectional override; the message names the character and its
        position.
    """
    if not isinstance(name, str):
        raise LedgerError(f"a recipient name must be text, got {type(name).__name__}")
    name = unicodedata.normalize("NFC", name)
    for i, ch in enumerate(name, start=1):
        if unicodedata.category(ch) in ("Cc", "Cs") or ch in _FORBIDDEN_IN_NAMES:
            label = unicodedata.name(ch, "control character")
            raise LedgerError(f"recipient name {name!r} contains U+{ord(ch):04X} ({label}) at "
                              f"position {i}; names must not contain control characters")
    name = name.strip()
    if not name:
        raise LedgerError("the recipient name is empty; give who receives the copies")
    if len(name) > MAX_NAME_LENGTH:
        raise LedgerError(f"the recipient name has {len(name)} characters; at most "
                          f"{MAX_NAME_LENGTH} are allowed")
    return name


def _canonical(content: dict, fields: tuple[str, ...]) -> str:
    """The canonical JSON of a record's content: the text its record hash covers."""
    return json.dumps({k: content[k] for k in fields}, sort_keys=True, separators=(",", ":"))


def _record_hash(prev_hash: str, content: dict, fields: tuple[str, ...] = _CONTENT_FIELDS) -> str:
    return hashlib.sha256((prev_hash + _canonical(content, fields)).encode()).hexdigest()


def record_content(record: ExportRecord, *, schema_version: int = SCHEMA_VERSION) -> bytes:
    """The canonical content of an export record, recomputed from its fields: the UTF-8 bytes of
    the JSON its record hash covers after the previous hash (see the module docstring), without
    ``id``, ``prev_hash`` or ``record_hash``.

    These are the leaves of the ledger's Merkle tree (:mod:`forensics.ledger.checkpoint`).

    Parameters
    ----------
    record : ExportRecord
    schema_version : int
        The ledger's (:attr:`Ledger.schema_version`); schema 1 records have no recipient name.
    """
    fields = _CONTENT_FIELDS if schema_version >= 2 else _CONTENT_FIELDS_V1
    return _canonical(asdict(record), fields).encode()


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class Ledger:
    """An open ledger. Use as a context manager, or call :meth:`close`.

    Parameters
    ----------
    path : path-like, str or None
        The SQLite file, or a PostgreSQL URL ``postgresql://user@host:port/db?site=NAME``
        (:mod:`forensics.ledger.db`; needs the ``postgresql`` extra); ``None`` for
        :func:`default_ledger_path`.
    create : bool
        Open for writing, creating the file (mode 0600) and its folder, or the site's schema
        and tables, if they do not exist. With ``create=False`` (detection, listing,
        verification) the file is opened read-only (SQLite ``mode=ro``; PostgreSQL
        read-only transactions) and never changed; a missing ledger is an error there, not
        a new empty one.
    ledger_id : str, optional
        For a ledger created now: the id to record instead of 16 random bytes (32 lowercase
        hex digits). Only for reproducible benchmarks and tests, whose marks must not change
        from run to run (:mod:`forensics.bench`); two real ledgers must never share an id.
        Ignored when the ledger exists.

    Attributes
    ----------
    path : Path or str
        The file; for PostgreSQL the URL without its password (a str).
    dialect : {"sqlite", "postgresql"}
    site : str
        PostgreSQL only: the site (schema) holding this ledger.
    ledger_id : str or None
        32 hex digits drawn when the ledger was created; ``None`` for a schema-1 ledger.
    schema_version : int

    Raises
    ------
    LedgerError
        The file is missing (and ``create`` is false), is not SQLite, is not a leaktrace ledger
        (an empty file or another database opened read-only, another application's database),
        is from a newer leaktrace, or is a schema-1 ledger opened for writing.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, create: bool = True,
                 ledger_id: str | None = None):
        where = path if path is not None else default_ledger_path()
        self.read_only = not create
        if ledger_id is not None and not re.fullmatch(r"[0-9a-f]{32}", ledger_id):
            raise LedgerError(f"ledger_id must be 32 lowercase hex digits, got {ledger_id!r}")
        self._new_ledger_id = ledger_id
        if is_server_url(where):
            self._open_postgres(str(where), create=create)
            return
        self.dialect = "sqlite"
        self.path = Path(where).expanduser()
        if self.path.is_dir():
            raise LedgerError(f"{self.path}: is a folder, not a ledger file")
        if not self.path.exists():
            if not create:
                raise LedgerError(f"{self.path}: no ledger there (give one with --ledger or "
                                  f"{LEDGER_ENV}; `leaktrace embed` creates it)")
            self._create_file()
        try:
            if create:
                self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            else:
                uri = self.path.resolve().as_uri() + "?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None)
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: cannot open the ledger ({exc})") from None
        try:
            self._db.execute("PRAGMA busy_timeout = 60000")
            if create:
                self._db.execute("PRAGMA foreign_keys = ON")
            self._check_or_initialise()
        except sqlite3.OperationalError as exc:  # locked, read-only folder, I/O error...
            self._db.close()
            raise LedgerError(f"{self.path}: cannot read the ledger ({exc})") from None
        except sqlite3.DatabaseError as exc:  # "file is not a database" and the like
            self._db.close()
            raise LedgerError(f"{self.path}: not a leaktrace ledger ({exc})") from None
        except LedgerError:
            self._db.close()
            raise

    def _open_postgres(self, url: str, *, create: bool) -> None:
        """Open (with ``create``: create) the site of a PostgreSQL database named by ``url``."""
        location = parse_postgres_url(url)
        self.dialect = "postgresql"
        self.path = location.display
        self.site = location.site
        self._db = PostgresConnection(location, read_only=not create)
        errors = database_errors()
        try:
            if not self._db.site_exists():
                if not create:
                    raise LedgerError(f"{self.path}: no ledger there (no site {self.site!r} in "
                                      "that database; `leaktrace embed` creates it)")
                self._db.create_site()
            self._check_or_initialise()
        except errors as exc:
            self._db.close()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LedgerError(f"{self.path}: cannot use the ledger ({first})") from None
        except BaseException:
            self._db.close()
            raise

    def _create_file(self) -> None:
        """Create the (empty) ledger file, readable and writable by its owner only."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise LedgerError(f"{self.path}: cannot create the ledger folder ({exc})") from None
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass  # another process created it a moment ago
        except OSError as exc:
            raise LedgerError(f"{self.path}: cannot create the ledger ({exc})") from None

    def _tables(self) -> set[str]:
        if self.dialect == "postgresql":
            return self._db.tables()
        return {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def _check_or_initialise(self) -> None:
        """Check that the file is a leaktrace ledger; initialise an empty file when writing."""
        tables = self._tables()
        if not tables and not self.read_only:
            with self._write() as db:
                if not self._tables():  # nobody initialised it meanwhile
                    for statement in create_statements(self.dialect):
                        db.execute(statement)
                    db.executemany("INSERT INTO meta VALUES (?, ?)", [
                        ("schema_version", str(SCHEMA_VERSION)),
                        ("ledger_id", self._new_ledger_id or secrets.token_hex(16)),
                        ("created_utc", _utc_now()),
                    ])
            tables = self._tables()
        if not _LEDGER_TABLES <= tables:
            what = "an empty file" if not tables else "tables " + ", ".join(sorted(tables))
            raise LedgerError(f"{self.path}: not a leaktrace ledger (it holds {what}, not the "
                              "leaktrace tables meta, recipients and exports)")
        meta = dict(self._db.execute("SELECT key, value FROM meta"))
        try:
            version = int(meta.get("schema_version", ""))
        except ValueError:
            raise LedgerError(f"{self.path}: not a leaktrace ledger (no schema version in "
                              "its meta table)") from None
        if version > SCHEMA_VERSION:
            raise LedgerError(f"{self.path}: ledger schema {version} is newer than this "
                              f"leaktrace understands ({SCHEMA_VERSION}); upgrade leaktrace")
        if version < 1:
            raise LedgerError(f"{self.path}: not a leaktrace ledger (schema version {version})")
        self.schema_version = version
        self.ledger_id = meta.get("ledger_id") if version >= 2 else None
        if version >= 2 and not self.ledger_id:
            raise LedgerError(f"{self.path}: the ledger has no ledger_id in its meta table; "
                              "marks cannot be tied to it")
        if version == 1 and not self.read_only:
            raise LedgerError(
                f"{self.path}: this ledger was made by leaktrace 0.1.0 (schema 1), whose marks "
                "are not tied to their ledger; it can still be read (detect, ledger list, "
                "ledger verify) but records no new exports: give a new ledger with --ledger "
                f"or {LEDGER_ENV}"
            )
        # tables added since schema 2 (source features, the gateway's deliveries, the access
        # log, de-identification): created in an older ledger on its first writable open
        for table, attribute in (("sources", "_has_sources"), ("deliveries", "_has_deliveries"),
                                 ("access", "_has_access"), ("deidentifications", "_has_deid")):
            present = table in tables
            if not present and not self.read_only:
                with self._write() as db:
                    for statement in create_statements(self.dialect, table):
                        db.execute(statement)
                present = True
            setattr(self, attribute, present)

    # -- plumbing -----------------------------------------------------------------------
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if self.read_only:
            raise LedgerError(f"{self.path}: opened read-only; nothing can be recorded")
        if self.dialect == "postgresql":
            self._db.begin_write()  # BEGIN + the site's advisory lock (forensics.ledger.db)
        else:
            self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def write_problem(self) -> str | None:
        """Why no export could be recorded in this ledger, or None when it can be: checked
        before any film is read and marked (``embed``), not once per file after.

        A SQLite ledger needs its file and its folder (the rollback journal) writable; a
        PostgreSQL site needs INSERT on its tables for this role and a database that is not
        read-only (a hot standby, ``default_transaction_read_only``).
        """
        if self.read_only:
            return "opened read-only"
        if self.dialect == "postgresql":
            inserts, read_only = self._db.execute(
                "SELECT has_table_privilege('exports', 'INSERT') AND "
                "has_table_privilege('recipients', 'INSERT'), "
                "current_setting('transaction_read_only')").fetchone()
            if read_only == "on":
                return "the database accepts no writes (read-only transactions)"
            return None if inserts else "this database role may not insert into its tables"
        for where in (self.path, self.path.parent):
            if not os.access(where, os.W_OK):
                return f"{where} is not writable"
        return None

    # -- recipients ---------------------------------------------------------------------
    def recipient_number(self, name: str, *, create: bool = False) -> int | None:
        """The number of the recipient called ``name``; with ``create``, register it if new.

        Numbers are assigned 1, 2, 3, ... in order of registration. The name is normalised
        first (:func:`normalise_recipient`). To register a recipient together with its first
        export, use :meth:`record_export`, which does both in one transaction.

        Raises
        ------
        LedgerError
            A name :func:`normalise_recipient` refuses, or ``create`` on a read-only ledger.
        """
        name = normalise_recipient(name)
        row = self._db.execute("SELECT number FROM recipients WHERE name = ?", (name,)).fetchone()
        if row or not create:
            return row[0] if row else None
        with self._write() as db:
            return self._number_in(db, name)

    @staticmethod
    def _number_in(db: sqlite3.Connection, name: str) -> int:
        """Inside a write transaction: the number of ``name`` (normalised), registering it."""
        row = db.execute("SELECT number FROM recipients WHERE name = ?", (name,)).fetchone()
        if row:
            return int(row[0])
        # numbered here rather than by the database: a PostgreSQL sequence would skip the
        # numbers of recipients rolled back with a failed export; SQLite gives max + 1 too
        row = db.execute("INSERT INTO recipients(number, name, created_utc) "
                         "SELECT COALESCE(MAX(number), 0) + 1, ?, ? FROM recipients "
                         "RETURNING number", (name, _utc_now())).fetchone()
        return int(row[0])

    def recipients(self) -> dict[int, str]:
        """All recipients as the recipients table names them: ``{number: name}``."""
        return dict(self._db.execute("SELECT number, name FROM recipients ORDER BY number"))

    def recorded_names(self) -> dict[int, set[str]]:
        """``{number: names}`` as recorded with each recipient's exports (hash-chained).

        Empty for a schema-1 ledger, which did not record names with its exports.
        """
        if self.schema_version < 2:
            return {}
        names: dict[int, set[str]] = {}
        for number, name in self._db.execute(
                "SELECT DISTINCT recipient_number, recipient_name FROM exports"):
            names.setdefault(number, set()).add(name)
        return names

    # -- exports ------------------------------------------------------------------------
    def record_export(self, write_output: Callable[[int], dict], *, recipient: str,
                      source_sop_uid: str, source_path: str, source_sha256: str,
                      key_fingerprint: str, new_key: bool = False,
                      delivery: PendingDelivery | None = None,
                      deidentification: dict | None = None) -> ExportRecord:
        """Register the recipient if new, write an output file for it and record it, all or
        nothing.

        Parameters
        ----------
        write_output : callable
            Called inside the transaction with the recipient's number; marks and writes the
            file atomically and returns a dict with ``output_path``, ``output_sop_uid``,
            ``output_sha256`` and ``payload`` (hex of the coded bits). If it raises, nothing is
            recorded and a recipient registered for this export is not kept. If the record
            cannot be committed, the file it wrote is removed.
        recipient : str
            The recipient's name (normalised with :func:`normalise_recipient`).
        source_sop_uid, source_path, source_sha256, key_fingerprint : str
            Recorded as given; ``key_fingerprint`` is the site key's.
        new_key : bool
            Accept a ``key_fingerprint`` that none of the ledger's exports has (a deliberate
            key change); without it such an export is refused, before ``write_output`` is
            called, unless the ledger has no exports (see :meth:`check_key`). Checked inside
            the transaction, so two writers with different keys cannot both start an empty
            ledger.
        delivery : PendingDelivery or None
            For a copy about to be sent over the network: a ``pending`` row of
            ``deliveries`` recorded in the same transaction as the export, so that no copy can
            be sent before both are committed (:meth:`delivery_of` finds it,
            :meth:`settle_delivery` closes it).
        deidentification : dict or None
            For a de-identified copy: ``{"options": [...], "mapping": {...}}``
            (:class:`forensics.deidentify.DeidResult`), a row of ``deidentifications``
            recorded in the same transaction.

        Returns
        -------
        ExportRecord

        Raises
        ------
        LedgerKeyError
            ``key_fingerprint`` is not one of the ledger's and ``new_key`` is false; nothing is
            written or recorded.
        LedgerError
            A bad recipient name, a read-only ledger, or the record could not be committed.
        Exception
            Whatever ``write_output`` raises.
        """
        name = normalise_recipient(recipient)
        out_path = None
        try:
            with self._write() as db:
                self._check_fingerprint(key_fingerprint, new_key=new_key)
                number = self._number_in(db, name)
                written = write_output(number)
                out_path = written["output_path"]
                prev = db.execute("SELECT record_hash FROM exports ORDER BY id DESC LIMIT 1").fetchone()
                prev_hash = prev[0] if prev else _GENESIS
                content = dict(recipient_number=number, recipient_name=name,
                               source_sop_uid=source_sop_uid, source_path=source_path,
                               source_sha256=source_sha256, output_path=str(out_path),
                               output_sop_uid=written["output_sop_uid"],
                               output_sha256=written["output_sha256"], payload=written["payload"],
                               key_fingerprint=key_fingerprint, created_utc=_utc_now())
                record_hash = _record_hash(prev_hash, content)
                row = db.execute(
                    f"INSERT INTO exports({', '.join(_CONTENT_FIELDS)}, prev_hash, record_hash) "
                    f"VALUES ({', '.join('?' * (len(_CONTENT_FIELDS) + 2))}) RETURNING id",
                    [content[k] for k in _CONTENT_FIELDS] + [prev_hash, record_hash],
                ).fetchone()
                export_id = int(row[0])
                if delivery is not None:
                    self._insert_delivery(db, delivery, export_id=export_id,
                                          sop_instance_uid=written["output_sop_uid"],
                                          source_sop_uid=source_sop_uid, recipient_name=name)
                if deidentification is not None:
                    db.execute("INSERT INTO deidentifications VALUES (?, ?, ?, ?)",
                               (export_id, json.dumps(list(deidentification["options"])),
                                json.dumps(deidentification["mapping"], sort_keys=True),
                                _utc_now()))
        except BaseException as exc:
            # written but not recorded: an untraceable copy, removed. A Ctrl-C can also land
            # just after the COMMIT, before the block is left: the row is then in the ledger
            # and its file must stay (asked of the database, not assumed).
            if out_path is not None and not self._recorded(str(out_path), written):
                with contextlib.suppress(OSError):
                    os.unlink(out_path)
            if isinstance(exc, database_errors()):
                raise LedgerError(f"{self.path}: could not record the export ({exc}); "
                                  "the output file was removed") from None
            raise
        return self.export(export_id)

    def _recorded(self, output_path: str, written: dict) -> bool:
        """Whether an export of this output (path, SOP Instance UID, SHA-256) is committed."""
        try:
            if self._db.in_transaction:  # not committed: what it wrote is undone here
                self._db.execute("ROLLBACK")
                return False
            row = self._db.execute(
                "SELECT 1 FROM exports WHERE output_path = ? AND output_sop_uid = ? AND "
                "output_sha256 = ?", (output_path, written["output_sop_uid"],
                                      written["output_sha256"])).fetchone()
        except (*database_errors(), sqlite3.Error, KeyError):
            return False
        return row is not None

    def _select(self) -> str:
        name = "e.recipient_name" if self.schema_version >= 2 else "r.name"
        return (f"SELECT e.id, e.recipient_number, {name}, e.source_sop_uid, e.source_path, "
                "e.source_sha256, e.output_path, e.output_sop_uid, e.output_sha256, e.payload, "
                "e.key_fingerprint, e.created_utc, e.prev_hash, e.record_hash "
                "FROM exports e LEFT JOIN recipients r ON r.number = e.recipient_number")

    def export(self, export_id: int) -> ExportRecord:
        row = self._db.execute(self._select() + " WHERE e.id = ?", (export_id,)).fetchone()
        if row is None:
            raise LedgerError(f"{self.path}: no export with id {export_id}")
        return ExportRecord(*row)

    def exports(self) -> list[ExportRecord]:
        """Every export, oldest first."""
        return [ExportRecord(*row) for row in self._db.execute(self._select() + " ORDER BY e.id")]

    def exports_after(self, export_id: int) -> list[ExportRecord]:
        """The exports recorded after the one with id ``export_id`` (0: every export), oldest
        first."""
        return [ExportRecord(*row) for row in self._db.execute(
            self._select() + " WHERE e.id > ? ORDER BY e.id", (export_id,))]

    def last_export_id(self) -> int:
        """The id of the newest export, 0 when there is none."""
        return int(self._db.execute("SELECT COALESCE(MAX(id), 0) FROM exports").fetchone()[0])

    def export_by_output_uid(self, sop_instance_uid: str) -> ExportRecord | None:
        """The export whose marked copy has this SOP Instance UID, if any."""
        row = self._db.execute(self._select() + " WHERE e.output_sop_uid = ? ORDER BY e.id",
                               (str(sop_instance_uid),)).fetchone()
        return ExportRecord(*row) if row else None

    def export_by_output_path(self, path: str | os.PathLike) -> ExportRecord | None:
        """The newest export written to this output path (absolute, as recorded), if any."""
        row = self._db.execute(self._select() + " WHERE e.output_path = ? ORDER BY e.id DESC",
                               (str(Path(path).resolve()),)).fetchone()
        return ExportRecord(*row) if row else None

    def export_by_source_path(self, path: str | os.PathLike) -> ExportRecord | None:
        """The newest export made from the file at this path (absolute, as recorded), if any:
        a file that must not be replaced while the ledger names it as a copy's source."""
        row = self._db.execute(self._select() + " WHERE e.source_path = ? ORDER BY e.id DESC",
                               (str(Path(path).resolve()),)).fetchone()
        return ExportRecord(*row) if row else None

    def exports_of_source(self, source_sha256: str) -> list[ExportRecord]:
        """Every export made from the source file with this SHA-256, oldest first."""
        return [ExportRecord(*row) for row in self._db.execute(
            self._select() + " WHERE e.source_sha256 = ? ORDER BY e.id", (source_sha256,))]

    # -- de-identified copies ------------------------------------------------------------
    def deidentification_of(self, export_id: int) -> dict | None:
        """``{"export_id", "options", "mapping", "created_utc"}`` of a de-identified export,
        or None (an export that was not de-identified, or a ledger from before)."""
        if not self._has_deid:
            return None
        row = self._db.execute("SELECT export_id, options, mapping, created_utc FROM "
                               "deidentifications WHERE export_id = ?", (export_id,)).fetchone()
        return None if row is None else {"export_id": row[0], "options": json.loads(row[1]),
                                         "mapping": json.loads(row[2]), "created_utc": row[3]}

    def reidentify(self, value: str) -> list[dict]:
        """The de-identified exports whose copy carries ``value`` (a pseudonymous Patient ID
        or Name, or a Study, Series or SOP Instance UID of the copy), oldest first, each as
        :meth:`deidentification_of` gives it plus ``recipient_name`` and ``output_sop_uid``."""
        if not self._has_deid:
            return []
        value = value.strip()
        found = []
        for (export_id,) in self._db.execute("SELECT export_id FROM deidentifications "
                                             "ORDER BY export_id"):
            row = self.deidentification_of(export_id)
            record = self.export(export_id)
            copies = {row["mapping"].get(f, ["", ""])[1] for f in _PSEUDONYM_FIELDS}
            if value in copies or value == record.output_sop_uid:
                found.append({**row, "recipient_name": record.recipient_name,
                              "output_sop_uid": record.output_sop_uid})
        return found

    # -- deliveries (what a DICOM node sent) ---------------------------------------------
    @staticmethod
    def _insert_delivery(db: sqlite3.Connection, delivery: PendingDelivery, *,
                         export_id: int | None, sop_instance_uid: str, source_sop_uid: str,
                         recipient_name: str) -> int:
        now = _utc_now()
        row = db.execute(
            "INSERT INTO deliveries(export_id, sop_instance_uid, source_sop_uid, destination, "
            "recipient_name, route, status, detail, created_utc, updated_utc) "
            "VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?) RETURNING id",
            (export_id, sop_instance_uid, source_sop_uid, delivery.destination, recipient_name,
             delivery.route, delivery.detail, now, now)).fetchone()
        return int(row[0])

    def record_unmarked_delivery(self, delivery: PendingDelivery, *, sop_instance_uid: str,
                                 recipient: str) -> int:
        """Record, as ``pending``, an instance about to be sent unmarked (a modality the
        gateway's configuration passes unmarked, such as a structured report). Returns the
        delivery's id for :meth:`settle_delivery`.

        Raises
        ------
        LedgerError
            A read-only ledger or a bad recipient name.
        """
        name = normalise_recipient(recipient)
        with self._write() as db:
            return self._insert_delivery(db, delivery, export_id=None,
                                         sop_instance_uid=str(sop_instance_uid),
                                         source_sop_uid=str(sop_instance_uid),
                                         recipient_name=name)

    def delivery_of(self, export_id: int) -> DeliveryRecord | None:
        """The newest delivery row of one export, or None (an export written to a file)."""
        if not self._has_deliveries:
            return None
        row = self._db.execute(f"SELECT {', '.join(_DELIVERY_FIELDS)} FROM deliveries "
                               "WHERE export_id = ? ORDER BY id DESC LIMIT 1",
                               (export_id,)).fetchone()
        return DeliveryRecord(*row) if row else None

    def settle_delivery(self, delivery_id: int, status: str, detail: str = "", *,
                        access: AccessEvent | None = None) -> None:
        """Set a ``pending`` delivery to ``delivered`` or ``failed`` (with the DIMSE status
        or the reason in ``detail``).

        Parameters
        ----------
        delivery_id : int
        status : {"delivered", "failed"}
        detail : str
        access : AccessEvent, optional
            The transfer as a row of the access log, recorded in the same transaction (the
            gateway's ``gateway transfer`` rows).

        Raises
        ------
        LedgerError
            Unknown state, no such pending delivery, or a read-only ledger.
        """
        if status not in DELIVERY_STATES[1:]:
            raise LedgerError(f"a delivery is settled as delivered or failed, not {status!r}")
        with self._write() as db:
            cur = db.execute("UPDATE deliveries SET status = ?, detail = ?, updated_utc = ? "
                             "WHERE id = ? AND status = 'pending'",
                             (status, detail, _utc_now(), delivery_id))
            if cur.rowcount != 1:
                raise LedgerError(f"{self.path}: no pending delivery with id {delivery_id}")
            if access is not None:
                self._append_access(db, access)

    # -- the access log (who looked) ------------------------------------------------------
    @staticmethod
    def _append_access(db: sqlite3.Connection, event: AccessEvent) -> int:
        """Inside a write transaction: chain ``event`` after the newest access row."""
        prev = db.execute("SELECT record_hash FROM access ORDER BY id DESC LIMIT 1").fetchone()
        prev_hash = prev[0] if prev else _GENESIS
        content = dict(who=str(event.who), peer=str(event.peer),
                       host=event.host if event.host is not None else socket.gethostname(),
                       action=str(event.action),
                       what=json.dumps(event.what, sort_keys=True, separators=(",", ":"),
                                       ensure_ascii=False),
                       outcome=str(event.outcome), detail=str(event.detail),
                       created_utc=_utc_now())
        record_hash = _record_hash(prev_hash, content, ACCESS_CONTENT_FIELDS)
        row = db.execute(
            f"INSERT INTO access({', '.join(ACCESS_CONTENT_FIELDS)}, prev_hash, record_hash) "
            f"VALUES ({', '.join('?' * (len(ACCESS_CONTENT_FIELDS) + 2))}) RETURNING id",
            [content[k] for k in ACCESS_CONTENT_FIELDS] + [prev_hash, record_hash]).fetchone()
        return int(row[0])

    def record_access(self, event: AccessEvent) -> AccessRecord:
        """Append one row to the access log, in a transaction of its own.

        Readers record their accesses through :func:`log_access`, which opens a second,
        writable connection for this row only.

        Raises
        ------
        LedgerError
            A read-only ledger, or the row could not be committed (a file or folder the
            caller cannot write, a full disk).
        """
        try:
            with self._write() as db:
                access_id = self._append_access(db, event)
        except database_errors() as exc:
            raise LedgerError(f"{self.path}: cannot write the access log ({exc})") from None
        return self.accesses(since=access_id - 1)[0]

    def accesses(self, *, since: int = 0) -> list[AccessRecord]:
        """The access log's rows with an id above ``since`` (0: all), oldest first; empty for
        a ledger from before the access log opened read-only."""
        if not self._has_access:
            return []
        return [AccessRecord(*row) for row in self._db.execute(
            f"SELECT {', '.join(_ACCESS_FIELDS)} FROM access WHERE id > ? ORDER BY id",
            (since,))]

    def check_access(self) -> ChainCheck:
        """Verify the access log's own hash chain, as :meth:`check` does the exports'.

        Problems name the access row (its id): edited, deleted, inserted, reordered (see
        :meth:`verify`). The same limit applies: without a head noted elsewhere, deleting the
        newest rows or rewriting every hash from some row on is not seen.

        Returns
        -------
        ChainCheck
            ``n_records`` and ``head_hash`` are the access log's.
        """
        records = self.accesses()
        problems = _chain_problems(records, ACCESS_CONTENT_FIELDS, noun="access")
        head = records[-1].record_hash if records else _GENESIS
        return ChainCheck(ok=not problems, problems=problems, n_records=len(records),
                          head_hash=head, ledger_id=self.ledger_id)

    def deliveries(self, status: str | None = None) -> list[DeliveryRecord]:
        """Every delivery row (or those in one state), oldest first."""
        if not self._has_deliveries:
            return []
        sql = f"SELECT {', '.join(_DELIVERY_FIELDS)} FROM deliveries"
        args: tuple = ()
        if status is not None:
            sql, args = sql + " WHERE status = ?", (status,)
        return [DeliveryRecord(*row) for row in self._db.execute(sql + " ORDER BY id", args)]

    # -- source features (for finding the film a leak shows) -----------------------------
    def store_source_features(self, source_sha256: str, features: bytes, *,
                              replace: bool = False) -> None:
        """Keep the features of a source film (:mod:`forensics.register`), once per source
        (``replace``: overwrite those kept, e.g. by an older version). Not part of the hash
        chain: they are derived from the source file, whose SHA-256 is, and a trace checks
        the original against that hash before using it."""
        then = ("DO UPDATE SET features = excluded.features, created_utc = excluded.created_utc"
                if replace else "DO NOTHING")
        with self._write() as db:
            db.execute("INSERT INTO sources(source_sha256, features, created_utc) "
                       f"VALUES (?, ?, ?) ON CONFLICT (source_sha256) {then}",
                       (source_sha256, bytes(features), _utc_now()))

    def source_features_of(self, source_sha256: str) -> bytes | None:
        """The features kept for one source file, or None."""
        if not self._has_sources:
            return None
        row = self._db.execute("SELECT features FROM sources WHERE source_sha256 = ?",
                               (source_sha256,)).fetchone()
        return bytes(row[0]) if row is not None else None

    def sources_with_features(self) -> set[str]:
        """SHA-256 of every source file whose features are kept (whatever their version)."""
        if not self._has_sources:
            return set()
        return {sha for (sha,) in self._db.execute("SELECT source_sha256 FROM sources")}

    def source_features(self) -> dict[str, bytes]:
        """``{source SHA-256: features}`` for every exported source that has them."""
        if not self._has_sources:
            return {}
        return {sha: bytes(blob) for sha, blob in self._db.execute(
            "SELECT s.source_sha256, s.features FROM sources s WHERE EXISTS "
            "(SELECT 1 FROM exports e WHERE e.source_sha256 = s.source_sha256)")}

    def recipients_without_features(self) -> set[int]:
        """Numbers of the recipients with an export whose source file has no features kept
        (exports made before leaktrace 0.2): ``trace`` cannot tell whether a leak shows one
        of their films, so it does not hold a mark found on another film against them."""
        condition = ("NOT EXISTS (SELECT 1 FROM sources s WHERE s.source_sha256 = "
                     "e.source_sha256)" if self._has_sources else "1 = 1")
        return {int(n) for (n,) in self._db.execute(
            f"SELECT DISTINCT e.recipient_number FROM exports e WHERE {condition}")}

    def key_fingerprints(self) -> set[str]:
        """Fingerprints of the (site) keys that made the recorded exports."""
        return {r[0] for r in self._db.execute("SELECT DISTINCT key_fingerprint FROM exports")}

    def key_usage(self) -> dict[str, int]:
        """``{fingerprint: number of exports}`` of the site keys that made the recorded
        exports, in the order each key was first used (empty for an empty ledger)."""
        return dict(self._db.execute(
            "SELECT key_fingerprint, COUNT(*) FROM exports GROUP BY key_fingerprint "
            "ORDER BY MIN(id)"))

    def export_count(self) -> int:
        """The number of export records."""
        return int(self._db.execute("SELECT COUNT(*) FROM exports").fetchone()[0])

    def check_key(self, key: SiteKey, *, new_key: bool = False) -> bool:
        """Check that ``key`` may make exports recorded in this ledger.

        A ledger with no exports accepts any key. A ledger with exports accepts a key that
        made at least one of them, and a key none of them was made with only with
        ``new_key`` (a deliberate change of site key: from then on the ledger holds two key
        fingerprints, and a leak is traced only with the key that marked it). This is the
        check :func:`forensics.export.export_film`, :func:`forensics.export.export_many`
        and ``leaktrace embed`` apply before anything is written; :meth:`record_export`
        repeats it inside its transaction.

        Parameters
        ----------
        key : SiteKey
            The site key (not a scoped one: the ledger records the site key's fingerprint).
            Its :attr:`~watermark.keys.SiteKey.path`, when set, is named in the message.
        new_key : bool
            Accept a key the ledger has not seen.

        Returns
        -------
        bool
            True when the key is new to a ledger that holds exports (accepted because of
            ``new_key``); False when the ledger knows it or has no exports.

        Raises
        ------
        LedgerKeyError
            The ledger holds exports, none made with ``key``, and ``new_key`` is false. The
            message names the ledger, the key file, the key's fingerprint and the ledger's
            fingerprints (with their numbers of exports), and how to fix the call.
        """
        return self._check_fingerprint(key.fingerprint, new_key=new_key, key_path=key.path)

    def _check_fingerprint(self, fingerprint: str, *, new_key: bool,
                           key_path: str | os.PathLike | None = None) -> bool:
        """:meth:`check_key` on a fingerprint (also inside a write transaction)."""
        any_export, seen = self._db.execute(
            "SELECT EXISTS(SELECT 1 FROM exports), "
            "EXISTS(SELECT 1 FROM exports WHERE key_fingerprint = ?)", (fingerprint,)).fetchone()
        if not any_export or seen:
            return False
        if new_key:
            return True
        usage = self.key_usage()
        given = f"the key given ({key_path}) has" if key_path is not None else "the key given has"
        raise LedgerKeyError(
            f"the ledger at {self.path} has {_key_usage_text(usage)}; {given} fingerprint "
            f"{fingerprint}, which made none of them, and a leak is traced only with the key "
            f"that marked it. Point --key (or LEAKTRACE_KEY) at the key file of fingerprint "
            f"{_one_of(usage)}, or give --new-key (new_key=True in the Python API) to change "
            "the site key on purpose (the ledger then holds this key's fingerprint too); nothing "
            "was exported",
            ledger_path=str(self.path), key_fingerprint=fingerprint,
            key_path=str(key_path) if key_path is not None else None, ledger_fingerprints=usage)

    def copy_from(self, source: Ledger) -> dict:
        """Copy every row of ``source`` into this empty ledger, verbatim: the ledger id, the
        recipients and their numbers, the export records with their ids and hashes, the
        deliveries, the access log and the source features (a migration, e.g. from a SQLite
        file to a PostgreSQL site: ``leaktrace ledger migrate``). One transaction: all or
        nothing. The copy keeps the ledger's identity, so its marks, checkpoints and noted
        chain heads stay valid for it; retire the source afterwards (two writable copies of
        one ledger would fork its chain).

        Parameters
        ----------
        source : Ledger
            Any ledger of schema 2 (opened read-only is enough); an older layout is read as
            it is (missing tables copy as empty).

        Returns
        -------
        dict
            ``{"exports": n, "recipients": n, "deliveries": n, "access": n, "sources": n}``,
            rows copied per table.

        Raises
        ------
        LedgerError
            This ledger is read-only or not empty (it holds recipients, exports or access
            rows), or ``source`` is a schema-1 ledger (its marks are not tied to a ledger id).
        """
        if source.schema_version < 2:
            raise LedgerError(f"{source.path}: a schema-1 ledger (leaktrace 0.1.0) cannot be "
                              "migrated; it can still be read where it is")
        from .schema import TABLE_NAMES

        present = {"deliveries": source._has_deliveries, "access": source._has_access,
                   "sources": source._has_sources,
                   "deidentifications": source._has_deid}
        copied = {}
        with self._write() as db:
            if any(db.execute(f"SELECT EXISTS(SELECT 1 FROM {t})").fetchone()[0]
                   for t in ("recipients", "exports", "access")):
                raise LedgerError(f"{self.path}: not an empty ledger; a ledger is migrated into "
                                  "a new file or site only")
            db.execute("DELETE FROM meta")
            for table in ("meta", "recipients", "exports", "deliveries", "access", "sources",
                          "deidentifications"):
                if not present.get(table, True):
                    copied[table] = 0
                    continue
                columns = [c.name for c in TABLE_NAMES[table].columns]
                rows = source._db.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
                if table == "meta":
                    rows = [(k, str(SCHEMA_VERSION) if k == "schema_version" else v)
                            for k, v in rows]
                if table == "sources":
                    rows = [(sha, bytes(blob), when) for sha, blob, when in rows]
                if rows:
                    db.executemany(f"INSERT INTO {table}({', '.join(columns)}) VALUES "
                                   f"({', '.join('?' * len(columns))})", rows)
                copied[table] = len(rows)
            if self.dialect == "postgresql":  # identity counters past the copied ids
                for table in ("exports", "deliveries", "access"):
                    db.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                               f"COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)")
        self.ledger_id = source.ledger_id
        copied.pop("meta")
        return copied

    def verify(self) -> list[str]:
        """Check the hash chain and the recipients' names. Returns a list of problems, empty
        when everything is intact (:meth:`check` also gives the chain head).

        Each problem names the record (its id) and what is wrong:

        * content that does not match the record's own hash: the record was edited;
        * a record whose previous-hash link does not match the record before it. The link
          says which record it was chained to when it was written, so the problem says what
          happened: the record it followed is gone (ids missing: deleted), it followed an
          earlier record and others now stand between them (inserted), it followed a record
          that now comes after it (reordered), or it followed no record still in the ledger
          while no id is missing (the record before it was edited and its own hash recomputed
          to hide it, or records were deleted and the rest renumbered).

        Each recipient whose name in the recipients table differs from the name recorded with
        its exports (renamed, or swapped with another) is named too, as is a recipient missing
        from the table.

        The chain is not keyed: whoever can write the file can recompute every hash after
        the records it changed. Deleting the newest records (tail truncation), rewriting the
        chain from some record on, or appending forged records is therefore only detected
        against a chain head kept elsewhere (:meth:`check` with ``expect_head``).
        """
        return self.check().problems

    def check(self, expect_head: str | None = None) -> ChainCheck:
        """Verify the ledger (:meth:`verify`) and report the head of its hash chain.

        Parameters
        ----------
        expect_head : str, optional
            A chain head (64 hex digits) noted earlier, for example from
            ``leaktrace ledger verify`` or ``ledger export``, and kept outside the ledger
            (printed, e-mailed, in another system). It must still be the hash of a record in
            the chain; records added after it are fine. If it is not, the newest records up
            to and including it were deleted (tail truncation) or the chain was rewritten
            since the head was noted, and a problem says so.

        Returns
        -------
        ChainCheck

        Raises
        ------
        LedgerError
            ``expect_head`` is not 64 hexadecimal digits.
        """
        fields = _CONTENT_FIELDS if self.schema_version >= 2 else _CONTENT_FIELDS_V1
        records = self.exports()
        problems = _chain_problems(records, fields)
        problems += self._name_problems()
        head = records[-1].record_hash if records else _GENESIS
        anchor = None
        if expect_head is not None:
            wanted = expect_head.strip().lower()
            if len(wanted) != 64 or any(c not in "0123456789abcdef" for c in wanted):
                raise LedgerError(f"expected chain head {expect_head!r} is not a SHA-256 "
                                  "(64 hexadecimal digits)")
            position = {r.record_hash: i for i, r in enumerate(records)}
            position.setdefault(_GENESIS, -1)
            if wanted in position:
                i = position[wanted]
                anchor = {"head_hash": wanted, "found": True,
                          "export_id": records[i].id if i >= 0 else None,
                          "records_since": len(records) - 1 - i}
            else:
                anchor = {"head_hash": wanted, "found": False, "export_id": None,
                          "records_since": None}
                problems.append(f"chain head {wanted} (given as expected) is not in the "
                                "ledger: the newest records were deleted (tail truncation) or "
                                "the chain was rewritten since that head was noted")
        return ChainCheck(ok=not problems, problems=problems, n_records=len(records),
                          head_hash=head, ledger_id=self.ledger_id, anchor=anchor)

    def _name_problems(self) -> list[str]:
        problems = []
        table = self.recipients()
        for number, recorded in sorted(self.recorded_names().items()):
            shown = ", ".join(repr(n) for n in sorted(recorded))
            if number not in table:
                problems.append(f"recipient {number}: exported to as {shown}, but missing from "
                                "the recipients table (deleted)")
            elif recorded != {table[number]}:
                problems.append(f"recipient {number}: the recipients table names it "
                                f"{table[number]!r}, but its exports were recorded for {shown} "
                                "(renamed or swapped)")
        return problems


def _key_usage_text(usage: dict[str, int]) -> str:
    """``"3 exports made with key 1a2b..."``, or the same for each of several keys."""
    def one(fp: str, n: int) -> str:
        return f"{n} export{'s' if n != 1 else ''} made with key {fp}"
    return " and ".join(one(fp, n) for fp, n in usage.items())


def _one_of(usage: dict[str, int]) -> str:
    """The ledger's fingerprints as a choice: ``"a"``, ``"a or b"``."""
    return " or ".join(usage)


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith("s") else "s")


def _ids(ids: list[int], noun: str = "export") -> str:
    return (f"{noun} " if len(ids) == 1 else f"{_plural(noun)} ") + ", ".join(map(str, ids))


def _chain_problems(records: list, fields: tuple[str, ...], *, noun: str = "export") -> list[str]:
    """The hash-chain problems of ``records`` (oldest first), each naming a record.

    ``records`` have ``id``, ``prev_hash``, ``record_hash`` and ``fields``: export records,
    or access rows (``noun="access"``, which then names them in the problems).
    """
    problems = []
    index_of = {}
    for i, rec in enumerate(records):
        index_of.setdefault(rec.record_hash, i)
    prev = None
    for i, rec in enumerate(records):
        content = {k: getattr(rec, k) for k in fields}
        expected = prev.record_hash if prev is not None else _GENESIS
        if rec.prev_hash != expected:
            where = f"{noun} {prev.id}" if prev is not None else "the start of the ledger"
            lead = f"{noun} {rec.id}: does not follow the record before it ({where}): "
            j = index_of.get(rec.prev_hash)
            if rec.prev_hash == _GENESIS:
                problems.append(lead + f"it was recorded as the ledger's first {noun}, so "
                                f"{_ids([r.id for r in records[:i]], noun)} were inserted before it "
                                "or it was moved (reordered)")
            elif j is not None and j < i:
                between = [r.id for r in records[j + 1:i]]
                verb = "stands" if len(between) == 1 else "stand"
                problems.append(lead + f"it was recorded right after {noun} {records[j].id}; "
                                f"{_ids(between, noun)} now {verb} between them (inserted there, or "
                                "moved: reordered)")
            elif j is not None:
                problems.append(lead + f"it was recorded right after {noun} {records[j].id}, "
                                "which now comes after it (records reordered)")
            else:
                first = prev.id + 1 if prev is not None else 1
                missing = list(range(first, rec.id))
                if missing:
                    problems.append(lead + f"the record it was chained to is gone: "
                                    f"{_ids(missing, noun)} deleted")
                elif prev is not None:
                    problems.append(lead + f"{noun} {prev.id} was changed after it was recorded "
                                    "and its own hash recomputed to hide it (edited), or records "
                                    f"between {_plural(noun)} {prev.id} and {rec.id} were deleted and "
                                    "the rest renumbered")
                else:
                    problems.append(lead + "the records before it were deleted and the rest "
                                    "renumbered, or it was edited")
        if _record_hash(rec.prev_hash, content, fields) != rec.record_hash:
            problems.append(f"{noun} {rec.id}: content does not match its hash (edited)")
        prev = rec
    return problems


@dataclass(frozen=True)
class ChainCheck:
    """The result of :meth:`Ledger.check`.

    Attributes
    ----------
    ok : bool
        No problem found.
    problems : list of str
        Each names the record or recipient concerned (see :meth:`Ledger.verify`).
    n_records : int
        Export records in the ledger.
    head_hash : str
        The newest record's hash (64 hex digits; 64 zeros for an empty ledger). Note it
        outside the ledger: a later check against it (``expect_head``) detects the deletion
        of the newest records, which the chain alone cannot.
    ledger_id : str or None
    anchor : dict or None
        With ``expect_head``: ``head_hash``, ``found`` (bool), ``export_id`` (the record it
        names, ``None`` for the empty ledger's head or when not found) and ``records_since``
        (records added after it).
    """

    ok: bool
    problems: list
    n_records: int
    head_hash: str
    ledger_id: str | None = None
    anchor: dict | None = None

    def as_dict(self) -> dict:
        return asdict(self)


#: Formats of :func:`export_table`.
EXPORT_FORMATS = ("csv", "json")


def export_table(ledger: Ledger, fmt: str, *,
                 expect_head: str | None = None) -> tuple[str, ChainCheck]:
    """Every export record of ``ledger``, with its hashes, the ledger id and a chain check, as
    text to hand on (an auditor, a court, a spreadsheet).

    Nothing secret is in it: the ledger holds key fingerprints, never the key.

    Parameters
    ----------
    ledger : Ledger
    fmt : {"csv", "json"}
        ``"json"``: one object with ``ledger`` (path), ``ledger_id``, ``schema_version``,
        ``exported_utc``, ``leaktrace_version``, ``chain`` (:meth:`ChainCheck.as_dict`:
        ``ok``, ``problems``, ``n_records``, ``head_hash``...), ``recipients`` (``number``,
        ``name``) and ``exports`` (every :class:`ExportRecord` field, ``prev_hash`` and
        ``record_hash`` included, oldest first).
        ``"csv"``: RFC 4180 CSV (``csv`` module, UTF-8), first some lines starting with
        ``#`` (ledger, ledger id, chain check, head hash; skip them with e.g.
        ``pandas.read_csv(..., comment="#")``), then a header row and one row per export:
        ``ledger_id`` and every :class:`ExportRecord` field. Values are written verbatim, so
        the record hashes can be recomputed from the file; a spreadsheet may interpret a
        recipient name starting with ``=`` as a formula.
    expect_head : str, optional
        Passed to :meth:`Ledger.check`.

    Returns
    -------
    text : str
    check : ChainCheck

    Raises
    ------
    LedgerError
        ``fmt`` is not one of :data:`EXPORT_FORMATS`, or a bad ``expect_head``.
    """
    if fmt not in EXPORT_FORMATS:
        raise LedgerError(f"unknown export format {fmt!r}; use one of "
                          f"{', '.join(EXPORT_FORMATS)}")
    from watermark import __version__

    check = ledger.check(expect_head)
    records = ledger.exports()
    if fmt == "json":
        doc = {"ledger": str(ledger.path), "ledger_id": ledger.ledger_id,
               "schema_version": ledger.schema_version, "exported_utc": _utc_now(),
               "leaktrace_version": __version__, "chain": check.as_dict(),
               "recipients": [{"number": n, "name": name}
                              for n, name in ledger.recipients().items()],
               "exports": [r.as_dict() for r in records]}
        return json.dumps(doc, indent=1, ensure_ascii=False) + "\n", check
    buf = io.StringIO()
    state = "intact" if check.ok else f"{len(check.problems)} problem(s)"
    buf.write(f"# leaktrace ledger export, leaktrace {__version__}, {_utc_now()}\n")
    buf.write(f"# ledger: {_one_line(str(ledger.path))}\n")
    buf.write(f"# ledger_id: {ledger.ledger_id}\n")
    buf.write(f"# chain: {state}; n_records: {check.n_records}; head_hash: {check.head_hash}\n")
    for problem in check.problems:
        buf.write(f"# problem: {_one_line(problem)}\n")
    columns = ["ledger_id"] + [f.name for f in dataclass_fields(ExportRecord)]
    # every field quoted: a "#" in a path or a name is then data, also for readers that skip
    # the metadata lines as comments (pandas.read_csv(path, comment="#"))
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\r\n",
                            quoting=csv.QUOTE_ALL)
    writer.writeheader()
    for r in records:
        writer.writerow({"ledger_id": ledger.ledger_id, **r.as_dict()})
    return buf.getvalue(), check


def _one_line(text: str) -> str:
    """``text`` safe for a ``#`` comment line (a tampered ledger can hold any character)."""
    return text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text


def log_access(path: str | os.PathLike | None, event: AccessEvent) -> str | None:
    """Record ``event`` in the access log of the ledger at ``path``, for a reader.

    ``detect``, ``trace``, ``ledger list`` and ``ledger export`` read the ledger through a
    read-only connection, which never changes it. The access row is written afterwards
    through a second connection opened for writing, in a transaction of its own that holds
    nothing else; the exports are never written by it. The ledger must exist: it is never
    created here (nor is a missing folder).

    An investigator may be allowed to read the ledger but not to write it (a copy on a
    read-only share, a file of another user). The query must still answer then, so a failure
    to record is returned, not raised. A file that is not a leaktrace ledger is left as it is
    (checked read-only first). Like any writable open, it adds the tables an older ledger
    lacks (``access``, and ``deliveries`` or ``sources`` if missing), never a row to them.

    Parameters
    ----------
    path : path-like, str or None
        The ledger (a file, or a ``postgresql://`` URL); ``None`` for
        :func:`default_ledger_path`.
    event : AccessEvent

    Returns
    -------
    str or None
        ``None`` when recorded, else one line saying why the access was not recorded.
    """
    where = path if path is not None else default_ledger_path()
    if not is_server_url(where):
        where = Path(where).expanduser()
        if not where.is_file():
            return f"the access was not recorded: no ledger file at {where}"
    try:
        # a read-only open first: an empty file or another application's database is refused
        # there, never initialised as a ledger by the writable open
        Ledger(where, create=False).close()
        with Ledger(where, create=True) as book:
            book.record_access(event)
    except LedgerError as exc:
        return f"the access was not recorded: {exc}"
    return None
