"""Ledger: recipients, transactional export records, hash chain and names, read-only opening,
ledger id, concurrent writers."""

import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap
import unicodedata

import pytest

from forensics.ledger import Ledger, normalise_recipient
from conftest import LEDGER_BACKENDS, new_ledger_location
from pgserver import copy_ledger, raw_connect, raw_sql, rows_of
from watermark.errors import LedgerError


def _record(book, tmp_path, name, n=0, fail=False, key_fingerprint="f" * 16):
    out = tmp_path / f"{name}-{n}.dcm"

    def write(number):
        if fail:
            raise OSError("disk full")
        out.write_bytes(b"x")
        return {"output_path": str(out), "output_sop_uid": f"1.2.3.{n}", "output_sha256": "ab" * 32,
                "payload": f"{number:08x}"}

    return book.record_export(write, recipient=name, source_sop_uid="1.2.3",
                              source_path="/src.dcm", source_sha256="cd" * 32,
                              key_fingerprint=key_fingerprint)


# SQL run on a ledger's tables behind leaktrace's back, on either backend
_sql = raw_sql


def test_recipients_are_numbered_and_unique(ledger_url, tmp_path):
    with Ledger(ledger_url) as book:
        assert book.recipient_number("7", create=True) == 1
        assert book.recipient_number("4242", create=True) == 2
        assert book.recipient_number(" 7 ", create=True) == 1
        assert book.recipient_number("nobody") is None
        assert book.recipients() == {1: "7", 2: "4242"}
        with pytest.raises(LedgerError):
            book.recipient_number("", create=True)


def test_record_export_registers_the_recipient_and_records_its_name(ledger_url, tmp_path):
    with Ledger(ledger_url) as book:
        rec = _record(book, tmp_path, "Dr. Ana")
        assert (rec.recipient_number, rec.recipient_name, rec.payload) == (1, "Dr. Ana", "00000001")
        assert book.recipients() == {1: "Dr. Ana"}
        assert book.export_by_output_uid("1.2.3.0") == rec
        assert book.export_by_output_uid("9.9") is None


def test_failed_write_records_nothing_and_registers_no_recipient(ledger_url, tmp_path):
    with Ledger(ledger_url) as book:
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


def test_nfc_and_nfd_spellings_are_one_recipient(ledger_url, tmp_path):
    with Ledger(ledger_url) as book:
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
def test_verify_names_the_tampered_record(ledger_url, tmp_path, tamper, expected):
    path = ledger_url
    with Ledger(path) as book:
        for i in range(4):
            _record(book, tmp_path, "a" if i % 2 else "b", n=i)
        assert book.verify() == []
    _sql(path, tamper)
    with Ledger(path, create=False) as book:
        problems = book.verify()
    assert any(expected in p for p in problems), problems


def test_verify_reports_a_renamed_or_swapped_recipient(ledger_url, tmp_path):
    path = ledger_url
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


def test_two_processes_write_at_once(ledger_url, tmp_path):
    path = ledger_url
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


# -- tampering with a ledger of real exports, the way an attacker with the file would ----------

FUJI = "fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm"
DOG = "veterinary_canine_thorax_dx_mono1_8bit.dcm"
NIH = "nih_cxr14_dx_8bit_1024px_nccid.dcm"
CONTENT = ("recipient_number", "recipient_name", "source_sop_uid", "source_path", "source_sha256",
           "output_path", "output_sop_uid", "output_sha256", "payload", "key_fingerprint",
           "created_utc")


def _attacker_hash(prev_hash, row):
    """The record hash as the module docstring describes it, recomputed independently."""
    body = json.dumps({k: row[k] for k in CONTENT}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


# {id: row} of the exports table, through a raw connection (sqlite3, or psycopg in a site)
_rows = rows_of


@pytest.fixture(scope="module", params=LEDGER_BACKENDS)
def real_ledger(request, tmp_path_factory, dicom_films):
    """5 real exports (two small shared films) for 3 recipients, on each backend; returns the
    ledger's path or URL."""
    from forensics.export import export_film
    from watermark.keys import SiteKey

    folder = tmp_path_factory.mktemp("real-ledger")
    path = new_ledger_location(request.param, request, folder, "ledger")
    key = SiteKey(bytes(range(32)))
    with Ledger(path) as book:
        for i, recipient in enumerate(["Dr. Ana", "Innocent Bob", "Mallory", "Dr. Ana", "Carol"]):
            film = (FUJI, DOG)[i % 2]
            export_film(dicom_films[film], folder / f"{i}.dcm", recipient=recipient, ledger=book,
                        key=key)
        check = book.check()
    assert check.ok and check.n_records == 5 and check.problems == []
    return path


@pytest.fixture
def copy_of_ledger(real_ledger, tmp_path, request):
    return copy_ledger(real_ledger, tmp_path, request)


def _problems(path, expect_head=None):
    with Ledger(path, create=False) as book:
        return book.check(expect_head).problems


def test_intact_real_ledger_has_a_stable_head(copy_of_ledger):
    with Ledger(copy_of_ledger, create=False) as book:
        check = book.check()
        last = book.exports()[-1]
    assert check.ok and check.n_records == 5 and check.head_hash == last.record_hash
    assert len(check.head_hash) == 64 and check.ledger_id == book.ledger_id
    with Ledger(copy_of_ledger) as book:  # recomputed the same way from the raw rows
        db = book._db
        rows = _rows(db)
    prev = "0" * 64
    for row in rows.values():
        assert row["prev_hash"] == prev and _attacker_hash(prev, row) == row["record_hash"]
        prev = row["record_hash"]


def test_edited_record_is_named(copy_of_ledger):
    """Mallory's export 3 rewritten to frame Innocent Bob, without touching the hash."""
    _sql(copy_of_ledger, "UPDATE exports SET recipient_number = 2, recipient_name = "
         "'Innocent Bob' WHERE id = 3")
    assert _problems(copy_of_ledger) == ["export 3: content does not match its hash (edited)"]


def test_edited_record_with_its_hash_recomputed_is_named(copy_of_ledger):
    """The attacker also recomputes export 3's own hash: only the next record's link shows it."""
    with raw_connect(copy_of_ledger) as db:
        row = _rows(db)[3]
        row.update(recipient_number=2, recipient_name="Innocent Bob")
        db.execute("UPDATE exports SET recipient_number = 2, recipient_name = 'Innocent Bob', "
                   "record_hash = ? WHERE id = 3", (_attacker_hash(row["prev_hash"], row),))
    db.close()
    problems = _problems(copy_of_ledger)
    assert len(problems) == 1, problems
    assert problems[0].startswith("export 4: does not follow the record before it (export 3)")
    assert "export 3 was changed after it was recorded" in problems[0]


def test_deleted_record_is_named(copy_of_ledger):
    _sql(copy_of_ledger, "DELETE FROM exports WHERE id = 3")
    problems = _problems(copy_of_ledger)
    assert len(problems) == 1, problems
    assert problems[0].startswith("export 4: does not follow the record before it (export 2)")
    assert problems[0].endswith("the record it was chained to is gone: export 3 deleted")


def test_deleted_record_with_renumbering_is_still_caught(copy_of_ledger):
    _sql(copy_of_ledger, "DELETE FROM exports WHERE id = 3",
         "UPDATE exports SET id = id - 1 WHERE id = 4", "UPDATE exports SET id = id - 1 WHERE id = 5")
    problems = _problems(copy_of_ledger)
    assert len(problems) == 1 and problems[0].startswith("export 3: does not follow"), problems
    assert "records between exports 2 and 3 were deleted" in problems[0]


def test_inserted_record_is_named(copy_of_ledger):
    """A forged export for Innocent Bob slipped in after export 2, ids shifted to make room,
    its own hash and link computed correctly."""
    with raw_connect(copy_of_ledger) as db:
        rows = _rows(db)
        for i in (5, 4, 3):
            db.execute("UPDATE exports SET id = ? WHERE id = ?", (i + 1, i))
        forged = dict(rows[2], id=3, recipient_number=2, recipient_name="Innocent Bob",
                      output_sop_uid="1.2.826.0.1.3680043.8.498.1", prev_hash=rows[2]["record_hash"])
        forged["record_hash"] = _attacker_hash(forged["prev_hash"], forged)
        db.execute(f"INSERT INTO exports ({', '.join(forged)}) VALUES "
                   f"({', '.join('?' * len(forged))})", list(forged.values()))
    db.close()
    problems = _problems(copy_of_ledger)
    assert len(problems) == 1, problems
    assert problems[0].startswith("export 4: does not follow the record before it (export 3)")
    assert "recorded right after export 2; export 3 now stands between them" in problems[0]
    assert "inserted there" in problems[0]


def test_reordered_records_are_named(copy_of_ledger):
    """Exports 2 and 4 swapped (each keeps its content and hashes)."""
    _sql(copy_of_ledger, "UPDATE exports SET id = 100 WHERE id = 2",
         "UPDATE exports SET id = 2 WHERE id = 4", "UPDATE exports SET id = 4 WHERE id = 100")
    problems = _problems(copy_of_ledger)
    assert [p.split(":")[0] for p in problems] == ["export 2", "export 3", "export 4", "export 5"]
    assert "recorded right after export 3, which now comes after it (records reordered)" \
        in problems[0]
    assert "recorded right after export 1; exports 2, 3 now stand between them" in problems[2]


def test_tail_truncation_is_caught_only_against_a_noted_head(copy_of_ledger):
    with Ledger(copy_of_ledger, create=False) as book:
        head = book.check().head_hash
        middle = book.exports()[2].record_hash
    _sql(copy_of_ledger, "DELETE FROM exports WHERE id >= 4")
    assert _problems(copy_of_ledger) == []  # the chain alone cannot tell
    problems = _problems(copy_of_ledger, expect_head=head)
    assert len(problems) == 1 and problems[0].startswith(f"chain head {head}"), problems
    assert "tail truncation" in problems[0]
    with Ledger(copy_of_ledger, create=False) as book:  # an older head is still in the chain
        check = book.check(middle.upper())
    assert check.ok and check.anchor == {"head_hash": middle, "found": True, "export_id": 3,
                                         "records_since": 0}
    with pytest.raises(LedgerError, match="not a SHA-256"):
        _problems(copy_of_ledger, expect_head="xyz")


def test_records_added_after_a_noted_head_are_fine(copy_of_ledger, tmp_path):
    with Ledger(copy_of_ledger) as book:
        head = book.check().head_hash
        (fingerprint,) = book.key_usage()  # a ledger with exports takes only its own key
        _record(book, tmp_path, "Dave", key_fingerprint=fingerprint)
        check = book.check(head)
    assert check.ok and check.anchor["records_since"] == 1 and check.anchor["export_id"] == 5
    assert check.n_records == 6 and check.head_hash != head
    with Ledger(tmp_path / "empty.sqlite") as book:  # an empty ledger's head: 64 zeros
        assert book.check().head_hash == "0" * 64 and book.check("0" * 64).ok


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_export_table_has_every_record_its_hashes_and_no_key(copy_of_ledger, fmt):
    import csv
    import io

    from forensics.ledger import export_table

    with Ledger(copy_of_ledger, create=False) as book:
        text, check = export_table(book, fmt)
        records = [r.as_dict() for r in book.exports()]
        ledger_id = book.ledger_id
    assert bytes(range(32)).hex() not in text  # the key used to mark
    if fmt == "json":
        doc = json.loads(text)
        assert doc["ledger_id"] == ledger_id and doc["exports"] == records
        assert doc["chain"]["ok"] and doc["chain"]["head_hash"] == records[-1]["record_hash"]
        assert [r["name"] for r in doc["recipients"]] == ["Dr. Ana", "Innocent Bob", "Mallory",
                                                          "Carol"]
    else:
        lines = text.splitlines()
        assert f"# ledger_id: {ledger_id}" in lines
        assert f"# chain: intact; n_records: 5; head_hash: {check.head_hash}" in lines
        rows = list(csv.DictReader(io.StringIO("\n".join(x for x in lines if not x.startswith("#")))))
        assert len(rows) == 5 and all(r["ledger_id"] == ledger_id for r in rows)
        for row, rec in zip(rows, records):
            assert {k: row[k] for k in rec} == {k: str(v) for k, v in rec.items()}
            typed = dict(row, recipient_number=int(row["recipient_number"]))
            assert _attacker_hash(row["prev_hash"], typed) == row["record_hash"]


def test_csv_export_read_with_pandas_keeps_a_hash_sign_in_paths_and_names(ledger_url, tmp_path):
    """The docs (hospital-it/ledger.md, reference/json.md) read the CSV with
    ``pandas.read_csv(path, comment="#")``: a "#" in an output path or a recipient name must
    stay data, not cut the row."""
    import io

    import pandas

    from forensics.ledger import export_table

    with Ledger(ledger_url) as book:
        record = _record(book, tmp_path, "Dr. #1 (ward #4)")
        text, _ = export_table(book, "csv")
    table = pandas.read_csv(io.StringIO(text), comment="#", dtype=str)
    assert len(table) == 1 and not table.isna().any(axis=None)
    row = table.iloc[0]
    assert row["recipient_name"] == "Dr. #1 (ward #4)"
    assert row["output_path"] == record.output_path and "#" in row["output_path"]
    assert row["record_hash"] == record.record_hash


def test_two_embed_processes_exporting_at_once(tmp_path, dicom_films):
    """Two `leaktrace embed` runs, each marking 18 real films for its own recipient into the
    same ledger at the same time: all 36 records present, chain intact, files as recorded.

    With 18 films each the two runs overlap (their records interleave in the ledger) even
    though each process spends its first second or two importing."""
    from watermark.dicomio import sha256_file
    from watermark.keys import create_key

    key, ledger = tmp_path / "site.key", tmp_path / "ledger.sqlite"
    create_key(key)  # both runs share the site key, as on one export server
    procs = []
    for tag in ("alvarez", "baker"):
        src = tmp_path / f"src-{tag}"
        src.mkdir()
        for i in range(18):  # three fast films, each under several names
            (src / f"{i}.dcm").symlink_to(dicom_films[(FUJI, DOG, NIH)[i % 3]])
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "forensics.cli", "embed", str(src), "--recipient",
             f"Dr. {tag}", "--out", str(tmp_path / f"out-{tag}"), "--key", str(key),
             "--ledger", str(ledger), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    reported = [r for out, _ in outputs for r in json.loads(out)["exported"]]
    with Ledger(ledger, create=False) as book:
        check, records = book.check(), book.exports()
        assert sorted(book.recipients().values()) == ["Dr. alvarez", "Dr. baker"]
    assert check.ok, check.problems
    assert check.n_records == len(records) == 36
    assert sorted(r.id for r in records) == list(range(1, 37))
    assert {r.as_dict()["output_sop_uid"] for r in records} == {r["output_sop_uid"] for r in reported}
    for r in records:
        assert sha256_file(r.output_path) == r.output_sha256


# -- key binding (issue 16): a ledger with exports accepts only the keys that made them ------

def _record_with(book, tmp_path, fingerprint, n, *, new_key=False, name="a"):
    """Record one export made with the key of ``fingerprint``; the written files are counted
    in ``tmp_path / "written"``."""
    out = tmp_path / f"key-{n}.dcm"

    def write(number):
        out.write_bytes(b"x")
        return {"output_path": str(out), "output_sop_uid": f"1.9.{n}", "output_sha256": "ab" * 32,
                "payload": f"{number:08x}"}

    return book.record_export(write, recipient=name, source_sop_uid="1.2.3",
                              source_path="/src.dcm", source_sha256="cd" * 32,
                              key_fingerprint=fingerprint, new_key=new_key)


def test_an_empty_ledger_accepts_any_key_and_then_only_its_own(ledger_url, tmp_path):
    from watermark.errors import KeyFileError, LedgerKeyError
    from watermark.keys import SiteKey

    first, second = SiteKey(bytes(range(32))), SiteKey(bytes(range(1, 33)), path=tmp_path / "k2")
    with Ledger(ledger_url) as book:
        assert book.check_key(first) is False and book.check_key(second) is False
        assert book.key_usage() == {} and book.export_count() == 0
        _record_with(book, tmp_path, first.fingerprint, 0)
        _record_with(book, tmp_path, first.fingerprint, 1)
        assert book.check_key(first) is False
        with pytest.raises(LedgerKeyError) as caught:
            book.check_key(second)
        error = caught.value
        assert isinstance(error, KeyFileError) and isinstance(error, LedgerError)
        assert str(error).startswith(
            f"the ledger at {book.path} has 2 exports made with key "
            f"{first.fingerprint}; the key given ({tmp_path / 'k2'}) has fingerprint "
            f"{second.fingerprint}, which made none of them")
        assert "--new-key" in str(error) and "nothing was exported" in str(error)
        assert (error.ledger_path, error.key_fingerprint, error.key_path) == (
            str(book.path), second.fingerprint, str(tmp_path / "k2"))
        assert error.ledger_fingerprints == {first.fingerprint: 2}
        assert book.check_key(second, new_key=True) is True  # accepted on purpose, nothing written
        assert book.key_usage() == {first.fingerprint: 2}


def test_record_export_refuses_an_unseen_key_before_writing_anything(ledger_url, tmp_path):
    from watermark.errors import LedgerKeyError

    with Ledger(ledger_url) as book:
        _record_with(book, tmp_path, "1" * 16, 0)
        with pytest.raises(LedgerKeyError, match=f"has fingerprint {'2' * 16}, which made none"):
            _record_with(book, tmp_path, "2" * 16, 1, name="Mallory")
        assert not (tmp_path / "key-1.dcm").exists()  # write_output was never called
        assert book.export_count() == 1 and book.recipients() == {1: "a"}  # no ghost recipient
        rec = _record_with(book, tmp_path, "2" * 16, 2, new_key=True, name="Bob")
        assert rec.key_fingerprint == "2" * 16
        _record_with(book, tmp_path, "2" * 16, 3)  # known now: no new_key needed
        assert book.key_usage() == {"1" * 16: 1, "2" * 16: 2}
        assert book.key_fingerprints() == {"1" * 16, "2" * 16}
        assert book.verify() == []


class _InterruptAtCommit:
    """The ledger's connection, with a Ctrl-C just before or just after the COMMIT."""

    def __init__(self, db, after: bool):
        self._db, self._after = db, after

    def execute(self, sql, *args):
        if sql == "COMMIT" and not self._after:
            raise KeyboardInterrupt
        cursor = self._db.execute(sql, *args)
        if sql == "COMMIT":
            raise KeyboardInterrupt
        return cursor

    def __getattr__(self, name):
        return getattr(self._db, name)


@pytest.mark.parametrize("after", [False, True], ids=["before-commit", "after-commit"])
def test_ctrl_c_at_the_commit_keeps_file_and_record_together(ledger_url, tmp_path, after):
    """Interrupted just before the COMMIT: no record and no file. Just after: both stay
    (the file was removed while its record stayed: QA found the record of a deleted copy)."""
    with Ledger(ledger_url) as book:
        real = book._db
        book._db = _InterruptAtCommit(real, after)
        with pytest.raises(KeyboardInterrupt):
            _record(book, tmp_path, "Dave")
        book._db = real
        out = tmp_path / "Dave-0.dcm"
        assert [e.output_path for e in book.exports()] == ([str(out)] if after else [])
        assert out.exists() == after
        assert book.check().ok


# -- many writers at once (issue 16, part 3) ------------------------------------------------

WRITERS, EACH = 8, 100


def _writer(location, tag: str, folder: str, start) -> None:
    """One writer process: 100 exports for recipient ``tag`` through the record API, with a
    cheap write_output (a 1-byte file), all of them started together by ``start``."""
    from pathlib import Path

    with Ledger(location) as book:
        start.wait()
        for i in range(EACH):
            out = Path(folder) / f"{tag}-{i}"

            def write(number, out=out, i=i):
                out.write_bytes(b"x")
                return {"output_path": str(out), "output_sop_uid": f"2.25.{number}.{i}",
                        "output_sha256": "0" * 64, "payload": f"{number:08x}"}

            book.record_export(write, recipient=tag, source_sop_uid="1.2.3",
                               source_path="/src.dcm", source_sha256="cd" * 32,
                               key_fingerprint="f" * 16)


def test_eight_writers_lose_no_record_and_fork_no_chain(ledger_url, tmp_path):
    """8 processes x 100 exports into one ledger at once: 800 records, one unbroken chain
    (ids 1..800, each record chained to the one before it), every writer's records there."""
    import multiprocessing

    Ledger(ledger_url).close()
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(WRITERS)
    tags = [f"writer {k}" for k in range(WRITERS)]
    procs = [ctx.Process(target=_writer, args=(ledger_url, tag, str(tmp_path), start))
             for tag in tags]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    with Ledger(ledger_url, create=False) as book:
        check, records = book.check(), book.exports()
        recipients = book.recipients()
    assert check.ok, check.problems[:5]
    assert check.n_records == len(records) == WRITERS * EACH
    assert [r.id for r in records] == list(range(1, WRITERS * EACH + 1))
    assert [r.prev_hash for r in records] == ["0" * 64] + [r.record_hash for r in records[:-1]]
    assert len({r.record_hash for r in records}) == len(records)
    assert sorted(recipients.values()) == sorted(tags)
    per_writer = {}
    for r in records:
        per_writer.setdefault(r.recipient_name, set()).add(r.output_path)
    assert {t: len(paths) for t, paths in per_writer.items()} == {t: EACH for t in tags}
    # the writers' records interleave: they really wrote at the same time
    assert sum(a.recipient_name != b.recipient_name for a, b in zip(records, records[1:])) > WRITERS
