"""Tracing a leaked file back to a recipient in the ledger.

:func:`trace_leak` is the investigator's path (``leaktrace trace``): it finds which exported
film the leak shows (keypoint features kept in the ledger, :mod:`forensics.register`),
registers the leak onto the original, subtracts the original and tests every recipient who
received that film (informed detection, :mod:`watermark.informed`); when no exported film is
found in the leak, or the informed test names nobody, it falls back to blind detection.

:func:`detect_leak` is the blind path (the leak alone, with the key and the ledger's list of
recipients); it composes :func:`watermark.imageio.read_leak` and :func:`watermark.detect.detect`
and attaches the ledger's names. Marks are tied to the ledger that recorded them: they are
looked for with the site key scoped to the ledger's ``ledger_id``, so another ledger, even one
with the same site key, finds nothing.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from watermark import __version__, dwt, payload
from watermark.detect import Candidate, Detection, detect
from watermark.dicomio import Film, read_film, sha256_file
from watermark.display import render
from watermark.errors import CapacityError, InvalidInputError, LeaktraceError, LedgerError
from watermark.imageio import LeakImage, read_leak
from watermark.informed import (Named, informed_residual, informed_soft_bits, n_tests_for,
                                name_recipients)
from watermark.keys import SiteKey
from watermark.stats import FALSE_ACCUSATION_RATE

from . import register
from .ledger import ExportRecord, Ledger

__all__ = ["LeakReport", "detect_leak", "trace_leak", "trace_array", "INFORMED_SHARE",
           "MAX_SOURCES"]

#: Share of the false-accusation rate spent on the informed test when it runs (the rest
#: goes to the blind detection that follows it if the informed test names nobody).
INFORMED_SHARE = 0.9
#: Most exported films tested in one leak (two films side by side in one screenshot).
MAX_SOURCES = 2
#: Keypoint inliers a second film needs (and a quarter of the first film's).
SECOND_FILM_INLIERS = 30
#: Share of the leak the registered film must cover for the informed answer to stand alone;
#: below it the blind search also runs over the whole leak (two copies side by side).
FULL_VIEW = 0.6


@dataclass(frozen=True)
class LeakReport:
    """A detection result with names, ready to print or to serialise.

    ``recipient`` is the ledger name of the traced recipient, or ``None``.
    """

    leak_path: Path
    leak_sha256: str
    leak_format: str
    width: int
    height: int
    detection: Detection
    recipient: str | None
    names: dict = field(default_factory=dict)
    recipient_names: dict = field(default_factory=dict)
    key_fingerprint: str = ""
    ledger_key_fingerprints: tuple = ()
    ledger_path: str = ""
    ledger_id: str | None = None
    warnings: list = field(default_factory=list)
    mode: str = "blind"
    alpha: float = FALSE_ACCUSATION_RATE
    ledger_intact: bool = True
    source: dict | None = None
    alignment: dict | None = None
    figures: dict = field(default_factory=dict, repr=False, compare=False)
    copied_marks: list = field(default_factory=list)

    @property
    def decision(self) -> str:
        return self.detection.decision

    @property
    def key_in_ledger(self) -> bool | None:
        """Whether the key given made any of the ledger's exports; ``None`` when the ledger
        has no exports (nothing to compare with). When False, no mark recorded in this ledger
        can be found, so "not found" says nothing about the leak (:attr:`key_warning`)."""
        if not self.ledger_key_fingerprints:
            return None
        return self.key_fingerprint in self.ledger_key_fingerprints

    @property
    def key_warning(self) -> str | None:
        """The warning given when the key is not one the ledger's exports were made with
        (also in :attr:`warnings`); ``None`` otherwise."""
        if self.key_in_ledger is not False:
            return None
        return _foreign_key_warning(self.key_fingerprint, self.ledger_key_fingerprints)

    @property
    def recipient_numbers(self) -> list[int]:
        """Every recipient number named (see :class:`watermark.detect.Detection`)."""
        return list(self.detection.recipient_numbers)

    @property
    def p_value(self) -> float:
        return self.detection.p_value

    @property
    def candidates(self) -> list:
        """Every recipient tested, best first (:class:`watermark.detect.Candidate`)."""
        return list(self.detection.candidates)

    def summary(self) -> str:
        """One or two plain sentences for an investigator."""
        text = self._summary()
        if not self.ledger_intact:
            text = ("WARNING: THE LEDGER FAILS ITS INTEGRITY CHECK (run `leaktrace ledger "
                    "verify`): its records were altered, so the names it gives cannot be "
                    "relied on. " + text)
        return text

    def _summary(self) -> str:
        d = self.detection
        if d.decision == "traced" and len(d.recipient_numbers) > 1:
            named = " and ".join(f"'{self.recipient_names[n]}' (number {n}, p-value "
                                 f"{self._p(n):.2e})" for n in d.recipient_numbers)
            return (f"TRACED to {len(d.recipient_numbers)} recipients: {named}. The leak shows "
                    "copies marked for each of them (for example two films side by side); each "
                    "p-value bounds the probability that a copy not marked for that recipient "
                    "scores this high.")
        if d.decision == "traced":
            return (f"TRACED to recipient '{self.recipient}' (number {d.recipient_number}). "
                    f"p-value {d.p_value:.2e}: the probability that a copy not marked for this "
                    f"recipient scores this high is at most {d.p_value:.2e}.")
        if self.copied_marks:
            marks = " and ".join(f"'{c['recipient']}' (number {c['recipient_number']}, p-value "
                                 f"{c['p_value']:.2e})" for c in self.copied_marks)
            return (f"NOT FOUND: nobody is named. The mark of {marks} is present, but on a film "
                    "this ledger never exported to them: a mark copied onto another film (a copy "
                    "attack) names nobody. See the warnings.")
        text = ("NOT FOUND: no recipient's mark is present at the designed false-accusation "
                f"rate {self.alpha:g} (best p-value {d.p_value:.2e}).")
        if d.decoded_number is not None and d.decoded_p_value <= self.alpha:
            text += (f" The payload decodes to recipient number {d.decoded_number}, which this "
                     "ledger does not list: is it the right ledger?")
        return text

    def _p(self, number: int) -> float:
        return next((c.p_value for c in self.detection.candidates if c.number == number), 1.0)

    def as_dict(self) -> dict:
        """Plain JSON-ready dict; ``recipient``, ``p_value`` and ``decision`` are the contract.

        ``recipient`` is the best-scoring named recipient; ``recipients`` lists every named one
        (two when a leak shows two recipients' copies), each with its own p-value.
        ``copied_marks`` lists the recipients whose mark ``trace`` found on a film the ledger
        never exported to them, and did not name (empty for ``detect``).
        ``key_in_ledger`` is :attr:`key_in_ledger` (``false``: the key given made none of the
        ledger's exports, so "not found" says nothing) and ``ledger_key_fingerprints`` the
        fingerprints the ledger's exports were made with, oldest first.
        """
        d = self.detection
        return {
            "recipient": self.recipient,
            "p_value": d.p_value,
            "decision": d.decision,
            "recipient_number": d.recipient_number,
            "recipients": [{"recipient": self.recipient_names.get(n), "recipient_number": n,
                            "p_value": self._p(n)} for n in d.recipient_numbers],
            "z": d.z,
            "polarity": "as_marked" if d.polarity > 0 else "inverted",
            "search": d.search,
            "geometry": d.geometry,
            "working_grid_long_edge": d.long_edge or None,
            "n_tests": d.n_tests,
            "false_accusation_rate": FALSE_ACCUSATION_RATE,
            "decoded_number": d.decoded_number,
            "decoded_p_value": d.decoded_p_value,
            "candidates": [
                {"recipient": self.names.get(c.number), "recipient_number": c.number,
                 "score": c.z, "p_value": c.p_value}
                for c in d.candidates[:10 if self.mode == "blind" else None]
            ],
            "threshold": self.alpha,
            "mode": self.mode,
            "ledger_intact": self.ledger_intact,
            "source": self.source,
            "alignment": self.alignment,
            "leak": {"path": str(self.leak_path), "sha256": self.leak_sha256,
                     "format": self.leak_format, "width": self.width, "height": self.height},
            "key_fingerprint": self.key_fingerprint,
            "key_in_ledger": self.key_in_ledger,
            "ledger_key_fingerprints": list(self.ledger_key_fingerprints),
            "ledger": self.ledger_path,
            "ledger_id": self.ledger_id,
            "summary": self.summary(),
            "copied_marks": list(self.copied_marks),
            "warnings": list(self.warnings),
            "leaktrace_version": __version__,
        }


def detect_leak(path: str | os.PathLike, *, ledger: Ledger, key: SiteKey,
                alpha: float = FALSE_ACCUSATION_RATE) -> LeakReport:
    """Blind detection of a leaked file against every recipient in the ledger.

    The marks are looked for with ``key`` scoped to the ledger's ``ledger_id`` (the key the
    exports of this ledger were made with, see :func:`forensics.export.export_film`); a
    schema-1 ledger, which predates ledger binding, is read with ``key`` itself.

    Raises
    ------
    LeaktraceError
        The file cannot be read, or is too small (``CapacityError``); the message names the
        file.
    """
    leak = read_leak(path)
    try:
        detection = detect(leak.gray, _mark_key(ledger, key), list(ledger.recipients()),
                           alpha=alpha)
    except CapacityError as exc:
        raise CapacityError(f"{path}: {exc}") from None
    return _report(leak.gray, detection, ledger=ledger, key=key, warnings=[], mode="blind",
                   informed=[], leak_info=leak, alpha=alpha)


def trace_leak(path: str | os.PathLike, *, ledger: Ledger, key: SiteKey,
               original: str | os.PathLike | None = None,
               alpha: float = FALSE_ACCUSATION_RATE) -> LeakReport:
    """Trace a leaked file: :func:`trace_array` on the image read by
    :func:`watermark.imageio.read_leak` (same parameters, returns and errors; messages name
    the file)."""
    leak = read_leak(path)
    return trace_array(leak.gray, ledger=ledger, key=key, original=original, alpha=alpha,
                       leak_info=leak)


def _foreign_key_warning(fingerprint: str, used: tuple) -> str:
    """The warning for a key none of the ledger's exports (made with ``used``) was made with."""
    return (f"this ledger's exports were made with key(s) {', '.join(used)}, not with the key "
            f"given ({fingerprint}): no mark recorded in this ledger can be found with it, so "
            "'not found' says nothing about the leak; give the key of fingerprint "
            f"{' or '.join(used)} with --key or LEAKTRACE_KEY")


def _report(leak: np.ndarray, detection: Detection, *, ledger: Ledger, key: SiteKey,
            warnings: list[str], mode: str, informed: list, leak_info: LeakImage | None,
            alpha: float) -> LeakReport:
    """Attach the ledger's names, the source and alignment, and the warnings."""
    names = ledger.recipients()
    warnings = list(warnings)
    used = tuple(ledger.key_usage())  # oldest first
    if used and key.fingerprint not in used:
        warnings.append(_foreign_key_warning(key.fingerprint, used))
    elif len(used) > 1 and detection.decision != "traced":
        others = [fp for fp in used if fp != key.fingerprint]
        warnings.append(f"this ledger's exports were made with {len(used)} keys; only the marks "
                        f"of key {key.fingerprint} (the key given) were looked for: a copy "
                        f"exported under key {' or '.join(others)} is found only with that key, "
                        "so run again with it (--key) before reading 'not found' as final")
    if not names:
        warnings.append("the ledger lists no recipients: nobody can be named")
    problems = ledger.verify()
    if problems:
        warnings.insert(0, f"the ledger fails its integrity check ({len(problems)} problem(s), "
                        f"first: {problems[0]}): recipient names and export records may have "
                        "been altered; run `leaktrace ledger verify`")
    if ledger.ledger_id is None:
        warnings.append("this ledger was made by leaktrace 0.1.0 (schema 1): its marks are not "
                        "tied to it, so a mark recorded in another ledger under the same key "
                        "would be read as one of its recipients")
    # a named recipient is called by the name its exports were recorded under (covered by the
    # hash chain), not by the editable recipients table, whenever the two disagree
    recorded_names = ledger.recorded_names()
    recipient_names = {}
    for number in detection.recipient_numbers:
        table_name = names.get(number)
        recorded = recorded_names.get(number, set())
        recipient_names[number] = table_name
        if recorded and recorded != {table_name}:
            if len(recorded) == 1:
                recipient_names[number] = next(iter(recorded))
            warnings.append(f"the ledger's recipients table names recipient {number} "
                            f"{table_name!r}, but its exports were recorded for "
                            f"{', '.join(repr(n) for n in sorted(recorded))}: the ledger was "
                            "changed; the recorded name is reported; run `leaktrace ledger verify`")
    source, alignment, figures = None, None, {}
    if informed:
        primary = next((inf for inf in informed if any(
            inf.numbers[r.index] == detection.recipient_number for r in inf.results if r.named)),
            informed[0])
        source = _source_dict(primary, detection.recipient_number)
        if len(informed) > 1:
            source["other_films"] = [_source_dict(inf, None) for inf in informed if inf is not primary]
        alignment, figures = primary.alignment, dict(primary.figures)
    path = leak_info.path if leak_info is not None else Path("<array>")
    return LeakReport(
        leak_path=Path(path), leak_sha256=leak_info.sha256 if leak_info else "",
        leak_format=leak_info.format if leak_info else "array",
        width=leak.shape[1], height=leak.shape[0], detection=detection,
        recipient=recipient_names.get(detection.recipient_number), names=names,
        recipient_names=recipient_names, key_fingerprint=key.fingerprint,
        ledger_key_fingerprints=used, ledger_path=str(ledger.path), ledger_id=ledger.ledger_id,
        warnings=warnings, mode=mode, alpha=alpha, source=source, alignment=alignment, ledger_intact=not problems,
        figures={"leak_image": leak, **figures},
    )


def _source_dict(inf: _Informed, number: int | None) -> dict:
    """The ``source`` field: the exported film, and the export record of ``number``'s copy.

    When that copy was made from another source file of the same image (the film stored in
    another transfer syntax, under another SOP Instance UID), the source is that file, and
    ``registered_on`` names the file the leak was registered on.
    """
    mine = [e for e in inf.exports if e.recipient_number == number]
    record = mine[-1] if mine else None
    registered = {"sop_instance_uid": str(inf.film.dataset.get("SOPInstanceUID", "")),
                  "sha256": inf.sha256, "path": str(inf.film.path)}
    if record is not None and record.source_sha256 != inf.sha256:
        origin = {"sop_instance_uid": record.source_sop_uid, "sha256": record.source_sha256,
                  "path": record.source_path, "registered_on": registered}
    else:
        origin = registered
    return {
        **origin,
        "export": record.as_dict() if record else None,
        "export_time": record.created_utc if record else None,
        "exports": [{"id": e.id, "recipient": e.recipient_name,
                     "recipient_number": e.recipient_number, "created_utc": e.created_utc}
                    for e in inf.exports],
        # every copy of this image the named recipient received (the newest is "export");
        # they carry the same mark, so the leak cannot tell them apart
        "recipient_exports": [{"id": e.id, "created_utc": e.created_utc,
                               "output_path": e.output_path,
                               "output_sop_uid": e.output_sop_uid} for e in mine],
    }


#: Share of the original's grey-level variance the registered, intensity-fitted leak must
#: explain: less means the keypoints matched a film that only resembles the one leaked.
MIN_EXPLAINED = 0.25

#: Correlation the fine detail (quantum noise, small vessels) of the registered leak must
#: reach with the original's: a film that only looks alike gives about 0.
MIN_DETAIL_CORRELATION = 0.3


class _NotThisFilm(ValueError):
    """The keypoint match does not hold up once the leak is registered onto the film."""


@dataclass(frozen=True)
class _Informed:
    """Result of the informed test on one source film."""

    sha256: str
    film: Film
    exports: list
    alignment: dict
    numbers: list
    results: list  # of watermark.informed.Named
    n_tests: int
    figures: dict
    leak_coverage: float  # share of the leak's pixels that show the film


def _mark_key(ledger: Ledger, key: SiteKey) -> SiteKey:
    return key.scoped(ledger.ledger_id) if ledger.ledger_id is not None else key


def _working_grid(display: np.ndarray) -> np.ndarray:
    """A film's display (rows, columns), any real dtype, resampled to its working grid
    (:func:`watermark.dwt.working_shape`): float64."""
    return dwt.resample(display, dwt.working_shape(display.shape))


def _working_original(film: Film) -> np.ndarray:
    """The film's default display (:func:`render`) on its working grid, float64 of shape
    ``dwt.working_shape(film.pixels.shape)``; the full-size display is not kept."""
    return _working_grid(render(film))


def _informed(leak: np.ndarray, sha256: str, film: Film, alignment: register.Alignment,
              exports: list[ExportRecord], key: SiteKey, *, alpha: float,
              original: np.ndarray | None = None) -> _Informed:
    """Register ``leak`` onto ``film`` (given the keypoint alignment), subtract it, test its
    recipients at level ``alpha``. ``original`` is the film's display on its working grid
    (:func:`_working_original`), when already computed."""
    film_shape = tuple(film.pixels.shape[:2])
    original = _working_original(film) if original is None else original
    wshape = original.shape
    to_work = np.diag([wshape[1] / film_shape[1], wshape[0] / film_shape[0], 1.0])
    if alignment.template_ncc is not None:  # a thumbnail's precision: polish it first
        variant = leak[:, ::-1] if alignment.mirrored else leak
        polished = register.polish(variant, original, to_work @ alignment.matrix,
                                   inverted=alignment.inverted)
        alignment = dataclasses.replace(alignment, matrix=np.linalg.inv(to_work) @ polished)
    homography = to_work @ alignment.leak_to_film(leak.shape)
    aligned = register.warp_into(leak, homography, wshape)
    residual, usable = informed_residual(aligned, original)
    correction = register.refine(np.where(usable, residual + original, np.nan), original)
    homography = correction @ homography
    aligned = register.warp_into(leak, homography, wshape)
    residual, usable = informed_residual(aligned, original)
    explained = 1.0 - float(np.var(residual[usable]) / max(np.var(original[usable]), 1e-9)) \
        if usable.sum() > 64 else 0.0
    if explained < MIN_EXPLAINED:
        raise _NotThisFilm(f"the aligned leak explains {100 * explained:.0f} % of the film's "
                           f"grey-level variance (at least {100 * MIN_EXPLAINED:.0f} % expected)")
    detail = _detail_correlation(residual + original, original, usable,
                                 register.linear_scale(homography))
    if detail < MIN_DETAIL_CORRELATION:
        raise _NotThisFilm(f"the fine detail of the aligned leak and of the film correlate at "
                           f"{detail:.2f} (at least {MIN_DETAIL_CORRELATION} expected)")
    numbers, results, n_tests = _test_recipients(aligned, original, residual, sha256, exports,
                                                 key, alpha=alpha, film_shape=film_shape)
    leak_to_film = np.linalg.inv(to_work) @ homography
    inside = np.isfinite(aligned)
    info = alignment.as_dict(leak.shape)
    info.update(transform=(leak_to_film / leak_to_film[2, 2]).round(8).tolist(),
                explained_variance=round(explained, 4),
                detail_correlation=round(detail, 4),
                overlap_fraction=round(float(inside.mean()), 4),
                usable_fraction=round(float(usable.mean()), 4),
                refinement_px=round(float(np.hypot(*correction[:2, 2])), 3),
                film_shape=list(film_shape))
    figures = {"original_image": np.clip(original, 0, 255).astype(np.uint8),
               "aligned_leak": np.where(usable, residual + original, np.nan)}
    corners = np.array([[0, 0, 1], [wshape[1], 0, 1], [wshape[1], wshape[0], 1], [0, wshape[0], 1]],
                       dtype=np.float64)
    in_leak = corners @ np.linalg.inv(homography).T
    in_leak = in_leak[:, :2] / in_leak[:, 2:]
    coverage = _polygon_area(np.clip(in_leak, 0, [leak.shape[1], leak.shape[0]])) / leak.size
    info["leak_coverage"] = round(float(coverage), 4)
    return _Informed(sha256, film, exports, info, numbers, results, n_tests, figures,
                     float(coverage))


def _detail_correlation(fitted: np.ndarray, original: np.ndarray, usable: np.ndarray,
                        scale: float) -> float:
    """Correlation coefficient of the fine detail of the registered leak and of the original.

    Parameters
    ----------
    fitted, original : (rows, columns) float arrays
        The leak registered and mapped to the original's grey levels, and the original, on
        the working grid.
    usable : (rows, columns) bool
        Pixels where ``fitted`` is valid.
    scale : float
        Working-grid px per leak px: the detail is a difference of Gaussians at sigma
        ``scale`` and ``2 * scale`` px (``scale`` clipped to 1..4), the finest the leak
        resolves.

    Returns
    -------
    float
        In -1..1; 0 when under 256 px remain once the border is eroded. Quantum noise and fine
        structure are the film's own: the right film gives 0.5 to 1 even after a phone photo
        or a 256 px copy, another chest film about 0 however alike the two look.
    """
    sigma = float(np.clip(scale, 1.0, 4.0))
    inner = ndimage.binary_erosion(usable, iterations=int(np.ceil(4 * sigma)))
    if inner.sum() < 256:
        return 0.0
    bands = []
    for image in (fitted, original):
        centred = np.where(usable, image - image[usable].mean(), 0.0)
        bands.append((ndimage.gaussian_filter(centred, sigma)
                      - ndimage.gaussian_filter(centred, 2 * sigma))[inner])
    a, b = bands
    denom = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
    return float(np.dot(a, b) / denom) if denom > 0 else 0.0


def _test_recipients(aligned: np.ndarray, original: np.ndarray, residual: np.ndarray,
                     sha256: str,
                     exports: list[ExportRecord], key: SiteKey, *, alpha: float,
                     film_shape: tuple[int, int]) -> tuple[list[int], list[Named], int]:
    """The informed test of every recipient of a film, each against the source file their
    copy was made from.

    The same image may have been exported from several source files (stored uncompressed,
    as JPEG-LS and as lossy JPEG 2000, under one SOP Instance UID or several): subtracting
    the lossy one from a copy of the uncompressed one leaves its compression error, which
    drowns the mark. So the recipients are grouped by source file and each group is tested
    on the residual against its own original (read from the path its exports recorded; the
    registered ``original`` and its ``residual`` when it cannot be read). The union bound spans every group:
    group ``g`` with ``n_g`` of the film's ``N`` tests gets ``alpha * n_g / N`` and its
    p-values are scaled by ``N / n_g``, so that a p-value <= ``alpha`` still means named.

    Returns ``(numbers, results, n_tests)``: results index into numbers (a recipient who got
    copies from two source files appears twice).
    """
    groups: dict[str, list[ExportRecord]] = {}
    for e in exports:
        groups.setdefault(e.source_sha256, []).append(e)
    plan = []
    for sha, group in groups.items():
        numbers = sorted({e.recipient_number for e in group})
        plan.append((sha, numbers, n_tests_for(len(numbers))))
    total = sum(n for _, _, n in plan)
    numbers_all: list[int] = []
    results_all: list[Named] = []
    for sha, numbers, n in plan:
        soft = None
        if sha != sha256:
            soft = _source_soft_bits(aligned, groups[sha], film_shape, key)
        if soft is None:
            soft = informed_soft_bits(residual, original, key)
        codewords = np.stack([payload.encode(number, key) for number in numbers])
        results, n_g = name_recipients(soft, codewords, alpha=alpha * n / total)
        offset = len(numbers_all)
        results_all += [Named(offset + r.index, r.z, min(1.0, r.p_value * total / n_g), r.named)
                        for r in results]
        numbers_all += numbers
    return numbers_all, results_all, total


def _source_soft_bits(aligned: np.ndarray, exports: list[ExportRecord],
                      film_shape: tuple[int, int], key: SiteKey) -> np.ndarray | None:
    """Informed soft bits (256,) float64 of ``aligned`` (the registered leak on the working
    grid, NaN outside it) against the source file ``exports`` were made from
    (:func:`_group_original`); ``None`` when that file cannot be used."""
    reference = _group_original(exports, film_shape)
    if reference is None:
        return None
    residual, _ = informed_residual(aligned, reference)
    return informed_soft_bits(residual, reference, key)


def _group_original(exports: list[ExportRecord], film_shape: tuple[int, int]
                    ) -> np.ndarray | None:
    """The working-grid display (:func:`_working_original`) of the source file ``exports``
    were made from, or ``None`` when it cannot be read or its film is not ``film_shape``
    (rows, columns). The film (stored pixels and pixel data) is let go once rendered."""
    film, _, _ = _load_original(exports)
    if film is None or film.pixels.shape[:2] != tuple(film_shape):
        return None
    display = render(film)
    del film
    return _working_grid(display)


def _polygon_area(points: np.ndarray) -> float:
    """Area of a polygon given by its (n, 2) vertices in order (shoelace formula)."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _features_of(ledger: Ledger, blob: bytes) -> register.FilmFeatures:
    try:
        return register.FilmFeatures.from_bytes(blob)
    except Exception as exc:  # numpy raises ValueError, zipfile BadZipFile, KeyError...
        raise LedgerError(f"{ledger.path}: the film features kept in the ledger are damaged "
                          f"({type(exc).__name__}); run `leaktrace ledger verify`, or trace "
                          "with --original FILE") from None


def _exports_of_film(ledger: Ledger, source_sha256: str) -> list[ExportRecord]:
    """Every export of the film in a source file: those of the file itself and of any other
    source file holding the same SOP Instance UID (the film stored in another transfer
    syntax), oldest first."""
    exports = ledger.exports_of_source(source_sha256)
    uid = exports[0].source_sop_uid if exports else ""
    if not uid:
        return exports
    return [e for e in ledger.exports() if e.source_sop_uid == uid]


def _load_original(exports: list[ExportRecord]) -> tuple[Film | None, str, str]:
    """The original of an exported film, from a path its exports recorded, checked against
    the SHA-256 recorded with it: ``(film, sha256, "")``, or ``(None, "", why not)``."""
    tried = []
    recorded = {}
    for e in reversed(exports):
        recorded.setdefault(e.source_path, e.source_sha256)
    for path, sha in recorded.items():
        if not Path(path).is_file():
            tried.append(f"{path} (missing)")
            continue
        try:
            if sha256_file(path) != sha:
                tried.append(f"{path} (changed since export: SHA-256 differs)")
                continue
            return read_film(path), sha, ""
        except (OSError, LeaktraceError) as exc:
            tried.append(f"{path} ({exc})")
    return None, "", "; ".join(tried)


def _given_original(path: str | os.PathLike, ledger: Ledger
                    ) -> tuple[Film, str, list[ExportRecord]]:
    """Read ``--original`` and find its exports in the ledger (by SHA-256, else by SOP
    Instance UID). Refuses a marked copy and a film this ledger never exported."""
    film = read_film(path)
    sha = sha256_file(path)
    uid = str(film.dataset.get("SOPInstanceUID", ""))
    copy = ledger.export_by_output_uid(uid) if uid else None
    if copy is not None:
        raise InvalidInputError(f"{path}: is a marked copy (export {copy.id}, for "
                                f"'{copy.recipient_name}'), not an original; give its source "
                                f"{copy.source_path}")
    exports = _exports_of_film(ledger, sha)
    if not exports and uid:
        exports = [e for e in ledger.exports() if e.source_sop_uid == uid]
    if not exports:
        raise InvalidInputError(f"{path}: this ledger records no export of this film (SHA-256 "
                                f"{sha[:16]}..., SOP Instance UID {uid or 'none'})")
    return film, sha, exports


def trace_array(leak: np.ndarray, *, ledger: Ledger, key: SiteKey,
                original: str | os.PathLike | None = None,
                alpha: float = FALSE_ACCUSATION_RATE,
                leak_info: LeakImage | None = None) -> LeakReport:
    """Trace a leaked image (array) against the ledger, with the originals.

    Parameters
    ----------
    leak : (rows, columns) float array
        The leak in grey values (any scale), e.g. :attr:`LeakImage.gray`.
    ledger, key
        The export ledger and the site key.
    original : path, optional
        The original film the leak shows (skips the search over the ledger's exports). When
        it is not found in the leak, the ledger's films are searched as without it, and the
        report's first warning says so.
    alpha : float
        False-accusation probability of the whole query.
    leak_info : LeakImage, optional
        The file the array came from (for the report's file name, SHA-256 and format).

    Returns
    -------
    LeakReport
        ``mode`` is ``"informed"`` (a film was found and registered, its recipients tested
        with the original subtracted), ``"informed+blind"`` (blind detection ran too: the
        informed test named nobody, or the film found covers less of the leak than
        ``FULL_VIEW``, e.g. a screenshot with a viewer's UI or another film beside it) or
        ``"blind"`` (no exported film found in the leak).

    Raises
    ------
    LeaktraceError
        A bad ``original`` (unreadable, a marked copy, never exported in this ledger), or a
        leak too small to analyse.

    Notes
    -----
    The false-accusation rate is split, whatever the image: when a film is found, the
    informed test gets ``INFORMED_SHARE * alpha`` over up to :data:`MAX_SOURCES` films and
    every recipient who received them (union bound, :func:`watermark.informed.name_recipients`)
    and the blind detection ``(1 - INFORMED_SHARE) * alpha``; when none is found, the blind
    detection gets ``alpha``. Which branch runs depends on the image content only, not on
    the key, so the overall rate stays at most ``alpha``.
    """
    leak = np.asarray(leak, dtype=np.float64)
    where = leak_info.path if leak_info is not None else "leak"
    if leak.ndim != 2 or min(leak.shape) < dwt.MIN_DETECT_EDGE:
        raise CapacityError(f"{where}: {' x '.join(map(str, leak.shape[::-1]))} px is too small "
                            f"to test (at least {dwt.MIN_DETECT_EDGE} px on each side)")
    mark_key = _mark_key(ledger, key)
    warnings: list[str] = []
    given_original = None
    originals: dict[str, tuple] = {}  # film id -> (Film | None, sha256, why not): read once
    if original is not None:
        film, sha, exports = _given_original(original, ledger)
        display = render(film)
        films = [register.film_features(display)]
        given_original = _working_grid(display)
        del display
        shas = [sha]
        given_exports = {sha: exports}
        originals[exports[0].source_sop_uid or sha] = (film, sha, "")
        n_sources = 1
    else:
        stored = ledger.source_features()
        if not stored:
            warnings.append("the ledger keeps no film features (exports made before leaktrace "
                            "0.2, or none yet): blind detection only; give --original FILE to "
                            "use an original")
        shas = list(stored)
        films = [_features_of(ledger, stored[s]) for s in shas]
        given_exports = {}
        n_sources = MAX_SOURCES
    informed_alpha = INFORMED_SHARE * alpha / n_sources

    refused: list[str] = []  # candidate films that did not hold up, and why

    def test(found: list) -> list[_Informed]:
        results = []
        for sha, film, exports, alignment in found:
            try:
                results.append(_informed(leak, sha, film, alignment, exports, mark_key,
                                         alpha=informed_alpha, original=given_original))
            except _NotThisFilm as exc:  # chance resemblance of two chest films: not a match
                refused.append(f"{film.path} ({exc})")
            except ValueError as exc:  # a degenerate alignment (the film barely in the leak)
                refused.append(f"{film.path} (the leak could not be aligned onto it: {exc})")
        return results

    # keypoints first; a template search when they find nothing that holds up (a small crop
    # of a smooth part of a film). At most n_sources films are tested in all.
    shown: set[int] = set()  # recipients of films found whose originals cannot be used
    hits = register.register(leak, films) if films else []
    informed = test(_found_films(hits, shas, films, ledger, originals, given_exports, warnings,
                                 strong=True, unusable=shown))
    if not informed and films:
        located = register.locate(leak, films, top=n_sources)
        informed = test(_found_films(located, shas, films, ledger, originals, given_exports,
                                     warnings, strong=False, unusable=shown))
    if not informed and original is not None:
        # the --original is not the film the leak shows: search the ledger's films as without
        # it. No mark was tested yet (which films hold up depends on the image content only),
        # so the search gets the whole alpha.
        why = (f"it could not be registered on the leak: {refused[-1]}" if refused else
               "neither keypoints nor a template search found it")
        report = trace_array(leak, ledger=ledger, key=key, alpha=alpha, leak_info=leak_info)
        return dataclasses.replace(report, warnings=[
            f"the film given with --original, {original}, is not the film the leak shows ({why}); "
            "the ledger's films were searched instead", *report.warnings])
    if not informed:  # say what was tried (once an informed test runs, it is the answer)
        if refused:
            warnings.append(f"no exported film was confirmed in the leak: the closest "
                            f"candidate, {refused[-1]}, did not hold up once registered; blind "
                            "detection only (give --original FILE if you know the film)")
        if films and all(f.thumbnail is None for f in films):
            warnings.append("the ledger's film features predate the template search (leaktrace "
                            "0.2.0): small crops of smooth regions can only be found once the "
                            "films are exported again, or with --original FILE")
    warnings = list(dict.fromkeys(warnings))  # a film found by both searches: said once
    blind_alpha = alpha if not informed else (1.0 - INFORMED_SHARE) * alpha
    blind = None
    covered = max((inf.leak_coverage for inf in informed), default=0.0)
    if not informed or not any(r.named for inf in informed for r in inf.results) \
            or covered < FULL_VIEW:
        # no film found, nobody named, or the leak shows more than the film found (another
        # copy of the same film beside it, say): the blind search over the whole leak too,
        # over every lattice (a second copy may be shown at another scale than the first)
        try:
            blind = detect(leak, mark_key, list(ledger.recipients()), alpha=blind_alpha,
                           all_lattices=True)
        except CapacityError as exc:
            where = leak_info.path if leak_info is not None else "leak"
            raise CapacityError(f"{where}: {exc}") from None
    copied: list[Candidate] = []
    if blind is not None and blind.recipient_numbers and (films or original is not None):
        blind, copied = _marks_on_their_films(blind, ledger, informed, given_exports,
                                              covered, shown)
        warnings += [_copied_warning(c, ledger.recipients().get(c.number), informed)
                     for c in copied]
    if not informed:
        detection, mode = blind, "blind"
    else:
        detection = _combined(informed, blind, n_sources, leak_grid=informed[0])
        mode = "informed" if blind is None else "informed+blind"
    report = _report(leak, detection, ledger=ledger, key=key, warnings=warnings, mode=mode,
                     informed=informed, leak_info=leak_info, alpha=alpha)
    return dataclasses.replace(report, copied_marks=[
        {"recipient": report.names.get(c.number), "recipient_number": c.number,
         "p_value": c.p_value} for c in copied])


def _marks_on_their_films(blind: Detection, ledger: Ledger, informed: list[_Informed],
                          given_exports: dict, covered: float, shown: set[int]
                          ) -> tuple[Detection, list[Candidate]]:
    """``blind`` without the recipients whose mark it found on a film they were never sent,
    and those recipients' candidates.

    A mark names its recipient only on a film the ledger exported to them: the film the
    leak shows (found by keypoints or a template, covering at least :data:`FULL_VIEW` of
    the leak, or given with ``--original``), or, when no exported film is found in the
    leak, no film at all. A mark estimated from one recipient's copies and added to another
    film (the copy attack of Kutter, Voloshynovskiy & Herrigel, Proc. SPIE 3971, 2000,
    doi:10.1117/12.384990) is then reported, not named. Recipients with an export whose
    film has no features in the ledger (made before leaktrace 0.2) keep being named, since
    their films cannot be recognised, and so do the recipients ``shown`` of a film the
    keypoints found whose original cannot be read. A leak that shows more than the film
    found (a second film beside it) is not restricted.
    """
    if informed and covered < FULL_VIEW:
        return blind, []
    allowed = set(ledger.recipients_without_features()) | shown
    for inf in informed:
        allowed |= {e.recipient_number for e in inf.exports}
    if not informed:
        allowed |= {e.recipient_number for exports in given_exports.values() for e in exports}
    foreign = [n for n in blind.recipient_numbers if n not in allowed]
    if not foreign:
        return blind, []
    kept = [n for n in blind.recipient_numbers if n in allowed]
    copied = [c for c in blind.candidates if c.number in foreign]
    rest = [c for c in blind.candidates if c.number not in foreign]
    head = next((c for c in rest if c.number == (kept[0] if kept else None)), None)
    return dataclasses.replace(
        blind, decision="traced" if kept else "not_found",
        recipient_number=kept[0] if kept else None, recipient_numbers=kept,
        candidates=rest + copied,
        p_value=head.p_value if head else min((c.p_value for c in rest), default=1.0),
        z=head.z if head else (rest[0].z if rest else 0.0)), copied


def _copied_warning(c: Candidate, name: str | None, informed: list[_Informed]) -> str:
    """The warning for a mark found on a film its recipient was never sent."""
    where = (f"on {informed[0].film.path}, a film the ledger never exported to them" if informed
             else "on a film the ledger never exported to them (no exported film was found in "
                  "the leak)")
    return (f"the mark of recipient {name!r} (number {c.number}, p-value {c.p_value:.2e}) is "
            f"present {where}: a mark copied from their copies onto another film (a copy "
            "attack) or a film exported in another ledger; nobody is named for it. Give "
            "--original FILE if the leak shows a film of this ledger that was not recognised")


def _found_films(hits: list, shas: list[str], films: list, ledger: Ledger, originals: dict,
                 given_exports: dict, warnings: list[str], *, strong: bool,
                 unusable: set[int]) -> list:
    """The films to test from :func:`register.register` or :func:`register.locate` hits:
    ``(sha256, Film, exports, alignment)``, at most :data:`MAX_SOURCES`, one per film (SOP
    Instance UID), each with a readable original (``originals`` caches them by film id;
    ``given_exports`` holds the exports of an ``--original``, found by SHA-256 or UID).

    ``strong``: the hits are keypoint matches, and a second film needs at least
    :data:`SECOND_FILM_INLIERS` inliers and a quarter of the first's (chance resemblance of
    two chest films gives a few). A hit that shows the same image as a film already found
    (another source file of it under another SOP Instance UID: same size, same place in the
    leak, see :func:`_same_image`) adds its exports to that film's test instead. The
    recipients of a film found whose original cannot be used are added to ``unusable``."""
    found: list = []
    seen: set[str] = set()
    for index, alignment in hits:
        if len(found) == MAX_SOURCES:
            break
        if strong and index != hits[0][0] and alignment.inliers < max(
                SECOND_FILM_INLIERS, 0.25 * hits[0][1].inliers):
            break
        exports = given_exports.get(shas[index]) or _exports_of_film(ledger, shas[index])
        film_id = (exports[0].source_sop_uid if exports else "") or shas[index]
        if film_id in seen:  # the same film from another source file (another syntax)
            continue
        seen.add(film_id)
        twin = next((f for f in found if _same_image(f[3], alignment, films[index],
                                                      films[f[4]])), None)
        if twin is not None:  # the same image under another UID: its recipients join the test
            twin[2].extend(e for e in exports if e not in twin[2])
            continue
        if film_id not in originals:
            originals[film_id] = _load_original(exports)
        film, sha, why = originals[film_id]
        if film is None:
            warnings.append(f"the leak shows the film exported as {exports[0].source_sop_uid} "
                            f"(exports {', '.join(str(e.id) for e in exports)}), but its "
                            f"original cannot be used: {why}; give --original FILE")
            unusable.update(e.recipient_number for e in exports)
            continue
        found.append((sha, film, list(exports), alignment, index))
    # the other source files of an image found (another transfer syntax under another SOP
    # Instance UID) join its test even when the search did not return them: a mirrored copy
    # of a lossy twin was matched to the lossless file only, and its recipient's mark then
    # looked copied from another film
    tested = {f[4] for f in found}
    for entry in found:
        for j, other in enumerate(films):
            if j not in tested and _same_stored_image(films[entry[4]], other):
                exports = given_exports.get(shas[j]) or _exports_of_film(ledger, shas[j])
                entry[2].extend(e for e in exports if e not in entry[2])
    return [f[:4] for f in found]


def _same_stored_image(fa: register.FilmFeatures, fb: register.FilmFeatures) -> bool:
    """True when two films' features show one image: the same size, and thumbnails that
    correlate at 0.995 or more (see :func:`_same_image`); False without thumbnails."""
    if tuple(fa.shape) != tuple(fb.shape) or fa.thumbnail is None or fb.thumbnail is None \
            or fa.thumbnail.shape != fb.thumbnail.shape:
        return False
    ta, tb = (t.astype(np.float64).ravel() for t in (fa.thumbnail, fb.thumbnail))
    ta, tb = ta - ta.mean(), tb - tb.mean()
    denom = float(np.sqrt(np.dot(ta, ta) * np.dot(tb, tb)))
    return denom > 0 and float(np.dot(ta, tb)) / denom >= 0.995


def _same_image(a: register.Alignment, b: register.Alignment, fa: register.FilmFeatures,
                fb: register.FilmFeatures) -> bool:
    """True when two films found in a leak are one image stored twice: the same size, and
    thumbnails that correlate at 0.995 or more (two patients' chest films stay well below;
    the lossy and lossless versions of one film reach 0.9999). For features kept without a
    thumbnail (leaktrace 0.2.0): the leak's corners land within 2 px of each other on both."""
    if tuple(fa.shape) != tuple(fb.shape) or a.mirrored != b.mirrored:
        return False
    if fa.thumbnail is not None and fb.thumbnail is not None:
        return _same_stored_image(fa, fb)
    corners = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    scale = np.diag([100.0, 100.0, 1.0])  # a 100 px square of the leak, mapped by both
    pa, pb = corners @ (a.matrix @ scale).T, corners @ (b.matrix @ scale).T
    pa, pb = pa[:, :2] / pa[:, 2:], pb[:, :2] / pb[:, 2:]
    return bool(np.max(np.hypot(*(pa - pb).T)) <= 2.0)


def _combined(informed: list[_Informed], blind: Detection | None, n_sources: int, *,
              leak_grid: _Informed) -> Detection:
    """One answer from the informed tests and the blind detection (if it ran): every
    recipient named by either; ``recipient_number``, ``p_value`` and ``z`` are those of the
    named recipient with the smallest p-value (or of the best candidate when nobody is named);
    one candidate entry per recipient, the smaller p-value kept."""
    scored = {c.number: c for c in _informed_candidates(informed, n_sources)}
    named = [inf.numbers[r.index] for inf in informed for r in inf.results if r.named]
    if blind is not None:
        named += list(blind.recipient_numbers)
        for c in blind.candidates:
            if c.number not in scored or c.p_value < scored[c.number].p_value:
                scored[c.number] = c
    candidates = sorted(scored.values(), key=lambda c: (c.p_value, -c.z))
    numbers = sorted(dict.fromkeys(named), key=lambda n: scored[n].p_value)
    head = scored[numbers[0]] if numbers else candidates[0]
    return Detection(
        decision="traced" if numbers else "not_found",
        recipient_number=numbers[0] if numbers else None, p_value=head.p_value, z=head.z,
        n_tests=sum(inf.n_tests for inf in informed) + (blind.n_tests if blind else 0),
        long_edge=dwt.working_long_edge(leak_grid.film.pixels.shape),
        polarity=-1 if leak_grid.alignment["inverted"] else 1,
        candidates=candidates, recipient_numbers=numbers,
        search="informed" if blind is None or not blind.recipient_numbers else "informed+blind",
        decoded_number=blind.decoded_number if blind else None,
        decoded_p_value=blind.decoded_p_value if blind else 1.0,
        geometry=dict(blind.geometry) if blind and blind.recipient_numbers else {})


def _informed_candidates(informed: list[_Informed], n_sources: int) -> list[Candidate]:
    """Every recipient tested, best result first, one entry per recipient; p-values on the
    scale of the query's false-accusation rate (named when at most ``alpha``)."""
    best: dict[int, Candidate] = {}
    for inf in informed:
        for r in inf.results:
            c = Candidate(inf.numbers[r.index], r.z,
                          min(1.0, r.p_value * n_sources / INFORMED_SHARE))
            if c.number not in best or (c.p_value, -c.z) < (best[c.number].p_value, -best[c.number].z):
                best[c.number] = c
    return sorted(best.values(), key=lambda c: (c.p_value, -c.z))
