"""Burned-in text of a film: find it with offline OCR and blank it (PS3.15 E.3.1).

The Clean Pixel Data Option asks for identifying text in the pixels to be removed. Text is
found by RapidOCR (``rapidocr-onnxruntime``, Apache-2.0; its wheel bundles the PP-OCRv4 ONNX
detection and recognition models, so nothing is downloaded at run time) in the film's default
display, upright and turned by 90 degrees (labels printed along the film's edge), and every
text box is blanked except laterality and position markers a reader needs (:data:`MARKERS`)
read with confidence. What was read is checked against the header's identifying values; a
second reading of the cleaned film must find none of them, else the film is refused: the
cleaning fails closed (:class:`forensics.deidentify.DeidRefusedError`). Without an OCR engine
installed cleaning is refused too, never skipped.

References
----------
DICOM PS3.15 2026, E.3.1 "Clean Pixel Data Option".
Du et al., "PP-OCR: A Practical Ultra Lightweight OCR System", arXiv:2009.09941 (2020).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
import re
from dataclasses import dataclass

import numpy as np

from watermark.dicomio import Film
from watermark.display import render

__all__ = ["MARKERS", "TextBox", "CleanReport", "engine_available", "read_text",
           "clean_pixels", "matches_header", "OcrUnavailableError"]

#: Laterality, view and position markers kept in the pixels (PS3.3 (0020,0060), (0018,5101),
#: (0018,5100) terms and the words technologists burn in). Compared after upper-casing and
#: removing everything but letters, digits and '-'.
MARKERS = frozenset({
    "L", "R", "LT", "RT", "PA", "AP", "LAT", "LATERAL", "LL", "RL", "LLAT", "RLAT", "ERECT",
    "SEMI-ERECT", "SEMIERECT", "UPRIGHT", "SUPINE", "PRONE", "PORTABLE", "PORT", "DECUBITUS",
    "DECUB", "STANDING", "SITTING", "INSP", "EXP", "OBL", "OBLIQUE", "AP-SUPINE",
    "PA-ERECT"})

_MARKER_MIN_SCORE = 0.8   # a marker is kept only when read with this confidence
_OCR_MAX_SIDE = 1600      # larger films are read at a reduced scale (block means)
_HEADER_MIN_LEN = 3       # header values shorter than this are not matched in pixels
_MAX_LINE_FRACTION = 0.08   # a text line is at most this share of the film's shorter side thick
_UNREAD_MAX_FRACTION = 0.03  # ... and at most this, when nothing Latin was read in it


class OcrUnavailableError(RuntimeError):
    """No OCR engine is installed: burned-in text cannot be looked for."""


@dataclass(frozen=True)
class TextBox:
    """One piece of text read in a film.

    Attributes
    ----------
    text : str
        What the OCR read.
    score : float
        Its recognition confidence, 0..1.
    rows, cols : tuple of int
        (first, last + 1) row and column of its bounding box in the film's pixels.
    kept : bool
        Left in the pixels (a marker read with confidence); otherwise blanked.
    header_match : str
        The header's identifying value it matches, or "".
    """

    text: str
    score: float
    rows: tuple[int, int]
    cols: tuple[int, int]
    kept: bool = False
    header_match: str = ""


@dataclass(frozen=True)
class CleanReport:
    """What :func:`clean_pixels` did: ``pixels`` (same shape and dtype as the film's),
    ``boxes`` (every text box found, blanked or kept), ``engine`` and ``residual`` (header
    values still read after cleaning; empty when the cleaning succeeded)."""

    pixels: np.ndarray
    boxes: tuple[TextBox, ...]
    engine: str
    residual: tuple[str, ...] = ()


def engine_available() -> str | None:
    """The OCR engine that would be used (``"rapidocr"``), or None when none is installed."""
    try:
        return "rapidocr" if importlib.util.find_spec("rapidocr_onnxruntime") else None
    except (ImportError, ValueError):  # blocked (sys.modules entry None) or half-installed
        return None


@functools.cache
def _rapidocr():
    from rapidocr_onnxruntime import RapidOCR
    return RapidOCR()


def _normal(text: str) -> str:
    return re.sub(r"[^A-Z0-9-]", "", text.upper())


def _folded(text: str) -> str:
    """Letters and digits only, with the OCR's usual confusions folded (O/0, I/L/1, S/5,
    B/8, Z/2): how a header value and a reading are compared."""
    table = str.maketrans("OILSBZ", "011582")
    return re.sub(r"[^A-Z0-9]", "", text.upper()).translate(table)


def matches_header(text: str, identifying: list[str]) -> str:
    """The identifying header value ``text`` shows (whole, a part of it, or nearly: difflib
    ratio >= 0.8 after folding OCR confusions), or "".

    A header value of at least 3 letters or digits matches a reading that contains it, or
    that it contains when the reading has at least 3 of them itself, or one that is
    similar to it; dates match also written with separators (2024-03-12, 12.03.2024).
    """
    read = _folded(text)
    if len(read) < _HEADER_MIN_LEN:
        return ""
    for value in identifying:
        candidates = {_folded(value)}
        if re.fullmatch(r"\d{8}", value.strip()):  # a DA value, also as DDMMYYYY / MMDDYYYY
            v = value.strip()
            candidates |= {v[6:8] + v[4:6] + v[:4], v[4:6] + v[6:8] + v[:4]}
        for c in candidates:
            if len(c) < _HEADER_MIN_LEN:
                continue
            if c in read or read in c or difflib.SequenceMatcher(None, c, read).ratio() >= 0.8:
                return value
    return ""


def read_text(image: np.ndarray, *, scale: float = 1.0) -> list[TextBox]:
    """Text read in a display image, upright and turned by 90 degrees.

    Parameters
    ----------
    image : (rows, cols) uint8 array
        Display grey levels.
    scale : float
        Film pixels per image pixel: boxes are returned in film coordinates.

    Returns
    -------
    list of TextBox (``kept`` and ``header_match`` not yet decided)

    Raises
    ------
    OcrUnavailableError
        RapidOCR is not installed.
    """
    if engine_available() is None:
        raise OcrUnavailableError("no OCR engine: install the 'ocr' extra (pip install "
                                  "'leaktrace[ocr]', RapidOCR with its bundled models)")
    ocr = _rapidocr()
    rgb = np.ascontiguousarray(np.repeat(image[..., None], 3, axis=2))
    rows, cols = image.shape
    boxes = []
    for turn in (0, 1):
        view = np.ascontiguousarray(np.rot90(rgb, turn)) if turn else rgb
        found, _ = ocr(view, box_thresh=0.3, text_score=0.0, unclip_ratio=2.0)
        for points, text, score in found or ():
            p = np.asarray(points, dtype=np.float64)  # (4, 2) as (x, y) in the view
            if turn:  # np.rot90 by 1: view (x, y) = film (row, cols - 1 - col)
                p = np.stack([cols - 1 - p[:, 1], p[:, 0]], axis=1)
            x0, y0 = np.floor(p.min(axis=0) * scale)
            x1, y1 = np.ceil((p.max(axis=0) + 1) * scale)
            boxes.append(TextBox(str(text), float(score), (int(y0), int(y1)), (int(x0), int(x1))))
    return boxes


def _display(film: Film) -> tuple[np.ndarray, float]:
    """The film's default display as uint8, reduced by block means to at most
    :data:`_OCR_MAX_SIDE` px, and the film pixels per display pixel."""
    shown = np.clip(np.rint(render(film, dtype=np.float32)), 0, 255).astype(np.uint8)
    factor = int(np.ceil(max(shown.shape) / _OCR_MAX_SIDE))
    if factor <= 1:
        return shown, 1.0
    r, c = (shown.shape[0] // factor) * factor, (shown.shape[1] // factor) * factor
    small = shown[:r, :c].reshape(r // factor, factor, c // factor, factor).mean(axis=(1, 3))
    return small.astype(np.uint8), float(factor)


def _blank(pixels: np.ndarray, box: TextBox, fill) -> None:
    thickness = min(box.rows[1] - box.rows[0], box.cols[1] - box.cols[0])  # of the text line
    margin = int(round(0.2 * thickness)) + 2
    r0, r1 = max(0, box.rows[0] - margin), min(pixels.shape[0], box.rows[1] + margin)
    c0, c1 = max(0, box.cols[0] - margin), min(pixels.shape[1], box.cols[1] + margin)
    pixels[r0:r1, c0:c1] = fill


def _is_text_line(box: TextBox, shape: tuple[int, int]) -> bool:
    """Whether a box can be a line of burned-in text.

    Its shorter side must be at most :data:`_MAX_LINE_FRACTION` of the film's shorter side
    (labels and markers are far smaller; the detector also outlines lung fields, bowel gas and
    collimation edges). A box whose reading has no Latin letter or digit, or a confidence
    below 0.5, counts only when it is thin too (:data:`_UNREAD_MAX_FRACTION`): on a chest
    film the large unreadable boxes were anatomy, and blanking them hides it from the reader.
    """
    thickness = min(box.rows[1] - box.rows[0], box.cols[1] - box.cols[0])
    short = min(shape)
    if thickness > _MAX_LINE_FRACTION * short:
        return False
    readable = box.score >= 0.5 and re.search(r"[A-Za-z0-9]", box.text) is not None
    return readable or thickness <= _UNREAD_MAX_FRACTION * short


def _overlap(a: TextBox, b: TextBox) -> float:
    """Share of ``a``'s area that ``b`` covers."""
    rows = max(0, min(a.rows[1], b.rows[1]) - max(a.rows[0], b.rows[0]))
    cols = max(0, min(a.cols[1], b.cols[1]) - max(a.cols[0], b.cols[0]))
    area = max(1, (a.rows[1] - a.rows[0]) * (a.cols[1] - a.cols[0]))
    return rows * cols / area


def _decide(boxes: list[TextBox], identifying: list[str], shape: tuple[int, int]
            ) -> list[TextBox]:
    """Keep markers read with confidence, drop what is no line of text, and drop the
    readings of a kept marker's box from the other orientation (the upright 'PA' read as
    'A' when the film is turned), unless they match the header."""
    decided = []
    for b in boxes:
        match = matches_header(b.text, identifying)
        if not match and not _is_text_line(b, shape):
            continue
        kept = not match and _normal(b.text) in MARKERS and b.score >= _MARKER_MIN_SCORE
        decided.append(TextBox(b.text, b.score, b.rows, b.cols, kept, match))
    markers = [b for b in decided if b.kept]
    return [b for b in decided if b.kept or b.header_match
            or not any(_overlap(b, m) > 0.5 for m in markers)]


def clean_pixels(film: Film, identifying: list[str]) -> CleanReport:
    """The film's stored values with its burned-in text blanked.

    Every text box found (:func:`read_text`) is set, with a margin of a fifth of its height
    and 2 px (the line's, upright or turned), to the stored value the display shows darkest, unless it reads as a marker
    (:data:`MARKERS`, confidence >= 0.8) and matches no header value. The cleaned film is
    read again (twice at most); text found then is blanked too. Header values still read in
    the cleaned pixels are returned in ``residual``: the caller must refuse the export then.

    Parameters
    ----------
    film : Film
    identifying : list of str
        The header's identifying values (:func:`forensics.deidentify.identifying_values`).

    Returns
    -------
    CleanReport

    Raises
    ------
    OcrUnavailableError
        No OCR engine is installed.
    """
    pixels = np.array(film.pixels, copy=True)
    shown = render(film, dtype=np.float32)
    fill = pixels.flat[int(np.argmin(shown))]
    del shown
    all_boxes: list[TextBox] = []
    current = film
    residual: tuple[str, ...] = ()
    for _ in range(3):  # the first reading and up to two re-readings of the cleaned film
        image, scale = _display(current)
        found = _decide(read_text(image, scale=scale), identifying, pixels.shape)
        kept_before = {(b.rows, b.cols) for b in all_boxes if b.kept}
        new = [b for b in found if not (b.kept and (b.rows, b.cols) in kept_before)
               and not _inside_blanked(b, all_boxes)]
        to_blank = [b for b in new if not b.kept]
        all_boxes.extend(b for b in new if b.kept and (b.rows, b.cols) not in kept_before)
        residual = tuple(sorted({b.header_match for b in to_blank if b.header_match}))
        if not to_blank:
            residual = ()
            break
        for b in to_blank:
            _blank(pixels, b, fill)
        all_boxes.extend(to_blank)
        current = _with_pixels(film, pixels)
    else:
        image, scale = _display(current)
        left = [b for b in _decide(read_text(image, scale=scale), identifying, pixels.shape)
                if b.header_match]
        residual = tuple(sorted({b.header_match for b in left}))
    return CleanReport(pixels, tuple(all_boxes), "rapidocr", residual)


def _inside_blanked(box: TextBox, boxes: list[TextBox]) -> bool:
    """Whether ``box`` lies within a box already blanked (a reading of the blank itself)."""
    return any(not b.kept and b.rows[0] - 4 <= box.rows[0] and box.rows[1] <= b.rows[1] + 4
               and b.cols[0] - 4 <= box.cols[0] and box.cols[1] <= b.cols[1] + 4 for b in boxes)


def _with_pixels(film: Film, pixels: np.ndarray) -> Film:
    """``film`` showing ``pixels`` (a read-only view) instead of its own."""
    view = pixels.view()
    view.flags.writeable = False
    return dataclasses.replace(film, pixels=view)
