"""Robustness of blind detection: every leak pipeline over the shared human films.

For each human film (the shared DICOM films except the veterinary one, and optionally the
PNG/JPEG films), a copy is marked for each of several recipients; every pipeline of
:data:`forensics.leaks.PIPELINES` is applied to the marked copy's default-window display (to
the stored values for the DICOM-side pipelines and the raw 16-bit export, which are rendered
afterwards as a viewer would), and blind detection runs against a ledger-sized list of
recipients. The unmarked film goes through every pipeline too (controls).

Writes ``robustness.csv`` (one row per query), ``robustness_summary.csv`` (per pipeline:
right / miss / wrong, median p-value) and ``robustness.png`` to ``--out``.

Usage::

    python benchmarks/robustness.py [--films DIR] [--png N] [--recipients K] [--workers W]
                                    [--pipelines NAME ...] [--out DIR]
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
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from common import film_data_dir, plot_right_rates, run_description  # noqa: E402
from forensics import leaks  # noqa: E402
from forensics.bench.harness import bench_pipelines, leak_image, load_source  # noqa: E402
from forensics.export import mark_film  # noqa: E402
from watermark import dwt, payload  # noqa: E402
from watermark.detect import detect  # noqa: E402
from watermark.dicomio import read_film  # noqa: E402
from watermark.keys import SiteKey  # noqa: E402

KEY = SiteKey(bytes(range(32)))
LEDGER = [1000 + 7 * i for i in range(20)]  # recipient numbers "in the ledger"


def _pipelines(names):
    """The robustness issue's pipelines and ``raw16_stored`` (the benchmark's table, without
    its strength sweeps)."""
    table = {n: p for n, p in bench_pipelines().items() if not p.sweep_only}
    unknown = [n for n in names or () if n not in table]
    if unknown:
        sys.exit(f"robustness: unknown pipeline(s) {', '.join(unknown)}; known: {', '.join(table)}")
    return {n: table[n] for n in (names or table)}


def _prepare(path: Path, numbers: list[int]):
    """(name, kind, source payload, {number: marked payload}) for one film."""
    if path.suffix.lower() == ".dcm":
        film = read_film(path)
        marked = {}
        lo, hi = film.value_range
        for n in numbers:
            values = np.clip(np.rint(mark_film(film, n, KEY)), lo, hi)
            marked[n] = values
        return path.name, "dicom", film.pixels.astype(np.float64), marked
    image = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    marked = {n: leaks.quantize_8bit(image + dwt.mark_residual(image, payload.encode(n, KEY), KEY,
                                                                        quantum=1.0))
              for n in numbers}
    return path.name, "png", image, marked


def _leak(path: Path, values: np.ndarray, pipeline, seed: int) -> np.ndarray:
    """The leak of ``values`` (stored values of a DICOM film, grey values of a PNG film);
    the same rule as ``leaktrace bench`` (:func:`forensics.bench.leak_image`)."""
    return leak_image(load_source(path), values, pipeline, np.random.default_rng(seed))


def _query(task):
    name, kind, path, values, truth, pname, pipeline, seed = task
    start = time.perf_counter()
    try:
        image = _leak(path, values, pipeline, seed)
        d = detect(image, KEY, LEDGER)
        named = d.recipient_numbers
        row = {"decision": d.decision, "p_value": d.p_value, "z": d.z, "search": d.search,
               "named": " ".join(map(str, named)), "error": ""}
    except Exception as exc:  # a benchmark records failures instead of stopping
        named, row = [], {"decision": "error", "p_value": 1.0, "z": 0.0, "search": "",
                          "named": "", "error": f"{type(exc).__name__}: {exc}"}
    right = truth is not None and truth in named
    wrong = any(n != truth for n in named)
    return {"film": name, "kind": kind, "truth": truth if truth is not None else "",
            "pipeline": pname, "stretch": pname in leaks.STRETCH, "right": right,
            "miss": truth is not None and not named, "wrong": wrong,
            "seconds": time.perf_counter() - start, **row}


def run(args) -> dict:
    data = args.films
    films = [p for p in sorted((data / "dicom").glob("*.dcm")) if "veterinary" not in p.name]
    pngs = sorted((data / "png").glob("*/*"))
    films += pngs[:: max(1, len(pngs) // args.png)][: args.png] if args.png else []
    pipelines = _pipelines(args.pipelines)
    tasks, seed = [], 0
    for path in films:
        numbers = LEDGER[: args.recipients]
        name, kind, source, marked = _prepare(path, numbers)
        for pname, pipeline in pipelines.items():
            if kind == "png" and pipeline.stored_side:
                continue  # no stored values behind a PNG
            for n in numbers:
                seed += 1
                tasks.append((name, kind, path, marked[n], n, pname, pipeline, seed))
            seed += 1
            tasks.append((name, kind, path, source, None, pname, pipeline, seed))
    print(f"{len(tasks)} queries over {len(films)} films and {len(pipelines)} pipelines",
          file=sys.stderr)
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        rows = []
        for i, row in enumerate(pool.map(_query, tasks, chunksize=2), 1):
            rows.append(row)
            if i % 50 == 0:
                print(f"  {i}/{len(tasks)} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    elapsed = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "robustness.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = []
    for pname in pipelines:
        marked = [r for r in rows if r["pipeline"] == pname and r["truth"] != ""]
        controls = [r for r in rows if r["pipeline"] == pname and r["truth"] == ""]
        if not marked:
            continue
        summary.append({
            "pipeline": pname, "stretch": pname in leaks.STRETCH, "queries": len(marked),
            "right": sum(r["right"] for r in marked), "miss": sum(r["miss"] for r in marked),
            "wrong": sum(r["wrong"] for r in marked),
            "right_rate": sum(r["right"] for r in marked) / len(marked),
            "median_p_value": statistics.median(r["p_value"] for r in marked),
            "controls": len(controls), "control_false_positives": sum(bool(r["named"]) for r in controls),
            "median_seconds": statistics.median(r["seconds"] for r in marked),
        })
    with open(args.out / "robustness_summary.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    plot_right_rates(summary, args.out / "robustness.png",
                     target=95, title="leaktrace blind detection by leak pipeline (stretch pipelines in tan)")
    meta = {**run_description(workers=args.workers), "seconds": elapsed,
            "films": [p.name for p in films], "recipients_per_film": args.recipients,
            "ledger_size": len(LEDGER), "summary": summary}
    (args.out / "robustness.json").write_text(json.dumps(meta, indent=2))
    for s in summary:
        print(f"{s['pipeline']:42s} {'stretch' if s['stretch'] else '       '} right "
              f"{s['right']:3d}/{s['queries']:3d} ({100 * s['right_rate']:5.1f} %)  miss {s['miss']:3d}"
              f"  wrong {s['wrong']}  controls FP {s['control_false_positives']}/{s['controls']}"
              f"  median p {s['median_p_value']:.1e}  {s['median_seconds']:.1f} s", file=sys.stderr)
    print(f"{elapsed:.0f} s", file=sys.stderr)
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--films", type=Path, default=film_data_dir())
    parser.add_argument("--png", type=int, default=4, help="PNG/JPEG films to add (0: none)")
    parser.add_argument("--recipients", type=int, default=2)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--pipelines", nargs="*")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    run(parser.parse_args())


if __name__ == "__main__":
    main()
