"""The access log (issue 16 part 5, "who looked"): its own hash chain in the ledger, the
separate write of readers, and the accesses ``detect``, ``trace``, ``ledger list`` and
``ledger export`` record."""

import getpass
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from forensics.ledger import AccessEvent, Ledger, log_access

REPO = Path(__file__).resolve().parent.parent


def _sql(path, *statements):
    db = sqlite3.connect(path)
    for s in statements:
        db.execute(s)
    db.commit()
    db.close()


def _log(path, n=5):
    with Ledger(path) as book:
        for i in range(n):
            book.record_access(AccessEvent(f"user{i}", "detect", {"leak_sha256": f"{i:064x}"},
                                           "not_found"))


def _access_problems(path):
    with Ledger(path, create=False) as book:
        return book.check_access().problems


def test_access_rows_are_chained_and_verify(tmp_path):
    path = tmp_path / "l.sqlite"
    _log(path)
    with Ledger(path, create=False) as book:
        rows = book.accesses()
        check = book.check_access()
        assert book.verify() == []  # the export chain is unaffected
    assert [r.who for r in rows] == [f"user{i}" for i in range(5)]
    assert rows[0].prev_hash == "0" * 64
    assert all(b.prev_hash == a.record_hash for a, b in zip(rows, rows[1:]))
    assert rows[2].what_dict == {"leak_sha256": f"{2:064x}"} and rows[2].host
    assert check.ok and check.n_records == 5 and check.head_hash == rows[-1].record_hash


def test_an_edited_access_row_is_named(tmp_path):
    path = tmp_path / "l.sqlite"
    _log(path)
    _sql(path, "UPDATE access SET who = 'nobody' WHERE id = 3")
    assert _access_problems(path) == ["access 3: content does not match its hash (edited)"]


def test_a_deleted_access_row_is_named(tmp_path):
    path = tmp_path / "l.sqlite"
    _log(path)
    _sql(path, "DELETE FROM access WHERE id = 2")
    [problem] = _access_problems(path)
    assert problem.startswith("access 3: does not follow the record before it (access 1)")
    assert "access 2 deleted" in problem


def test_an_inserted_access_row_is_named(tmp_path):
    """A row slipped in between rows 2 and 3 with a valid hash of its own (row 3 renumbered 4):
    row 4's link still names row 2."""
    import hashlib

    from forensics.ledger import ACCESS_CONTENT_FIELDS

    path = tmp_path / "l.sqlite"
    _log(path, 3)
    db = sqlite3.connect(path)
    prev = db.execute("SELECT record_hash FROM access WHERE id = 2").fetchone()[0]
    content = dict(who="mallory", peer="", host="h", action="detect", what="{}",
                   outcome="not_found", detail="", created_utc="2026-01-01T00:00:00+00:00")
    body = json.dumps({k: content[k] for k in ACCESS_CONTENT_FIELDS}, sort_keys=True,
                      separators=(",", ":"))
    forged = hashlib.sha256((prev + body).encode()).hexdigest()
    db.execute("UPDATE access SET id = 4 WHERE id = 3")
    db.execute(f"INSERT INTO access(id, {', '.join(ACCESS_CONTENT_FIELDS)}, prev_hash, "
               "record_hash) VALUES (3, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               [content[k] for k in ACCESS_CONTENT_FIELDS] + [prev, forged])
    db.commit()
    db.close()
    assert _access_problems(path) == [
        "access 4: does not follow the record before it (access 3): it was recorded right "
        "after access 2; access 3 now stands between them (inserted there, or moved: "
        "reordered)"]


def test_an_older_ledger_gets_the_table_on_a_writable_open_and_readers_cope(tmp_path):
    path = tmp_path / "l.sqlite"
    Ledger(path).close()
    _sql(path, "DROP TABLE access")
    with Ledger(path, create=False) as book:  # read-only: no table, no accesses, no error
        assert book.accesses() == [] and book.check_access().ok
    assert log_access(path, AccessEvent("alice", "ledger list", {"count": 0}, "listed")) is None
    with Ledger(path, create=False) as book:
        [row] = book.accesses()
    assert (row.who, row.action, row.outcome) == ("alice", "ledger list", "listed")


def test_log_access_never_creates_a_ledger(tmp_path):
    message = log_access(tmp_path / "none" / "l.sqlite", AccessEvent("a", "detect", {}, "error"))
    assert message.startswith("the access was not recorded: no ledger file at")
    assert not (tmp_path / "none").exists()


def test_log_access_never_initialises_a_file_that_is_not_a_ledger(tmp_path):
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    message = log_access(empty, AccessEvent("a", "detect", {}, "error"))
    assert "not a leaktrace ledger" in message and empty.stat().st_size == 0
