"""Every transfer syntax other tools write, read, embedded and traced: the docs' table.

Each of three shared films (NIH DX 8 bits, Canon DX 12 bits, Philips CR 15 bits) is
re-encoded with every recipe of :data:`forensics.external.dicomtools.ENCODINGS` (DCMTK, GDCM,
OpenJPH: other projects' encoders), then:

* **read**: decoded by :func:`watermark.dicomio.read_film`, with the pydicom plugin that
  decoded it, and the decoded values compared with the source's (exact, or RMS);
* **embed**: marked by :func:`forensics.export.export_film` into a ledger, the output's
  transfer syntax recorded and checked with dicom3tools' ``dciodvfy`` (errors the output has
  and the encoded input does not);
* **detect**: the marked file traced blind (:func:`forensics.trace.detect_leak`), as written
  and after the same tool re-encoded it.

Writes ``transfer_syntaxes.json`` to ``--out`` and prints a Markdown table.

Usage::

    python benchmarks/transfer_syntaxes.py [--films DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import film_data_dir, run_description
from forensics.external import dicomtools
from forensics.export import export_film
from forensics.ledger import Ledger
from forensics.trace import detect_leak
from watermark import decoders
from watermark.dicomio import read_film
from watermark.errors import LeaktraceError
from watermark.keys import SiteKey

KEY = SiteKey(bytes(range(32)))
FILMS = ("nih_cxr14_dx_8bit_1024px_nccid.dcm", "canon_dx_mono1_12bit_j2klossless_966_fixed.dcm",
         "philips_cr_mono1_15bit_RG1_UNCR.dcm")


def one(film: Path, encoding: str, work: Path, ledger: Ledger) -> dict:
    recipe = dicomtools.ENCODINGS[encoding]
    row = {"film": film.name, "encoding": encoding, "command": recipe.command,
           "transfer_syntax": str(recipe.transfer_syntax),
           "transfer_syntax_name": recipe.transfer_syntax.name}
    source = read_film(film)
    try:
        encoded = dicomtools.reencode(film, work / f"{film.stem}.{encoding}.dcm", encoding)
        got = read_film(encoded)
    except LeaktraceError as exc:
        return {**row, "read": False, "error": str(exc)}
    diff = got.pixels.astype(np.float64) - source.pixels.astype(np.float64)
    row.update(read=True, bits_stored=got.bits_stored, lossy=got.lossy,
               decoder=decoders.decoder_for(got.transfer_syntax, got.bits_stored),
               values=("rescaled by the tool" if got.bits_stored != source.bits_stored else
                       "exact" if not np.any(diff) else f"RMS {np.sqrt(np.mean(diff**2)):.2f}"))
    out = work / f"{film.stem}.{encoding}.marked.dcm"
    recipient = f"{film.stem[:12]} {encoding}"
    try:
        export_film(encoded, out, recipient=recipient, ledger=ledger, key=KEY)
    except LeaktraceError as exc:
        return {**row, "embed": False, "error": str(exc)}
    marked = read_film(out)
    row.update(embed=True, output_syntax=marked.transfer_syntax.name,
               dciodvfy_new_errors=sorted(dicomtools.dciodvfy_errors(out) - dicomtools.dciodvfy_errors(encoded)))
    again = dicomtools.reencode(out, work / f"{film.stem}.{encoding}.leak.dcm", encoding)
    for label, leak in (("detect", out), ("detect_reencoded", again)):
        report = detect_leak(leak, ledger=ledger, key=KEY)
        row[label] = report.decision == "traced" and report.recipient == recipient
        row[f"{label}_p_value"] = report.detection.p_value
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--films", type=Path, default=film_data_dir())
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    missing = dicomtools.missing_tools() + (["dciodvfy"] if shutil.which("dciodvfy") is None
                                            else [])
    if missing:
        sys.exit(f"transfer_syntaxes: {', '.join(missing)} not on PATH "
                 "(Debian: apt install dcmtk libgdcm-tools dicom3tools)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="leaktrace-ts-") as tmp:
        work = Path(tmp)
        with Ledger(work / "ledger.sqlite") as ledger:
            for name in FILMS:
                for encoding in dicomtools.ENCODINGS:
                    rows.append(one(args.films / "dicom" / name, encoding, work, ledger))
                    print(json.dumps(rows[-1]), file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "transfer_syntaxes.json").write_text(
        json.dumps({**run_description(workers=1), "rows": rows}, indent=2))
    print("| film | tool, command | transfer syntax | bits stored | decoded by | values | "
          "embed: output syntax | dciodvfy new errors | detect | detect, re-encoded |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['film'][:16]} | `{r['command']}` | {r['transfer_syntax_name']} "
              f"({r['transfer_syntax'].removeprefix('1.2.840.10008.')}) | "
              f"{r.get('bits_stored', '')} | {r.get('decoder', '')} | {r.get('values', '')} | "
              f"{r.get('output_syntax', r.get('error', ''))} | "
              f"{len(r.get('dciodvfy_new_errors', []))} | "
              f"{'yes' if r.get('detect') else 'no'} | "
              f"{'yes' if r.get('detect_reencoded') else 'no'} |")
    bad = [r for r in rows if not (r.get("detect") and r.get("detect_reencoded"))
           or r.get("dciodvfy_new_errors")]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
