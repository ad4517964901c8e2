"""Empirical false-positive rate of blind detection, and a calibration plot of control p-values.

A *control query* is a leak that carries no mark of the key and ledger it is tested with:

* unmarked human films (shared DICOM films rendered with their default window, and PNG/JPEG
  films) sent through leak pipelines of :mod:`forensics.leaks`;
* films marked under another key, sent through the same pipelines.

Each control leak is prepared once (:class:`watermark.detect.PreparedLeak`: all the
key-independent work) and then tested under many random site keys, each with a ledger of
random recipient numbers, so ``--leaks x --keys`` queries cost far less than as many full runs.
Every query runs the complete decision (both hypothesis families, every recipient).

Writes ``false_positives.csv`` (one row per query), ``false_positives.json`` (summary) and
``calibration.png`` (empirical CDF of control p-values against the uniform line) to ``--out``.

Usage::

    python benchmarks/false_positives.py [--leaks 40] [--keys 250] [--ledger 20] [--workers 2]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from common import film_data_dir, run_description  # noqa: E402
from forensics import leaks  # noqa: E402
from watermark import dwt, payload  # noqa: E402
from watermark.detect import PreparedLeak, detect_prepared  # noqa: E402
from watermark.dicomio import read_film  # noqa: E402
from watermark.display import render  # noqa: E402
from watermark.keys import SiteKey  # noqa: E402
from watermark.stats import FALSE_ACCUSATION_RATE  # noqa: E402

OTHER_KEY = SiteKey(bytes(range(200, 232)))
DISPLAY_PIPELINES = [n for n, p in leaks.PIPELINES.items() if not p[0][0].startswith("dicom_")]


def _displays(data: Path) -> list[tuple[str, np.ndarray]]:
    out = []
    for p in sorted((data / "dicom").glob("*.dcm")):
        if "veterinary" not in p.name:
            out.append((p.name, render(read_film(p))))
    for p in sorted((data / "png").glob("*/*")):
        out.append((p.name, np.asarray(Image.open(p).convert("L"), dtype=np.float64)))
    return out


def _task(task):
    index, name, kind, pname, image, n_keys, ledger_size, seed = task
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    prepared = PreparedLeak(image)
    rows = []
    for k in range(n_keys):
        key = SiteKey(rng.bytes(32))
        ledger = [int(x) for x in rng.integers(1, 2**32 - 1, ledger_size)]
        d = detect_prepared(prepared, key, ledger)
        rows.append({"leak": index, "film": name, "control": kind, "pipeline": pname, "key": k,
                     "decision": d.decision, "p_value": d.p_value, "z": d.z, "search": d.search,
                     "decoded_number": d.decoded_number if d.decoded_number is not None else ""})
    return rows, time.perf_counter() - start


def run(args) -> dict:
    rng = np.random.default_rng(args.seed)
    displays = _displays(args.films)
    tasks = []
    for i in range(args.leaks):
        name, display = displays[i % len(displays)]
        kind = "unmarked" if i % 2 == 0 else "other_key"
        if kind == "other_key":
            mark = dwt.mark_residual(display, payload.encode(int(rng.integers(1, 2**31)), OTHER_KEY),
                                     OTHER_KEY, quantum=1.0)
            display = leaks.quantize_8bit(display + mark)
        pname = DISPLAY_PIPELINES[int(rng.integers(len(DISPLAY_PIPELINES)))]
        image = leaks.apply(display, leaks.PIPELINES[pname], np.random.default_rng(i))
        tasks.append((i, name, kind, pname, image, args.keys, args.ledger, int(rng.integers(2**63))))
    print(f"{args.leaks} control leaks x {args.keys} keys = {args.leaks * args.keys} queries",
          file=sys.stderr)
    start = time.perf_counter()
    rows = []
    with ProcessPoolExecutor(args.workers) as pool:
        for i, (chunk, seconds) in enumerate(pool.map(_task, tasks), 1):
            rows += chunk
            print(f"  leak {i}/{len(tasks)} ({chunk[0]['pipeline']}, {chunk[0]['control']}): "
                  f"{seconds:.0f} s, min p {min(r['p_value'] for r in chunk):.2g}", file=sys.stderr)
    elapsed = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "false_positives.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    p = np.array([r["p_value"] for r in rows])
    summary = {
        **run_description(workers=args.workers),
        "seconds": elapsed,
        "queries": len(rows),
        "control_leaks": args.leaks,
        "keys_per_leak": args.keys,
        "ledger_size": args.ledger,
        "false_positives": int(sum(r["decision"] == "traced" for r in rows)),
        "designed_rate": FALSE_ACCUSATION_RATE,
        "min_p_value": float(p.min()),
        "fraction_p_below": {str(a): float(np.mean(p <= a)) for a in (0.5, 0.1, 0.01, 0.001, 1e-4)},
        "decoded_payloads_without_accusation": int(sum(r["decoded_number"] != "" for r in rows)),
    }
    (args.out / "false_positives.json").write_text(json.dumps(summary, indent=2))
    _plot(p, args.out / "calibration.png", summary)
    print(json.dumps(summary, indent=2), file=sys.stderr)
    return summary


def _plot(p: np.ndarray, path: Path, summary: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    x = np.sort(p)
    y = np.arange(1, len(x) + 1) / len(x)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.loglog(x, y, drawstyle="steps-post", label=f"{len(x)} control queries")
    grid = np.logspace(-7, 0, 50)
    ax.loglog(grid, grid, "k--", lw=0.8, label="uniform (exact p-values)")
    ax.axvline(FALSE_ACCUSATION_RATE, color="r", lw=0.8, label="threshold 1e-6")
    ax.set_xlabel("reported p-value")
    ax.set_ylabel("fraction of controls with p-value <= x")
    ax.set_xlim(1e-7, 1)
    ax.set_ylim(1 / len(x) / 2, 1.05)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"Calibration: {summary['false_positives']} false positives")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--films", type=Path, default=film_data_dir())
    parser.add_argument("--leaks", type=int, default=40)
    parser.add_argument("--keys", type=int, default=250)
    parser.add_argument("--ledger", type=int, default=20)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    run(parser.parse_args())


if __name__ == "__main__":
    main()
