"""File-level export: read a film, mark it for a recipient, write the DERIVED copy, record it.

Data path for one file::

    read_film (stored values)  ->  render (default display, 0..255)  ->  mark_residual
    (display grey levels)  ->  / display_gain (stored units per grey level)  ->  + stored values
    ->  write_derived (round, clip, DICOM bookkeeping, atomic)  ->  Ledger.record_export

Marking and writing happen inside the ledger transaction that registers the recipient and
records the export, with the site key scoped to the ledger (``key.scoped(ledger.ledger_id)``):
recipient numbers are per ledger, so a mark is only ever read against the ledger that made it.

A ledger that holds exports is bound to the site key(s) they were made with: an export under
another key is refused unless asked for with ``new_key=True`` (:meth:`Ledger.check_key`), and
:func:`site_key_for` never creates a key beside such a ledger.

The mark is designed in the display domain of the film's default window, so its visibility
(display PSNR) is the same for a 8-bit secondary capture and a 15-bit CR.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from watermark import dwt, payload
from watermark.dicomio import (EncodedDerived, Film, encode_derived, read_film, sha256_file,
                               write_derived, write_encoded)
from watermark.display import display_gain, render, shows_range
from watermark.errors import (CapacityError, InvalidInputError, LeaktraceError, LedgerError,
                              LedgerKeyError)
from watermark.keys import SiteKey, create_key, key_path, load_key

from .deidentify import DeidentifiedFilm, deidentify_film, mapping_key
from .ledger import ExportRecord, Ledger, PendingDelivery, normalise_recipient
from .ledger.store import _key_usage_text
from .register import FilmFeatures, film_features

__all__ = ["mark_film", "export_film", "export_many", "export_film_in_pool", "marking_pool",
           "stop_pool", "already_exported", "collect_sources", "marked_copy_of", "site_key_for", "ExportOutcome", "DERIVATION_DESCRIPTION", "MIN_CHANGED_FRACTION"]

DERIVATION_DESCRIPTION = ("Invisible forensic watermark added for release to one recipient "
                          "(leaktrace); pixel values differ slightly from the source image")

#: A marked copy must differ from its source in at least this share of its pixels; a flatter
#: film (no texture in its displayed range) is refused rather than exported untraceable.
MIN_CHANGED_FRACTION = 0.01


def mark_film(film: Film, number: int, key: SiteKey, *, strength: float = 1.0) -> np.ndarray:
    """Marked stored values of a film (float64, not yet rounded or clipped to the bit depth).

    Parameters
    ----------
    film : Film
    number : int
        Recipient number (0 .. 2**32 - 1).
    key : SiteKey
        The key that chooses the pattern; :func:`export_film` passes the site key scoped to
        the ledger (:meth:`watermark.keys.SiteKey.scoped`).
    strength : float, optional
        Embedding strength relative to the strength model's choice (default 1; see
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
    # the display and the mark in float32 (half the memory and time of float64; the mark
    # changes by about 1e-6 of its amplitude); the marked values in float64
    residual = dwt.mark_residual(render(film, dtype=np.float32), payload.encode(number, key),
                                 key, quantum=abs(gain), strength=strength, dtype=np.float32)
    if not np.any(residual):
        raise CapacityError(f"{film.path}: flat image: nothing to carry the mark (no texture "
                            "in its default display)")
    source = film.pixels
    marked = np.divide(residual, gain, dtype=np.float64)  # marked = source + residual / gain
    del residual
    np.add(marked, source, out=marked)
    if shows_range(film):
        lo_at, hi_at = int(np.argmin(source)), int(np.argmax(source))
        np.clip(marked, source.flat[lo_at], source.flat[hi_at], out=marked)
        marked.flat[lo_at], marked.flat[hi_at] = source.flat[lo_at], source.flat[hi_at]
    low, high = film.value_range
    changed = sum(int(np.count_nonzero(np.clip(np.rint(marked[i:i + 256]), low, high)
                                       != source[i:i + 256]))
                  for i in range(0, rows, 256))  # in blocks of rows: no image-sized temporaries
    if changed < MIN_CHANGED_FRACTION * source.size:
        raise CapacityError(f"{film.path}: flat image: nothing to carry the mark (the marked "
                            f"copy would differ from the source in {changed} of {source.size} "
                            "pixels; there is too little texture in the displayed range)")
    return marked


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
    uid, description = _identity(film)
    record = ledger.export_by_output_uid(uid) if uid else None
    return record is not None or description == DERIVATION_DESCRIPTION, record


def _identity(film: Film) -> tuple[str, str]:
    """(0008,0018) *SOP Instance UID* and (0008,2111) *Derivation Description*, stripped."""
    ds = film.dataset
    return (str(ds.get("SOPInstanceUID", "") or "").strip(),
            str(ds.get("DerivationDescription", "") or "").strip())


def _refuse_marked_copy(source: Path, is_marked: bool, earlier: ExportRecord | None) -> None:
    if is_marked:
        whom = f" (for '{earlier.recipient_name}')" if earlier is not None else ""
        raise InvalidInputError(f"{source}: is already a leaktrace-marked copy{whom}; mark the "
                                "original instead")


def site_key_for(ledger: Ledger, path: str | os.PathLike | None = None, *,
                 new_key: bool = False) -> tuple[SiteKey, bool]:
    """The site key to export into ``ledger`` with: read from ``path``, or created there on
    a first run.

    An existing key file is read and checked against the ledger (:meth:`Ledger.check_key`).
    A missing one is created (mode 0600) only when the ledger has no exports yet, or with
    ``new_key``: beside a ledger that holds exports, a missing key file is a mistake (a wrong
    ``--key``, a deleted file, ``LEAKTRACE_KEY`` unset in a cron job) and a new key would
    split the ledger between two keys.

    Parameters
    ----------
    ledger : Ledger
        The ledger the exports will be recorded in (opened for writing or read-only).
    path : path-like, optional
        The key file; default :func:`watermark.keys.default_key_path`.
    new_key : bool
        A deliberate change of site key: accept a key the ledger's exports were not made
        with, and create the key file if it does not exist.

    Returns
    -------
    key : SiteKey
    created : bool
        Whether the key file was created by this call.

    Raises
    ------
    LedgerKeyError
        The key is not one the ledger's exports were made with, or its file does not exist
        while the ledger holds exports, and ``new_key`` is false. The message names the
        ledger, the key file and the fingerprints; no file is created.
    KeyFileError
        The key file cannot be read, is not a leaktrace key, or cannot be created.
    """
    p = key_path(path)
    if p.exists() or p.is_symlink():  # a dangling link is reported by load_key, not replaced
        key = load_key(p)
        ledger.check_key(key, new_key=new_key)
        return key, False
    usage = ledger.key_usage()
    if usage and not new_key:
        keys = " or ".join(usage)
        raise LedgerKeyError(
            f"the ledger at {ledger.path} has {_key_usage_text(usage)}; the key file {p} "
            "does not exist, and no new key is created beside a "
            "ledger that holds exports (a leak is traced only with the key that marked it). "
            f"Point --key (or LEAKTRACE_KEY) at the key file of fingerprint {keys} (restore it "
            "from its backup if it is lost), or give --new-key to start a new site key on "
            "purpose; nothing was exported",
            ledger_path=str(ledger.path), key_fingerprint=None, key_path=str(p),
            ledger_fingerprints=usage)
    return create_key(p), True


def export_film(source: str | os.PathLike, output: str | os.PathLike, *, recipient: str,
                ledger: Ledger, key: SiteKey, overwrite: bool = False,
                strength: float = 1.0, new_key: bool = False,
                delivery: PendingDelivery | None = None, deidentify: bool = False,
                deid_options: Iterable[str] = ()) -> ExportRecord:
    """Mark one film for ``recipient``, write it to ``output`` and record it in the ledger.

    The recipient is registered (if new) in the same ledger transaction as the export, so a
    failed export leaves no recipient behind. The mark is made with ``key`` scoped to the
    ledger's ``ledger_id``; the ledger records the fingerprint of ``key`` itself. With
    ``delivery`` (a copy about to be sent over the network), a ``pending`` delivery is
    recorded in the same transaction (:meth:`Ledger.record_export`).

    Parameters
    ----------
    source, output : path-like
        The film to mark and where to write its marked copy.
    recipient : str
        Who receives the copy (:func:`forensics.ledger.normalise_recipient`).
    ledger : Ledger
        Opened for writing.
    key : SiteKey
        The site key. A ledger that holds exports accepts only a key one of them was made
        with (:meth:`Ledger.check_key`), checked before the source is read.
    overwrite : bool
        Replace an existing ``output``.
    strength : float
        Relative embedding strength (:func:`mark_film`).
    new_key : bool
        Accept a key the ledger's exports were not made with (a deliberate change of site
        key; the ledger then holds two key fingerprints).
    deidentify : bool
        Write a de-identified copy (:func:`forensics.deidentify.deidentify_film`, PS3.15
        Annex E) with ``deid_options``: the header is de-identified and the pixels cleaned
        first, the cleaned pixels are then marked, and the export is recorded with its
        options and keyed mapping (:meth:`Ledger.deidentification_of`). The mapping key is
        per recipient (:func:`forensics.deidentify.mapping_key`).

    Returns
    -------
    ExportRecord

    Raises
    ------
    LedgerKeyError
        ``key`` is not one the ledger's exports were made with and ``new_key`` is false;
        nothing is read, written or recorded.
    LeaktraceError
        Any problem with the input, the output or the ledger; the message names the file.
        Nothing is written or recorded then. A source that is itself a leaktrace-marked copy
        is refused (:class:`InvalidInputError`): marking it again would carry two marks.
        A de-identified export whose pixels may show identity is refused
        (:class:`forensics.deidentify.DeidRefusedError`).
    """
    source, output = Path(source), Path(output)
    ledger.check_key(key, new_key=new_key)
    _check_output(source, output, overwrite)
    name = normalise_recipient(recipient)
    _check_overwrite(ledger, output, name)
    film = read_film(source)
    _refuse_marked_copy(source, *marked_copy_of(film, ledger))
    if ledger.ledger_id is None:
        raise LedgerError(f"{ledger.path}: the ledger has no ledger_id; it cannot record exports")
    mark_key = key.scoped(ledger.ledger_id)
    source_sha256 = sha256_file(source)
    # order: de-identify and clean the pixels, then mark the cleaned pixels, then record
    deid: DeidentifiedFilm | None = None
    if deidentify:
        deid = deidentify_film(film, key=mapping_key(key, ledger.ledger_id, name),
                               options=deid_options)
    to_mark = deid.film if deid is not None else film

    def write(number: int) -> dict:
        marked = mark_film(to_mark, number, mark_key, strength=strength)
        coded = payload.encode(number, mark_key)
        return _written(write_derived(to_mark, marked, output,
                                      description=DERIVATION_DESCRIPTION), coded)

    record = ledger.record_export(
        write, recipient=name,
        source_sop_uid=str(film.dataset.get("SOPInstanceUID", "")),
        source_path=str(source.resolve()), source_sha256=source_sha256,
        key_fingerprint=key.fingerprint, new_key=new_key, delivery=delivery,
        deidentification=deid.ledger_entry() if deid is not None else None,
    )
    _keep_features(ledger, source_sha256, lambda: _features(film))
    return record


def _check_output(source: Path, output: Path, overwrite: bool) -> None:
    if output.exists() and not overwrite:
        raise InvalidInputError(f"{output}: exists already (leaktrace never overwrites an export "
                                "unless asked to with --overwrite)")
    if output.resolve() == source.resolve():
        raise InvalidInputError(f"{source}: output would overwrite the input")


def _check_overwrite(ledger: Ledger, output: Path, name: str) -> None:
    """Refuse to replace (``--overwrite``) a file that holds the copy recorded for another
    recipient (its record would then point at a copy that is gone) or a film the ledger
    records as the source of an export (the original a court compares with)."""
    if not output.exists():
        return
    source_of = ledger.export_by_source_path(output)
    if source_of is not None:
        raise InvalidInputError(
            f"{output}: is the original the ledger records as the source of export "
            f"{source_of.id} (for '{source_of.recipient_name}'); leaktrace never replaces an "
            "original: give another --out folder")
    earlier = ledger.export_by_output_path(output)
    if earlier is not None and earlier.recipient_name != name:
        raise InvalidInputError(
            f"{output}: holds the copy recorded for '{earlier.recipient_name}' (export "
            f"{earlier.id}); it is not replaced by a copy for '{name}', which would leave that "
            "record pointing at a file that is gone: give this recipient another --out folder")


def check_outputs(pairs: Iterable[tuple[str | os.PathLike, str | os.PathLike]]) -> None:
    """Refuse a run in which an output is one of the run's own inputs, before any file is
    written: exporting ``a/x.dcm`` and ``b/x.dcm`` to ``--out b`` would otherwise write the
    first copy over the second original before it is read (with ``--overwrite``) or fail it.

    Parameters
    ----------
    pairs : iterable of (path, path)
        (source, output) pairs, e.g. from :func:`collect_sources`.

    Raises
    ------
    InvalidInputError
        An output path is (resolves to) a source path of the run; the message names both.
    """
    pairs = [(Path(s), Path(o)) for s, o in pairs]
    sources = {s.resolve(): s for s, _ in pairs if s.exists()}
    for source, output in pairs:
        target = output.resolve()
        if target in sources:
            what = ("its own input" if sources[target].resolve() == source.resolve()
                    else f"an input of this run ({sources[target]})")
            raise InvalidInputError(
                f"{source}: its output {output} is {what}; leaktrace never writes over an "
                "original: give another --out folder")


def already_exported(ledger: Ledger, source: str | os.PathLike, output: str | os.PathLike,
                     recipient: str) -> ExportRecord | None:
    """The export that wrote ``output`` from ``source`` for ``recipient``, if the file there is
    still that copy (its SHA-256 as recorded), else None: what ``embed --skip-existing``
    leaves alone when a batch is run again.

    Raises
    ------
    InvalidInputError
        ``output`` is where that export was written, but the file is no longer the copy
        recorded (its SHA-256 differs): changed since, and left as it is.
    """
    output = Path(output)
    if not output.is_file():
        return None
    record = ledger.export_by_output_path(output)
    if (record is None or record.recipient_name != normalise_recipient(recipient)
            or record.source_path != str(Path(source).resolve())):
        return None
    if sha256_file(output) != record.output_sha256:
        raise InvalidInputError(
            f"{output}: is where export {record.id} was written, but it is no longer that copy "
            "(its SHA-256 differs from the ledger's): it was changed since; it is left as it "
            "is, and not exported again over it")
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
                progress: Callable[[ExportOutcome], None] | None = None,
                workers: int = 1, new_key: bool = False, deidentify: bool = False,
                deid_options: Iterable[str] = ()) -> list[ExportOutcome]:
    """Export every (source, output) pair, carrying on after failures.

    A failure of one file (any leaktrace error, an OS error, an unexpected ``ValueError`` or
    running out of memory) becomes that file's :class:`ExportOutcome` with a message naming
    the file; the other files are still exported. A second source whose output is a file
    already written in this run is refused (even with ``overwrite``), so one run never
    replaces its own outputs.

    Parameters
    ----------
    pairs : iterable of (path, path)
        (source, output) pairs, e.g. from :func:`collect_sources`.
    recipient, ledger, key, overwrite
        As for :func:`export_film`.
    progress : callable, optional
        Called with each :class:`ExportOutcome` as it is settled.
    workers : int
        Processes that read, mark and encode files in parallel (0: one per CPU core). With
        more than one, this process still owns the ledger: it writes each output and records
        it in one transaction, in input order, exactly as with one worker, so the outcomes,
        the records and their hash chain are the same; only the marking and encoding run
        elsewhere.
    new_key : bool
        Accept a key the ledger's exports were not made with (:meth:`Ledger.check_key`).
    deidentify, deid_options
        As for :func:`export_film`. De-identified exports run in this process, one at a
        time (``workers`` is not used for them).

    Returns one :class:`ExportOutcome` per pair, in order. ``progress`` is called after each.

    Raises
    ------
    LedgerKeyError
        ``key`` is not one the ledger's exports were made with and ``new_key`` is false:
        the whole batch is refused before any file is read (not one failure per file).
    InvalidInputError
        An output is one of the run's inputs (:func:`check_outputs`): refused before any
        file is read.
    ValueError
        ``workers`` is negative.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0: one per CPU core), got {workers}")
    ledger.check_key(key, new_key=new_key)
    pairs = [(Path(s), Path(o)) for s, o in pairs]
    check_outputs(pairs)
    workers = workers or os.cpu_count() or 1
    if workers > 1 and len(pairs) > 1 and not deidentify:
        return _export_parallel(pairs, recipient=recipient, ledger=ledger, key=key,
                                overwrite=overwrite, progress=progress,
                                workers=min(workers, len(pairs)), new_key=new_key)
    outcomes = []
    written: dict[Path, Path] = {}  # output (resolved) -> the source written there in this run
    for source, output in pairs:
        def run(source=source, output=output) -> ExportRecord:
            _check_not_written(source, output, written)
            output.parent.mkdir(parents=True, exist_ok=True)
            return export_film(source, output, recipient=recipient, ledger=ledger, key=key,
                               overwrite=overwrite, new_key=new_key, deidentify=deidentify,
                               deid_options=deid_options)

        outcomes.append(_settle(source, output, run, written, progress))
    return outcomes


def _check_not_written(source: Path, output: Path, written: dict[Path, Path]) -> None:
    target = output.resolve()
    if target in written:
        raise InvalidInputError(
            f"{source}: its output {output} was already written in this run from "
            f"{written[target]}; give the files different names or export them to "
            "different --out folders")


def _failure(source: Path, exc: BaseException) -> str | None:
    """The message for a per-file failure, or None for an exception that must propagate."""
    if isinstance(exc, LeaktraceError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{source}: {exc}"
    if isinstance(exc, MemoryError):
        return f"{source}: not enough memory to mark it"
    if isinstance(exc, ValueError):  # a bug or an odd file; never a typer/click exit
        return f"{source}: cannot be marked ({type(exc).__name__}: {exc})"
    return None


def _settle(source: Path, output: Path, run: Callable[[], ExportRecord], written: dict,
            progress) -> ExportOutcome:
    """Run one file's export, note its output as written, report progress."""
    outcome = _outcome(source, output, run)
    if outcome.record is not None:
        written[output.resolve()] = source
    if progress is not None:
        progress(outcome)
    return outcome


def _outcome(source: Path, output: Path, run: Callable[[], ExportRecord]) -> ExportOutcome:
    try:
        return ExportOutcome(source, output, record=run())
    except (LeaktraceError, OSError, MemoryError, ValueError) as exc:
        return ExportOutcome(source, output, error=_failure(source, exc))


@dataclass(frozen=True)
class _Marked:
    """What a worker process hands back for one file: the encoded copy and the facts the
    ledger records (``source_uid`` as the file has it), or the failure message. ``warned``
    holds the (message, category) of each warning issued meanwhile."""

    source: Path
    number: int
    error: str | None = None
    source_uid: str = ""
    description: str = ""
    source_sha256: str = ""
    encoded: EncodedDerived | None = None
    warned: tuple = ()
    features: bytes = b""


_KNOWN_SOURCES: frozenset = frozenset()  # in a worker: sources whose features the ledger keeps


def _init_worker(known: frozenset) -> None:
    """Worker start: the SHA-256 of the sources whose features need not be computed."""
    global _KNOWN_SOURCES
    _KNOWN_SOURCES = known


def _mark_in_worker(source: Path, output: Path, number: int, mark_key: SiteKey,
                    overwrite: bool, features_kept: bool = False) -> _Marked:
    """Read, mark and encode one file for recipient ``number`` (runs in a worker process).

    The film's features for ``trace`` are computed too (about 1.4 s for a 3.6-megapixel
    film, several times the marking), unless ``features_kept`` or its SHA-256 is in the set
    the worker was started with (:func:`_init_worker`): sources whose features the ledger
    already keeps.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            _check_output(source, output, overwrite)
            film = read_film(source)
            uid, description = str(film.dataset.get("SOPInstanceUID", "")), _identity(film)[1]
            if description == DERIVATION_DESCRIPTION:  # refused by the parent, with the ledger's word
                result = _Marked(source, number, None, uid, description)
            else:
                source_sha256 = sha256_file(source)
                output.parent.mkdir(parents=True, exist_ok=True)
                marked = mark_film(film, number, mark_key)
                encoded = encode_derived(film, marked, output, description=DERIVATION_DESCRIPTION)
                result = _Marked(source, number, None, uid, description, source_sha256, encoded,
                                 features=b"" if features_kept or source_sha256 in _KNOWN_SOURCES
                                 else _features(film))
        except (LeaktraceError, OSError, MemoryError, ValueError) as exc:
            result = _Marked(source, number, error=_failure(source, exc))
    return dataclasses.replace(result, warned=tuple((str(w.message), w.category) for w in caught))


def _export_parallel(pairs: list[tuple[Path, Path]], *, recipient: str, ledger: Ledger,
                     key: SiteKey, overwrite: bool, progress, workers: int,
                     new_key: bool = False) -> list[ExportOutcome]:
    """:func:`export_many` with ``workers`` processes marking and encoding.

    The workers never touch the ledger and never write an output: each returns the encoded
    copy. This process then, in input order, checks the file against the ledger (a copy it
    recorded is refused), and inside the ledger transaction that registers the recipient
    writes the output atomically; a record that cannot be committed removes the file, as in
    :func:`export_film`. Workers mark for the recipient's number as the ledger has it, or for
    the number a new recipient will get; should the transaction assign another number (another
    process registered a recipient meanwhile), the file is marked again here with the right one.
    """
    name = normalise_recipient(recipient)
    if ledger.ledger_id is None:
        raise LedgerError(f"{ledger.path}: the ledger has no ledger_id; it cannot record exports")
    mark_key = key.scoped(ledger.ledger_id)
    number = _expected_number(ledger, name)
    outcomes: list[ExportOutcome] = []
    written: dict[Path, Path] = {}
    window = 2 * workers  # files in flight: bounds the encoded copies held in memory
    known = frozenset(ledger.sources_with_features())  # sent once to each worker

    def new_pool() -> ProcessPoolExecutor:
        return marking_pool(workers, known)

    pool = None
    futures: dict = {}

    def submit(i: int) -> None:
        source, output = pairs[i]
        futures[i] = pool.submit(_mark_in_worker, source, output, number, mark_key, overwrite)

    try:
        pool = new_pool()
        for i in range(min(window, len(pairs))):
            submit(i)
        for i, (source, output) in enumerate(pairs):
            try:
                marked = futures.pop(i).result()
            except BrokenProcessPool:  # a worker died (a codec crash, killed for memory...)
                marked = _Marked(source, number, error=f"{source}: the process marking it "
                                 "stopped unexpectedly; the file was not exported")
                pool.shutdown(wait=True, cancel_futures=True)
                pool = new_pool()
                for j in sorted(futures):  # the other files in flight go to a new pool
                    submit(j)
            if i + window < len(pairs):
                submit(i + window)
            for message, category in marked.warned:
                warnings.warn(message, category, stacklevel=2)

            def run(source=source, output=output, marked=marked) -> ExportRecord:
                if marked.error is not None:
                    raise _WorkerFailure(marked.error)
                _check_not_written(source, output, written)
                return _record_marked(source, output, marked, name=name, ledger=ledger,
                                      key=key, mark_key=mark_key, overwrite=overwrite,
                                      new_key=new_key)

            outcomes.append(_settle(source, output, run, written, progress))
    except BaseException:  # Ctrl-C above all: stop the workers now, not after their queue
        if pool is not None:
            stop_pool(pool)
        raise
    pool.shutdown(wait=True)
    return outcomes


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a :func:`marking_pool` at once: cancel what is queued and end the workers.

    Safe because workers never write an output or the ledger (they hand back encoded
    copies). Each process is ended with SIGTERM, so that a second Ctrl-C during the shutdown
    (``timeout -s INT`` signals the process and then its group) cannot leave them working
    through the rest of the queue while the interpreter waits for them at exit."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:  # uninterruptible: a Ctrl-C here would leave the workers running
        pool.shutdown(wait=False, cancel_futures=True)
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            with contextlib.suppress(Exception):
                process.terminate()
        pool.shutdown(wait=True)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


class _WorkerFailure(LeaktraceError):
    """A failure already turned into its message by a worker."""


def _expected_number(ledger: Ledger, name: str) -> int:
    """The recipient's number in the ledger, or the one it will get when registered."""
    number = ledger.recipient_number(name)
    return number if number is not None else max(ledger.recipients(), default=0) + 1


def marking_pool(workers: int, known: frozenset = frozenset(), *,
                 warm: bool = False) -> ProcessPoolExecutor:
    """``workers`` processes for :func:`export_film_in_pool` (and ``export_many``), started
    with ``spawn`` (never a fork of a process holding the ledger); ``known``: SHA-256 of the
    sources whose features the ledger keeps (:func:`_init_worker`). With ``warm``, every
    process is started and has imported the marking code before this returns (a second or
    two each), instead of at the first files a long-running service is sent."""
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(known,))
    # The workers are started now, with SIGINT ignored, which they inherit: Ctrl-C (or
    # `timeout -s INT`, which signals the whole process group) then reaches only this
    # process, which shuts the pool down, instead of killing workers mid-import with a
    # traceback each and leaving the pool to wait on them.
    main = threading.current_thread() is threading.main_thread()
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            started = [pool.submit(_started, 0.2 if warm else 0.0) for _ in range(workers)]
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
        if warm:
            for future in started:
                future.result()
    except BaseException:  # Ctrl-C while starting: no worker may outlive the call
        stop_pool(pool)
        raise
    return pool


def _started(hold: float) -> int:
    """A worker's first task when warming a pool: held a moment, so that each of the tasks
    submitted together starts its own process."""
    time.sleep(hold)
    return os.getpid()


def export_film_in_pool(pool: ProcessPoolExecutor, source: str | os.PathLike,
                        output: str | os.PathLike, *, recipient: str, ledger: Ledger,
                        key: SiteKey, new_key: bool = False,
                        delivery: PendingDelivery | None = None) -> ExportRecord:
    """:func:`export_film`, with the reading, marking and encoding done by a process of
    ``pool`` (:func:`marking_pool`) while this thread holds no ledger lock; the output is
    then written and recorded here in one transaction, as :func:`export_film` does. Several
    threads can so mark at once (the DICOM gateway's associations) and still record one at
    a time, in order.

    Raises
    ------
    LeaktraceError
        As :func:`export_film`; also when the worker process died while marking the file.
    """
    source, output = Path(source), Path(output)
    ledger.check_key(key, new_key=new_key)
    name = normalise_recipient(recipient)
    if ledger.ledger_id is None:
        raise LedgerError(f"{ledger.path}: the ledger has no ledger_id; it cannot record exports")
    mark_key = key.scoped(ledger.ledger_id)
    features_kept = _features_current(ledger, sha256_file(source))
    try:
        marked = pool.submit(_mark_in_worker, source, output, _expected_number(ledger, name),
                             mark_key, False, features_kept).result()
    except BrokenProcessPool:
        raise _WorkerFailure(f"{source}: the process marking it stopped unexpectedly; the "
                             "file was not exported") from None
    for message, category in marked.warned:
        warnings.warn(message, category, stacklevel=2)
    if marked.error is not None:
        raise _WorkerFailure(marked.error)
    return _record_marked(source, output, marked, name=name, ledger=ledger, key=key,
                          mark_key=mark_key, overwrite=False, new_key=new_key,
                          delivery=delivery)


def _record_marked(source: Path, output: Path, marked: _Marked, *, name: str, ledger: Ledger,
                   key: SiteKey, mark_key: SiteKey, overwrite: bool, new_key: bool,
                   delivery: PendingDelivery | None = None) -> ExportRecord:
    """Refuse a worker's file if it is a marked copy, else write and record it."""
    _check_overwrite(ledger, output, name)
    uid = marked.source_uid.strip()
    earlier = ledger.export_by_output_uid(uid) if uid else None
    _refuse_marked_copy(source, earlier is not None
                        or marked.description == DERIVATION_DESCRIPTION, earlier)
    return _record(source, output, marked, name=name, ledger=ledger, key=key,
                   mark_key=mark_key, overwrite=overwrite, new_key=new_key, delivery=delivery)


def _written(rec, coded: np.ndarray) -> dict:
    """The ledger's fields of a written copy: its absolute path (a relative ``--out`` would
    mean nothing once the shell has moved on), SOP Instance UID, SHA-256 and coded payload."""
    return {"output_path": str(Path(rec.path).resolve()), "output_sop_uid": str(rec.sop_instance_uid),
            "output_sha256": rec.sha256, "payload": np.packbits(coded < 0).tobytes().hex()}


def _record(source: Path, output: Path, marked: _Marked, *, name: str, ledger: Ledger,
            key: SiteKey, mark_key: SiteKey, overwrite: bool, new_key: bool,
            delivery: PendingDelivery | None = None) -> ExportRecord:
    """Write a worker's encoded copy and record it, in one ledger transaction."""

    def write(number: int) -> dict:
        encoded = marked.encoded
        if number != marked.number:  # the ledger gave another number: mark again for it
            film = read_film(source)
            encoded = encode_derived(film, mark_film(film, number, mark_key), output,
                                     description=DERIVATION_DESCRIPTION)
        _check_output(source, output, overwrite)
        return _written(write_encoded(encoded, output), payload.encode(number, mark_key))

    record = ledger.record_export(
        write, recipient=name, source_sop_uid=marked.source_uid,
        source_path=str(source.resolve()), source_sha256=marked.source_sha256,
        key_fingerprint=key.fingerprint, new_key=new_key, delivery=delivery,
    )
    # features the worker skipped are computed here only if the ledger's are of 0.2.0
    _keep_features(ledger, marked.source_sha256,
                   lambda: marked.features or _features(read_film(source)))
    return record


def _features(film: Film) -> bytes:
    """The keypoint features `leaktrace trace` uses to find the film in a leak (serialised)."""
    return film_features(render(film)).to_bytes()


def _keep_features(ledger: Ledger, source_sha256: str, features: Callable[[], bytes]) -> None:
    """Store a source film's features in the ledger, once per source film; features kept by
    leaktrace 0.2.0 (no thumbnail for the template search) are replaced."""
    if _features_current(ledger, source_sha256):
        return
    kept = ledger.source_features_of(source_sha256) is not None
    ledger.store_source_features(source_sha256, features(), replace=kept)


def _features_current(ledger: Ledger, source_sha256: str) -> bool:
    """Whether the ledger keeps this source's features, in the current form (0.2.0's lack
    the thumbnail of the template search)."""
    kept = ledger.source_features_of(source_sha256)
    return kept is not None and FilmFeatures.from_bytes(kept).thumbnail is not None
