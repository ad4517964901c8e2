"""What every command shares: the typer app and its ``ledger`` group, the options every group
uses, errors, Ctrl-C handling and warnings on stderr, and :func:`main`.
"""

from __future__ import annotations

import contextlib
import json
import signal
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

try:  # typer >= 0.16 carries its own copy of click
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - older typer runs on click itself
    from click import UsageError

from watermark import __version__
from watermark.errors import LeaktraceError

from ..ledger.access import operator_name
from ..ledger import AccessEvent, ledger_exists, log_access


INTERRUPTED_PREFIX = "interrupted:"


interrupt_reported = False


"""Set once a command has printed its own line about Ctrl-C (:mod:`forensics.entry` then
prints no second one)."""


def _interrupted(message: str) -> typer.Exit:
    """Ctrl-C: say in one line on stderr what was and was not done; exit code 130."""
    global interrupt_reported
    # a second Ctrl-C (`timeout -s INT` signals the process and then its group) would only
    # interrupt the clean-up and the exit with a traceback: the command is stopping already
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    err.print(f"[yellow]{INTERRUPTED_PREFIX}[/] {escape(message)}", markup=True)
    interrupt_reported = True
    return typer.Exit(130)


class _Commands(typer.core.TyperGroup):
    """The command group: Ctrl-C in a command without its own message still gets one line."""

    def invoke(self, ctx):
        global interrupt_reported
        interrupt_reported = False
        # the command's words, before click hands them on (and empties ctx.args)
        words = [*getattr(ctx, "_protected_args", ()), *ctx.args]
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            # a bad option or a missing argument, found before the command runs: with --json,
            # still exactly one JSON object on stdout (click prints the usage on stderr)
            if "--json" in words:
                print(json.dumps({"error": f"bad arguments: {exc.format_message()}"}))
            raise
        except KeyboardInterrupt:
            if interrupt_reported:
                raise typer.Exit(130) from None
            raise _interrupted("leaktrace stopped before the command finished") from None


app = typer.Typer(cls=_Commands, add_completion=False, no_args_is_help=True,
                  help="Mark exported chest films with an invisible recipient ID, and trace leaked copies.")


ledger_app = typer.Typer(no_args_is_help=True, help="Inspect and check the export ledger.")


app.add_typer(ledger_app, name="ledger")


# soft_wrap: long messages stay on one line in pipes and logs (rich would wrap at 80 columns)
err = Console(stderr=True, highlight=False, soft_wrap=True)


# "\\[" escapes Rich markup, which took "[postgresql]" for a style tag and printed nothing.
# a str, not a Path: a PostgreSQL URL would lose the second slash of "postgresql://" in a Path
LedgerOpt = Annotated[Optional[str], typer.Option(
    "--ledger", metavar="PATH|URL",
    help="Export ledger: a SQLite file, or a PostgreSQL site postgresql://user@host:port/db?site=NAME "
         "(needs leaktrace\\[postgresql]). Default: $LEAKTRACE_LEDGER, else "
         "$XDG_DATA_HOME/leaktrace/ledger.sqlite (~/.local/share/leaktrace/ledger.sqlite).")]


KeyOpt = Annotated[Optional[Path], typer.Option(
    "--key", help="Site key file. Default: $LEAKTRACE_KEY, else "
                  "$XDG_CONFIG_HOME/leaktrace/site.key (~/.config/leaktrace/site.key).")]


# detect and trace: --ledger may be given several times (the sites of a group)
LedgersOpt = Annotated[Optional[list[str]], typer.Option(
    "--ledger", metavar="PATH|URL",
    help="Export ledger: a SQLite file, or a PostgreSQL site postgresql://user@host:port/db?site=NAME. "
         "Give it several times to search several sites' ledgers (each at the false-accusation "
         "rate divided by their number). Default: $LEAKTRACE_LEDGER, else "
         "$XDG_DATA_HOME/leaktrace/ledger.sqlite.")]


OperatorOpt = Annotated[Optional[str], typer.Option(
    "--operator", metavar="NAME",
    help="Who runs this, as recorded in the ledger's access log (default: the OS user).")]


def _who(operator: str | None) -> str:
    """The ``--operator`` name (checked), else the OS user; a bad name is a usage error."""
    try:
        return operator_name(operator)
    except LeaktraceError as exc:
        raise _fail(f"bad arguments: {exc}") from None


def _record_access(ledger: str | Path | None, event: AccessEvent) -> bool:
    """Record ``event`` in the ledger's access log (a write of its own, after the read-only
    query); when that is not possible, one warning line on stderr and False. A failed
    command whose ledger file does not exist records nothing and says nothing more."""
    if event.outcome == "error":
        try:
            if not ledger_exists(ledger):
                return False
        except LeaktraceError:  # the server cannot be reached: the command's error says so
            return False
    problem = log_access(ledger, event)
    if problem is not None:
        err.print(f"[yellow]warning:[/] {escape(problem)}")
    return problem is None


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True)
    return typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        print(f"leaktrace {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", metavar="", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """leaktrace: forensic watermarks for radiographs."""
    warnings.showwarning = _show_warning


JsonOpt = Annotated[bool, typer.Option("--json", metavar="", help="Print exactly one JSON object on stdout.")]


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (odd but readable DICOM, a key others can read...) as one plain line on stderr."""
    err.print(f"[yellow]warning:[/] {escape(str(message))}")


def _one_line_paragraphs(doc: str | None) -> str | None:
    """A docstring with each paragraph on one line: the help formatter then wraps it to the
    terminal, instead of also breaking it where the source lines end."""
    if not doc:
        return doc
    import inspect

    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def one_line_help(*typers: typer.Typer) -> None:
    """Give every command of ``typers`` its help with each paragraph on one line (once all
    the groups' commands are registered)."""
    for group in typers:
        for command in group.registered_commands:
            command.callback.__doc__ = _one_line_paragraphs(command.callback.__doc__)


def main() -> None:
    """Console-script entry point."""
    warnings.showwarning = _show_warning
    app(prog_name="leaktrace")
