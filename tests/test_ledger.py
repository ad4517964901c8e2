"""Ledger: recipients, transactional export records, hash chain, concurrent writers."""

import sqlite3
import subprocess
import sys
import textwrap

import pytest

from forensics.ledger import Ledger
from watermark.errors import LedgerError


def _record(book, tmp_path, name, n=0, fail=False):
    out = tmp_path / f"{name}-{n}.dcm"

    def write():
        if fail:
            raise OSError("disk full")
        out.write_bytes(b"x")
        return {"output_path": str(out), "output_sop_uid": f"1.2.3.{n}", "output_sha256": "ab" * 32}

    return book.record_export(write, recipient_number=book.recipient_number(name, create=True),
                              source_sop_uid="1.2.3", source_path="/src.dcm", source_sha256="cd" * 32,
                              payload="00" * 16, key_fingerprint="f" * 16)


def test_recipients_are_numbered_and_unique(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as book:
        assert book.recipient_number("7", create=True) == 1
        assert book.recipient_number("4242", create=True) == 2
        assert book.recipient_number(" 7 ", create=True) == 1
        assert book.recipient_number("nobody") is None
        assert book.recipients() == {1: "7", 2: "4242"}
        with pytest.raises(LedgerError):
            book.recipient_number("", create=True)


def test_failed_write_records_nothing(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as book:
        _record(book, tmp_path, "a")
        with pytest.raises(OSError):
            _record(book, tmp_path, "a", n=1, fail=True)
        assert len(book.exports()) == 1
        assert book.verify() == []


def test_missing_ledger_is_an_error_for_readers(tmp_path):
    with pytest.raises(LedgerError, match="no ledger there"):
        Ledger(tmp_path / "none.sqlite", create=False)
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(LedgerError, match="not a leaktrace ledger"):
        Ledger(bad)


@pytest.mark.parametrize("tamper, expected", [
    ("UPDATE exports SET recipient_number = 3 - recipient_number WHERE id = 2", "export 2: content"),
    ("DELETE FROM exports WHERE id = 2", "export 3: does not follow"),
    ("INSERT INTO exports SELECT 10, recipient_number, source_sop_uid, source_path, source_sha256, "
     "output_path, output_sop_uid, output_sha256, payload, key_fingerprint, created_utc, prev_hash, "
     "record_hash FROM exports WHERE id = 1", "export 10: does not follow"),
    ("UPDATE exports SET id = 100 WHERE id = 1", "export 2: does not follow"),
])
def test_verify_names_the_tampered_record(tmp_path, tamper, expected):
    path = tmp_path / "l.sqlite"
    with Ledger(path) as book:
        for i in range(4):
            _record(book, tmp_path, "a" if i % 2 else "b", n=i)
        assert book.verify() == []
    db = sqlite3.connect(path)
    db.execute(tamper)
    db.commit()
    db.close()
    with Ledger(path) as book:
        problems = book.verify()
    assert any(expected in p for p in problems), problems


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
                def write(out=out):
                    out.write_bytes(b"x")
                    return {{"output_path": str(out), "output_sop_uid": "1", "output_sha256": "0"}}
                book.record_export(write, recipient_number=book.recipient_number(tag, create=True),
                                   source_sop_uid="1", source_path="s", source_sha256="0",
                                   payload="0", key_fingerprint="f")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, tag]) for tag in ("p", "q")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    with Ledger(path) as book:
        assert len(book.exports()) == 80
        assert book.verify() == []
