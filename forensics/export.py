"""File-level export: read a film, mark it for a recipient, write the DERIVED copy, record it.

Data path for one file::

    read_film (stored values)  ->  render (default display, 0..255)  ->  mark_residual
    (display grey levels)  ->  / display_gain (stored units per grey level)  ->  + stored values
    ->  write_derived (round, clip, DICOM bookkeeping, atomic)  ->  Ledger.record_export

Marking and writing happen inside the ledger transaction that registers the recipient and
records the export, with the site key scoped to the ledger (``key.scoped(ledger.ledger_id)``):
recipient numbers are per ledger, so a mark is only ever read against the ledger that made it.

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
from watermark.errors import CapacityError, InvalidInputError, LeaktraceError, LedgerError
from watermark.keys import SiteKey

from .ledger import ExportRecord, Ledger, normalise_recipient
from .register import film_features

__all__ = ["mark_film", "export_film", "export_many", "collect_sources", "marked_copy_of",
           "ExportOutcome", "DERIVATION_DESCRIPTION", "MIN_CHANGED_FRACTION"]

DERIVATION_DESCRIPTION = ("Invisible forensic watermark added for release to one recipient "
                          "(leaktrace); pixel values differ slightly from the source image")

#: A marked copy must differ from its source in at least this share of its pixels; a flatter
#: film (no texture in its displayed range) is refused rather than exported untraceable.
MIN_CHANGED_FRACTION = 0.01


def mark_film(film: Film, number: int, key: SiteKey, *, rms: float | None = None) -> np.ndarray:
    """Marked stored values of a film (float64, not yet rounded or clipped to the bit depth).

    Parameters
    ----------
    film : Film
    number : int
        Recipient number (0 .. 2**32 - 1).
    key : SiteKey
        The key that chooses the pattern; :func:`export_film` passes the site key scoped to
        the ledger (:meth:`watermark.keys.SiteKey.scoped`).
    rms : float, optional
        Mark RMS in grey levels of the film's default display (default and meaning: see
        :func:`watermark.dwt.mark_residual`).

    Returns
    -------
    (Rows, Columns) float64 array of stored values. For a film with no window and no VOI LUT,
    which viewers show stretched from its minimum to its maximum stored value, the values are
    kept within the source's [min, max] and the source's minimum and maximum pixels keep their
    values, so the marked copy is shown with exactly the same mapping as the source.

    Raises
    ------
    CapacityError
        The film is smaller than ``watermark.dwt.MIN_EMBED_EDGE`` px on a side, or it is flat
        in its default display (all black, all white, constant, or no texture inside the
        window), so that the marked copy would differ from the source in fewer than
        :data:`MIN_CHANGED_FRACTION` of its pixels and could never be traced.
    """
    rows, cols = film.pixels.shape
    if min(rows, cols) < dwt.MIN_EMBED_EDGE:
        raise CapacityError(f"{film.path}: {cols} x {rows} px is too small to carry the "
                            f"{payload.N_BITS}-bit payload (needs at least {dwt.MIN_EMBED_EDGE} px "
                            "on each side)")
    gain = display_gain(film)
    if not np.isfinite(gain) or gain == 0:
        raise CapacityError(f"{film.path}: flat image: nothing to carry the mark (its default "
                            f"display has a slope of {gain} grey levels per stored unit)")
    display = render(film)
    residual = dwt.mark_residual(display, payload.encode(number, key), key, rms=rms)
    if not np.any(residual):
        raise CapacityError(f"{film.path}: flat image: nothing to carry the mark (no texture "
                            "in its default display)")
    source = film.pixels
    marked = source.astype(np.float64) + residual / gain
    if _shown_min_to_max(film):
        lo_at, hi_at = int(np.argmin(source)), int(np.argmax(source))
        marked = np.clip(marked, source.flat[lo_at], source.flat[hi_at])
        marked.flat[lo_at], marked.flat[hi_at] = source.flat[lo_at], source.flat[hi_at]
    low, high = film.value_range
    changed = int(np.count_nonzero(np.clip(np.rint(marked), low, high) != source))
    if changed < MIN_CHANGED_FRACTION * source.size:
        raise CapacityError(f"{film.path}: flat image: nothing to carry the mark (the marked "
                            f"copy would differ from the source in {changed} of {source.size} "
                            "pixels; there is too little texture in the displayed range)")
    return marked


def _shown_min_to_max(film: Film) -> bool:
    """True when the film has no VOI LUT and no window, so that viewers stretch its min..max.

    Mirrors the choice of :func:`watermark.display.render`: a (0028,3010) *VOI LUT Sequence*,
    else a (0028,1050) *Window Center* / (0028,1051) *Window Width* pair, else the range.
    """
    ds = film.dataset
    if ds.get("VOILUTSequence"):
        return False
    return ds.get("WindowCenter") in (None, "") or ds.get("WindowWidth") in (None, "")


@dataclass(frozen=True)
class ExportOutcome:
    """What happened to one source file: ``record`` on success, else ``error`` (a message)."""

    source: Path
    output: Path | None
    record: ExportRecord | None = None
    error: str | None = None


def marked_copy_of(film: Film, ledger: Ledger) -> tuple[bool, ExportRecord | None]:
    """Whether ``film`` is a leaktrace-marked copy, and its export record if this ledger has it.

    A marked copy is recognised by its (0008,2111) *Derivation Description* (leaktrace's
    :data:`DERIVATION_DESCRIPTION`) or by its (0008,0018) *SOP Instance UID* being the output
    of an export recorded in ``ledger``.
    """
    ds = film.dataset
    uid = str(ds.get("SOPInstanceUID", "") or "").strip()
    record = ledger.export_by_output_uid(uid) if uid else None
    description = str(ds.get("DerivationDescription", "") or "").strip()
    return record is not None or description == DERIVATION_DESCRIPTION, record


def export_film(source: str | os.PathLike, output: str | os.PathLike, *, recipient: str,
                ledger: Ledger, key: SiteKey, overwrite: bool = False,
                rms: float | None = None) -> ExportRecord:
    """Mark one film for ``recipient``, write it to ``output`` and record it in the ledger.

    The recipient is registered (if new) in the same ledger transaction as the export, so a
    failed export leaves no recipient behind. The mark is made with ``key`` scoped to the
    ledger's ``ledger_id``; the ledger records the fingerprint of ``key`` itself.

    Raises
    ------
    LeaktraceError
        Any problem with the input, the output or the ledger; the message names the file.
        Nothing is written or recorded then. A source that is itself a leaktrace-marked copy
        is refused (:class:`InvalidInputError`): marking it again would carry two marks.
    """
    source, output = Path(source), Path(output)
    if output.exists() and not overwrite:
        raise InvalidInputError(f"{output}: exists already (leaktrace never overwrites an export "
                                "unless asked to with --overwrite)")
    if output.resolve() == source.resolve():
        raise InvalidInputError(f"{source}: output would overwrite the input")
    name = normalise_recipient(recipient)
    film = read_film(source)
    is_marked, earlier = marked_copy_of(film, ledger)
    if is_marked:
        whom = f" (for '{earlier.recipient_name}')" if earlier is not None else ""
        raise InvalidInputError(f"{source}: is already a leaktrace-marked copy{whom}; mark the "
                                "original instead")
    if ledger.ledger_id is None:
        raise LedgerError(f"{ledger.path}: the ledger has no ledger_id; it cannot record exports")
    mark_key = key.scoped(ledger.ledger_id)
    source_sha256 = sha256_file(source)

    def write(number: int) -> dict:
        marked = mark_film(film, number, mark_key, rms=rms)
        coded = payload.encode(number, mark_key)
        rec = write_derived(film, marked, output, description=DERIVATION_DESCRIPTION)
        return {"output_path": str(rec.path), "output_sop_uid": str(rec.sop_instance_uid),
                "output_sha256": rec.sha256, "payload": np.packbits(coded < 0).tobytes().hex()}

    record = ledger.record_export(
        write, recipient=name,
        source_sop_uid=str(film.dataset.get("SOPInstanceUID", "")),
        source_path=str(source.resolve()), source_sha256=source_sha256,
        key_fingerprint=key.fingerprint,
    )
    if not ledger.has_source_features(source_sha256):
        # once per source film: what `leaktrace trace` needs to find the film in a leak
        ledger.store_source_features(source_sha256, film_features(render(film)).to_bytes())
    return record


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

    A failure of one file (any leaktrace error, an OS error, an unexpected ``ValueError`` or
    running out of memory) becomes that file's :class:`ExportOutcome` with a message naming
    the file; the other files are still exported. A second source whose output is a file
    already written in this run is refused (even with ``overwrite``), so one run never
    replaces its own outputs.

    Returns one :class:`ExportOutcome` per pair, in order. ``progress`` is called after each.
    """
    outcomes = []
    written: dict[Path, Path] = {}  # output (resolved) -> the source written there in this run
    for source, output in pairs:
        try:
            target = output.resolve()
            if target in written:
                raise InvalidInputError(
                    f"{source}: its output {output} was already written in this run from "
                    f"{written[target]}; give the files different names or export them to "
                    "different --out folders")
            output.parent.mkdir(parents=True, exist_ok=True)
            rec = export_film(source, output, recipient=recipient, ledger=ledger, key=key,
                              overwrite=overwrite)
            written[target] = source
            outcome = ExportOutcome(source, output, record=rec)
        except LeaktraceError as exc:
            outcome = ExportOutcome(source, output, error=str(exc))
        except OSError as exc:
            outcome = ExportOutcome(source, output, error=f"{source}: {exc}")
        except MemoryError:
            outcome = ExportOutcome(source, output, error=f"{source}: not enough memory to mark it")
        except ValueError as exc:  # a bug or an odd file; never a typer/click exit
            outcome = ExportOutcome(source, output,
                                    error=f"{source}: cannot be marked ({type(exc).__name__}: {exc})")
        outcomes.append(outcome)
        if progress is not None:
            progress(outcome)
    return outcomes
