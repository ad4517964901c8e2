"""The investigator's trace against a real ledger: robustness, collusion and speed.

Builds a ledger of real exports: every shared human DICOM film and ``--png`` of the shared
PNG/JPEG films (wrapped as 8-bit Secondary Capture DICOM) are exported, through
``forensics.export.export_film``, to ``--recipients`` recipients each (``--films-for-size``
more PNG films can be exported only to grow the ledger). Then, with ``trace_array``
(the ledger alone: the film is found by the features kept at export, its original read from
the path the ledger recorded):

* **robustness**: every pipeline of :data:`forensics.leaks.PIPELINES` (required and stretch),
  plus rotation by 30 degrees, applied to the default display of two recipients' copies of
  each human film (DICOM-side pipelines to the stored values), and to the unmarked film
  (controls);
* **collusion**: ``--collusion-trials`` trials, half averaging the copies of 2 recipients,
  half of 3, then a messenger (long edge 1280 px, JPEG 70, 4:2:0): is a colluder named, is an
  innocent named;
* **speed**: median seconds of ``trace_leak`` on ``--timing`` 1280 px JPEG files (read,
  search of the ledger, registration, informed test), one process.

Writes ``trace_robustness.csv``, ``trace_collusion.csv``, ``trace_summary.json`` and
``trace_robustness.png`` to ``--out``.

Usage::

    python benchmarks/trace.py [--films DIR] [--png N] [--recipients K] [--films-for-size M]
                               [--collusion-trials T] [--timing Q] [--workers W] [--out DIR]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from common import film_data_dir, plot_right_rates, png_film_as_dicom, run_description  # noqa: E402
from forensics import leaks  # noqa: E402
from forensics.export import export_film  # noqa: E402
from forensics.ledger import Ledger  # noqa: E402
from forensics.trace import trace_array, trace_leak  # noqa: E402
from watermark.dicomio import read_film  # noqa: E402
from watermark.display import render  # noqa: E402
from watermark.keys import SiteKey  # noqa: E402

KEY = SiteKey(bytes(range(32)))
STORED_SIDE = ("dicom_jpeg", "dicom_j2k")
EXTRA = {"rotate_30deg": [("rotate_10deg", {"angle": 30.0}), ("png8", {})]}
COLLUSION_LEAK = [("messenger_jpeg_1280px_q70", {})]


def _pipelines(names=None) -> dict:
    table = {**leaks.PIPELINES, **EXTRA}
    return {n: table[n] for n in (names or table)}


def build_ledger(folder: Path, films: list[Path], recipients: int, size_films: list[Path]) -> dict:
    """Export every film to its recipients; returns {film name: [(recipient, output path)]}."""
    ledger_path = folder / "ledger.sqlite"
    copies: dict[str, list] = {}
    start = time.perf_counter()
    with Ledger(ledger_path) as book:
        for i, path in enumerate(films + size_films):
            source = path
            if path.suffix.lower() != ".dcm":
                source = png_film_as_dicom(path, folder / "sources" / f"{path.stem}.dcm")
            copies[path.stem] = []
            for r in range(recipients):
                name = f"recipient {r:03d} of {path.stem}"
                out = folder / "exports" / f"{r:03d}" / f"{source.stem}.dcm"
                out.parent.mkdir(parents=True, exist_ok=True)
                rec = export_film(source, out, recipient=name, ledger=book, key=KEY)
                copies[path.stem].append((name, rec.output_path, str(source)))
            print(f"  exported {path.name} x {recipients} ({time.perf_counter() - start:.0f} s)",
                  file=sys.stderr)
        n_exports = len(book.exports())
    return {"ledger": ledger_path, "copies": copies, "n_exports": n_exports,
            "export_seconds": time.perf_counter() - start}


def reuse_ledger(folder: Path) -> dict:
    """The exports of an earlier run's ledger in ``folder`` (``--work``), as build_ledger."""
    copies: dict[str, list] = {}
    with Ledger(folder / "ledger.sqlite", create=False) as book:
        exports = book.exports()
    for e in exports:  # recipient names are "recipient NNN of <film stem>"
        film = e.recipient_name.rsplit(" of ", 1)[1]
        copies.setdefault(film, []).append((e.recipient_name, e.output_path, e.source_path))
    return {"ledger": folder / "ledger.sqlite", "copies": copies, "n_exports": len(exports),
            "export_seconds": None}


_BOOK: Ledger | None = None


def _init(ledger_path: str) -> None:
    global _BOOK
    _BOOK = Ledger(ledger_path, create=False)


def _leak_of(copy_path: str, pipeline, seed: int) -> np.ndarray:
    film = read_film(copy_path)
    rng = np.random.default_rng(seed)
    if pipeline and pipeline[0][0].startswith(STORED_SIDE):
        stored = leaks.apply(film.pixels.astype(np.float64), pipeline[:1], rng)
        return leaks.apply(render(film, pixels=stored), pipeline[1:], rng)
    return leaks.apply(render(film), pipeline, rng)


def _names(report) -> set[str]:
    return {report.recipient_names.get(n) or report.names.get(n)
            for n in report.detection.recipient_numbers}


def _found_by(alignment: dict) -> str:
    """How the film was found in the leak: keypoints, template, or '' (not found)."""
    if not alignment:
        return ""
    return "template" if alignment.get("template_ncc") is not None else "keypoints"


def _robustness_query(task) -> dict:
    film, truth, path, pname, pipeline, seed = task
    start = time.perf_counter()
    try:
        report = trace_array(_leak_of(path, pipeline, seed), ledger=_BOOK, key=KEY)
        tested = {c.number for c in report.detection.candidates}
        a = report.alignment or {}
        named, row = _names(report), {"decision": report.decision, "mode": report.mode,
                                      "p_value": report.detection.p_value,
                                      "innocents_tested": len(tested) - (truth is not None),
                                      "found_by": _found_by(a),
                                      "detail_correlation": a.get("detail_correlation", ""),
                                      "error": ""}
    except Exception as exc:  # a benchmark records failures instead of stopping
        named, row = set(), {"decision": "error", "mode": "", "p_value": 1.0,
                             "innocents_tested": 0, "found_by": "", "detail_correlation": "",
                             "error": f"{type(exc).__name__}: {exc}"}
    return {"film": film, "truth": truth or "", "pipeline": pname,
            "stretch": pname in leaks.STRETCH or pname in EXTRA,
            "right": truth is not None and truth in named, "miss": truth is not None and not named,
            "wrong": any(n != truth for n in named), "named": "; ".join(sorted(named)),
            "seconds": time.perf_counter() - start, **row}


def _collusion_query(task) -> dict:
    film, colluders, paths, everyone, seed = task
    start = time.perf_counter()
    average = np.mean([render(read_film(p)) for p in paths], axis=0)
    image = leaks.apply(average, COLLUSION_LEAK, np.random.default_rng(seed))
    try:
        report = trace_array(image, ledger=_BOOK, key=KEY)
        named, error = _names(report), ""
    except Exception as exc:
        named, error = set(), f"{type(exc).__name__}: {exc}"
    return {"film": film, "colluders": len(colluders), "named": "; ".join(sorted(named)),
            "colluder_named": bool(named & set(colluders)),
            "innocent_named": bool(named - set(colluders)),
            "innocents_tested": len(set(everyone) - set(colluders)),
            "all_colluders_named": set(colluders) <= named,
            "seconds": time.perf_counter() - start, "error": error}


def _timing(ledger_path: Path, copies: dict, n: int, folder: Path
            ) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU seconds of trace_leak on 1280 px JPEG leak files, one process,
    after one warm-up (CPU seconds are the steadier number on a shared machine)."""
    book = Ledger(ledger_path, create=False)
    items = [(film, c) for film, cs in copies.items() for c in cs[:1]]
    times, cpu = [], []
    for i in range(n + 1):
        film, (name, path, _) = items[i % len(items)]
        leak = folder / f"timing_{i}.jpg"
        image = _leak_of(path, [("messenger_jpeg_1280px_q70", {})], i)
        leaks.save_image(image, leak, quality=70)
        start, start_cpu = time.perf_counter(), time.process_time()
        report = trace_leak(leak, ledger=book, key=KEY)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
        if i:  # the first query pays for imports and caches
            times.append(seconds)
            cpu.append(cpu_seconds)
        ok = name in _names(report)
        print(f"  timing {i}: {film} {seconds:.2f} s ({cpu_seconds:.2f} s CPU) "
              f"{'right' if ok else 'MISSED'}", file=sys.stderr)
    book.close()
    return times, cpu


def run(args) -> dict:
    data = args.films
    human = [p for p in sorted((data / "dicom").glob("*.dcm")) if "veterinary" not in p.name]
    pngs = sorted(p for p in (data / "png").rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    chosen = pngs[:: max(1, len(pngs) // max(args.png, 1))][: args.png] if args.png else []
    size_films = [p for p in pngs if p not in chosen][: args.films_for_size]
    if args.work is not None and (args.work / "ledger.sqlite").exists():
        folder = args.work
        built = reuse_ledger(args.work)
        print(f"reusing the ledger and exports in {args.work}", file=sys.stderr)
    else:
        folder = args.work or Path(tempfile.mkdtemp(prefix="leaktrace-trace-bench-"))
        folder.mkdir(parents=True, exist_ok=True)
        print(f"ledger and exports in {folder}", file=sys.stderr)
        built = build_ledger(folder, human + chosen, args.recipients, size_films)
    copies = built["copies"]
    rng = np.random.default_rng(2026)
    tasks, seed = [], 0
    for path in human + chosen:
        film_copies = copies[path.stem]
        source = film_copies[0][2]
        for pname, pipeline in _pipelines(args.pipelines).items():
            if path.suffix.lower() != ".dcm" and pipeline and pipeline[0][0].startswith(STORED_SIDE):
                continue
            for name, out, _ in film_copies[: args.per_film]:
                seed += 1
                tasks.append((path.name, name, out, pname, pipeline, seed))
            seed += 1
            if args.controls:
                tasks.append((path.name, None, source, pname, pipeline, seed))
    collusion = []
    films = human + chosen
    for t in range(args.collusion_trials):
        path = films[t % len(films)]
        film_copies = copies[path.stem]
        k = 2 if t % 2 == 0 else 3
        pick = rng.choice(len(film_copies), size=k, replace=False)
        collusion.append((path.name, [film_copies[i][0] for i in pick],
                          [film_copies[i][1] for i in pick], [c[0] for c in film_copies], 10_000 + t))
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers, initializer=_init, initargs=(str(built["ledger"]),)) as pool:
        rows = _map(pool, _robustness_query, tasks, "robustness")
        crows = _map(pool, _collusion_query, collusion, "collusion")
    elapsed = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    _csv(args.out / "trace_robustness.csv", rows)
    if crows:
        _csv(args.out / "trace_collusion.csv", crows)
    summary = []
    for pname in _pipelines(args.pipelines):
        marked = [r for r in rows if r["pipeline"] == pname and r["truth"]]
        controls = [r for r in rows if r["pipeline"] == pname and not r["truth"]]
        if not marked:
            continue
        summary.append({
            "pipeline": pname, "stretch": marked[0]["stretch"], "queries": len(marked),
            "right": sum(r["right"] for r in marked), "miss": sum(r["miss"] for r in marked),
            "wrong": sum(r["wrong"] for r in marked),
            "right_rate": sum(r["right"] for r in marked) / len(marked),
            "informed": sum(r["mode"] == "informed" for r in marked),
            "found_by_template": sum(r["found_by"] == "template" for r in marked),
            "film_not_found": sum(not r["found_by"] for r in marked),
            "innocents_tested": sum(r["innocents_tested"] for r in marked),
            "median_p_value": statistics.median(r["p_value"] for r in marked),
            "controls": len(controls), "control_named": sum(bool(r["named"]) for r in controls),
            "median_seconds": statistics.median(r["seconds"] for r in marked),
        })
    coll = {}
    for k in (2, 3):
        sub = [r for r in crows if r["colluders"] == k]
        if sub:
            coll[str(k)] = {"trials": len(sub),
                            "colluder_named": sum(r["colluder_named"] for r in sub),
                            "all_colluders_named": sum(r["all_colluders_named"] for r in sub),
                            "innocent_named": sum(r["innocent_named"] for r in sub),
                            "innocent_tests": sum(r["innocents_tested"] for r in sub),
                            "errors": sum(bool(r["error"]) for r in sub)}
    meta = {**run_description(workers=args.workers), "seconds": elapsed,
            "films": [p.name for p in human + chosen], "ledger_exports": built["n_exports"],
            "recipients_per_film": args.recipients, "export_seconds": built["export_seconds"],
            "summary": summary, "collusion": coll,
            "trace_seconds_1280px_jpeg": None}
    (args.out / "trace_summary.json").write_text(json.dumps(meta, indent=2))
    plot_right_rates(summary, args.out / "trace_robustness.png",
                     target=98, title="leaktrace trace (ledger + originals) by leak pipeline")
    for s in summary:
        print(f"{s['pipeline']:42s} {'stretch' if s['stretch'] else '       '} right {s['right']:3d}/"
              f"{s['queries']:3d} ({100 * s['right_rate']:5.1f} %) wrong {s['wrong']} informed "
              f"{s['informed']} controls named {s['control_named']}/{s['controls']} "
              f"median p {s['median_p_value']:.1e} {s['median_seconds']:.1f} s", file=sys.stderr)
    print(json.dumps(coll), f"{elapsed:.0f} s", file=sys.stderr)
    if args.timing:  # after the results are safe on disk
        times, cpu = _timing(built["ledger"], copies, args.timing, folder)
        meta["trace_seconds_1280px_jpeg"] = {"queries": len(times),
                                             "median": statistics.median(times),
                                             "max": max(times), "times": times,
                                             "cpu_median": statistics.median(cpu),
                                             "cpu_max": max(cpu), "cpu_times": cpu}
        (args.out / "trace_summary.json").write_text(json.dumps(meta, indent=2))
        print(json.dumps(meta["trace_seconds_1280px_jpeg"]), file=sys.stderr)
    return meta


def _map(pool, fn, tasks, label) -> list:
    out, start = [], time.perf_counter()
    for i, row in enumerate(pool.map(fn, tasks, chunksize=1), 1):
        out.append(row)
        if i % 25 == 0 or i == len(tasks):
            print(f"  {label} {i}/{len(tasks)} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return out


def _csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--films", type=Path, default=film_data_dir())
    parser.add_argument("--png", type=int, default=2, help="PNG/JPEG films among the tested films")
    parser.add_argument("--recipients", type=int, default=6, help="recipients per film")
    parser.add_argument("--per-film", type=int, default=2, help="recipients leaked per film")
    parser.add_argument("--films-for-size", type=int, default=0,
                        help="more PNG films exported only to grow the ledger")
    parser.add_argument("--collusion-trials", type=int, default=0)
    parser.add_argument("--timing", type=int, default=0, help="timed 1280 px JPEG traces")
    parser.add_argument("--pipelines", nargs="*", help="pipeline names (default: all)")
    parser.add_argument("--no-controls", dest="controls", action="store_false",
                        help="skip the unmarked films (the recipients who did not leak are "
                             "tested in every query anyway)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work", type=Path,
                        help="folder for the ledger and exports (reused if it holds a ledger)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    run(parser.parse_args())


if __name__ == "__main__":
    main()
