"""The investigator's commands: ``detect``, ``trace`` (with the evidence report) and ``ledger
reidentify``.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from watermark.errors import LeaktraceError
from watermark.keys import load_key
from watermark.stats import FALSE_ACCUSATION_RATE

from ..ledger.access import id_ranges, operator_name, query_event
from ..ledger import AccessEvent, Ledger
from ..trace import detect_leak, trace_leak
from .common import (app, err, _fail, _interrupted, JsonOpt, KeyOpt, ledger_app, LedgerOpt,
                     LedgersOpt, OperatorOpt, _record_access)


LeakArg = Annotated[Path, typer.Argument(help="The leaked image: PNG, JPEG, WebP, TIFF, BMP, GIF or DICOM (grey or colour).")]


ReportOpt = Annotated[Optional[Path], typer.Option(
    "--report", metavar="DIR",
    help="Also write an evidence report into DIR (created if missing): report.html (one "
         "self-contained file with figures) and report.json. A folder that holds a report "
         "already is refused.")]


def _report_folder_problem(folder: Path) -> str | None:
    """Why ``--report folder`` cannot be used, checked before any work; ``None`` if it can."""
    from ..report import REPORT_HTML, REPORT_JSON

    if folder.exists() and not folder.is_dir():
        return f"bad arguments: --report {folder}: exists and is not a folder"
    there = [n for n in (REPORT_HTML, REPORT_JSON) if (folder / n).exists()]
    if there:
        return (f"bad arguments: --report {folder}: holds a report already ({', '.join(there)}); "
                "give another folder")
    return None


def _answer(leak: Path, query, *, ledger: list[str] | None, key: Path | None, as_json: bool,
            report_dir: Path | None, action: str, operator: str | None) -> None:
    """Shared by ``detect`` and ``trace``: run ``query(book, key, alpha)`` on each ledger,
    print, write the evidence report, exit. A key none of the ledger's exports was made with
    is still used, with a warning on stderr (also with ``--json``, whose object then has
    ``"key_in_ledger": false``).

    The query reads the ledger read-only; then the access (``action``, who, the leak's
    SHA-256, the outcome) is recorded through a second connection (:func:`_record_access`).
    A failure to record is a warning, never a failed query; the JSON says
    ``"access_recorded"``. An interrupted query records nothing.

    Several ledgers (``--ledger`` given more than once: the sites of a group, each with its
    own ledger id): each is searched at ``alpha / k`` for ``k`` ledgers (union bound, so that
    the false-accusation rate of the whole search stays at the designed one), each records the
    access with its own outcome, and the answer is the traced result with the smallest
    p-value, else the first ledger's; the JSON adds ``searched`` (per ledger: ``ledger``,
    ``ledger_id``, ``decision``, ``recipient``, ``p_value``)."""
    ledgers = list(ledger) if ledger else [None]
    alpha = FALSE_ACCUSATION_RATE / len(ledgers)
    files, report_error, writing, interrupted = None, None, False, False
    try:
        who, message = operator_name(operator), None
    except LeaktraceError as exc:  # with --json still one JSON object, so not _who()
        who, message = None, f"bad arguments: {exc}"
    if message is None and report_dir is not None:
        message = _report_folder_problem(report_dir)
    if message is None:
        try:
            site_key = load_key(key)
            with contextlib.ExitStack() as stack:
                books = [stack.enter_context(Ledger(where, create=False)) for where in ledgers]
                reports = [query(book, site_key, alpha) for book in books]
                best = _best_report(reports)
                report = reports[best]
                if report_dir is not None:
                    writing = True
                    files, report_error = _evidence_report(report_dir, report, books[best])
        except LeaktraceError as exc:
            message = str(exc)
        except MemoryError:
            message = f"{leak}: not enough memory to read and analyse this image; scale it down"
        except KeyboardInterrupt:
            interrupted = True
            message = (f"{leak}: nothing was named (the analysis stopped before it finished)"
                       if not writing else _report_interrupted(leak, report_dir))
    if message is not None:
        recorded = False
        if not interrupted and who is not None:
            event = query_event(action, who, leak, error=message)
            recorded = all([_record_access(where, event) for where in ledgers])
        if as_json:
            print(json.dumps({"recipient": None, "p_value": None, "decision": "error",
                              "error": message, **({"interrupted": True} if interrupted else
                                                   {"access_recorded": recorded})}))
        raise _interrupted(message) if interrupted else _fail(message)
    results = [r.as_dict() for r in reports]
    recorded = all([_record_access(where, query_event(action, who, leak, result=r))
                    for where, r in zip(ledgers, results)])
    result = results[best]
    if len(ledgers) > 1:
        result["searched"] = [{"ledger": r["ledger"], "ledger_id": r.get("ledger_id"),
                               "decision": r["decision"], "recipient": r["recipient"],
                               "p_value": r["p_value"]} for r in results]
    if as_json:
        if report.key_warning:  # the one warning that changes how the answer must be read
            err.print(f"[yellow]warning:[/] {escape(report.key_warning)}")
        result["access_recorded"] = recorded
        if report_dir is not None:
            result["report"] = ({"html": str(files.html), "json": str(files.json)} if files
                                else {"error": report_error})
        print(json.dumps(result))
    else:
        for w in report.warnings:
            err.print(f"[yellow]warning:[/] {escape(w)}")
        if len(ledgers) > 1:
            err.print(f"searched {len(ledgers)} ledgers, each at false-accusation rate "
                      f"{alpha:g}; the answer is from {escape(str(report.ledger_path))}")
        print(f"{leak}: {report.summary()}")
        if files:
            err.print(f"evidence report: {escape(str(files.html))} and {escape(str(files.json))}")
    if report_error:
        raise _fail(report_error)
    raise typer.Exit(0 if report.decision == "traced" else 1)


def _best_report(reports: list) -> int:
    """The index of the answer among the ledgers' reports: the traced one with the smallest
    p-value, else the first."""
    traced = [i for i, r in enumerate(reports) if r.decision == "traced"]
    return min(traced, key=lambda i: reports[i].p_value) if traced else 0


def _report_interrupted(leak: Path, folder: Path) -> str:
    """What Ctrl-C while the evidence report was written leaves in ``folder``."""
    from ..report import REPORT_HTML, REPORT_JSON

    there = [n for n in (REPORT_HTML, REPORT_JSON) if (folder / n).exists()]
    state = (f"{folder} holds {' and '.join(there)} (whole: each file is written atomically)"
             + ("; the report is incomplete: give another --report folder to run again"
                if len(there) == 1 else "") if there else f"no report was written in {folder}")
    return f"{leak}: nothing was named (stopped while writing the evidence report); {state}"


def _evidence_report(folder: Path, report, book: Ledger):
    """Write the evidence report of a detection or trace: ``(ReportFiles, None)`` or
    ``(None, error message)``."""
    from watermark.dicomio import sha256_file

    from ..report import blind_evidence, write_report

    try:
        if report.leak_sha256 != sha256_file(report.leak_path):
            return None, (f"{report.leak_path}: the file changed while it was analysed; no "
                          "report written")
        evidence = blind_evidence(report.as_dict(), book.check().as_dict())
        figures = report.figures
        return write_report(folder, evidence, leak_image=figures["leak_image"],
                            original_image=figures.get("original_image"),
                            aligned_leak=figures.get("aligned_leak")), None
    except (LeaktraceError, OSError) as exc:
        return None, f"no report written: {exc}"
    except MemoryError:
        return None, f"{folder}: not enough memory to draw the report's figures"


@app.command()
def detect(leak: LeakArg, ledger: LedgersOpt = None, key: KeyOpt = None,
           as_json: JsonOpt = False, report_dir: ReportOpt = None,
           operator: OperatorOpt = None) -> None:
    """Find whose copy a leaked image is, from the image alone (blind detection).

    Exit codes: 0 traced (a recipient is named), 1 not found, 2 error (also when the
    --report cannot be written; the result is still printed), 130 interrupted.
    """
    _answer(leak, lambda book, site_key, alpha: detect_leak(leak, ledger=book, key=site_key,
                                                            alpha=alpha),
            ledger=ledger, key=key, as_json=as_json, report_dir=report_dir, action="detect",
            operator=operator)


@app.command()
def trace(
    leak: LeakArg, ledger: LedgersOpt = None, key: KeyOpt = None,
    original: Annotated[Optional[Path], typer.Option(
        "--original", help="The original film (DICOM) the leak shows; skips the search over the ledger's exports.")] = None,
    report_dir: ReportOpt = None, as_json: JsonOpt = False, operator: OperatorOpt = None,
) -> None:
    """Find whose copy a leaked image is, with the exported originals (informed detection).

    The leak is registered onto the original it shows, the original is subtracted, and every
    recipient of that film is tested; blind detection when no exported film is found in the
    leak.

    Exit codes: 0 traced (a recipient is named), 1 not found, 2 error (also when the
    --report cannot be written; the result is still printed), 130 interrupted.
    """
    _answer(leak, lambda book, site_key, alpha: trace_leak(leak, ledger=book, key=site_key,
                                                           original=original, alpha=alpha),
            ledger=ledger, key=key, as_json=as_json, report_dir=report_dir, action="trace",
            operator=operator)


@ledger_app.command("reidentify")
def ledger_reidentify(
    value: Annotated[str, typer.Argument(help="A de-identified copy's pseudonymous Patient ID or Name, or its Study, Series or SOP Instance UID.")],
    ledger: LedgerOpt = None,
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="JSON on stdout.")] = False,
    operator: OperatorOpt = None,
) -> None:
    """Map a de-identified copy's pseudonym or UID back to its source study (opened read-only).

    Prints, for each de-identified export whose copy carries VALUE, the recipient, the
    options and the source's Patient ID, Patient's Name and Study, Series and SOP Instance
    UIDs beside the copy's. For authorised investigators: the lookup is recorded in the
    access log (who, which exports).

    Exit codes: 0 found, 1 no de-identified export carries VALUE, 2 the ledger cannot be read.
    """
    try:
        who = operator_name(operator)
        with Ledger(ledger, create=False) as book:
            found = book.reidentify(value)
            path = book.path
    except LeaktraceError as exc:
        if as_json:
            print(json.dumps({"value": value, "found": [], "error": str(exc)}))
        raise _fail(str(exc)) from None
    recorded = _record_access(ledger, AccessEvent(
        who, "ledger reidentify", {"export_ids": id_ranges(f["export_id"] for f in found), "count": len(found)},
        "listed" if found else "not_found", ""))
    if as_json:
        print(json.dumps({"value": value, "ledger": str(path), "found": found,
                          "access_recorded": recorded}))
    else:
        for f in found:
            m = f["mapping"]
            print(f"export {f['export_id']} for {f['recipient_name']!r} "
                  f"(options: {', '.join(f['options']) or 'none'})")
            for field in ("patient_id", "patient_name", "study_uid", "series_uid", "sop_uid"):
                print(f"  {field}: {m[field][1]} <- {m[field][0]}")
            if m.get("date_shift_days") is not None:
                print(f"  dates shifted back by {m['date_shift_days']} days")
        if not found:
            err.print(f"no de-identified export in {escape(str(path))} carries {escape(value)!r}")
    if not found:
        raise typer.Exit(1)
