"""Fidelity of the mark in the windows radiologists read with, against JPEG 2000 at 10:1.

For each human DICOM film of the shared set (the veterinary film is left out), the film is
marked as ``export`` marks it (:func:`forensics.export.mark_film`, stored values rounded and
clipped) and, separately, compressed with lossy JPEG 2000 at 10:1 (OpenJPEG through
``pylibjpeg-openjpeg``, the codec pydicom uses; the ratio counts *Bits Stored* per pixel, so
the codestream is larger and its error smaller than "10:1 of the 16-bit file" would give: a
conservative reference). JPEG 2000 at 10:1 is the level found visually lossless for chest
radiographs (Slone et al., Radiology 215(2), 2000, doi:10.1148/radiology.215.2.r00ap47543).

Measured, for the mark and for the codec alike:

* **MSE in stored values** and the ratio mark / JPEG 2000;
* **windowed PSNR**: LINEAR windows (PS3.3 C.11.2.1.2, without the -0.5 offsets) of width
  W/4 and W/8, W being the file's first window width in stored units (the range max - min
  when there is none), centred on the 25th (lung) and 75th (mediastinum) percentile of the
  body's presentation values (stored values, negated for MONOCHROME1, so that high is
  bright on screen; the body is what lies between the 5th and 99.5th percentiles). The PSNR
  is over the pixels strictly inside the window, on a 0..255 display scale, unquantised;
* **edge RMS ratio**: the mark's RMS over the sharpest 0.1 % of pixels (Sobel gradient of
  the film) divided by its RMS over the film (masking must not pile the mark up on edges,
  markers and labels).

Writes ``fidelity.csv`` and ``fidelity.json`` to ``--out``. With ``--check``, exits with
status 1 when on some film the mark's MSE is not below JPEG 2000's, or its PSNR in a W/8
window is below JPEG 2000's; a film stored as lossy JPEG 2000 is reported but not checked (its
pixels are already what that codec keeps, so re-encoding them loses little: the shared Philips
film's lossy copy loses 51 stored units^2 at 10:1, its uncompressed copy about 2600).

Usage::

    python benchmarks/fidelity.py [--films DIR] [--out DIR] [--check]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import openjpeg
from scipy import ndimage

from common import film_data_dir, run_description
from forensics.export import mark_film
from watermark.dicomio import read_film
from watermark.keys import SiteKey

KEY = SiteKey(bytes(range(32)))
LOSSY_J2K = ("1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203")  # JPEG 2000, HTJ2K (lossy)
RECIPIENT = 1000
J2K_RATIO = 10.0
WINDOWS = {"lung_W4": (25, 4), "lung_W8": (25, 8), "mediastinum_W4": (75, 4), "mediastinum_W8": (75, 8)}


def j2k_round_trip(pixels: np.ndarray, bits_stored: int, ratio: float = J2K_RATIO) -> tuple[np.ndarray, int]:
    """Stored values (rows, columns) after lossy JPEG 2000 at ``ratio``:1 of *Bits Stored*
    (OpenJPEG, one component, no colour transform); returns (decoded array, codestream bytes)."""
    array = np.ascontiguousarray(pixels)
    if array.dtype not in (np.uint8, np.int8, np.uint16, np.int16):
        array = array.astype(np.int16 if array.min() < 0 else np.uint16)
    stream = openjpeg.encode(array, bits_stored=bits_stored, photometric_interpretation=2,
                             use_mct=False, compression_ratios=[ratio])
    return np.asarray(openjpeg.decode(stream), dtype=np.float64).reshape(pixels.shape), len(stream)


def default_width(film) -> float:
    """The file's first window width in stored units, else the film's range (max - min)."""
    ds = film.dataset
    slope = abs(float(getattr(ds, "RescaleSlope", 1) or 1))
    width = ds.get("WindowWidth")
    if width is not None:
        first = width[0] if hasattr(width, "__len__") and not isinstance(width, str) else width
        if float(first) > 1:
            return float(first) / slope
    return float(film.pixels.max()) - float(film.pixels.min())


def windowed_psnr(original: np.ndarray, changed: np.ndarray, centre: float, width: float) -> float:
    """PSNR in dB, on a 0..255 scale, of ``changed`` against ``original`` (presentation values)
    through a LINEAR window, over the pixels of ``original`` strictly inside it."""
    inside = np.abs(original - centre) < width / 2
    a = np.clip((original[inside] - centre) / width + 0.5, 0, 1) * 255
    b = np.clip((changed[inside] - centre) / width + 0.5, 0, 1) * 255
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def measure(path: Path) -> dict:
    """All fidelity figures of one film (see the module docstring)."""
    film = read_film(path)
    original = film.pixels.astype(np.float64)
    lo, hi = film.value_range
    marked = np.clip(np.rint(mark_film(film, RECIPIENT, KEY)), lo, hi)
    j2k, n_bytes = j2k_round_trip(film.pixels, film.bits_stored)
    sign = -1.0 if film.photometric == "MONOCHROME1" else 1.0
    present = sign * original
    body = present[(present > np.percentile(present, 5)) & (present < np.percentile(present, 99.5))]
    width = default_width(film)
    row = {"film": path.name, "rows": original.shape[0], "columns": original.shape[1],
           "bits_stored": film.bits_stored, "j2k_bytes": n_bytes,
           "checked": str(film.dataset.file_meta.get("TransferSyntaxUID", "")) not in LOSSY_J2K
           if hasattr(film.dataset, "file_meta") else True,
           "j2k_ratio_of_16bit": original.size * 2 / n_bytes,
           "mse_mark": float(np.mean((marked - original) ** 2)),
           "mse_j2k": float(np.mean((j2k - original) ** 2))}
    row["mse_ratio_mark_to_j2k"] = row["mse_mark"] / row["mse_j2k"]
    for name, (percentile, divisor) in WINDOWS.items():
        centre = float(np.percentile(body, percentile))
        row[f"psnr_{name}_mark"] = windowed_psnr(present, sign * marked, centre, width / divisor)
        row[f"psnr_{name}_j2k"] = windowed_psnr(present, sign * j2k, centre, width / divisor)
    gradient = np.hypot(ndimage.sobel(original, 0), ndimage.sobel(original, 1))
    sharpest = gradient >= np.percentile(gradient, 99.9)
    mark = marked - original
    row["edge_rms_ratio"] = float(np.sqrt(np.mean(mark[sharpest] ** 2)) / np.sqrt(np.mean(mark**2)))
    return row


def failures(row: dict) -> list[str]:
    """What ``--check`` rejects in one film's row."""
    out = []
    if not row["checked"]:
        return out
    if row["mse_ratio_mark_to_j2k"] >= 1.0:
        out.append(f"mark MSE {row['mse_mark']:.3g} >= JPEG 2000 10:1 MSE {row['mse_j2k']:.3g}")
    for name in ("lung_W8", "mediastinum_W8"):
        if row[f"psnr_{name}_mark"] < row[f"psnr_{name}_j2k"]:
            out.append(f"{name}: mark PSNR {row[f'psnr_{name}_mark']:.1f} dB < JPEG 2000 "
                       f"{row[f'psnr_{name}_j2k']:.1f} dB")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--films", type=Path, default=film_data_dir())
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fidelity")
    parser.add_argument("--check", action="store_true", help="exit 1 if the mark is more visible than JPEG 2000 10:1")
    args = parser.parse_args()
    paths = [p for p in sorted((args.films / "dicom").glob("*.dcm")) if "veterinary" not in p.name]
    if not paths:
        print(f"fidelity: no DICOM films in {args.films / 'dicom'}", file=sys.stderr)
        return 2
    rows, bad = [], []
    for path in paths:
        row = measure(path)
        rows.append(row)
        print(f"{row['film'][:44]:44s} MSE mark/J2K {row['mse_ratio_mark_to_j2k']:.2f}  lung W/8 "
              f"{row['psnr_lung_W8_mark']:.1f} vs {row['psnr_lung_W8_j2k']:.1f} dB  mediast. W/8 "
              f"{row['psnr_mediastinum_W8_mark']:.1f} vs {row['psnr_mediastinum_W8_j2k']:.1f} dB  "
              f"edge RMS x{row['edge_rms_ratio']:.2f}", file=sys.stderr)
        bad += [f"{path.name}: {f}" for f in failures(row)]
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "fidelity.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "fidelity.json").write_text(json.dumps(
        {**run_description(workers=1), "j2k_ratio_of_bits_stored": J2K_RATIO, "films": rows,
         "check_failures": bad}, indent=2))
    for line in bad:
        print(f"check failed: {line}", file=sys.stderr)
    return 1 if args.check and bad else 0


if __name__ == "__main__":
    sys.exit(main())
