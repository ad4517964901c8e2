"""What de-identification costs per film, and whether the mark is still traced after it.

For each shared DICOM film: the time of the header's de-identification
(:func:`forensics.deidentify.deidentify_dataset`), of the burned-in text search and blanking
(:func:`forensics.burnedin.clean_pixels`, RapidOCR on 2 readings per pass), and of a whole
``embed`` of the film without and with ``--deidentify --deid-option clean-pixel-data``; then
the de-identified copy's display goes through a few leak pipelines of
:data:`forensics.leaks.PIPELINES` (a viewer's PNG and JPEG export, a screenshot sent through
a messenger; ``--pipelines main`` takes every pipeline of the robustness benchmark that is
not a stretch one and starts from the display) and is traced against the ledger
(:func:`forensics.trace.trace_array`) and detected blind (:func:`watermark.detect.detect`).

Prints one line per film and writes ``deidentify.json`` to ``--out``.

Usage::

    python benchmarks/deidentify.py [--films DIR] [--out DIR] [--pipelines main | NAME ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import film_data_dir, run_description
from forensics import burnedin, leaks
from forensics.bench import bench_pipelines
from forensics.deidentify import deidentify_dataset, identifying_values, mapping_key
from forensics.export import export_film
from forensics.ledger import Ledger
from forensics.trace import trace_array
from watermark.detect import detect
from watermark.dicomio import read_film
from watermark.display import render
from watermark.keys import SiteKey

KEY = SiteKey(bytes(range(32)))
PIPELINES = ("viewer_png8", "viewer_jpeg_q75", "screenshot_ui_messenger_1280px_jpeg_q70")


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--films", type=Path, default=film_data_dir() / "dicom")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "reported")
    parser.add_argument("--pipelines", nargs="*", default=list(PIPELINES),
                        help="pipeline names, or 'main': every non-stretch display pipeline")
    args = parser.parse_args(argv)
    if args.pipelines == ["main"]:
        args.pipelines = [n for n, p in bench_pipelines().items() if n in leaks.PIPELINES
                          and not (p.stretch or p.stored_side or p.sweep_only)]
    unknown = sorted(set(args.pipelines) - set(leaks.PIPELINES))
    if unknown:
        print(f"unknown pipeline(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    if burnedin.engine_available() is None:
        print("RapidOCR is not installed: pip install 'leaktrace[ocr]'", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="leaktrace-deid-bench-") as work:
        work = Path(work)
        with Ledger(work / "ledger.sqlite") as book:
            burnedin._rapidocr()  # the models are loaded once, not counted per film
            for path in sorted(args.films.glob("*.dcm")):
                film = read_film(path)
                mkey = mapping_key(KEY, book.ledger_id, "bench")
                _, header_s = _timed(lambda: deidentify_dataset(
                    film.dataset, key=mkey, options=(), pixels_clean=True))
                report, ocr_s = _timed(lambda: burnedin.clean_pixels(
                    film, identifying_values(film.dataset)))
                _, plain_s = _timed(lambda: export_film(
                    path, work / f"plain_{path.name}", recipient="plain", ledger=book, key=KEY))
                try:
                    _, deid_s = _timed(lambda: export_film(
                        path, work / f"deid_{path.name}", recipient="bench", ledger=book,
                        key=KEY, deidentify=True, deid_options=["clean-pixel-data"]))
                except Exception as exc:  # a refusal is a result too
                    rows.append({"film": path.name, "refused": str(exc)})
                    print(f"{path.name}: refused: {exc}")
                    continue
                shown = render(read_film(work / f"deid_{path.name}"))
                traced = {}
                names = book.recipients()
                for name in args.pipelines:
                    leak = leaks.apply(shown, leaks.PIPELINES[name], np.random.default_rng(1))
                    out = trace_array(leak, ledger=book, key=KEY).as_dict()
                    blind = detect(leak, KEY.scoped(book.ledger_id), list(names))
                    traced[name] = {"decision": out["decision"], "recipient": out.get("recipient"),
                                    "p_value": out.get("p_value"),
                                    "blind": [names[n] for n in blind.recipient_numbers],
                                    "blind_p_value": blind.p_value}
                row = {"film": path.name, "pixels": int(film.pixels.size),
                       "header_s": round(header_s, 4), "ocr_clean_s": round(ocr_s, 2),
                       "text_boxes_blanked": sum(1 for b in report.boxes if not b.kept),
                       "markers_kept": [b.text for b in report.boxes if b.kept],
                       "embed_s": round(plain_s, 2), "embed_deidentified_s": round(deid_s, 2),
                       "traced": traced}
                rows.append(row)
                ok = all(t["decision"] == "traced" and t["recipient"] == "bench"
                         for t in traced.values())
                print(f"{path.name}: header {header_s:.3f} s, OCR+blank {ocr_s:.1f} s "
                      f"({row['text_boxes_blanked']} boxes blanked, markers kept "
                      f"{row['markers_kept']}), embed {plain_s:.1f} s -> {deid_s:.1f} s "
                      f"de-identified; traced to the recipient on {sum(t['recipient'] == 'bench' for t in traced.values())}"
                      f"/{len(traced)} pipelines, blind on "
                      f"{sum(t['blind'] == ['bench'] for t in traced.values())}"
                      f"/{len(traced)}" + ("" if ok else f" {traced}"))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "deidentify.json").write_text(json.dumps(
        {"run": run_description(), "pipelines": list(args.pipelines), "films": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
