"""The command line: exit codes, JSON on stdout, one-line errors on stderr, --help, --version.

Every test gives --key and --ledger inside tmp_path (and points HOME and the XDG folders there),
so the real site key and ledger are never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import write_dicom
from forensics import cli, leaks
from forensics.cli import common, hospital, investigator
from watermark.dicomio import read_film
from watermark.display import render
from watermark.keys import create_key, load_key

FUJI = "fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm"  # small: fast to mark and detect
runner = CliRunner()


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    for var in ("HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        monkeypatch.setenv(var, str(tmp_path / "home"))
    for var in ("LEAKTRACE_KEY", "LEAKTRACE_LEDGER"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def site(tmp_path):
    """--key and --ledger options inside tmp_path."""
    return ["--key", str(tmp_path / "site.key"), "--ledger", str(tmp_path / "ledger.sqlite")]


def run(*args):
    result = runner.invoke(cli.app, [str(a) for a in args])
    if isinstance(result.exception, Exception) and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def one_json(result) -> dict:
    """stdout must hold exactly one JSON object (one line)."""
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    obj = json.loads(lines[0])
    assert isinstance(obj, dict)
    return obj


def _leak(marked_path, out_path):
    leaks.save_image(leaks.quantize_8bit(render(read_film(marked_path))), out_path, quality=80)
    return out_path


@pytest.fixture
def exported(tmp_path, site, dicom_films):
    result = run("embed", dicom_films[FUJI], "--recipient", "Dr. Ana Alvarez", "--out",
                 tmp_path / "out", *site, "--json")
    assert result.exit_code == 0, result.output
    return one_json(result)


def test_embed_then_detect_round_trip(tmp_path, site, exported, dicom_films):
    assert exported["recipient"] == "Dr. Ana Alvarez" and exported["failed"] == []
    (record,) = exported["exported"]
    assert record["recipient_number"] == 1 and record["recipient_name"] == "Dr. Ana Alvarez"
    leak = _leak(record["output_path"], tmp_path / "leak.jpg")
    result = run("detect", leak, *site, "--json")
    assert result.exit_code == 0, result.output
    report = one_json(result)
    assert report["recipient"] == "Dr. Ana Alvarez" and report["decision"] == "traced"
    assert report["p_value"] <= 1e-6
    with sqlite3.connect(tmp_path / "ledger.sqlite") as db:
        (ledger_id,) = db.execute("SELECT value FROM meta WHERE key = 'ledger_id'").fetchone()
    assert report["ledger_id"] == ledger_id

    human = run("detect", leak, *site)
    assert human.exit_code == 0 and "TRACED to recipient 'Dr. Ana Alvarez'" in human.stdout


def test_detect_report(tmp_path, site, exported):
    leak = _leak(exported["exported"][0]["output_path"], tmp_path / "leak.jpg")
    folder = tmp_path / "evidence" / "case-1"
    result = run("detect", leak, *site, "--json", "--report", folder)
    assert result.exit_code == 0, result.output
    obj = one_json(result)
    assert obj["decision"] == "traced"
    assert obj["report"] == {"html": str(folder / "report.html"), "json": str(folder / "report.json")}
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert "Dr. Ana Alvarez" in page and obj["leak"]["sha256"] in page
    assert page.count('src="data:image/png;base64,') == 2  # the leak and the scores
    key_hex = (tmp_path / "site.key").read_text().strip()
    assert key_hex not in page and key_hex not in (folder / "report.json").read_text()
    evidence = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    assert evidence["mode"] == "blind" and evidence["ledger_check"]["ok"] is True
    assert evidence["recipient"] == "Dr. Ana Alvarez" and evidence["threshold"] == 1e-6

    human = run("detect", leak, *site, "--report", tmp_path / "second")
    assert human.exit_code == 0 and "evidence report:" in human.stderr
    assert (tmp_path / "second" / "report.html").is_file()

    before = (folder / "report.html").read_bytes()
    again = run("detect", leak, *site, "--json", "--report", folder)  # refused before detecting
    assert again.exit_code == 2
    assert "holds a report already (report.html, report.json)" in one_json(again)["error"]
    assert (folder / "report.html").read_bytes() == before
    (tmp_path / "file").write_text("x")
    result = run("detect", leak, *site, "--report", tmp_path / "file")
    assert result.exit_code == 2 and "is not a folder" in result.stderr


def test_detect_report_that_cannot_be_written_still_prints_the_result(tmp_path, site, exported,
                                                                     monkeypatch):
    from forensics import report

    def disk_full(folder, *args, **kwargs):
        raise report.ReportError(f"{folder}: cannot write the report (No space left on device)")

    monkeypatch.setattr(report, "write_report", disk_full)
    leak = _leak(exported["exported"][0]["output_path"], tmp_path / "leak.jpg")
    result = run("detect", leak, *site, "--json", "--report", tmp_path / "r")
    assert result.exit_code == 2
    obj = one_json(result)
    assert obj["decision"] == "traced" and obj["recipient"] == "Dr. Ana Alvarez"
    assert obj["report"]["error"].startswith("no report written: ")
    assert "No space left on device" in result.stderr and "Traceback" not in result.output


def test_unmarked_film_is_not_found(tmp_path, site, exported, dicom_films):
    leaks.save_image(leaks.quantize_8bit(render(read_film(dicom_films[FUJI]))), tmp_path / "u.png")
    result = run("detect", tmp_path / "u.png", *site, "--json")
    assert result.exit_code == 1, result.output
    report = one_json(result)
    assert report["decision"] == "not_found" and report["recipient"] is None


@pytest.mark.parametrize("make, expected", [
    (lambda d: d / "missing.png", "missing.png: no such file"),
    (lambda d: d, "is a directory"),
    (lambda d: Image.new("L", (30, 30), 9).save(d / "tiny.png") or d / "tiny.png",
     "tiny.png: image of 30 x 30 px is too small"),
])
def test_detect_errors_exit_2_with_one_json_object(tmp_path, site, exported, make, expected):
    leak = make(tmp_path)
    result = run("detect", leak, *site, "--json")
    assert result.exit_code == 2, result.output
    obj = one_json(result)
    assert obj["decision"] == "error" and obj["recipient"] is None and obj["p_value"] is None
    assert expected in obj["error"]
    assert expected in result.stderr and "Traceback" not in result.output


def test_detect_out_of_memory_is_an_error_not_a_traceback(tmp_path, site, exported, monkeypatch):
    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(investigator, "detect_leak", exhausted)
    Image.new("L", (100, 100)).save(tmp_path / "x.png")
    result = run("detect", tmp_path / "x.png", *site, "--json")
    assert result.exit_code == 2
    assert "not enough memory" in one_json(result)["error"]


def test_detect_never_writes_into_a_file_that_is_not_a_ledger(tmp_path, site, exported):
    Image.new("L", (100, 100)).save(tmp_path / "x.png")
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    for command in (["detect", tmp_path / "x.png", "--key", tmp_path / "site.key"],
                    ["ledger", "list"], ["ledger", "verify"]):
        result = run(*command, "--ledger", empty)
        assert result.exit_code == 2 and "not a leaktrace ledger" in result.stderr
        assert empty.stat().st_size == 0


def test_ledger_verify_exit_codes(tmp_path, site, exported):
    ledger = tmp_path / "ledger.sqlite"
    result = run("ledger", "verify", "--ledger", ledger)
    assert result.exit_code == 0 and "chain intact" in result.stdout
    listed = run("ledger", "list", "--ledger", ledger, "--json")
    assert listed.exit_code == 0
    assert json.loads(listed.stdout)["recipients"] == [{"number": 1, "name": "Dr. Ana Alvarez"}]
    with sqlite3.connect(ledger) as db:
        db.execute("UPDATE recipients SET name = 'Innocent Bob' WHERE number = 1")
    result = run("ledger", "verify", "--ledger", ledger)
    assert result.exit_code == 1
    assert "recipient 1" in result.stdout and "'Innocent Bob'" in result.stdout
    assert run("ledger", "verify", "--ledger", tmp_path / "none.sqlite").exit_code == 2


def test_ledger_verify_prints_the_head_and_checks_it(tmp_path, site, exported):
    ledger = tmp_path / "ledger.sqlite"
    result = run("ledger", "verify", "--ledger", ledger, "--json")
    assert result.exit_code == 0, result.output
    check = one_json(result)
    head = exported["exported"][0]["record_hash"]
    assert check["ok"] and check["n_records"] == 1 and check["head_hash"] == head
    human = run("ledger", "verify", "--ledger", ledger, "--expect-head", head)
    assert human.exit_code == 0 and f"head_hash: {head}" in human.stdout
    assert "expected head found (0 record(s) added since)" in human.stdout
    with sqlite3.connect(ledger) as db:  # the newest (only) record deleted
        db.execute("DELETE FROM exports")
    assert run("ledger", "verify", "--ledger", ledger).exit_code == 0  # the chain cannot tell
    result = run("ledger", "verify", "--ledger", ledger, "--expect-head", head, "--json")
    assert result.exit_code == 1
    assert "tail truncation" in one_json(result)["problems"][0]
    result = run("ledger", "verify", "--ledger", ledger, "--expect-head", "abc")
    assert result.exit_code == 2 and "not a SHA-256" in result.stderr


def test_ledger_export_json_and_csv(tmp_path, site, exported):
    ledger = tmp_path / "ledger.sqlite"
    (record,) = exported["exported"]
    result = run("ledger", "export", "--ledger", ledger, "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["exports"] == [record] and doc["chain"]["ok"]
    assert doc["chain"]["head_hash"] == record["record_hash"]
    key_hex = (tmp_path / "site.key").read_text().strip()
    assert len(key_hex) == 64 and key_hex not in result.stdout
    assert doc["exports"][0]["key_fingerprint"] in result.stdout

    out = tmp_path / "exports" / "ledger.csv"
    out.parent.mkdir()
    result = run("ledger", "export", "--ledger", ledger, "--format", "csv", "--out", out)
    assert result.exit_code == 0 and result.stdout == ""
    text = out.read_text()
    assert record["record_hash"] in text and key_hex not in text
    assert f"head_hash {record['record_hash']}" in result.stderr
    assert sorted(os.listdir(out.parent)) == ["ledger.csv"]  # no temporary file left
    assert oct(out.stat().st_mode & 0o777) == "0o600"

    with sqlite3.connect(ledger) as db:
        db.execute("UPDATE exports SET recipient_name = 'Innocent Bob'")
    result = run("ledger", "export", "--ledger", ledger, "--format", "json")
    assert result.exit_code == 1 and "export 1: content does not match" in result.stderr
    assert json.loads(result.stdout)["chain"]["ok"] is False
    for bad, message in ((["--format", "xml"], "--format 'xml'"),
                         (["--format", "csv", "--out", tmp_path], "is a folder")):
        result = run("ledger", "export", "--ledger", ledger, *bad)
        assert result.exit_code == 2 and message in result.stderr, result.output


@pytest.mark.parametrize("name", ["", "   ", "Bob\nAlice", "tab\there"])
def test_bad_recipient_is_refused_before_anything_happens(tmp_path, site, dicom_films, name):
    result = run("embed", dicom_films[FUJI], "--recipient", name, "--out", tmp_path / "out",
                 *site, "--json")
    assert result.exit_code == 2
    assert "bad arguments: --recipient" in result.stderr
    assert one_json(result)["error"].startswith("bad arguments: --recipient")
    assert not any((tmp_path / n).exists() for n in ("out", "site.key", "ledger.sqlite"))


def test_embed_fatal_errors_print_one_json_object_and_create_no_output_folder(tmp_path, site,
                                                                             dicom_films):
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE t (x)")
    result = run("embed", dicom_films[FUJI], "--recipient", "a", "--out", tmp_path / "out",
                 "--key", tmp_path / "site.key", "--ledger", foreign, "--json")
    assert result.exit_code == 2
    assert "not a leaktrace ledger" in one_json(result)["error"]
    assert not (tmp_path / "out").exists()

    (tmp_path / "file").write_text("x")
    result = run("embed", dicom_films[FUJI], "--recipient", "a", "--out", tmp_path / "file",
                 *site, "--json")
    assert result.exit_code == 2 and "is not a folder" in one_json(result)["error"]


def test_embed_empty_folder(tmp_path, site):
    (tmp_path / "empty").mkdir()
    result = run("embed", tmp_path / "empty", "--recipient", "a", "--out", tmp_path / "out", *site)
    assert result.exit_code == 1
    assert f"no DICOM files found under {tmp_path / 'empty'}" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_embed_batch_failures_do_not_stop_the_batch(tmp_path, site, dicom_films, exported, workers):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    shutil.copy(dicom_films[FUJI], a / "x.dcm")
    shutil.copy(dicom_films[FUJI], b / "x.dcm")
    write_dicom(tmp_path / "black.dcm", np.zeros((128, 128), np.uint8))
    marked = exported["exported"][0]["output_path"]
    result = run("embed", a / "x.dcm", b / "x.dcm", tmp_path / "black.dcm", marked,
                 "--recipient", "Bob", "--out", tmp_path / "o2", "--overwrite", *site, "--json",
                 "--workers", workers)
    assert result.exit_code == 1, result.output
    obj = one_json(result)
    assert [r["source_path"] for r in obj["exported"]] == [str(a / "x.dcm")]
    errors = [f["error"] for f in obj["failed"]]
    assert "was already written in this run" in errors[0]
    assert "black.dcm: flat image: nothing to carry the mark" in errors[1]
    assert "is already a leaktrace-marked copy (for 'Dr. Ana Alvarez'); mark the original" in errors[2]
    assert "Traceback" not in result.output


def test_embed_negative_workers_is_a_bad_argument(tmp_path, site, dicom_films):
    result = run("embed", dicom_films[FUJI], "--recipient", "Bob", "--out", tmp_path / "o",
                 *site, "--json", "--workers", -1)
    assert result.exit_code == 2
    assert "--workers -1: must be 0 (one per CPU core) or more" in one_json(result)["error"]
    assert not (tmp_path / "o").exists()


def test_long_messages_are_not_wrapped(tmp_path, site, exported):
    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / "missing-leak-file.png"
    result = run("detect", deep, *site)
    assert result.exit_code == 2
    assert f"error: {deep}: no such file\n" == result.stderr


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_key_others_can_read_gives_a_warning(tmp_path, site, exported):
    os.chmod(tmp_path / "site.key", 0o644)
    Image.new("L", (100, 100)).save(tmp_path / "x.png")
    result = run("detect", tmp_path / "x.png", *site)
    assert f"warning: {tmp_path / 'site.key'} is readable by others (mode 0644); chmod 600 it" \
        in result.stderr


def test_demo_bad_out_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", "/proc/leaktrace-demo"):
        result = run("demo", "--out", out)
        assert result.exit_code == 2, result.output
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: bad arguments")


@pytest.mark.parametrize("command", [[], ["embed"], ["detect"], ["ledger"], ["ledger", "list"],
                                     ["ledger", "verify"], ["ledger", "export"], ["demo"]])
def test_help(command):
    result = run(*command, "--help")
    assert result.exit_code == 0 and "Usage:" in result.stdout


def test_help_names_the_extra_to_install(monkeypatch):
    """Rich read "[postgresql]" as a markup tag and showed "(needs leaktrace)"."""
    monkeypatch.setenv("COLUMNS", "200")
    result = run("embed", "--help")
    assert "leaktrace[postgresql]" in result.stdout


def test_version_with_python_m():
    from watermark import __version__

    done = subprocess.run([sys.executable, "-m", "forensics.cli", "--version"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"leaktrace {__version__}"


def test_ctrl_c_while_the_command_line_loads_ends_with_a_message(monkeypatch, capsys):
    """The console script imports the command line (numpy, SciPy, pydicom: about half a
    second) inside its entry point: Ctrl-C then exits 130 with one line, no traceback."""
    from forensics import entry

    class Interrupted:
        def find_spec(self, name, path=None, target=None):
            if name == "forensics.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "forensics.cli")
    monkeypatch.setattr(sys, "meta_path", [Interrupted(), *sys.meta_path])
    with pytest.raises(SystemExit) as stop:
        entry.main()
    assert stop.value.code == 130
    assert capsys.readouterr().err == "leaktrace: interrupted while starting\n"
    monkeypatch.setattr(sys, "argv", ["leaktrace", "detect", "leak.png", "--json"])
    with pytest.raises(SystemExit):
        entry.main()
    said = capsys.readouterr()
    assert json.loads(said.out) == {"error": "interrupted while starting", "interrupted": True}


# -- Ctrl-C: exit 130 and one line on stderr (and one JSON object with --json) -------------

def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_detect_interrupted_says_nothing_was_named(tmp_path, site, exported, monkeypatch):
    monkeypatch.setattr(investigator, "detect_leak", _interrupt)
    Image.new("L", (100, 100)).save(tmp_path / "x.png")
    result = run("detect", tmp_path / "x.png", *site, "--json")
    assert result.exit_code == 130
    obj = one_json(result)
    assert obj["interrupted"] is True and obj["decision"] == "error"
    assert result.stderr == f"interrupted: {tmp_path / 'x.png'}: nothing was named (the analysis " \
                            "stopped before it finished)\n"


def test_trace_interrupted_while_writing_the_report_says_what_is_there(tmp_path, site, exported,
                                                                        monkeypatch):
    from forensics import report
    from watermark._files import atomic_write

    def html_then_ctrl_c(folder, *args, **kwargs):
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / report.REPORT_HTML, b"<html></html>")
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "write_report", html_then_ctrl_c)
    leak = _leak(exported["exported"][0]["output_path"], tmp_path / "leak.jpg")
    result = run("trace", leak, *site, "--json", "--report", tmp_path / "r")
    assert result.exit_code == 130
    assert one_json(result)["interrupted"] is True
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("interrupted: ")
    assert f"nothing was named (stopped while writing the evidence report); {tmp_path / 'r'} " \
           "holds report.html (whole: each file is written atomically); the report is " \
           "incomplete" in result.stderr


def test_ctrl_c_in_a_command_without_its_own_message_gets_one(tmp_path, site, monkeypatch):
    monkeypatch.setattr(hospital, "Ledger", _interrupt)
    result = run("ledger", "list", *site[2:])
    assert result.exit_code == 130
    assert result.stderr == "interrupted: leaktrace stopped before the command finished\n"


def test_ctrl_c_outside_a_command_exits_130_with_one_line(monkeypatch, capsys):
    """Ctrl-C landing after the command printed its result (while exiting) is not a kill
    by SIGINT (return code -2) but exit 130 with a line."""
    from forensics import entry

    monkeypatch.setattr(cli, "main", _interrupt)
    monkeypatch.setattr(common, "interrupt_reported", False)
    with pytest.raises(SystemExit) as stop:
        entry.main()
    assert stop.value.code == 130
    assert capsys.readouterr().err == "leaktrace: interrupted\n"


def test_embed_interrupted_prints_what_was_exported_and_a_rerun_exports_the_rest(
        tmp_path, site, dicom_films, monkeypatch):
    films = tmp_path / "films"
    films.mkdir()
    for i in range(3):
        shutil.copy(dicom_films[FUJI], films / f"x{i}.dcm")
    real = hospital.export_many

    def two_then_ctrl_c(pairs, **kwargs):
        real(list(pairs)[:2], **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(hospital, "export_many", two_then_ctrl_c)
    args = ["embed", films, "--recipient", "Bob", "--out", tmp_path / "o", *site]
    result = run(*args, "--json")
    assert result.exit_code == 130
    obj = one_json(result)
    assert obj["interrupted"] is True and obj["failed"] == []
    assert [r["source_path"] for r in obj["exported"]] == [str(films / "x0.dcm"),
                                                          str(films / "x1.dcm")]
    line = ("interrupted: after 2 of 3 file(s): 2 exported and recorded in the ledger; the others "
            "were not exported; run the same command again with --skip-existing to export the "
            "other 1 and leave the 2 already exported alone\n")
    assert obj["error"] == line[len("interrupted: "):-1]
    assert result.stderr.endswith(line) and "Traceback" not in result.output
    monkeypatch.setattr(hospital, "export_many", real)
    plain = run(*args, "--json")  # without --skip-existing the outputs that exist are refused
    assert plain.exit_code == 1
    obj = one_json(plain)
    assert [r["source_path"] for r in obj["exported"]] == [str(films / "x2.dcm")]
    assert [f["source"] for f in obj["failed"]] == [str(films / "x0.dcm"), str(films / "x1.dcm")]
    (tmp_path / "o" / "x2.dcm").unlink()  # as if that run had not happened: x2 to do again
    with_skip = run(*args, "--skip-existing", "--json")  # what the message says
    assert with_skip.exit_code == 0, with_skip.stderr
    obj = one_json(with_skip)
    assert [r["source_path"] for r in obj["exported"]] == [str(films / "x2.dcm")]
    assert [r["source_path"] for r in obj["skipped"]] == [str(films / "x0.dcm"),
                                                         str(films / "x1.dcm")]
    assert obj["failed"] == []


def _demo_files_then_ctrl_c(folder, say=print):
    from forensics.cli.demo import prepare_folder

    prepare_folder(folder)
    (folder / "demo.key").write_bytes(b"k")
    (folder / "ledger.sqlite").write_bytes(b"l")
    raise KeyboardInterrupt


def test_demo_interrupted_removes_its_temporary_folder(tmp_path, monkeypatch):
    import tempfile

    from forensics.cli import demo

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(demo, "run_demo", _demo_files_then_ctrl_c)
    result = run("demo")
    assert result.exit_code == 130
    assert list(tmp_path.iterdir()) == []
    assert result.stderr.startswith("interrupted: the demo stopped before it finished; its "
                                    f"temporary folder {tmp_path}/leaktrace-demo-")
    assert result.stderr.endswith(" was removed\n")


def test_demo_interrupted_keeps_the_out_folder_it_was_given(tmp_path, monkeypatch):
    from forensics.cli import demo

    monkeypatch.setattr(demo, "run_demo", _demo_files_then_ctrl_c)
    result = run("demo", "--out", tmp_path / "d")
    assert result.exit_code == 130
    assert (tmp_path / "d" / "demo.key").exists()
    assert result.stderr == ("interrupted: the demo stopped before it finished; the files made "
                             f"so far are in {tmp_path / 'd'}\n")


# -- key binding (issue 16): never a second key in a ledger by accident -----------------------

def _export_count(ledger_path) -> int:
    with sqlite3.connect(ledger_path) as db:
        return db.execute("SELECT COUNT(*) FROM exports").fetchone()[0]


def test_the_first_embed_creates_the_key(tmp_path, site, dicom_films):
    result = run("embed", dicom_films[FUJI], "--recipient", "a", "--out", tmp_path / "out", *site)
    assert result.exit_code == 0, result.output
    fingerprint = load_key(tmp_path / "site.key").fingerprint
    assert (f"created a new site key at {tmp_path / 'site.key'} (fingerprint {fingerprint})"
            in result.stderr)
    assert stat.S_IMODE(os.stat(tmp_path / "site.key").st_mode) == 0o600


def test_embed_refuses_a_key_the_ledger_has_not_seen(tmp_path, site, exported, dicom_films):
    ledger = tmp_path / "ledger.sqlite"
    known = load_key(tmp_path / "site.key").fingerprint
    other = create_key(tmp_path / "other.key")
    result = run("embed", dicom_films[FUJI], "--recipient", "Bob", "--out", tmp_path / "o2",
                 "--key", other.path, "--ledger", ledger, "--json")
    assert result.exit_code == 2, result.output
    message = (f"the ledger at {ledger} has 1 export made with key {known}; the key given "
               f"({other.path}) has fingerprint {other.fingerprint}, which made none of them")
    assert result.stderr.startswith("error: " + message) and result.stderr.count("\n") == 1
    assert "Point --key (or LEAKTRACE_KEY) at the key file of fingerprint " + known in result.stderr
    assert "--new-key" in result.stderr
    assert one_json(result)["error"].startswith(message)
    assert not (tmp_path / "o2").exists() and _export_count(ledger) == 1


@pytest.mark.parametrize("how", ["--key path", "default key deleted"])
def test_embed_never_creates_a_key_beside_a_ledger_with_exports(tmp_path, dicom_films, how):
    """A wrong --key, or the default key file deleted (LEAKTRACE_KEY unset in a cron job)."""
    ledger = tmp_path / "ledger.sqlite"
    default = tmp_path / "home" / "leaktrace" / "site.key"  # XDG_CONFIG_HOME is tmp_path/home
    first = run("embed", dicom_films[FUJI], "--recipient", "a", "--out", tmp_path / "o1",
                "--ledger", ledger)
    assert first.exit_code == 0 and default.is_file(), first.output
    known = load_key(default).fingerprint
    if how == "--key path":
        missing, key_args = tmp_path / "typo.key", ["--key", tmp_path / "typo.key"]
    else:
        default.unlink()
        missing, key_args = default, []
    result = run("embed", dicom_films[FUJI], "--recipient", "Bob", "--out", tmp_path / "o2",
                 "--ledger", ledger, *key_args)
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"error: the ledger at {ledger} has 1 export made with key {known}; the key file "
        f"{missing} does not exist, and no new key is created beside a ledger that holds "
        "exports (a leak is traced only with the key that marked it). Point --key (or "
        f"LEAKTRACE_KEY) at the key file of fingerprint {known} (restore it from its backup if "
        "it is lost), or give --new-key to start a new site key on purpose; nothing was "
        "exported\n")
    assert not missing.exists() and not (tmp_path / "o2").exists()
    assert _export_count(ledger) == 1


def test_new_key_changes_the_key_on_purpose(tmp_path, site, exported, dicom_films):
    ledger = tmp_path / "ledger.sqlite"
    known = load_key(tmp_path / "site.key").fingerprint
    other = create_key(tmp_path / "other.key")
    result = run("embed", dicom_films[FUJI], "--recipient", "Bob", "--out", tmp_path / "o2",
                 "--key", other.path, "--ledger", ledger, "--new-key", "--json")
    assert result.exit_code == 0, result.output
    assert (f"warning: --new-key: the ledger at {ledger} has 1 export(s) made with key(s) "
            f"{known}; these exports are made with key {other.fingerprint}, so it holds 2 key "
            "fingerprints from now on") in result.stderr
    assert one_json(result)["exported"][0]["key_fingerprint"] == other.fingerprint
    with sqlite3.connect(ledger) as db:
        used = [fp for (fp,) in db.execute("SELECT key_fingerprint FROM exports ORDER BY id")]
    assert used == [known, other.fingerprint]
    again = run("embed", dicom_films[FUJI], "--recipient", "Bob", "--out", tmp_path / "o3",
                "--key", other.path, "--ledger", ledger)  # a key the ledger knows now
    assert again.exit_code == 0 and "warning" not in again.stderr, again.output
    # a missing key file with --new-key is a new key, created on purpose
    fresh = tmp_path / "rotated.key"
    made = run("embed", dicom_films[FUJI], "--recipient", "Cy", "--out", tmp_path / "o4",
               "--key", fresh, "--ledger", ledger, "--new-key")
    assert made.exit_code == 0, made.output
    assert f"created a new site key at {fresh}" in made.stderr and "holds 3 key" in made.stderr
    assert _export_count(ledger) == 4


def test_detect_with_a_key_the_ledger_has_not_seen_warns(tmp_path, site, exported):
    ledger = tmp_path / "ledger.sqlite"
    known = load_key(tmp_path / "site.key").fingerprint
    other = create_key(tmp_path / "other.key")
    leak = _leak(exported["exported"][0]["output_path"], tmp_path / "leak.jpg")
    warning = (f"warning: this ledger's exports were made with key(s) {known}, not with the key "
               f"given ({other.fingerprint}): no mark recorded in this ledger can be found with "
               "it, so 'not found' says nothing about the leak")
    for command in ("detect", "trace"):
        result = run(command, leak, "--key", other.path, "--ledger", ledger, "--json")
        assert result.exit_code == 1, result.output
        obj = one_json(result)
        assert obj["decision"] == "not_found" and obj["key_in_ledger"] is False
        assert obj["ledger_key_fingerprints"] == [known]
        assert obj["key_fingerprint"] == other.fingerprint  # existing fields unchanged
        assert warning in result.stderr
        human = run(command, leak, "--key", other.path, "--ledger", ledger)
        assert human.exit_code == 1 and warning in human.stderr
    right = run("detect", leak, *site, "--json")
    assert right.exit_code == 0 and "warning" not in right.stderr, right.output
    obj = one_json(right)
    assert obj["key_in_ledger"] is True and obj["recipient"] == "Dr. Ana Alvarez"


@pytest.mark.parametrize("args, said", [
    (["embed", "x.dcm", "--out", "o", "--json"], "Missing option '--recipient'"),
    (["embed", "x.dcm", "--out", "o", "--recipient", "a", "--workers", "abc", "--json"],
     "'--workers'"),
    (["detect", "--json"], "Missing argument"),
    (["ledger", "list", "--bogus", "--json"], "No such option: --bogus"),
])
def test_usage_errors_with_json_still_print_one_json_object(args, said):
    result = run(*args)
    assert result.exit_code == 2
    obj = one_json(result)
    assert obj["error"].startswith("bad arguments: ") and said in obj["error"]


def test_ledger_list_json_on_a_missing_ledger_prints_the_error_as_json(tmp_path):
    result = run("ledger", "list", "--ledger", tmp_path / "none.sqlite", "--json")
    assert result.exit_code == 2
    obj = one_json(result)
    assert obj["exports"] == [] and "no ledger there" in obj["error"]


def test_skip_existing_does_not_skip_a_changed_file_or_another_recipients(tmp_path, site,
                                                                         dicom_films):
    films = tmp_path / "films"
    films.mkdir()
    shutil.copy(dicom_films[FUJI], films / "a.dcm")
    args = ["embed", films, "--out", tmp_path / "o", *site, "--json"]
    assert run(*args, "--recipient", "Bob").exit_code == 0
    other = one_json(run(*args, "--recipient", "Carol", "--skip-existing"))
    assert other["skipped"] == [] and len(other["failed"]) == 1  # Bob's copy is not Carol's
    (tmp_path / "o" / "a.dcm").write_bytes(b"changed")
    changed = one_json(run(*args, "--recipient", "Bob", "--skip-existing"))
    assert changed["skipped"] == [] and "no longer that copy" in changed["failed"][0]["error"]
    assert (tmp_path / "o" / "a.dcm").read_bytes() == b"changed"  # left as it is


def test_overwrite_refuses_to_replace_another_recipients_recorded_copy(tmp_path, site,
                                                                       dicom_films):
    films = tmp_path / "films"
    films.mkdir()
    shutil.copy(dicom_films[FUJI], films / "a.dcm")
    args = ["embed", films, "--out", tmp_path / "o", *site, "--json"]
    assert run(*args, "--recipient", "Bob").exit_code == 0
    before = (tmp_path / "o" / "a.dcm").read_bytes()
    carol = run(*args, "--recipient", "Carol", "--overwrite")
    assert carol.exit_code == 1
    assert "holds the copy recorded for 'Bob'" in one_json(carol)["failed"][0]["error"]
    assert (tmp_path / "o" / "a.dcm").read_bytes() == before
    assert run(*args, "--recipient", "Bob", "--overwrite").exit_code == 0  # its own: replaced


def test_an_output_that_is_an_input_of_the_run_is_refused_before_anything_is_written(
        tmp_path, site, dicom_films):
    """a/x.dcm and b/x.dcm exported to --out b: the first copy went over the second
    original before it was read (with --overwrite, the original was lost)."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(dicom_films[FUJI], tmp_path / folder / "x.dcm")
    original = (tmp_path / "b" / "x.dcm").read_bytes()
    result = run("embed", tmp_path / "a" / "x.dcm", tmp_path / "b" / "x.dcm", "--recipient",
                 "Cross", "--out", tmp_path / "b", "--overwrite", *site, "--json")
    assert result.exit_code == 2, result.output
    error = one_json(result)["error"]
    assert f"its output {tmp_path / 'b' / 'x.dcm'} is an input of this run" in error, error
    assert (tmp_path / "b" / "x.dcm").read_bytes() == original
    assert _export_count(tmp_path / "ledger.sqlite") == 0


def test_overwrite_never_replaces_a_film_the_ledger_records_as_a_source(tmp_path, site,
                                                                       dicom_films):
    films = tmp_path / "films"
    films.mkdir()
    shutil.copy(dicom_films[FUJI], films / "a.dcm")
    assert run("embed", films / "a.dcm", "--recipient", "Bob", "--out", tmp_path / "o",
               *site).exit_code == 0
    original = (films / "a.dcm").read_bytes()
    # another film whose output path is the recorded source of Bob's copy
    (tmp_path / "other").mkdir()
    shutil.copy(dicom_films["nih_cxr14_dx_8bit_1024px_nccid.dcm"], tmp_path / "other" / "a.dcm")
    result = run("embed", tmp_path / "other" / "a.dcm", "--recipient", "Carol", "--out", films,
                 "--overwrite", *site, "--json")
    assert result.exit_code == 1, result.output
    error = one_json(result)["failed"][0]["error"]
    assert "is the original the ledger records as the source of export 1 (for 'Bob')" in error
    assert (films / "a.dcm").read_bytes() == original


def test_skip_existing_with_overwrite_is_refused(tmp_path, site, dicom_films):
    result = run("embed", dicom_films[FUJI], "--recipient", "Bob", "--out", tmp_path / "o",
                 "--skip-existing", "--overwrite", *site, "--json")
    assert result.exit_code == 2
    assert "give one of them" in one_json(result)["error"]
    assert not (tmp_path / "o").exists()


def test_a_run_in_which_every_file_fails_leaves_no_empty_out_folder(tmp_path, site):
    (tmp_path / "films" / "sub").mkdir(parents=True)
    (tmp_path / "films" / "sub" / "notes.dcm").write_text("not a film")
    result = run("embed", tmp_path / "films", "--recipient", "Bob", "--out", tmp_path / "o",
                 *site)
    assert result.exit_code == 1 and "failed:" in result.stderr
    assert not (tmp_path / "o").exists()
    kept = tmp_path / "kept"
    kept.mkdir()  # a folder that was there before is left
    run("embed", tmp_path / "films", "--recipient", "Bob", "--out", kept, *site)
    assert kept.is_dir()


@pytest.mark.parametrize("settle", [0.0, 3.0], ids=["while-the-pool-starts", "while-marking"])
def test_embed_with_workers_stops_on_sigint_to_its_process_group(tmp_path, dicom_films, settle):
    """`timeout -s INT` signals the process and then its whole group (the marking workers
    too). The run must still end with exit 130, one JSON object and no traceback, and leave
    no worker behind (it hung, waiting on workers working through their queue)."""
    import signal
    import time

    films = tmp_path / "films"
    films.mkdir()
    for i in range(6):
        shutil.copy(dicom_films["nih_cxr14_dx_8bit_1024px_nccid.dcm"], films / f"n{i}.dcm")
    cmd = [sys.executable, "-m", "forensics.cli", "embed", str(films), "--recipient", "a",
           "--out", str(tmp_path / "o"), "--ledger", str(tmp_path / "l.sqlite"),
           "--key", str(tmp_path / "k.key"), "--workers", "2", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "l.sqlite").exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # the ledger exists once the command is past its start-up
        time.sleep(settle)
        os.kill(proc.pid, signal.SIGINT)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode in (130, 0), err  # 0 only if it had finished all six already
    assert len(out.splitlines()) == 1 and b"Traceback" not in err
    deadline = time.monotonic() + 15  # no worker left running (zombies aside)
    while _running_in_group(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _running_in_group(proc.pid) == []


def _running_in_group(pgid: int) -> list[int]:
    """PIDs of the processes of group ``pgid`` that are not zombies (from /proc)."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(stat_file.parent.name))
    return found


def test_an_output_folder_that_cannot_be_written_is_exit_2_before_any_file_is_marked(
        tmp_path, site, dicom_films):
    """/proc/1 exists and no file can be created in it, even by root (for whom a chmod'ed
    folder would still be writable)."""
    films = tmp_path / "films"
    films.mkdir()
    shutil.copy(dicom_films[FUJI], films / "a.dcm")
    result = run("embed", films, "--recipient", "Bob", "--out", "/proc/1", *site, "--json")
    assert result.exit_code == 2
    obj = one_json(result)
    assert "/proc/1: cannot write in the output folder" in obj["error"]
    assert obj["exported"] == [] and obj["failed"] == []


@pytest.mark.parametrize("command", [["embed"], ["detect"], ["trace"], ["gateway"], ["demo"],
                                     ["bench"], ["ledger", "list"], ["ledger", "verify"],
                                     ["ledger", "checkpoint"], ["ledger", "witness"],
                                     ["ledger", "export"]])
def test_every_command_says_its_exit_codes_and_flags_show_no_type(command):
    result = runner.invoke(cli.app, [*command, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0
    assert "Exit codes:" in result.stdout
    assert "--json <bool>" not in " ".join(result.stdout.split())
