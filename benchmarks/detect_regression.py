"""Regression check for blind detection: same decisions, names and statistics before and after
a change to the detector (a speed-up must not move any result).

Makes about 25 realistic leaks once (marked copies of four shared films through pipelines of
:data:`forensics.leaks.PIPELINES`: screenshots, crops, rotations, mirrors, JPEG/WebP,
downscales, plus unmarked controls) and stores them in ``--leaks`` (``.npy``), so that runs
before and after a change read the very same pixels. Each run writes, per leak, what
``watermark.detect.detect`` returns (decision, named recipients, p-value, z, number of tests,
search family, decoded number, geometry, every listed recipient's z and p-value) and the CPU
seconds. ``--compare`` checks a run against a saved one: identical decisions, names, number of
tests and search family, and z / p-values within ``--rtol`` (relative).

Usage::

    python benchmarks/detect_regression.py --save before.json
    python benchmarks/detect_regression.py --save after.json --compare before.json
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from common import film_data_dir  # noqa: E402
from forensics import leaks  # noqa: E402
from forensics.bench.harness import bench_pipelines, leak_image, load_source  # noqa: E402
from forensics.export import mark_film  # noqa: E402
import importlib  # noqa: E402
from watermark.detect import detect  # noqa: E402
from watermark.keys import SiteKey  # noqa: E402

KEY = SiteKey(bytes(range(32)))
LEDGER = [1000 + 7 * i for i in range(20)]

# (film, recipient or None for the unmarked control, pipeline)
CASES = [
    ("philips_cr_mono1_15bit_RG1_UNCR.dcm", 1021, "screenshot_1up"),
    ("philips_cr_mono1_15bit_RG1_UNCR.dcm", None, "screenshot_1up"),
    ("philips_cr_mono1_15bit_RG1_UNCR.dcm", 1021, "screenshot_ui_messenger_1280px_jpeg_q70"),
    ("philips_cr_mono1_15bit_RG1_UNCR.dcm", 1000, "crop_centre_keep36pct"),
    ("philips_cr_mono1_15bit_RG1_UNCR.dcm", 1000, "rotate_3deg"),
    ("philips_cr_mono1_15bit_RG1_UNCR.dcm", None, "rotate_10deg"),
    ("philips_cr_mono1_15bit_RG1_UNCR.dcm", 1007, "mirrored"),
    ("philips_cr_mono1_15bit_RG1_UNCR.dcm", 1007, "viewer_jpeg_q75"),
    ("nih_cxr14_dx_8bit_1024px_nccid.dcm", 1014, "crop_centre_keep10pct"),
    ("nih_cxr14_dx_8bit_1024px_nccid.dcm", 1014, "rotate_10deg"),
    ("nih_cxr14_dx_8bit_1024px_nccid.dcm", None, "crop_centre_keep36pct"),
    ("nih_cxr14_dx_8bit_1024px_nccid.dcm", 1028, "long_edge_512px_jpeg_q80"),
    ("nih_cxr14_dx_8bit_1024px_nccid.dcm", 1028, "screenshot_ui_messenger_1280px_jpeg_q70"),
    ("nih_cxr14_dx_8bit_1024px_nccid.dcm", None, "viewer_png8"),
    ("fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm", 1035, "scale_60pct_webp_q75"),
    ("fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm", 1035, "crop_top_cut25pct"),
    ("fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm", None, "screenshot_ui_messenger_1280px_jpeg_q70"),
    ("fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm", 1042, "inverted"),
    ("siim_acr_cr_jpegbaseline_8bit_1024px.dcm", 1049, "rotate_3deg"),
    ("siim_acr_cr_jpegbaseline_8bit_1024px.dcm", 1049, "crop_centre_keep10pct"),
    ("siim_acr_cr_jpegbaseline_8bit_1024px.dcm", 1056, "jpeg_q30"),
    ("siim_acr_cr_jpegbaseline_8bit_1024px.dcm", 1056, "screen_photo"),
    ("siim_acr_cr_jpegbaseline_8bit_1024px.dcm", None, "rotate_3deg"),
    ("siim_acr_cr_jpegbaseline_8bit_1024px.dcm", 1063, "long_edge_256px"),
    ("siim_acr_cr_jpegbaseline_8bit_1024px.dcm", None, "mirrored"),
]


def make_leaks(films: Path, folder: Path) -> list[Path]:
    """Write every case's leak to ``folder`` (kept if already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    table = {name: p.steps for name, p in bench_pipelines().items()}
    table["screenshot_1up"] = [("screenshot_1up", {})]
    out, marked = [], {}
    for i, (film, number, pname) in enumerate(CASES):
        path = folder / f"{i:02d}_{Path(film).stem}_{number or 'unmarked'}_{pname}.npy"
        out.append(path)
        if path.exists():
            continue
        source = load_source(films / "dicom" / film)
        if number is None:
            values = source.stored
        else:
            if (film, number) not in marked:
                lo, hi = source.film.value_range
                marked[film, number] = np.clip(np.rint(mark_film(source.film, number, KEY)), lo, hi)
            values = marked[film, number]
        image = leak_image(source, values, table[pname], np.random.default_rng(1000 + i))
        np.save(path, image)
    return out


def _families(calls: list) -> list[dict]:
    """Every family evaluated (whole film, geometric), also those that did not decide."""
    return [{"search": d.search, "z": d.z, "p_value": d.p_value, "n_tests": d.n_tests,
             "decoded_number": d.decoded_number,
             "candidates": {str(c.number): [c.z, c.p_value] for c in d.candidates}}
            for d in calls]


def run_detect(paths: list[Path]) -> list[dict]:
    # record every family's result: for an unmarked leak detect() reports the whole-film one,
    # so the geometric search would otherwise go unchecked
    detect_module = importlib.import_module("watermark.detect")
    evaluate, calls = detect_module._evaluate, []

    def recording(*args, **kwargs):
        calls.append(evaluate(*args, **kwargs))
        return calls[-1]

    detect_module._evaluate = recording
    rows = []
    for path in paths:
        image = np.load(path)
        calls.clear()
        start = time.process_time()
        d = detect(image, KEY, LEDGER)
        cpu = time.process_time() - start
        rows.append({"leak": path.name, "shape": list(image.shape), "decision": d.decision,
                     "recipient_numbers": list(d.recipient_numbers), "p_value": d.p_value,
                     "z": d.z, "n_tests": d.n_tests, "search": d.search,
                     "decoded_number": d.decoded_number, "decoded_p_value": d.decoded_p_value,
                     "geometry": d.geometry,
                     "candidates": {str(c.number): [c.z, c.p_value] for c in d.candidates},
                     "families": _families(calls), "cpu_seconds": cpu})
        print(f"{path.name}: {d.decision} {d.recipient_numbers} z {d.z:.6f} p {d.p_value:.3g} "
              f"({d.search}) {cpu:.2f} s CPU", file=sys.stderr)
    return rows


def _rel(a: float, b: float) -> float:
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def _rel_p(a: float, b: float) -> float:
    """Relative difference of two p-values, in log space for tiny ones."""
    if a == b:
        return 0.0
    return abs(math.log(max(a, 1e-300)) - math.log(max(b, 1e-300))) / max(
        abs(math.log(max(a, 1e-300))), abs(math.log(max(b, 1e-300))), 1.0)


def compare(new: list[dict], old: list[dict], rtol: float) -> bool:
    ok = True
    max_dz = max_dz_all = 0.0
    exact = ("decision", "recipient_numbers", "n_tests", "search", "decoded_number")
    for a, b in zip(new, old, strict=True):
        assert a["leak"] == b["leak"], (a["leak"], b["leak"])
        problems = [f"{k}: {b[k]} -> {a[k]}" for k in exact if a[k] != b[k]]
        dz = abs(a["z"] - b["z"])
        max_dz = max(max_dz, dz)
        if _rel(a["z"], b["z"]) > rtol:
            problems.append(f"z: {b['z']!r} -> {a['z']!r}")
        if _rel_p(a["p_value"], b["p_value"]) > rtol:
            problems.append(f"p: {b['p_value']!r} -> {a['p_value']!r}")
        if len(a["families"]) != len(b["families"]):
            problems.append(f"families evaluated: {len(b['families'])} -> {len(a['families'])}")
        pairs = [(a["candidates"], b["candidates"], "")]
        pairs += [(fa["candidates"], fb["candidates"], fb["search"] + " ")
                  for fa, fb in zip(a["families"], b["families"])]
        for fa, fb in zip(a["families"], b["families"]):
            problems += [f"{fb['search']} {k}: {fb[k]} -> {fa[k]}"
                         for k in ("search", "n_tests", "decoded_number") if fa[k] != fb[k]]
            if _rel(fa["z"], fb["z"]) > rtol:
                problems.append(f"{fb['search']} z: {fb['z']!r} -> {fa['z']!r}")
        for cand_new, cand_old, label in pairs:
            for n, (z_old, p_old) in cand_old.items():
                z_new, p_new = cand_new[n]
                max_dz_all = max(max_dz_all, abs(z_new - z_old))
                if _rel(z_new, z_old) > rtol:
                    problems.append(f"{label}candidate {n} z: {z_old!r} -> {z_new!r}")
        if problems:
            ok = False
            print(f"DIFFERENT {a['leak']}: " + "; ".join(problems), file=sys.stderr)
    cpu_new = sum(r["cpu_seconds"] for r in new)
    cpu_old = sum(r["cpu_seconds"] for r in old)
    print(f"{len(new)} leaks; max |dz| best {max_dz:.3g}, over every family and candidate "
          f"{max_dz_all:.3g}; "
          f"{'IDENTICAL decisions and names' if ok else 'DIFFERENCES'}; CPU {cpu_old:.1f} s -> "
          f"{cpu_new:.1f} s", file=sys.stderr)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--films", type=Path, default=film_data_dir())
    parser.add_argument("--leaks", type=Path, default=Path("/tmp/leaktrace-detect-regression"))
    parser.add_argument("--save", type=Path, required=True)
    parser.add_argument("--compare", type=Path)
    parser.add_argument("--rtol", type=float, default=1e-6)
    args = parser.parse_args()
    rows = run_detect(make_leaks(args.films, args.leaks))
    args.save.write_text(json.dumps(rows, indent=1))
    if args.compare is not None:
        sys.exit(0 if compare(rows, json.loads(args.compare.read_text()), args.rtol) else 1)


if __name__ == "__main__":
    main()
