"""Imperceptibility, traceability and speed of the main job on every shared DICOM film.

For each film: embed (read + mark + write, timed), PSNR of the stored values (peak
2**BitsStored - 1) and of the default-window 8-bit display (peak 255), display SSIM, and blind
detection (timed) of three leaks of the marked copy (8-bit PNG, JPEG q75, 50 % downscale) and
of the same three leaks of the unmarked film. Runs on one core (CPU affinity 0 and
single-threaded BLAS/FFT), and writes a JSON record with the command, the machine and the numbers.

Usage::

    python benchmarks/embed_detect.py [--films DIR] [--out FILE] [--repeat N]

``--films`` defaults to ``$LEAKTRACE_TEST_DATA/dicom`` or ``../shared/data/cxr/dicom``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from skimage.metrics import peak_signal_noise_ratio, structural_similarity  # noqa: E402

from common import film_data_dir, run_description  # noqa: E402
from forensics import leaks  # noqa: E402
from forensics.export import export_film  # noqa: E402
from forensics.ledger import Ledger  # noqa: E402
from forensics.trace import detect_leak  # noqa: E402
from watermark.dicomio import read_film  # noqa: E402
from watermark.display import render, to_uint8  # noqa: E402
from watermark.keys import SiteKey  # noqa: E402

LEAKS = {"png8": ({}, None), "jpeg_q75": ({}, 75), "scale_0.5": ({"factor": 0.5}, None)}


def _leak_files(display: np.ndarray, folder: Path, stem: str) -> dict[str, Path]:
    out = {}
    eight = leaks.quantize_8bit(display)
    for name, (params, quality) in LEAKS.items():
        image = leaks.scale(eight, **params) if params else eight
        path = folder / f"{stem}_{name}.{'jpg' if quality else 'png'}"
        leaks.save_image(image, path, quality=quality)
        out[name] = path
    return out


def run(films: Path, out: Path, repeat: int) -> dict:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    key = SiteKey(bytes(range(32)))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with Ledger(tmp / "ledger.sqlite") as book:
            for i, src in enumerate(sorted(films.glob("*.dcm"))):
                recipient = f"recipient-{i % 3}"
                times = []
                for r in range(repeat):
                    target = tmp / f"{r}_{src.name}"
                    start = time.perf_counter()
                    rec = export_film(src, target, recipient=recipient, ledger=book, key=key)
                    times.append(time.perf_counter() - start)
                original, marked = read_film(src), read_film(rec.output_path)
                peak = 2**original.bits_stored - 1
                a, b = original.pixels.astype(np.float64), marked.pixels.astype(np.float64)
                d0, d1 = to_uint8(render(original)), to_uint8(render(marked))
                row = {
                    "film": src.name,
                    "shape": list(original.pixels.shape),
                    "bits_stored": original.bits_stored,
                    "psnr_stored_db": float(peak_signal_noise_ratio(a, b, data_range=peak)),
                    "psnr_display_db": float(peak_signal_noise_ratio(d0, d1, data_range=255)),
                    "ssim_display": float(structural_similarity(d0, d1, data_range=255)),
                    "embed_s_median": statistics.median(times),
                    "leaks": {},
                }
                detect_times = []
                for kind, film in (("marked", marked), ("unmarked", original)):
                    for name, path in _leak_files(render(film), tmp, f"{kind}_{src.stem}").items():
                        start = time.perf_counter()
                        report = detect_leak(path, ledger=book, key=key)
                        detect_times.append(time.perf_counter() - start)
                        row["leaks"][f"{kind}/{name}"] = {
                            "decision": report.decision, "recipient": report.recipient,
                            "correct": (report.recipient == recipient) if kind == "marked"
                            else report.recipient is None,
                            "p_value": report.detection.p_value}
                row["detect_s_median"] = statistics.median(detect_times)
                rows.append(row)
                print(f"{src.name:52s} PSNR stored {row['psnr_stored_db']:5.1f} dB  display "
                      f"{row['psnr_display_db']:5.1f} dB  SSIM {row['ssim_display']:.4f}  embed "
                      f"{row['embed_s_median']:.2f} s  detect {row['detect_s_median']:.2f} s  "
                      f"leaks ok {sum(v['correct'] for v in row['leaks'].values())}/6",
                      file=sys.stderr)
    display_psnr = [r["psnr_display_db"] for r in rows]
    result = {
        **run_description(cores_used=1),
        "films": rows,
        "summary": {
            "films": len(rows),
            "median_psnr_display_db": statistics.median(display_psnr),
            "min_psnr_display_db": min(display_psnr),
            "marked_leaks_traced_right": sum(v["correct"] for r in rows for k, v in r["leaks"].items() if k.startswith("marked")),
            "marked_leaks_wrong_recipient": sum(v["recipient"] is not None and not v["correct"] for r in rows for k, v in r["leaks"].items() if k.startswith("marked")),
            "unmarked_false_positives": sum(not v["correct"] for r in rows for k, v in r["leaks"].items() if k.startswith("unmarked")),
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["summary"], indent=2), file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--films", type=Path, default=film_data_dir() / "dicom")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/embed_detect.json"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    run(args.films, args.out, args.repeat)


if __name__ == "__main__":
    main()
