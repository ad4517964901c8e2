"""The researcher's commands: ``bench``, and the ``demo`` anyone can run first.
"""

from __future__ import annotations

import signal
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from watermark.errors import LeaktraceError

from .common import app, err, _fail, _interrupted


@app.command()
def demo(out: Annotated[Optional[Path], typer.Option("--out", help="Folder for the demo's files (default: a new temporary folder).")] = None) -> None:
    """Mark a real chest film for two recipients, leak one as a screenshot, trace it.

    Exit codes: 0 the demo traced the right recipient, 1 otherwise, 2 a bad --out.
    """
    from .demo import prepare_folder, run_demo, scratch_folder

    try:
        given = prepare_folder(out) if out is not None else None
    except LeaktraceError as exc:
        raise _fail(f"bad arguments: --out: {exc}") from None
    folder = given
    try:
        # without --out: a temporary folder, removed if the demo stops on an error or Ctrl-C
        with nullcontext(given) if given is not None else scratch_folder() as folder:
            ok = run_demo(folder, say=lambda text: print(text, flush=True))
    except LeaktraceError as exc:
        raise _fail(str(exc), code=1) from None
    except OSError as exc:
        raise _fail(f"{folder}: {exc}", code=1) from None
    except KeyboardInterrupt:
        raise _interrupted("the demo stopped before it finished; " + (
            f"the files made so far are in {given}" if given is not None
            else f"its temporary folder {folder} was removed" if folder is not None
            else "no folder was left behind")) from None
    raise typer.Exit(0 if ok else 1)


@app.command()
def bench(
    films: Annotated[Optional[Path], typer.Option("--films", help="Film folder: the shared layout (dicom/, png/<set>/) or any folder of .dcm/.png/.jpg files; or a manifest (.csv with a 'path' column and optional columns such as dataset, view, patient, summarised per value). Default: $LEAKTRACE_TEST_DATA, else ../shared/data/cxr next to the repository.")] = None,
    pipelines: Annotated[Optional[list[str]], typer.Option("--pipelines", metavar="NAME,...", help="Leak pipelines to run (repeat the option or separate by commas). Default: all (--quick: a short list).")] = None,
    methods: Annotated[Optional[list[str]], typer.Option("--methods", metavar="NAME,...", help="Methods to compare (repeat or comma-separate): leaktrace, leaktrace-trace, invisible-watermark-dwtDct, invisible-watermark-dwtDctSvd, blind-watermark. Default: all that can run here.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for the CSV, JSON and PNG files; created if missing.")] = Path("bench-results"),
    quick: Annotated[bool, typer.Option("--quick", metavar="", help="A short run (2 small films, 1 recipient, 10 pipelines): about 1.5 minutes on 2 cores.")] = False,
    workers: Annotated[int, typer.Option("--workers", help="Processes to use (0: one per CPU core, the default).")] = 0,
    recipients: Annotated[Optional[int], typer.Option("--recipients", help="Recipients each film is marked for (default 2; --quick 1).")] = None,
    png: Annotated[Optional[int], typer.Option("--png", help="PNG/JPEG films to add from the shared layout's png/ folder (default 2; --quick 0).")] = None,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", metavar="ADDRESS", help="Run the tasks on Dask: 'local' starts a LocalCluster of --workers processes here; tcp://host:8786 uses a running cluster, whose workers must see the films and --out at the same paths. Needs leaktrace\\[dask]. Default: a local process pool.")] = None,
    strengths: Annotated[Optional[list[str]], typer.Option("--strengths", metavar="S,...", help="Also run leaktrace's blind method at these embedding strengths (relative to its strength model; repeat or comma-separate), as methods leaktrace@S, for the quality-against-robustness curve.")] = None,
    resume: Annotated[bool, typer.Option("--resume", metavar="", help="Finish an interrupted run in --out: only the tasks its journal does not hold are run (same settings needed).")] = False,
) -> None:
    """Compare leaktrace with other watermarking libraries on the same films and leaks.

    Writes bench_queries.csv, bench_embeds.csv, bench_summary.csv, bench.json and PNG plots
    to OUT, and prints the summary table. Ctrl-C stops the run and writes what is done.

    Exit codes: 0 done (failed queries are recorded in its files), 2 bad arguments, 130
    interrupted (run again with --resume to finish).
    """
    from ..bench import harness as lb

    try:
        folder = films if films is not None else lb.film_data_dir()
        if films is None and not folder.is_dir():
            raise lb.BenchError(f"no film folder at {folder}: give --films DIR, or set "
                                "LEAKTRACE_TEST_DATA to the folder of the shared films")
        quick_cfg = lb.QUICK if quick else None
        groups = None
        if folder.is_file() and folder.suffix.lower() == ".csv":
            found, groups = lb.read_manifest(folder)
        else:
            found = lb.find_films(folder, png=png if png is not None else (quick_cfg.png if quick else 2))
        n_found = len(found)
        if quick:
            found = lb.quick_films(found) + [p for p in found if p.suffix.lower() != ".dcm"]
        chosen = pipelines or (list(quick_cfg.pipelines) if quick else None)
        per_film = recipients if recipients is not None else (quick_cfg.recipients if quick else 2)
        # check the names, numbers and the output folder before the slow part starts
        lb.select(methods, list(lb.METHODS), "method")
        strength_values = _strengths(strengths)
        lb.strength_methods(strength_values)
        lb.select(chosen, list(lb.bench_pipelines()), "pipeline")
        lb.check_settings(per_film, workers)
        lb.prepare_out(out)
        chosen_of = f"{len(found)} of {n_found} film file(s)" if quick else f"{len(found)} film file(s)"
        err.print(f"bench: {escape(chosen_of)} in {escape(str(folder))}"
                  + (" (--quick)" if quick else "") + f", results to {escape(str(out))}")
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C
        try:
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=err) as bar:
                task = bar.add_task("queries", total=None)
                result = lb.run_bench(
                    found, methods=methods, pipelines=chosen, recipients=per_film, workers=workers,
                    out=out, progress=lambda done, total: bar.update(task, completed=done, total=total),
                    say=lambda text: err.print(f"[yellow]note:[/] {escape(text)}"),
                    settings={"quick": quick}, scheduler=scheduler, resume=resume, groups=groups,
                    strengths=strength_values)
        finally:
            signal.signal(signal.SIGTERM, previous)
    except LeaktraceError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:  # before the leaks were read (films, ledger), or while writing
        raise _interrupted(f"before any result was written in full; files already in {out} are "
                           "whole (each is written atomically)") from None
    meta = result.meta
    stopped = None
    if meta["interrupted"]:
        stopped = _interrupted(f"after {meta['queries']} of {meta['queries_planned']} queries"
                               + ("; the results so far were written:" if result.files
                                  else "; nothing was written"))
    else:
        print(lb.format_table(result))
        n_films = len(meta["settings"]["films"])
        skipped = f" ({len(result.skipped_films)} skipped)" if result.skipped_films else ""
        err.print(f"{meta['queries']} queries on {n_films} film(s){skipped} in {meta['seconds']:.0f} s; "
                  "files written:")
    for path in result.files:
        err.print(f"  {escape(str(path))}")
    if stopped is not None:
        raise stopped


def _strengths(items: list[str] | None) -> list[float]:
    """``--strengths 0.5,2`` (repeatable) as floats; a word that is not a number is a usage
    error naming it."""
    from ..bench import harness as lb

    values = []
    for item in items or []:
        for word in str(item).split(","):
            if word.strip():
                try:
                    values.append(float(word))
                except ValueError:
                    raise lb.BenchError(f"--strengths: {word.strip()!r} is not a number") from None
    return values
