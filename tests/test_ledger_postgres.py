"""What only a PostgreSQL ledger has: its URL, sites (one schema each) that never wait on each
other, readers with a role that may only read, and the URL in the environment. Everything
else is the common ledger behaviour, tested on both backends by tests/test_ledger.py,
test_access.py and test_checkpoint.py."""

import json
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forensics import cli
from forensics.ledger import AccessEvent, Ledger, default_ledger_path, log_access
from forensics.ledger.db import parse_postgres_url
from pgserver import raw_sql
from test_ledger import _record
from watermark.errors import LedgerError


@pytest.fixture
def site(postgres_server, request):
    """A fresh site URL of the session's server."""
    import secrets

    return postgres_server.site_url(f"t{secrets.token_hex(6)}")


def test_url_parsing_keeps_libpq_parameters_and_hides_the_password():
    loc = parse_postgres_url("postgresql://ana:s3cret@db.example:5433/ledgers?sslmode=require"
                             "&site=north_wing")
    assert loc.site == "north_wing"
    assert loc.conninfo == "postgresql://ana:s3cret@db.example:5433/ledgers?sslmode=require"
    assert loc.display == ("postgresql://ana@db.example:5433/ledgers?sslmode=require"
                           "&site=north_wing")
    assert parse_postgres_url("postgres://h/db").site == "leaktrace"  # the default site
    for bad, message in [("postgresql://h/db?site=North-Wing", "not a valid site name"),
                         ("postgresql://h/db?site=a&site=b", "site is given 2 times"),
                         ("postgresql://ana:pw@h:5432", "names no database"),
                         ("postgresql://h/db?site=", "not a valid site name")]:
        with pytest.raises(LedgerError, match=message) as caught:
            parse_postgres_url(bad)
        assert "pw" not in str(caught.value)


def test_a_missing_site_is_an_error_for_readers_and_made_by_writers(site):
    with pytest.raises(LedgerError, match="no ledger there"):
        Ledger(site, create=False)
    assert log_access(site, AccessEvent("a", "detect", {}, "error")).startswith(
        "the access was not recorded: ")
    with pytest.raises(LedgerError, match="no ledger there"):  # log_access created nothing
        Ledger(site, create=False)
    with Ledger(site) as book:
        assert book.dialect == "postgresql" and book.site == parse_postgres_url(site).site
        assert len(book.ledger_id) == 32 and book.export_count() == 0
    with Ledger(site, create=False) as book:
        assert book.schema_version == 2 and book.verify() == []


def test_an_unreachable_server_is_one_clear_error(postgres_server):
    with pytest.raises(LedgerError, match="cannot connect to the ledger's database") as caught:
        Ledger(f"postgresql://leaktrace@127.0.0.1:{postgres_server.port}/no_such_db")
    assert "no_such_db" in str(caught.value) and "\n" not in str(caught.value)


def test_a_reader_connection_cannot_write_even_by_mistake(site, tmp_path):
    with Ledger(site) as book:
        _record(book, tmp_path, "a")
    with Ledger(site, create=False) as book:
        assert book.exports()[0].recipient_name == "a"
        with pytest.raises(LedgerError, match="read-only"):
            book.recipient_number("b", create=True)
        with pytest.raises(Exception, match="read-only transaction"):
            book._db.execute("DELETE FROM exports")
    with Ledger(site, create=False) as book:
        assert book.export_count() == 1


def test_sites_of_one_database_have_their_own_ids_and_chains_and_never_wait(postgres_server,
                                                                             tmp_path):
    """Site north holds its write lock (a transaction left open) while site south records an
    export: south is not held up; north's ledger is untouched by it."""
    north, south = (postgres_server.site_url(s) for s in ("north", "south"))
    with Ledger(north) as a, Ledger(south) as b:
        assert a.ledger_id != b.ledger_id
        _record(a, tmp_path, "Dr. North")
        done = []

        def write_south():
            with Ledger(south) as other:
                done.append(_record(other, tmp_path, "Dr. South", n=1))

        with a._write():  # north's lock held
            writer = threading.Thread(target=write_south)
            writer.start()
            writer.join(timeout=120)
            assert not writer.is_alive() and len(done) == 1
        assert done[0].id == 1 and done[0].prev_hash == "0" * 64  # south's own chain
        assert [r.recipient_name for r in a.exports()] == ["Dr. North"]
        assert [r.recipient_name for r in b.exports()] == ["Dr. South"]
        assert a.verify() == [] and b.verify() == []


def test_a_role_that_may_only_read_can_query_and_is_told_the_access_was_not_recorded(
        postgres_server, site, tmp_path):
    """An investigator's role with SELECT only: the ledger reads, the access log write fails
    with one line, and nothing changes."""
    with Ledger(site) as book:
        _record(book, tmp_path, "a")
        schema = book.site
    raw_sql(site, "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = "
            "'investigator') THEN CREATE ROLE investigator LOGIN; END IF; END $$",
            f"GRANT USAGE ON SCHEMA {schema} TO investigator",
            f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO investigator")
    reader = site.replace("postgresql://leaktrace@", "postgresql://investigator@")
    with Ledger(reader, create=False) as book:
        assert book.verify() == [] and book.export_count() == 1
    problem = log_access(reader, AccessEvent("Insp. Lestrade", "ledger list", {}, "listed"))
    assert problem.startswith("the access was not recorded: ") and "permission denied" in problem
    with Ledger(site, create=False) as book:
        assert book.accesses() == [] and book.check().ok
    # with INSERT on the access log only (docs/hospital-it/postgresql.md), its accesses are recorded
    raw_sql(site, f"GRANT INSERT ON {schema}.access TO investigator")
    assert log_access(reader, AccessEvent("Insp. Lestrade", "ledger list", {}, "listed")) is None
    with Ledger(reader) as book, pytest.raises(LedgerError, match="permission denied"):
        assert book.write_problem() == "this database role may not insert into its tables"
        _record(book, tmp_path, "Mallory")
    with Ledger(site) as book:
        assert book.write_problem() is None
    # embed as that role: exit 2 before any film is read and marked (QA: it marked every file,
    # then failed each with exit 1)
    film = Path(__file__).parent  # never reached: the ledger check comes first
    done = CliRunner().invoke(cli.app, ["embed", str(film), "--recipient", "Mallory", "--out",
                                        str(tmp_path / "out"), "--ledger", reader, "--key",
                                        str(tmp_path / "k.key"), "--new-key", "--json"])
    assert done.exit_code == 2, done.output
    assert "may not insert into its tables" in json.loads(done.stdout)["error"]
    assert not (tmp_path / "out").exists()
    with Ledger(site, create=False) as book:
        assert [a.who for a in book.accesses()] == ["Insp. Lestrade"] and book.export_count() == 1


def test_the_url_in_leaktrace_ledger_is_used_by_the_cli(site, tmp_path, monkeypatch):
    monkeypatch.setenv("LEAKTRACE_LEDGER", site)
    assert default_ledger_path() == site
    with Ledger(None) as book:
        _record(book, tmp_path, "Dr. Env")
    result = CliRunner().invoke(cli.app, ["ledger", "list", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["access_recorded"] is True
    verify = CliRunner().invoke(cli.app, ["ledger", "verify", "--json"])
    assert verify.exit_code == 0, verify.output
    report = json.loads(verify.stdout)
    assert report["ok"] and report["n_records"] == 1 and report["access"]["n_records"] == 1
    assert not Path(site).exists()  # no file named after the URL


def _cli(*args):
    return CliRunner().invoke(cli.app, [str(a) for a in args])


def test_migrate_a_sqlite_ledger_to_a_site_keeps_its_identity_chain_and_checkpoints(
        site, tmp_path):
    """``ledger migrate``: every row copied verbatim (ledger id, ids, hashes, access log,
    deliveries, features); a checkpoint signed on the SQLite ledger verifies on the copy;
    new records continue the same chain; a non-empty target is refused."""
    import hashlib

    from forensics.ledger.checkpoint import sign_checkpoint, verify_checkpoint
    from forensics.ledger import PendingDelivery
    from forensics.ledger.note import Signer

    path = tmp_path / "old.sqlite"
    signer = Signer("site-a.example/leaktrace", hashlib.sha256(b"migration test").digest())
    with Ledger(path) as book:
        for i, name in enumerate(["Dr. Ana", "Bob", "Dr. Ana"]):
            _record(book, tmp_path, name, n=i)
        book.record_export(lambda n: {"output_path": str(tmp_path / "sent"),
                                      "output_sop_uid": "2.25.9", "output_sha256": "1" * 64,
                                      "payload": "00"},
                           recipient="Carol", source_sop_uid="1.2.3", source_path="/s",
                           source_sha256="cd" * 32, key_fingerprint="f" * 16,
                           delivery=PendingDelivery("CAROL_WS", "move"))
        book.store_source_features("cd" * 32, bytes(range(256)) * 4)
        book.record_access(AccessEvent("Insp. Lestrade", "trace", {"leak_sha256": "0" * 64},
                                       "traced", "recipient 2"))
        note, _ = sign_checkpoint(book, signer)
        before = dict(ledger_id=book.ledger_id, exports=book.exports(), access=book.accesses(),
                      deliveries=book.deliveries(), features=book.source_features(),
                      recipients=book.recipients(), head=book.check().head_hash)
    result = _cli("ledger", "migrate", "--ledger", path, "--to", site, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["ok"] and doc["to"] == site and doc["ledger_id"] == before["ledger_id"]
    assert doc["copied"] == {"recipients": 3, "exports": 4, "deliveries": 1, "access": 1,
                             "sources": 1, "deidentifications": 0}
    assert doc["head_hash"] == before["head"] and doc["n_records"] == 4
    with Ledger(site) as book:
        assert book.ledger_id == before["ledger_id"]
        assert (book.exports(), book.accesses(), book.deliveries(), book.source_features(),
                book.recipients()) == (before["exports"], before["access"], before["deliveries"],
                                       before["features"], before["recipients"])
        assert verify_checkpoint(book, note.encode(), signer.verifier).ok
        new = _record(book, tmp_path, "Dave", n=9)  # the chain goes on from the copied head
        assert (new.id, new.prev_hash, new.recipient_number) == (5, before["head"], 4)
        access = book.record_access(AccessEvent("x", "ledger list", {}, "listed"))
        assert access.id == 2 and access.prev_hash == before["access"][-1].record_hash
        assert book.check().ok and book.check_access().ok
    again = _cli("ledger", "migrate", "--ledger", path, "--to", site)
    assert again.exit_code == 2 and "not an empty ledger" in again.stderr
    with Ledger(path, create=False) as book:  # the source is only read
        assert book.exports() == before["exports"]


FUJI = "fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm"


@pytest.mark.parametrize("command", ["detect", "trace"])
def test_detect_and_trace_search_several_sites_ledgers(command, site, tmp_path, dicom_films,
                                                       monkeypatch):
    """A SQLite ledger (site A) and a PostgreSQL site (site B), each with an export of the
    same film under the same site key: a leak of B's copy is named from B when both are
    searched, each ledger at half the false-accusation rate, and both record the access."""
    for var in ("HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        monkeypatch.setenv(var, str(tmp_path / "home"))
    monkeypatch.delenv("LEAKTRACE_LEDGER", raising=False)
    key, a = tmp_path / "site.key", tmp_path / "a.sqlite"
    for ledger, name in ((a, "Dr. A"), (site, "Dr. B")):
        done = _cli("embed", dicom_films[FUJI], "--recipient", name, "--out",
                    tmp_path / name.replace(". ", ""), "--key", key, "--ledger", ledger, "--json")
        assert done.exit_code == 0, done.output
    [leak] = json.loads(done.stdout)["exported"]
    result = _cli(command, leak["output_path"], "--key", key, "--ledger", a, "--ledger", site,
                  "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["decision"] == "traced" and answer["recipient"] == "Dr. B"
    assert answer["ledger"] == site
    assert [s["ledger"] for s in answer["searched"]] == [str(a), site]
    assert [s["decision"] for s in answer["searched"]] == ["not_found", "traced"]
    assert answer["access_recorded"] is True
    for ledger, outcome in ((a, "not_found"), (site, "traced")):
        with Ledger(ledger, create=False) as book:
            [row] = book.accesses()
            assert (row.action, row.outcome) == (command, outcome)
    alone = _cli(command, leak["output_path"], "--key", key, "--ledger", site, "--json")
    single = json.loads(alone.stdout)
    assert "searched" not in single  # one ledger: the answer as before
    assert answer["threshold"] == pytest.approx(single["threshold"] / 2)


def test_ledger_exists_and_the_tables_are_the_shared_definition(site, tmp_path):
    """Both backends make exactly the columns of forensics/ledger/schema.py, in its order."""
    from forensics.ledger import ledger_exists
    from forensics.ledger.schema import TABLES
    from pgserver import raw_connect

    file = tmp_path / "l.sqlite"
    assert not ledger_exists(site) and not ledger_exists(file) and not ledger_exists(tmp_path)
    for where in (file, site):
        Ledger(where).close()
        assert ledger_exists(where)
        db = raw_connect(where)
        for table in TABLES:
            cur = db.execute(f"SELECT * FROM {table.name} WHERE 1 = 0")
            assert [d[0] for d in cur.description] == [c.name for c in table.columns], table.name
        db.close()


def test_a_lost_connection_is_one_ledger_error_and_keeps_what_was_committed(site, tmp_path):
    """The server ends the ledger's session (as a restart or a dropped network does): the
    next call is one LedgerError naming the database (QA: a psycopg traceback out of embed),
    and what was committed before is all there after reconnecting."""
    with Ledger(site) as book:
        _record(book, tmp_path, "Ana", n=1)
        raw_sql(site, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE pid <> pg_backend_pid() AND application_name = '' "
                      "AND datname = current_database()")
        with pytest.raises(LedgerError, match=r"lost the connection to the ledger's database"):
            book.exports()  # a read, as embed's key check makes before marking
        with pytest.raises(LedgerError, match=r"could not record the export|lost the connection"):
            _record(book, tmp_path, "Ana", n=2)
    with Ledger(site, create=False) as book:
        check = book.check()
        assert check.ok and check.n_records == 1


@pytest.mark.parametrize("url", ["postgresq://u@127.0.0.1:5432/db?site=north",
                                 "mysql://u@h/db", "file:///tmp/ledger.sqlite"])
def test_another_url_scheme_is_refused_not_taken_for_a_file(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LedgerError, match=r"unsupported ledger URL scheme '(postgresq|mysql|file)'"):
        Ledger(url)
    done = CliRunner().invoke(cli.app, ["ledger", "list", "--ledger", url, "--json"])
    assert done.exit_code == 2 and "unsupported ledger URL scheme" in done.output
    assert list(tmp_path.iterdir()) == []  # no stray folder named like the URL
