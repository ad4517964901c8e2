"""Ledger: recipients, transactional export records, hash chain and names, read-only opening,
ledger id, concurrent writers."""

import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import unicodedata

import pytest

from forensics.ledger import Ledger, normalise_recipient
from watermark.errors import LedgerError


def _record(book, tmp_path, name, n=0, fail=False):
    out = tmp_path / f"{name}-{n}.dcm"

    def write(number):
        if fail:
            raise OSError("disk full")
        out.write_bytes(b"x")
        return {"output_path": str(out), "output_sop_uid": f"1.2.3.{n}", "output_sha256": "ab" * 32,
                "payload": f"{number:08x}"}

    return book.record_export(write, recipient=name, source_sop_uid="1.2.3",
                              source_path="/src.dcm", source_sha256="cd" * 32,
                              key_fingerprint="f" * 16)


def _sql(path, *statements):
    db = sqlite3.connect(path)
    for s in statements:
        db.execute(s)
    db.commit()
    db.close()


def test_recipients_are_numbered_and_unique(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as book:
        assert book.recipient_number("7", create=True) == 1
        assert book.recipient_number("4242", create=True) == 2
        assert book.recipient_number(" 7 ", create=True) == 1
        assert book.recipient_number("nobody") is None
        assert book.recipients() == {1: "7", 2: "4242"}
        with pytest.raises(LedgerError):
            book.recipient_number("", create=True)


def test_record_export_registers_the_recipient_and_records_its_name(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as book:
        rec = _record(book, tmp_path, "Dr. Ana")
        assert (rec.recipient_number, rec.recipient_name, rec.payload) == (1, "Dr. Ana", "00000001")
        assert book.recipients() == {1: "Dr. Ana"}
        assert book.export_by_output_uid("1.2.3.0") == rec
        assert book.export_by_output_uid("9.9") is None


def test_failed_write_records_nothing_and_registers_no_recipient(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as book:
        _record(book, tmp_path, "a")
        with pytest.raises(OSError):
            _record(book, tmp_path, "a", n=1, fail=True)
        with pytest.raises(OSError):
            _record(book, tmp_path, "ghost", fail=True)
        assert len(book.exports()) == 1
        assert book.recipients() == {1: "a"}  # no ghost recipient
        assert book.verify() == []
        assert _record(book, tmp_path, "b").recipient_number == 2


def test_names_are_nfc_and_control_characters_are_refused():
    composed, decomposed = "Dr. Jos\u00e9", "Dr. Jose\u0301"
    assert normalise_recipient(decomposed) == composed == unicodedata.normalize("NFC", decomposed)
    assert normalise_recipient("  Bob  ") == "Bob"
    for bad in ("Bob\nAlice", "Bob\t", "\x1b[31mBob", "Bob\x00", "Bob\u202eecila", "a\u2028b"):
        with pytest.raises(LedgerError, match="control character"):
            normalise_recipient(bad)
    for empty in ("", "   "):
        with pytest.raises(LedgerError, match="empty"):
            normalise_recipient(empty)
    with pytest.raises(LedgerError, match="at most 1000"):
        normalise_recipient("x" * 1001)


def test_nfc_and_nfd_spellings_are_one_recipient(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as book:
        assert _record(book, tmp_path, "Jos\u00e9").recipient_number == 1
        assert _record(book, tmp_path, "Jose\u0301", n=1).recipient_number == 1
        assert book.recipient_number("Jose\u0301") == 1


def test_missing_ledger_is_an_error_for_readers(tmp_path):
    with pytest.raises(LedgerError, match="no ledger there"):
        Ledger(tmp_path / "none.sqlite", create=False)
    assert not (tmp_path / "none.sqlite").exists()
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not sqlite at all" * 100)
    for create in (True, False):
        with pytest.raises(LedgerError, match="not a leaktrace ledger"):
            Ledger(bad, create=create)
    with pytest.raises(LedgerError, match="is a folder"):
        Ledger(tmp_path, create=False)


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_readers_never_write_an_empty_file_or_a_foreign_database(tmp_path):
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    with pytest.raises(LedgerError, match="not a leaktrace ledger"):
        Ledger(empty, create=False)
    assert empty.stat().st_size == 0

    foreign = tmp_path / "app.db"
    _sql(foreign, "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)",
         "INSERT INTO users(name) VALUES ('x')")
    before = _digest(foreign)
    for create in (False, True):  # a writer refuses it too: never adds tables to it
        with pytest.raises(LedgerError, match="not a leaktrace ledger"):
            Ledger(foreign, create=create)
        assert _digest(foreign) == before
    assert sorted(os.listdir(tmp_path)) == ["app.db", "empty.sqlite"]  # no journal left


def test_read_only_ledger_refuses_to_record(tmp_path):
    path = tmp_path / "l.sqlite"
    with Ledger(path) as book:
        _record(book, tmp_path, "a")
    before = _digest(path)
    with Ledger(path, create=False) as book:
        assert book.recipients() == {1: "a"} and book.verify() == []
        with pytest.raises(LedgerError, match="read-only"):
            book.recipient_number("new", create=True)
    assert _digest(path) == before


def test_new_ledger_is_private_and_has_a_random_id(tmp_path):
    a, b = tmp_path / "sub" / "a.sqlite", tmp_path / "b.sqlite"
    with Ledger(a) as book:
        first = book.ledger_id
    with Ledger(b) as book:
        other = book.ledger_id
    assert stat.S_IMODE(a.stat().st_mode) == 0o600
    assert len(first) == 32 and int(first, 16) >= 0 and first != other
    with Ledger(a, create=False) as book:
        assert book.ledger_id == first  # stored, not drawn again


@pytest.mark.parametrize("tamper, expected", [
    ("UPDATE exports SET recipient_number = 3 - recipient_number WHERE id = 2", "export 2: content"),
    ("UPDATE exports SET recipient_name = 'b' WHERE id = 2", "export 2: content"),
    ("DELETE FROM exports WHERE id = 2", "export 3: does not follow"),
    ("INSERT INTO exports SELECT 10, recipient_number, recipient_name, source_sop_uid, source_path, "
     "source_sha256, output_path, output_sop_uid, output_sha256, payload, key_fingerprint, "
     "created_utc, prev_hash, record_hash FROM exports WHERE id = 1", "export 10: does not follow"),
    ("UPDATE exports SET id = 100 WHERE id = 1", "export 2: does not follow"),
])
def test_verify_names_the_tampered_record(tmp_path, tamper, expected):
    path = tmp_path / "l.sqlite"
    with Ledger(path) as book:
        for i in range(4):
            _record(book, tmp_path, "a" if i % 2 else "b", n=i)
        assert book.verify() == []
    _sql(path, tamper)
    with Ledger(path, create=False) as book:
        problems = book.verify()
    assert any(expected in p for p in problems), problems


def test_verify_reports_a_renamed_or_swapped_recipient(tmp_path):
    path = tmp_path / "l.sqlite"
    with Ledger(path) as book:
        _record(book, tmp_path, "Innocent Bob")
        _record(book, tmp_path, "Mallory", n=1)
        _record(book, tmp_path, "Carol", n=2)
    _sql(path, "UPDATE recipients SET name = 'Someone Else' WHERE number = 1")
    with Ledger(path, create=False) as book:
        problems = book.verify()
    assert len(problems) == 1, problems
    assert "recipient 1" in problems[0] and "'Someone Else'" in problems[0]
    assert "'Innocent Bob'" in problems[0] and "renamed" in problems[0]

    _sql(path, "UPDATE recipients SET name = 'Innocent Bob' WHERE number = 1",
         "UPDATE recipients SET name = 'tmp' WHERE number = 2",
         "UPDATE recipients SET name = 'Mallory' WHERE number = 3",
         "UPDATE recipients SET name = 'Carol' WHERE number = 2")
    with Ledger(path, create=False) as book:
        problems = book.verify()
    assert [p.split(":")[0] for p in problems] == ["recipient 2", "recipient 3"], problems
    assert "'Carol'" in problems[0] and "'Mallory'" in problems[0]


def test_schema_1_ledger_is_read_but_not_written(tmp_path):
    """A ledger of leaktrace 0.1.0 (no ledger_id, no names in exports) still verifies and
    lists; its marks were made with the unscoped key, so ledger_id is None."""
    path = tmp_path / "old.sqlite"
    fields = ("recipient_number", "source_sop_uid", "source_path", "source_sha256", "output_path",
              "output_sop_uid", "output_sha256", "payload", "key_fingerprint", "created_utc")
    content = dict(zip(fields, (1, "1.2", "/s", "00", "/o", "1.3", "11", "ab", "f" * 16, "t")))
    body = json.dumps(content, sort_keys=True, separators=(",", ":"))
    record_hash = hashlib.sha256(("0" * 64 + body).encode()).hexdigest()
    _sql(path,
         "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
         "INSERT INTO meta VALUES ('schema_version', '1')",
         "CREATE TABLE recipients (number INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
         "created_utc TEXT NOT NULL)",
         "INSERT INTO recipients VALUES (1, 'Old Bob', 't')",
         "CREATE TABLE exports (id INTEGER PRIMARY KEY AUTOINCREMENT, recipient_number INTEGER, "
         "source_sop_uid TEXT, source_path TEXT, source_sha256 TEXT, output_path TEXT, "
         "output_sop_uid TEXT, output_sha256 TEXT, payload TEXT, key_fingerprint TEXT, "
         "created_utc TEXT, prev_hash TEXT, record_hash TEXT)",
         f"INSERT INTO exports VALUES (1, 1, '1.2', '/s', '00', '/o', '1.3', '11', 'ab', "
         f"'{'f' * 16}', 't', '{'0' * 64}', '{record_hash}')")
    with Ledger(path, create=False) as book:
        assert book.ledger_id is None and book.schema_version == 1
        assert book.verify() == []
        assert book.exports()[0].recipient_name == "Old Bob"
    with pytest.raises(LedgerError, match="schema 1"):
        Ledger(path)


def test_two_processes_write_at_once(tmp_path):
    path = tmp_path / "l.sqlite"
    Ledger(path).close()
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from forensics.ledger import Ledger
        tag = sys.argv[1]
        with Ledger({str(path)!r}) as book:
            for i in range(40):
                out = Path({str(tmp_path)!r}) / f"{{tag}}-{{i}}"
                def write(number, out=out):
                    out.write_bytes(b"x")
                    return {{"output_path": str(out), "output_sop_uid": "1", "output_sha256": "0",
                             "payload": str(number)}}
                book.record_export(write, recipient=tag, source_sop_uid="1", source_path="s",
                                   source_sha256="0", key_fingerprint="f")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, tag]) for tag in ("p", "q")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    with Ledger(path) as book:
        assert len(book.exports()) == 80
        assert book.verify() == []
        assert sorted(book.recipients().values()) == ["p", "q"]
