"""Attacks without the key: estimation from copies, removal, and the copy attack (framing).

The adversary has one or more marked copies of one recipient ("A") and the public code, but
not the site key. Because every tile of the working grid carries the same pattern, and that
pattern depends on the key and the recipient only, the adversary folds the whitened DWT
subbands of the copies onto one tile (:func:`watermark.dwt.folded_subbands`, the detector's
own key-independent step) and takes the signs: an estimate of A's tile (Kutter,
Voloshynovskiy & Herrigel, "The watermark copy attack", Proc. SPIE 3971, 2000,
doi:10.1117/12.384990; Cayre, Fontaine & Furon, "Watermarking security: theory and
practice", IEEE TSP 53(10), 2005, doi:10.1109/TSP.2005.855418). Driven through the public
strength model (:func:`watermark.dwt.residual_from_tiles`) the estimate is then

* **subtracted** from A's copy (removal; ``alpha`` times the modelled amplitude), and
* **added** to a film never exported to anyone, and to another recipient B's copy after B's
  own estimated mark was subtracted (the copy attack: a framed innocent),

each also after a JPEG q75 re-save. Every attacked image is saved as PNG and given to
``detect`` (blind) and ``trace`` (with the ledger's originals), as an investigator would.

What the redesign of issue 13 must change is visible here: a good tool names A for a
removal attempt that leaves the image at >= 40 dB, and names nobody for a copy attack.

Setup: the shared PNG/JPEG films (8-bit), wrapped as DICOM Secondary Capture and exported
through a ledger with :func:`forensics.export.export_film`: A receives the ``--copies``
estimation films and the ``--targets`` target films, B the targets too; ``--unexported``
further films are exported to nobody. Writes ``attacks.json`` (one row per query and a
summary) to ``--out`` and prints a table.

Usage::

    python benchmarks/attacks.py [--films DIR] [--targets 6] [--unexported 4] [--out DIR]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from common import film_data_dir, png_film_as_dicom, run_description  # noqa: E402
from forensics.export import export_film  # noqa: E402
from forensics.ledger import Ledger  # noqa: E402
from forensics.trace import detect_leak, trace_leak  # noqa: E402
from watermark import dwt, payload  # noqa: E402
from watermark.dicomio import read_film  # noqa: E402
from watermark.keys import SiteKey  # noqa: E402

KEY = SiteKey(bytes(range(32)))
A, B = "Dr A (estimated)", "Dr B (attacker)"
COPIES = (1, 4, 16)
ALPHAS = (1.0, 2.0)


def estimate_tiles(copies: list[np.ndarray]) -> dict[int, np.ndarray]:
    """The adversary's estimate of the tile shared by ``copies`` (2-D grey arrays, 8-bit):
    the sign of their folded whitened subbands, each copy on its own working grid and
    normalised so that every copy weighs the same. ``{level: (3, t, t) float64}`` of +-1."""
    total = None
    for image in copies:
        folded = dwt.folded_subbands(image, long_edge=dwt.working_long_edge(image.shape))
        norm = math.sqrt(sum(float(np.sum(f * f)) for f in folded.values()))
        total = ({lv: f / norm for lv, f in folded.items()} if total is None
                 else {lv: total[lv] + f / norm for lv, f in folded.items()})
    return {lv: np.where(t >= 0, 1.0, -1.0) for lv, t in total.items()}


def true_tiles(number: int, key: SiteKey) -> dict[int, np.ndarray]:
    """The keyed tile of recipient ``number`` (scoring only: the adversary never has it)."""
    layout = dwt._layout(key)
    c = payload.encode(number, key).astype(np.float64)
    return {lv: layout.signs[lv] * c[layout.bits[lv]] for lv in dwt.LEVELS}


def agreement(estimate: dict, truth: dict) -> float:
    """Share of tile positions whose sign the estimate has right."""
    hits = sum(int(np.sum(estimate[lv] == truth[lv])) for lv in dwt.LEVELS)
    return hits / sum(truth[lv].size for lv in dwt.LEVELS)


def modelled(image: np.ndarray, tiles: dict) -> np.ndarray:
    """The mark the public strength model puts on ``image`` for ``tiles`` (8-bit units)."""
    return dwt.residual_from_tiles(image.astype(np.float64), tiles, quantum=1.0)


def to_8bit(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def jpeg75(image: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=75)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def _outcome(report, truth: str | None) -> dict:
    named = sorted({report.recipient_names.get(n, str(n)) for n in report.recipient_numbers}
                   if report.decision == "traced" else set())
    return {"named": named, "p_value": report.p_value,
            "right": truth is not None and truth in named,
            "innocent_named": [n for n in named if n != truth]}


def run(args) -> dict:
    pngs = sorted((args.films / "png").glob("*/*"))
    need = max(COPIES) + args.targets + args.unexported
    if len(pngs) < need:
        sys.exit(f"attacks: {need} PNG/JPEG films are needed under {args.films / 'png'}, "
                 f"found {len(pngs)}")
    pngs = pngs[:: max(1, len(pngs) // need)][:need]
    estimation = pngs[: max(COPIES)]
    targets = pngs[max(COPIES): max(COPIES) + args.targets]
    unexported = pngs[max(COPIES) + args.targets:]
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="leaktrace-attacks-") as tmp:
        tmp = Path(tmp)
        with Ledger(tmp / "ledger.sqlite") as ledger:
            def export(png: Path, recipient: str) -> np.ndarray:
                src = png_film_as_dicom(png, tmp / "src" / f"{png.stem}.dcm")
                out = tmp / "out" / f"{png.stem}.{recipient[3]}.dcm"
                out.parent.mkdir(exist_ok=True)
                export_film(src, out, recipient=recipient, ledger=ledger, key=KEY)
                return read_film(out).pixels.astype(np.uint8)

            copies_a = {p.stem: export(p, A) for p in [*targets, *estimation]}
            copies_b = {p.stem: export(p, B) for p in targets}
            mark_key = KEY.scoped(ledger.ledger_id)
            number = {name: n for n, name in ledger.recipients().items()}
            truth_a = true_tiles(number[A], mark_key)
            print(f"{len(copies_a) + len(copies_b)} exports made "
                  f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)

            def query(attack: str, n: int, image: np.ndarray, reference: np.ndarray,
                      truth: str | None, film: str, **extra) -> None:
                for recoded in (False, True):
                    leak = jpeg75(image) if recoded else image
                    path = tmp / "leak.png"
                    Image.fromarray(leak).save(path)
                    row = {"attack": attack, "copies": n, "film": film,
                           "jpeg_q75": recoded, "psnr_vs_reference": psnr(leak, reference),
                           **extra}
                    for mode, fn in (("blind", detect_leak), ("trace", trace_leak)):
                        row[mode] = _outcome(fn(path, ledger=ledger, key=KEY), truth)
                    rows.append(row)

            estimation_names = [p.stem for p in estimation]
            for n in COPIES:
                # from A's copies of films other than the targets (n of them)
                est_a = estimate_tiles([copies_a[s] for s in estimation_names[:n]])
                share = agreement(est_a, truth_a)
                print(f"A's tile from {n:2d} copies: {100 * share:.2f} % of signs right",
                      file=sys.stderr)
                rows.append({"attack": "estimate", "copies": n, "sign_agreement": share})
                for target in targets:
                    mine = copies_a[target.stem]
                    # removal from A's copy: the copy itself is one of the n copies
                    est_t = estimate_tiles([mine] + [copies_a[s]
                                                     for s in estimation_names[: n - 1]])
                    for alpha in ALPHAS:
                        removed = to_8bit(mine - alpha * modelled(mine, est_t))
                        query("removal", n, removed, mine, A, target.stem, alpha=alpha)
                    # B strips B's own mark (estimated from B's one copy), adds A's estimate
                    theirs = copies_b[target.stem]
                    stripped = theirs - modelled(theirs, estimate_tiles([theirs]))
                    framed = to_8bit(stripped + modelled(stripped, est_a))
                    query("copy onto B's copy", n, framed, theirs, B, target.stem)
                for film in unexported:
                    clean = np.asarray(Image.open(film).convert("L"), dtype=np.uint8)
                    framed = to_8bit(clean + modelled(clean.astype(np.float64), est_a))
                    query("copy onto unexported film", n, framed, clean, None, film.stem)
                print(f"  {len(rows)} rows ({time.perf_counter() - start:.0f} s)",
                      file=sys.stderr)
    summary = _summarise(rows)
    meta = {**run_description(workers=1), "seconds": time.perf_counter() - start,
            "targets": [p.name for p in targets], "estimation_films": len(estimation),
            "unexported": [p.name for p in unexported], "summary": summary, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attacks.json").write_text(json.dumps(meta, indent=2, default=float))
    print(_table(summary))
    return meta


def _summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["attack"] == "estimate":
            continue
        groups.setdefault((r["attack"], r["copies"], r.get("alpha"), r["jpeg_q75"]), []).append(r)
    out = []
    for (attack, n, alpha, recoded), rs in groups.items():
        out.append({
            "attack": attack, "copies": n, "alpha": alpha, "jpeg_q75": recoded,
            "queries": len(rs), "median_psnr": statistics.median(r["psnr_vs_reference"] for r in rs),
            **{f"{mode}_right": sum(r[mode]["right"] for r in rs) for mode in ("blind", "trace")},
            **{f"{mode}_innocent_named": sum(bool(r[mode]["innocent_named"]) for r in rs)
               for mode in ("blind", "trace")},
        })
    return out


def _table(summary: list[dict]) -> str:
    lines = ["| attack | copies | alpha | JPEG q75 | PSNR (dB, median) | blind: right / innocent "
             "named | trace: right / innocent named |", "|---|---|---|---|---|---|---|"]
    for s in summary:
        q = s["queries"]
        lines.append(f"| {s['attack']} | {s['copies']} | {s['alpha'] or ''} | "
                     f"{'yes' if s['jpeg_q75'] else 'no'} | {s['median_psnr']:.1f} | "
                     f"{s['blind_right']}/{q} / {s['blind_innocent_named']}/{q} | "
                     f"{s['trace_right']}/{q} / {s['trace_innocent_named']}/{q} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--films", type=Path, default=film_data_dir())
    parser.add_argument("--targets", type=int, default=6)
    parser.add_argument("--unexported", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    run(parser.parse_args())


if __name__ == "__main__":
    main()
