"""The access log (issue 16 part 5, "who looked"): its own hash chain in the ledger, the
separate write of readers, and the accesses ``detect``, ``trace``, ``ledger list`` and
``ledger export`` record."""

import getpass
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import LEDGER_BACKENDS, new_ledger_location
from forensics.ledger import AccessEvent, Ledger, log_access
from pgserver import raw_sql

REPO = Path(__file__).resolve().parent.parent


# SQL run on a ledger's tables behind leaktrace's back, on either backend
_sql = raw_sql


def _log(path, n=5):
    with Ledger(path) as book:
        for i in range(n):
            book.record_access(AccessEvent(f"user{i}", "detect", {"leak_sha256": f"{i:064x}"},
                                           "not_found"))


def _access_problems(path):
    with Ledger(path, create=False) as book:
        return book.check_access().problems


def test_access_rows_are_chained_and_verify(ledger_url):
    path = ledger_url
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


def test_an_edited_access_row_is_named(ledger_url):
    path = ledger_url
    _log(path)
    _sql(path, "UPDATE access SET who = 'nobody' WHERE id = 3")
    assert _access_problems(path) == ["access 3: content does not match its hash (edited)"]


def test_a_deleted_access_row_is_named(ledger_url):
    path = ledger_url
    _log(path)
    _sql(path, "DELETE FROM access WHERE id = 2")
    [problem] = _access_problems(path)
    assert problem.startswith("access 3: does not follow the record before it (access 1)")
    assert "access 2 deleted" in problem


def test_an_inserted_access_row_is_named(ledger_url):
    """A row slipped in between rows 2 and 3 with a valid hash of its own (row 3 renumbered 4):
    row 4's link still names row 2."""
    import hashlib

    from forensics.ledger import ACCESS_CONTENT_FIELDS

    path = ledger_url
    _log(path, 3)
    with Ledger(path, create=False) as book:
        prev = book.accesses()[1].record_hash
    content = dict(who="mallory", peer="", host="h", action="detect", what="{}",
                   outcome="not_found", detail="", created_utc="2026-01-01T00:00:00+00:00")
    body = json.dumps({k: content[k] for k in ACCESS_CONTENT_FIELDS}, sort_keys=True,
                      separators=(",", ":"))
    forged = hashlib.sha256((prev + body).encode()).hexdigest()
    values = ", ".join(f"'{v}'" for v in [content[k] for k in ACCESS_CONTENT_FIELDS] + [prev, forged])
    _sql(path, "UPDATE access SET id = 4 WHERE id = 3",
         f"INSERT INTO access(id, {', '.join(ACCESS_CONTENT_FIELDS)}, prev_hash, record_hash) "
         f"VALUES (3, {values})")
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


# -- the commands -------------------------------------------------------------------------
from typer.testing import CliRunner  # noqa: E402

from forensics import cli  # noqa: E402

FUJI = "fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm"  # small: fast to mark and detect
runner = CliRunner()


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    for var in ("HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        monkeypatch.setenv(var, str(tmp_path / "home"))
    for var in ("LEAKTRACE_KEY", "LEAKTRACE_LEDGER"):
        monkeypatch.delenv(var, raising=False)


def run(*args):
    result = runner.invoke(cli.app, [str(a) for a in args])
    if isinstance(result.exception, Exception) and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.fixture(scope="module")
def marked(tmp_path_factory, dicom_films):
    """A ledger with one export and its marked copy (made once for the module)."""
    folder = tmp_path_factory.mktemp("access")
    site = ["--key", str(folder / "site.key"), "--ledger", str(folder / "ledger.sqlite")]
    result = run("embed", dicom_films[FUJI], "--recipient", "Dr. Ana Alvarez", "--out",
                 folder / "out", *site, "--json")
    assert result.exit_code == 0, result.output
    [record] = json.loads(result.stdout)["exported"]
    return folder, Path(record["output_path"])


def _sqlite_copy(marked, tmp_path):
    """A copy of the module's ledger for one test, and the options that point at it."""
    import shutil

    folder, copy = marked
    shutil.copy(folder / "ledger.sqlite", tmp_path / "ledger.sqlite")
    site = ["--key", str(folder / "site.key"), "--ledger", str(tmp_path / "ledger.sqlite")]
    return tmp_path / "ledger.sqlite", site, copy


@pytest.fixture(params=LEDGER_BACKENDS)
def ledger_copy(request, marked, tmp_path, dicom_films):
    """A ledger holding one export of the film for one test, on each backend: a copy of the
    module's SQLite ledger, or a new PostgreSQL site the same export is made into (with the
    module's key) through ``embed --ledger postgresql://...``."""
    if request.param == "sqlite":
        return _sqlite_copy(marked, tmp_path)
    folder, _ = marked
    url = new_ledger_location("postgresql", request, tmp_path)
    site = ["--key", str(folder / "site.key"), "--ledger", url]
    result = run("embed", dicom_films[FUJI], "--recipient", "Dr. Ana Alvarez", "--out",
                 tmp_path / "out", *site, "--json")
    assert result.exit_code == 0, result.output
    [record] = json.loads(result.stdout)["exported"]
    assert json.loads(result.stdout)["ledger"] == url  # as given: no password in it
    return url, site, Path(record["output_path"])


def test_detect_trace_list_and_export_record_who_looked(ledger_copy, tmp_path):
    import hashlib

    path, site, copy = ledger_copy
    sha = hashlib.sha256(copy.read_bytes()).hexdigest()
    result = run("detect", copy, *site, "--operator", "Insp. Lestrade", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["access_recorded"] is True
    assert run("trace", copy, *site).exit_code == 0
    missing = run("detect", tmp_path / "gone.png", *site, "--operator", "Insp. Lestrade")
    assert missing.exit_code == 2
    listed = run("ledger", "list", "--ledger", path, "--json")
    assert listed.exit_code == 0 and json.loads(listed.stdout)["access_recorded"] is True
    exported = run("ledger", "export", "--format", "csv", "--ledger", path, "--out",
                   tmp_path / "e.csv", "--operator", "DPO")
    assert exported.exit_code == 0, exported.output
    with Ledger(path, create=False) as book:
        rows = book.accesses()
        assert book.check_access().ok and book.verify() == []
        assert book.export_count() == 1  # the accesses never touched the exports
    me = getpass.getuser()
    assert [(r.who, r.action, r.outcome, r.detail) for r in rows] == [
        ("Insp. Lestrade", "detect", "traced", "recipient 1"),
        (me, "trace", "traced", "recipient 1"),
        ("Insp. Lestrade", "detect", "error", f"{tmp_path / 'gone.png'}: no such file"),
        (me, "ledger list", "listed", ""),
        ("DPO", "ledger export", "exported", "chain intact"),
    ]
    assert rows[0].what_dict == {"leak_sha256": sha, "leak_name": copy.name}
    assert rows[1].what_dict["leak_sha256"] == sha
    assert rows[2].what_dict == {"leak_sha256": None, "leak_name": "gone.png"}
    assert rows[3].what_dict == {"export_ids": "1", "count": 1}
    assert rows[4].what_dict == {"export_ids": "1", "count": 1, "format": "csv",
                                 "out": str(tmp_path / "e.csv")}
    assert all(r.host for r in rows)


def test_a_bad_operator_is_a_usage_error(ledger_copy):
    path, site, copy = ledger_copy
    result = run("ledger", "list", "--ledger", path, "--operator", "eve\nroot")
    assert result.exit_code == 2 and "control characters" in result.stderr
    for command in (["detect", copy, *site], ["ledger", "list", "--ledger", path]):
        result = run(*command, "--operator", " ", "--json")  # still one JSON object
        assert result.exit_code == 2
        [line] = result.stdout.splitlines()
        answer = json.loads(line)
        assert answer["error"].startswith("bad arguments: --operator is empty")
        assert answer["access_recorded"] is False
    with Ledger(path, create=False) as book:
        assert book.accesses() == []


def test_ledger_verify_names_an_edited_access_row(ledger_copy):
    path, site, copy = ledger_copy
    for _ in range(3):
        assert run("ledger", "list", "--ledger", path).exit_code == 0
    assert run("ledger", "verify", "--ledger", path).exit_code == 0
    _sql(path, "UPDATE access SET who = 'someone else' WHERE id = 2")
    result = run("ledger", "verify", "--ledger", path, "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["problems"] == ["access log: access 2: content does not match its hash "
                                  "(edited)"]
    assert report["access"]["ok"] is False and report["access"]["n_records"] == 3


@pytest.fixture
def read_only_ledger(marked, tmp_path):
    """A SQLite copy made read-only for this process: mode 0444 in a folder of mode 0555;
    for root, whom modes do not stop, the file is made immutable (chattr +i) instead."""
    ledger_copy = _sqlite_copy(marked, tmp_path)
    path, site, copy = ledger_copy
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"running as root and chattr +i failed ({done.stderr.strip()}): no way "
                        "to make the ledger read-only here")
    else:
        os.chmod(path, 0o444)
        os.chmod(path.parent, 0o555)
    try:
        yield ledger_copy
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            os.chmod(path.parent, 0o755)
            os.chmod(path, 0o644)


def test_detect_on_a_read_only_ledger_still_answers_and_warns(read_only_ledger):
    import hashlib

    path, site, copy = read_only_ledger
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    result = run("detect", copy, *site, "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["decision"] == "traced" and answer["recipient"] == "Dr. Ana Alvarez"
    assert answer["access_recorded"] is False
    [warning] = result.stderr.splitlines()
    assert warning.startswith("warning: the access was not recorded: ")
    plain = run("detect", copy, *site, "--operator", "Insp. Lestrade")
    assert plain.exit_code == 0 and "TRACED to recipient 'Dr. Ana Alvarez'" in plain.stdout
    assert "warning: the access was not recorded" in plain.stderr
    listed = run("ledger", "list", "--ledger", path)
    assert listed.exit_code == 0 and "export 1:" in listed.stdout
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name)) == [
        path.name]  # no journal left behind
