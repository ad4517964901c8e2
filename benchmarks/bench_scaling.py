"""``leaktrace bench`` on each runner: tasks per second, and the same rows from every one.

One small sweep (the three smallest human DICOM films of the shared set, leaktrace's blind
detection and its informed trace, four leak pipelines, one recipient per film: 12 tasks,
each a film x method x recipient-or-control through the four pipelines) runs on:

* ``processes-1`` / ``processes-2``: today's runner, in this process / a pool of 2 processes;
* ``dask-local-1`` / ``dask-local-2``: ``--scheduler local``, a Dask LocalCluster of 1 / 2
  single-threaded worker processes, with leaktrace's worker settings
  (:func:`forensics.bench.runners._tune_dask`);
* ``dask-local-2-default-trim``: the same with Dask's own ``MALLOC_TRIM_THRESHOLD_=65536``
  left in the workers' environment, to show what that setting costs.

Each run's rows (every column but the measured times and memory) are compared with the
first run's. Writes ``bench_scaling.json`` to ``--out``.

Usage::

    python benchmarks/bench_scaling.py [--films DIR] [--out DIR] [--runs NAME,...]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

from common import film_data_dir, run_description

from forensics.bench import harness as bench, runners as benchrun

FILMS = ("fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm",
         "siim_acr_cr_jpegbaseline_8bit_1024px.dcm", "nih_cxr14_dx_8bit_1024px_nccid.dcm")
PIPELINES = ["jpeg_q50", "crop_centre_keep50pct", "rotate_1deg",
             "screenshot_ui_messenger_1280px_jpeg_q70"]
RUNS = {"processes-1": (None, 1), "processes-2": (None, 2), "dask-local-1": ("local", 1),
        "dask-local-2": ("local", 2), "dask-local-2-default-trim": ("local", 2)}
MEASURED = {"detect_s", "detect_cpu_s", "detect_peak_mb", "embed_s", "embed_cpu_s",
            "embed_peak_mb", "detect_s_median", "detect_cpu_s_median", "detect_peak_mb_max",
            "embed_s_median", "embed_cpu_s_median", "embed_peak_mb_max",
            "detect_s_median_controls"}


def _rows(folder: Path) -> dict:
    out = {}
    for name in ("bench_queries.csv", "bench_embeds.csv", "bench_summary.csv"):
        with open(folder / name, newline="") as fh:
            out[name] = [{k: v for k, v in r.items() if k not in MEASURED}
                         for r in csv.DictReader(fh)]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--films", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "reported" / "bench")
    parser.add_argument("--runs", default=",".join(RUNS))
    args = parser.parse_args()
    films = [(args.films or film_data_dir()) / "dicom" / name for name in FILMS]
    tune = benchrun._tune_dask
    results, reference = {}, None
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        for name in args.runs.split(","):
            scheduler, workers = RUNS[name]
            benchrun._tune_dask = (lambda dask: None) if name.endswith("default-trim") else tune
            out = Path(tmp) / name
            started = time.perf_counter()
            r = bench.run_bench(films, methods=["leaktrace", "leaktrace-trace"],
                                pipelines=PIPELINES, recipients=1, workers=workers,
                                scheduler=scheduler, out=out, plots=False)
            wall = time.perf_counter() - started
            rows = _rows(out)
            reference = reference or rows
            same = rows == reference
            results[name] = {"scheduler": scheduler or "processes", "workers": workers,
                             "tasks": r.meta["tasks"], "queries": r.meta["queries"],
                             "wall_s": round(wall, 1), "tasks_per_s": round(r.meta["tasks"] / wall, 4),
                             "queries_per_s": round(r.meta["queries"] / wall, 4),
                             "right": sum(q["right"] for q in r.queries),
                             "wrong": sum(q["wrong"] for q in r.queries),
                             "rows_identical_to_first_run": same}
            print(f"{name:28s} {wall:7.1f} s  {results[name]['tasks_per_s']:.3f} tasks/s  "
                  f"right {results[name]['right']}  wrong {results[name]['wrong']}  "
                  f"rows identical: {same}", flush=True)
    benchrun._tune_dask = tune
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {**run_description(), "films": list(FILMS), "pipelines": PIPELINES,
           "methods": ["leaktrace", "leaktrace-trace"], "recipients_per_film": 1, "runs": results}
    (args.out / "bench_scaling.json").write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if all(v["rows_identical_to_first_run"] for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
