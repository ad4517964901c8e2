"""The ``leaktrace`` command line (typer).

Each command parses its options, calls one function of the library, prints, and exits with a
documented code. Human-readable text and progress go to stderr; ``--json`` output goes to
stdout, one JSON object, so it can be piped into ``jq``.

Exit codes
----------
``detect``: 0 traced (a recipient is named), 1 not found, 2 error (bad file, bad arguments).
``embed``: 0 every file exported, 1 at least one file failed (the others were still exported),
2 error before any file (bad arguments, key or ledger).
``demo``: 0 when the demo traced the right recipient, 1 otherwise.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from watermark import __version__
from watermark.errors import LeaktraceError
from watermark.keys import load_key, load_or_create_key

from .export import collect_sources, export_many
from .ledger import Ledger
from .trace import detect_leak

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Mark exported chest films with an invisible recipient ID, and trace leaked copies.")
ledger_app = typer.Typer(no_args_is_help=True, help="Inspect and check the export ledger.")
app.add_typer(ledger_app, name="ledger")
err = Console(stderr=True, highlight=False)

LedgerOpt = Annotated[Optional[Path], typer.Option(
    "--ledger", help="Export ledger (SQLite). Default: $LEAKTRACE_LEDGER, else "
                     "~/.local/share/leaktrace/ledger.sqlite.")]
KeyOpt = Annotated[Optional[Path], typer.Option(
    "--key", help="Site key file. Default: $LEAKTRACE_KEY, else ~/.config/leaktrace/site.key.")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    return typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        print(f"leaktrace {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """leaktrace: forensic watermarks for radiographs."""


@app.command()
def embed(
    sources: Annotated[list[Path], typer.Argument(help="DICOM files or folders (searched recursively).")],
    recipient: Annotated[str, typer.Option("--recipient", help="Who receives these copies (any name; registered in the ledger).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder; created if missing.")],
    ledger: LedgerOpt = None,
    key: KeyOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with every outcome on stdout.")] = False,
) -> None:
    """Mark each film for RECIPIENT, write the marked DICOM copies to OUT and record them."""
    try:
        site_key, created = load_or_create_key(key)
        if created:
            err.print(f"created a new site key (fingerprint {site_key.fingerprint}); keep it safe and private")
        out.mkdir(parents=True, exist_ok=True)
        book = Ledger(ledger)
    except LeaktraceError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"{out}: cannot create the output folder ({exc})") from None
    pairs = list(collect_sources(sources, out))
    with book, Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err, disable=len(pairs) < 2) as bar:
        task = bar.add_task("marking", total=len(pairs))
        outcomes = export_many(pairs, recipient=recipient, ledger=book, key=site_key,
                               overwrite=overwrite, progress=lambda _: bar.advance(task))
    failed = [o for o in outcomes if o.error]
    for o in failed:
        err.print(f"[red]failed:[/] {o.error}", soft_wrap=True)
    err.print(f"{len(outcomes) - len(failed)} of {len(outcomes)} file(s) marked for "
              f"'{recipient.strip()}' in {out} (ledger {book.path})")
    if as_json:
        print(json.dumps({"recipient": recipient.strip(), "ledger": str(book.path),
                          "exported": [o.record.as_dict() for o in outcomes if o.record],
                          "failed": [{"source": str(o.source), "error": o.error} for o in failed]}))
    if failed or not outcomes:
        raise typer.Exit(1)


@app.command()
def detect(
    leak: Annotated[Path, typer.Argument(help="The leaked image: PNG, JPEG, WebP, TIFF, BMP or DICOM.")],
    ledger: LedgerOpt = None,
    key: KeyOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")] = False,
) -> None:
    """Find whose copy LEAK is, from the leaked image alone. Exit 0 traced, 1 not found, 2 error."""
    try:
        site_key = load_key(key)
        with Ledger(ledger, create=False) as book:
            report = detect_leak(leak, ledger=book, key=site_key)
    except LeaktraceError as exc:
        if as_json:
            print(json.dumps({"recipient": None, "p_value": None, "decision": "error",
                              "error": str(exc)}))
        raise _fail(str(exc)) from None
    if as_json:
        print(json.dumps(report.as_dict()))
    else:
        for w in report.warnings:
            err.print(f"[yellow]warning:[/] {w}", soft_wrap=True)
        print(f"{leak}: {report.summary()}")
    raise typer.Exit(0 if report.decision == "traced" else 1)


@ledger_app.command("list")
def ledger_list(ledger: LedgerOpt = None,
                as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False) -> None:
    """List recipients and exports."""
    try:
        with Ledger(ledger, create=False) as book:
            recipients, exports = book.recipients(), book.exports()
    except LeaktraceError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        print(json.dumps({"recipients": [{"number": n, "name": s} for n, s in recipients.items()],
                          "exports": [e.as_dict() for e in exports]}))
        return
    for n, name in recipients.items():
        print(f"recipient {n}: {name}")
    for e in exports:
        print(f"export {e.id}: {e.created_utc} {e.recipient_name} <- {e.source_path} -> {e.output_path}")


@ledger_app.command("verify")
def ledger_verify(ledger: LedgerOpt = None) -> None:
    """Check the ledger's hash chain. Exit 0 intact, 1 broken (each problem is named)."""
    try:
        with Ledger(ledger, create=False) as book:
            problems, n = book.verify(), len(book.exports())
    except LeaktraceError as exc:
        raise _fail(str(exc)) from None
    for p in problems:
        print(p)
    print(f"{n} export record(s): " + ("chain intact" if not problems else f"{len(problems)} problem(s)"))
    raise typer.Exit(1 if problems else 0)


@app.command()
def demo(out: Annotated[Optional[Path], typer.Option("--out", help="Folder for the demo's files (default: a new temporary folder).")] = None) -> None:
    """Mark a real chest film for two recipients, leak one as a re-sent screenshot, trace it."""
    from .demo import run_demo

    folder = out or Path(tempfile.mkdtemp(prefix="leaktrace-demo-"))
    try:
        ok = run_demo(folder, say=lambda text: print(text, flush=True))
    except LeaktraceError as exc:
        raise _fail(str(exc), code=1) from None
    raise typer.Exit(0 if ok else 1)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (odd but readable DICOM, etc.) as one plain line on stderr, no source lines."""
    err.print(f"[yellow]warning:[/] {message}", soft_wrap=True)


def main() -> None:
    """Console-script entry point."""
    import warnings

    warnings.showwarning = _show_warning
    app(prog_name="leaktrace")


if __name__ == "__main__":
    sys.exit(main())
