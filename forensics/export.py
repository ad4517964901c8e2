"""File-level export: read a film, mark it for a recipient, write the DERIVED copy, record it.

Data path for one file::

    read_film (stored values)  ->  render (default display, 0..255)  ->  mark_residual
    (display grey levels)  ->  / display_gain (stored units per grey level)  ->  + stored values
    ->  write_derived (round, clip, DICOM bookkeeping, atomic)  ->  Ledger.record_export

The mark is designed in the display domain of the film's default window, so its visibility
(display PSNR) is the same for a 8-bit secondary capture and a 15-bit CR.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from watermark import dwt, payload
from watermark.dicomio import Film, read_film, sha256_file, write_derived
from watermark.display import display_gain, render
from watermark.errors import CapacityError, InvalidInputError, LeaktraceError
from watermark.keys import SiteKey

from .ledger import ExportRecord, Ledger

__all__ = ["mark_film", "export_film", "export_many", "collect_sources", "ExportOutcome",
           "DERIVATION_DESCRIPTION"]

DERIVATION_DESCRIPTION = ("Invisible forensic watermark added for release to one recipient "
                          "(leaktrace); pixel values differ slightly from the source image")


def mark_film(film: Film, number: int, key: SiteKey, *, rms: float | None = None) -> np.ndarray:
    """Marked stored values of a film (float64, not yet rounded or clipped).

    Parameters
    ----------
    film : Film
    number : int
        Recipient number (0 .. 2**32 - 1).
    key : SiteKey
    rms : float, optional
        Mark RMS in grey levels of the film's default display (default and meaning: see
        :func:`watermark.dwt.mark_residual`).

    Returns
    -------
    (Rows, Columns) float64 array of stored values.

    Raises
    ------
    CapacityError
        The film is smaller than ``watermark.dwt.MIN_EMBED_EDGE`` px on a side.
    """
    rows, cols = film.pixels.shape
    if min(rows, cols) < dwt.MIN_EMBED_EDGE:
        raise CapacityError(f"{film.path}: {cols} x {rows} px is too small to carry the "
                            f"{payload.N_BITS}-bit payload (needs at least {dwt.MIN_EMBED_EDGE} px "
                            "on each side)")
    display = render(film)
    gain = display_gain(film)
    residual = dwt.mark_residual(display, payload.encode(number, key), key, rms=rms)
    return film.pixels.astype(np.float64) + residual / gain


@dataclass(frozen=True)
class ExportOutcome:
    """What happened to one source file: ``record`` on success, else ``error`` (a message)."""

    source: Path
    output: Path | None
    record: ExportRecord | None = None
    error: str | None = None


def export_film(source: str | os.PathLike, output: str | os.PathLike, *, recipient: str,
                ledger: Ledger, key: SiteKey, overwrite: bool = False,
                rms: float | None = None) -> ExportRecord:
    """Mark one film for ``recipient``, write it to ``output`` and record it in the ledger.

    Raises
    ------
    LeaktraceError
        Any problem with the input, the output or the ledger; the message names the file.
        Nothing is written or recorded then.
    """
    source, output = Path(source), Path(output)
    if output.exists() and not overwrite:
        raise InvalidInputError(f"{output}: exists already (leaktrace never overwrites an export "
                                "unless asked to with --overwrite)")
    if output.resolve() == source.resolve():
        raise InvalidInputError(f"{source}: output would overwrite the input")
    film = read_film(source)
    number = ledger.recipient_number(recipient, create=True)
    marked = mark_film(film, number, key, rms=rms)
    coded = payload.encode(number, key)

    def write() -> dict:
        rec = write_derived(film, marked, output, description=DERIVATION_DESCRIPTION)
        return {"output_path": str(rec.path), "output_sop_uid": str(rec.sop_instance_uid),
                "output_sha256": rec.sha256}

    return ledger.record_export(
        write, recipient_number=number,
        source_sop_uid=str(film.dataset.get("SOPInstanceUID", "")),
        source_path=str(source.resolve()), source_sha256=sha256_file(source),
        payload=np.packbits(coded < 0).tobytes().hex(), key_fingerprint=key.fingerprint,
    )


def collect_sources(paths: Iterable[str | os.PathLike], out_dir: str | os.PathLike
                    ) -> Iterator[tuple[Path, Path]]:
    """Pair every input file with its output path.

    A file given directly goes to ``out_dir / name``; the files under a folder (recursively,
    hidden files and ``DICOMDIR`` skipped) go to ``out_dir / <path relative to the folder>``.
    A path that does not exist is yielded with its intended output so that the caller reports
    it like any other failure.
    """
    out_dir = Path(out_dir)
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p)
                if f.is_file() and not any(part.startswith(".") for part in rel.parts) \
                        and f.name.upper() != "DICOMDIR":
                    yield f, out_dir / rel
        else:
            yield p, out_dir / p.name


def export_many(pairs: Iterable[tuple[Path, Path]], *, recipient: str, ledger: Ledger,
                key: SiteKey, overwrite: bool = False,
                progress: Callable[[ExportOutcome], None] | None = None) -> list[ExportOutcome]:
    """Export every (source, output) pair, carrying on after failures.

    Returns one :class:`ExportOutcome` per pair, in order. ``progress`` is called after each.
    """
    outcomes = []
    for source, output in pairs:
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            rec = export_film(source, output, recipient=recipient, ledger=ledger, key=key,
                              overwrite=overwrite)
            outcome = ExportOutcome(source, output, record=rec)
        except LeaktraceError as exc:
            outcome = ExportOutcome(source, output, error=str(exc))
        except OSError as exc:
            outcome = ExportOutcome(source, output, error=f"{source}: {exc}")
        outcomes.append(outcome)
        if progress is not None:
            progress(outcome)
    return outcomes
