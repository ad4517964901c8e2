"""The evidence report of a traced leak: one self-contained HTML file and one JSON file.

:func:`write_report` formats a detection result (the ``evidence`` dict, as ``leaktrace detect
--json`` or ``leaktrace trace --json`` print it) for an investigator, and computes nothing new
about the leak. It writes into a folder:

``report.html``
    One file that opens anywhere offline: inline CSS, figures as base64 PNG ``data:`` URIs, no
    script, no external asset (a Content-Security-Policy in the file forbids loading any).
    Every string that comes from the evidence (file names, recipient names, ledger records)
    is escaped with :func:`html.escape`.
``report.json``
    The evidence, plus ``report_metadata``: when the report was written (UTC), the leaktrace
    version, the leak's SHA-256, the key fingerprint (never the key: the key is not an input
    of this module), the SHA-256 of ``report.html``, the p-value in words, and which figures
    were made or left out and why.

Figures are drawn with matplotlib's Agg backend (``matplotlib.figure.Figure``, no pyplot
state, no display needed): the leak as read; the alignment of the leak on the original (a
colour overlay and a checkerboard, with the overlap outlined) when the original is known; a
bar chart of every candidate recipient's p-value on a ``-log10`` scale with the decision
threshold. A figure that cannot be made is left out with a sentence saying why.

Both files are written atomically and readable by their owner only (mode 0600, like the
ledger whose records they show); an existing report is never overwritten unless asked.
"""

from __future__ import annotations

import base64
import datetime as _dt
import functools
import hashlib
import html
import io
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from watermark import __version__
from watermark.errors import LeaktraceError

from watermark._files import atomic_write

__all__ = ["write_report", "blind_evidence", "p_value_in_words", "ReportFiles", "ReportError",
           "REPORT_HTML", "REPORT_JSON"]

REPORT_HTML = "report.html"
REPORT_JSON = "report.json"

_THUMB_EDGE = 640  # long edge, in pixels, to which images are reduced before plotting
_MAX_BARS = 12
_MAX_LABEL = 40
_TINY = float(np.finfo(np.float64).tiny)  # the smallest p-value leaktrace reports


class ReportError(LeaktraceError):
    """The report cannot be written (bad evidence or images, a report already there)."""


@dataclass(frozen=True)
class ReportFiles:
    """Where :func:`write_report` wrote the report.

    Attributes
    ----------
    html : Path
        The self-contained HTML file.
    json : Path
        The JSON file (evidence plus ``report_metadata``).
    """

    html: Path
    json: Path


def blind_evidence(detection: dict, ledger_check: dict | None) -> dict:
    """The evidence of a blind detection, in the shape :func:`write_report` takes.

    Parameters
    ----------
    detection : dict
        :meth:`forensics.trace.LeakReport.as_dict` (what ``detect --json`` prints).
    ledger_check : dict or None
        :meth:`forensics.ledger.ChainCheck.as_dict` of the ledger searched.

    Returns
    -------
    dict
        A copy of ``detection`` with ``mode`` ``"blind"``, ``threshold`` (the
        false-accusation rate: blind p-values are already corrected for every hypothesis
        tried, ``n_tests``), ``source`` and ``alignment`` ``None`` (no original is used) and
        ``ledger_check``. Fields already present are kept.
    """
    evidence = dict(detection)
    evidence.setdefault("mode", "blind")
    evidence.setdefault("threshold", detection.get("false_accusation_rate"))
    evidence.setdefault("source", None)
    evidence.setdefault("alignment", None)
    evidence["ledger_check"] = ledger_check
    return evidence


# -- words ------------------------------------------------------------------------------------

def _one_in(n_exponent: int) -> str:
    """``10**n`` as words: "a thousand", "a million", "10^12 (a 1 followed by 12 zeros)"."""
    names = {0: "one", 1: "ten", 2: "a hundred", 3: "a thousand", 6: "a million",
             9: "a billion"}
    if n_exponent in names:
        return names[n_exponent]
    if n_exponent < 9:
        return f"{10 ** n_exponent:,}"
    return f"10^{n_exponent} (a 1 followed by {n_exponent} zeros)"


def _threshold_words(threshold: float) -> str:
    exponent = -math.log10(threshold)
    if abs(exponent - round(exponent)) < 1e-9:
        return f"1 in {_one_in(round(exponent))}"
    return f"1 in {1 / threshold:,.0f}"


def p_value_in_words(p_value: float, threshold: float, recipient: str | None, *,
                     named: bool, n_tests: int | None = None) -> str:
    """A p-value as an investigator can read it.

    Parameters
    ----------
    p_value : float
        The recipient's p-value (probability that a copy *not* marked for this recipient
        scores at least this high).
    threshold : float
        The p-value at or below which leaktrace names a recipient.
    recipient : str or None
        The recipient's name; ``None`` when nobody scored.
    named : bool
        Whether leaktrace named this recipient.
    n_tests : int, optional
        Hypotheses the p-value is corrected for (blind detection), said in the text.

    Returns
    -------
    str
        For example: "If this copy had not been marked for Dr. X, a score this high would
        occur by chance less than once in 10^35 (a 1 followed by 35 zeros) tries (p-value
        3.1e-36). leaktrace names a recipient only when this chance is below 1 in a million."
    """
    rule = f"leaktrace names a recipient only when this chance is at most {_threshold_words(threshold)}"
    if n_tests:
        rule += f", after correcting for the {n_tests:,} hypotheses it tried"
    if recipient is None:
        return ("No recipient could be tested (the ledger lists none), so nobody can be named. "
                + rule + ".")
    p = max(float(p_value), _TINY)
    if named:
        k = max(int(math.floor(-math.log10(p) + 1e-9)), 0)
        return (f"If this copy had not been marked for {recipient}, a score this high would "
                f"occur by chance less than once in {_one_in(k)} tries (p-value {p:.1e}). "
                + rule + ".")
    # not found: no recipient is singled out, not even as "the best-scoring" one
    if p >= 1:
        return ("No recipient scored higher than copies not marked for them do (best p-value "
                "1): nobody is named. " + rule + ".")
    return (f"The best score among the recipients has p-value {p:.2g}: a copy not marked for "
            f"a recipient scores this high in up to {100 * p:.2g} % of cases (once in about "
            f"{1 / p:,.0f} tries), far too often to accuse anyone, so nobody is named. "
            + rule + ".")


# -- figures ----------------------------------------------------------------------------------

def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _thumb(image: np.ndarray) -> np.ndarray:
    """Block-mean reduction to at most :data:`_THUMB_EDGE` px on the long edge (NaN kept
    where a whole block is NaN)."""
    f = max(1, math.ceil(max(image.shape) / _THUMB_EDGE))
    if f == 1:
        return image.astype(np.float64)
    rows, cols = (image.shape[0] // f) * f, (image.shape[1] // f) * f
    blocks = image[:rows, :cols].astype(np.float64).reshape(rows // f, f, cols // f, f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        return np.nanmean(blocks, axis=(1, 3))


def _unit(image: np.ndarray) -> np.ndarray:
    """Finite values stretched to 0..1 between their 0.5 and 99.5 percentiles."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return np.zeros_like(image)
    lo, hi = np.percentile(finite, [0.5, 99.5])
    return np.clip((image - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)


def _leak_figure(leak: np.ndarray) -> str:
    thumb = _thumb(leak)
    top = 255.0 if leak.dtype == np.uint8 or np.nanmax(leak) <= 255.5 else 65535.0
    h, w = leak.shape
    fig = _figure(6, 6 * min(max(h / w, 0.4), 2.0) + 0.4)
    ax = fig.add_subplot()
    ax.imshow(thumb, cmap="gray", vmin=0, vmax=top, interpolation="antialiased")
    ax.set_title(f"The leak as read ({w} x {h} px)")
    ax.set_axis_off()
    return _png(fig)


def _original_figure(original: np.ndarray) -> str:
    h, w = original.shape
    fig = _figure(6, 6 * min(max(h / w, 0.4), 2.0) + 0.4)
    ax = fig.add_subplot()
    ax.imshow(_thumb(original), cmap="gray", vmin=0, vmax=255)
    ax.set_title(f"The matched original, default display ({w} x {h} px)")
    ax.set_axis_off()
    return _png(fig)


def _overlay_figure(original: np.ndarray, aligned: np.ndarray) -> str:
    orig = _unit(_thumb(original))
    leak = _thumb(aligned)
    usable = np.isfinite(leak)  # also False where the leak was clipped (black or white)
    # the outline is the leak's footprint: clipped pixels inside it are holes, not edges
    inside = ndimage.binary_fill_holes(usable)
    leak = np.where(usable, _unit(leak), 0.0)
    # magenta = original, green = aligned leak: where they agree the overlay is grey
    overlay = np.stack([orig, np.where(usable, leak, 0.35 * orig), orig], axis=-1)
    tile = max(8, min(orig.shape) // 8)
    rr, cc = np.indices(orig.shape)
    checker = np.where(usable & (((rr // tile) + (cc // tile)) % 2 == 1), leak, orig)
    h, w = original.shape
    fig = _figure(11, 5.5 * min(max(h / w, 0.4), 2.0) + 0.8)
    left, right = fig.subplots(1, 2)
    left.imshow(overlay, interpolation="antialiased")
    left.set_title("Overlay: original in magenta, aligned leak in green")
    right.imshow(checker, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    right.set_title("Checkerboard: original and aligned leak")
    for ax in (left, right):
        if inside.any() and not inside.all():
            ax.contour(inside.astype(float), levels=[0.5], colors="yellow", linewidths=1.2)
        ax.set_axis_off()
    share = inside.mean()
    fig.suptitle(f"Leak registered on the original: yellow outline = overlap "
                 f"({100 * share:.0f} % of the original); clipped leak pixels: original only")
    return _png(fig)


def _p(candidate: dict) -> float:
    try:
        return float(candidate.get("p_value", 1.0))
    except (TypeError, ValueError):
        return 1.0


def _transform_in_words(transform, alignment: dict | None = None,
                        leak_size: tuple[float, float] = (1000, 1000)) -> str:
    """The alignment said for a reader who does not read matrices: scale, rotation, shift,
    and what agreement looks like in the overlay; "" for a transform that is not 3 x 3.

    Scale and rotation are the alignment's own ``scale`` and ``rotation_degrees`` when it has
    them (the figures of the table beside it), else read from the matrix. Perspective is
    mentioned only when it changes the scale by more than 2 % across the leak
    (``leak_size``: width, height in px)."""
    try:
        m = np.asarray(transform, dtype=float)
    except (TypeError, ValueError):
        return ""
    if m.shape != (3, 3) or not np.all(np.isfinite(m)):
        return ""
    a, b, tx = m[0]
    c, d, ty = m[1]
    alignment = alignment if isinstance(alignment, dict) else {}
    given = [alignment.get(k) for k in ("scale", "rotation_degrees")]
    if all(isinstance(v, (int, float)) and math.isfinite(v) for v in given):
        scale, angle = float(given[0]), float(given[1])
    else:
        scale, angle = math.sqrt(abs(a * d - b * c)), math.degrees(math.atan2(c, a))
    perspective = abs(m[2, 0]) * leak_size[0] + abs(m[2, 1]) * leak_size[1] > 0.02
    return (f"In words: each pixel of the leak is placed on the original after scaling it "
            f"by {scale:.3g} (the leak's pixels are {scale:.3g} of the original's), turning it "
            f"by {angle:.2f} degrees and shifting it by {tx:.1f} px across and {ty:.1f} px "
            "down" + (", with a perspective correction (a photo taken at an angle)"
                      if perspective else "") + ". When this is right, the two images in the "
            "overlay below coincide: shared structures look grey or white, and misalignment "
            "would show as green and magenta fringes along edges; in the checkerboard, edges "
            "continue unbroken from one square into the next.")


def _label(name, number) -> str:
    text = str(name) if name is not None else "(not in the ledger)"
    if len(text) > _MAX_LABEL:
        text = text[:_MAX_LABEL - 1] + "\u2026"
    return f"{_drawable(text)}  (no. {number})"


def _drawable(text: str) -> str:
    """``text`` with each character the figures' font has no glyph for (an emoji in a
    recipient's name) shown as "?", instead of a matplotlib warning per figure; the report's
    text gives the name as it is."""
    font = _figure_font()
    return "".join(c if c.isspace() or font.get_char_index(ord(c)) else "?" for c in text)


@functools.cache
def _figure_font():
    from matplotlib import font_manager, ft2font

    return ft2font.FT2Font(font_manager.findfont(font_manager.FontProperties()))


def _scores_figure(candidates: list, threshold: float, named: set) -> str:
    shown = sorted(candidates, key=_p)[:_MAX_BARS]
    heights = [-math.log10(min(max(_p(c), _TINY), 1.0)) for c in shown]
    limit = -math.log10(threshold)
    fig = _figure(9, 1.2 + 0.45 * len(shown))
    ax = fig.add_subplot()
    y = np.arange(len(shown))[::-1]
    colours = ["#c0392b" if c.get("recipient_number") in named else "#7f8c8d" for c in shown]
    ax.barh(y, heights, color=colours)
    ax.set_yticks(y, [_label(c.get("recipient"), c.get("recipient_number")) for c in shown],
                  parse_math=False)  # names are shown as written, '$' included
    ax.axvline(limit, color="black", linestyle="--", linewidth=1.2)
    ax.text(limit, len(shown) - 0.4, f"  threshold: p = {threshold:.0e}", va="bottom",
            ha="left", fontsize=9, parse_math=False)
    ax.set_xlim(0, max(heights + [limit]) * 1.12 + 0.5)
    ax.set_ylim(-0.6, len(shown) + 0.2)
    ax.set_xlabel("-log10(p-value)   (longer bar: stronger evidence of this recipient's mark)")
    ax.set_title("Recipients tested (red: named)")
    return _png(fig)


# -- the files --------------------------------------------------------------------------------

def _plain(value):
    """JSON-ready copy: numpy scalars and arrays to Python, paths to text, NaN/inf to null."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _image(name: str, image, *, allow_nan: bool = False) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.size == 0:
        shape = getattr(image, "shape", None)
        raise ReportError(f"{name} must be a non-empty 2-D array (rows, columns), got "
                          f"{type(image).__name__} of shape {shape}")
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ReportError(f"{name} must hold numbers, got dtype {image.dtype}")
    finite = np.isfinite(image) if image.dtype.kind == "f" else np.ones(image.shape, bool)
    if not finite.all() and not allow_nan:
        raise ReportError(f"{name} holds NaN or infinite values")
    if not finite.any():
        raise ReportError(f"{name} holds no finite value")
    return image


def _check_evidence(evidence) -> None:
    if not isinstance(evidence, dict):
        raise ReportError(f"the evidence must be a dict, got {type(evidence).__name__}")
    missing = [k for k in ("decision", "p_value", "leak", "key_fingerprint") if k not in evidence]
    if missing:
        raise ReportError(f"the evidence lacks {', '.join(missing)} (give the dict "
                          "`leaktrace detect --json` prints)")
    leak = evidence["leak"]
    if not isinstance(leak, dict) or not leak.get("sha256"):
        raise ReportError("the evidence's leak entry lacks the leak's sha256")


def _threshold(evidence: dict) -> float:
    t = evidence.get("threshold") or evidence.get("false_accusation_rate")
    try:
        t = float(t)
    except (TypeError, ValueError):
        raise ReportError("the evidence gives neither threshold nor false_accusation_rate") from None
    if not 0 < t < 1:
        raise ReportError(f"the decision threshold must be between 0 and 1, got {t}")
    return t


def _file_check(leak: dict) -> dict:
    """Size of the leak file and whether its bytes still have the recorded SHA-256."""
    path = Path(str(leak.get("path", "")))
    try:
        data = path.read_bytes() if path.is_file() else None
    except OSError:
        data = None
    if data is None:
        return {"size_bytes": None, "sha256_matches_file": None}
    return {"size_bytes": len(data),
            "sha256_matches_file": hashlib.sha256(data).hexdigest() == leak["sha256"]}


def write_report(directory: str | os.PathLike, evidence: dict, *, leak_image: np.ndarray,
                 original_image: np.ndarray | None = None,
                 aligned_leak: np.ndarray | None = None, overwrite: bool = False) -> ReportFiles:
    """Write ``report.html`` and ``report.json`` for one traced (or not traced) leak.

    Parameters
    ----------
    directory : path-like
        Folder to write into; created (with its parents) if missing.
    evidence : dict
        What ``leaktrace detect --json`` prints (:meth:`forensics.trace.LeakReport.as_dict`:
        ``decision``, ``p_value``, ``recipient``, ``recipients``, ``candidates``, ``leak``,
        ``key_fingerprint``, ``ledger``, ``ledger_id``, ...), and for informed tracing also
        ``mode`` (``"informed"`` or ``"blind"``), ``threshold`` (the p-value at or below which
        a candidate is named; when absent, ``false_accusation_rate``, since blind p-values are
        already corrected for the ``n_tests`` hypotheses tried), ``source``
        (``sop_instance_uid``, ``path``, ``export``: the export record, ``export_time``; or
        ``None``), ``alignment`` (``transform``: 3 x 3, ``overlap_fraction``, ``inliers``,
        ``method``; or ``None``) and ``ledger_check`` (:meth:`ChainCheck.as_dict
        <forensics.ledger.ChainCheck.as_dict>`: ``ok``, ``problems``, ``n_records``,
        ``head_hash``). :func:`blind_evidence` makes it from a blind detection. Not modified.
    leak_image : (rows, columns) uint8 or float array
        The leak as read, grey (0..255, or 0..65535 for a 16-bit file).
    original_image : (R, C) uint8 array, optional
        The matched original's default display (:func:`watermark.display.render`).
    aligned_leak : (R, C) float array, optional
        The leak warped into the original's frame (same shape as ``original_image``), NaN
        outside the overlap. Needs ``original_image``.
    overwrite : bool
        Replace a report already in ``directory``; by default an existing ``report.html`` or
        ``report.json`` there is an error and nothing is written.

    Returns
    -------
    ReportFiles

    Raises
    ------
    ReportError
        Evidence without the fields above, images of the wrong shape or type, an
        ``aligned_leak`` without ``original_image``, a report already in ``directory`` (and
        not ``overwrite``), or the folder or files cannot be written; the message says which.

    Notes
    -----
    The HTML file is written first, then the JSON file, which records the HTML file's
    SHA-256; each is written atomically (temporary file, then rename) with mode 0600.
    """
    _check_evidence(evidence)
    leak_image = _image("leak_image", leak_image)
    if original_image is not None:
        original_image = _image("original_image", original_image)
    if aligned_leak is not None:
        if original_image is None:
            raise ReportError("aligned_leak needs original_image (it is in the original's frame)")
        aligned_leak = _image("aligned_leak", aligned_leak, allow_nan=True)
        if aligned_leak.shape != original_image.shape:
            raise ReportError(f"aligned_leak has shape {aligned_leak.shape}, the original "
                              f"{original_image.shape}: it must be in the original's frame")
    threshold = _threshold(evidence)
    folder = Path(directory)
    paths = ReportFiles(folder / REPORT_HTML, folder / REPORT_JSON)
    if folder.exists() and not folder.is_dir():
        raise ReportError(f"{folder}: exists and is not a folder")
    existing = [p.name for p in (paths.html, paths.json) if p.exists()]
    if existing and not overwrite:
        raise ReportError(f"{folder}: holds a report already ({', '.join(existing)}); give "
                          "another folder (a report is never overwritten unless asked)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"{folder}: cannot create the report folder "
                          f"({exc.strerror or exc})") from None

    ev = _plain(evidence)
    figures, left_out = [], []
    figures.append(("leak", "The leak as read", _leak_figure(leak_image)))
    if original_image is not None and aligned_leak is not None:
        figures.append(("alignment", "Alignment of the leak on the original",
                        _overlay_figure(original_image, aligned_leak)))
    elif original_image is not None:
        figures.append(("original", "The matched original", _original_figure(original_image)))
        left_out.append(("alignment", "No alignment figure: the leak was not registered on the "
                         "original (no aligned image was given)."))
    else:
        why = ("blind detection: the leak was traced from itself alone"
               if ev.get("mode", "blind") == "blind" else "no original was found or given")
        left_out.append(("alignment", f"No alignment figure: no original film is known ({why})."))
    candidates = [c for c in ev.get("candidates") or [] if isinstance(c, dict)]
    named = {r.get("recipient_number") for r in ev.get("recipients") or [] if isinstance(r, dict)}
    if ev.get("decision") == "traced" and ev.get("recipient_number") is not None:
        named.add(ev.get("recipient_number"))
    if candidates:
        figures.append(("scores", "Scores of the recipients tested",
                        _scores_figure(candidates, threshold, named)))
    else:
        left_out.append(("scores", "No score chart: no recipient was tested (the ledger lists "
                         "none)."))

    words = _words(ev, threshold)
    written = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    meta = {
        "format": "leaktrace evidence report", "format_version": 1,
        "written_utc": written, "leaktrace_version": __version__,
        "leak_sha256": ev["leak"]["sha256"], "key_fingerprint": ev.get("key_fingerprint"),
        "leak_file": _file_check(ev["leak"]),
        "threshold": threshold, "p_value_in_words": words,
        "figures": [name for name, _, _ in figures],
        "figures_left_out": {name: why for name, why in left_out},
    }
    page = _html(ev, meta, figures, left_out).encode("utf-8")
    meta["html_file"] = REPORT_HTML
    meta["html_sha256"] = hashlib.sha256(page).hexdigest()
    doc = json.dumps({**ev, "report_metadata": meta}, indent=1, ensure_ascii=False,
                     allow_nan=False) + "\n"
    try:
        atomic_write(paths.html, page)
        atomic_write(paths.json, doc.encode("utf-8"))
    except OSError as exc:
        raise ReportError(f"{folder}: cannot write the report ({exc.strerror or exc})") from None
    return paths


def _words(ev: dict, threshold: float) -> list[str]:
    n_tests = ev.get("n_tests") if ev.get("mode", "blind") == "blind" else None
    named = [r for r in ev.get("recipients") or [] if isinstance(r, dict)]
    if ev.get("decision") == "traced" and named:
        return [p_value_in_words(r.get("p_value", ev.get("p_value")), threshold,
                                 r.get("recipient") or f"recipient number {r.get('recipient_number')}",
                                 named=True, n_tests=n_tests) for r in named]
    if ev.get("decision") == "traced":
        return [p_value_in_words(ev.get("p_value"), threshold, ev.get("recipient"), named=True,
                                 n_tests=n_tests)]
    best = min((c for c in ev.get("candidates") or [] if isinstance(c, dict)),
               key=_p, default=None)
    if best is None:
        return [p_value_in_words(1.0, threshold, None, named=False, n_tests=n_tests)]
    who = best.get("recipient") or f"recipient number {best.get('recipient_number')}"
    return [p_value_in_words(best.get("p_value", 1.0), threshold, who, named=False,
                             n_tests=n_tests)]


# -- HTML -------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;border-bottom:1px solid #ccc;
padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#f4f4f4;font-weight:600}
code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.92em;word-break:break-all}
.decision{font-size:1.15em;padding:.7em 1em;border-radius:6px;margin:1em 0}
.traced{background:#fdecea;border:1px solid #c0392b}.not_found{background:#eef6ee;
border:1px solid #2e7d32}.error{background:#fff4e5;border:1px solid #e65100}
.ok{color:#2e7d32;font-weight:600}.bad{color:#c0392b;font-weight:600}
figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{color:#555;font-size:.92em}.note{color:#555;font-style:italic}
pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:.85em;white-space:pre-wrap;
word-break:break-all}
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _table(rows: list[tuple[str, object]], *, mono: tuple[str, ...] = ()) -> str:
    out = ["<table>"]
    for key, value in rows:
        cls = ' class="mono"' if key in mono else ""
        out.append(f"<tr><th>{_e(key)}</th><td{cls}>{_e(value)}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _fmt_p(p) -> str:
    try:
        return f"{float(p):.2e}"
    except (TypeError, ValueError):
        return "-"


def _html(ev: dict, meta: dict, figures: list, left_out: list) -> str:
    fig = {name: (title, data) for name, title, data in figures}
    why = dict(left_out)
    leak = ev.get("leak") or {}
    decision = str(ev.get("decision"))
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        'img-src data:; style-src \'unsafe-inline\'">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>leaktrace evidence report: {_e(leak.get('path'))}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>leaktrace evidence report</h1>",
        f"<p>Leaked file <code>{_e(leak.get('path'))}</code>, report written "
        f"{_e(meta['written_utc'])} by leaktrace {_e(meta['leaktrace_version'])}.</p>",
    ]
    # decision
    if decision == "traced":
        names = [r for r in ev.get("recipients") or [] if isinstance(r, dict)] or [
            {"recipient": ev.get("recipient"), "recipient_number": ev.get("recipient_number"),
             "p_value": ev.get("p_value")}]
        who = "; ".join(f"{_e(r.get('recipient'))} (recipient number "
                        f"{_e(r.get('recipient_number'))}, p-value {_fmt_p(r.get('p_value'))})"
                        for r in names)
        banner = f"<strong>TRACED</strong> to {who}."
    elif decision == "not_found":
        banner = ("<strong>NOT FOUND</strong>: no recipient's mark is present at the decision "
                  "threshold; nobody is named.")
    else:
        banner = f"<strong>{_e(decision.upper())}</strong>"
    parts += ["<h2>Decision</h2>", f'<div class="decision {_e(decision)}">{banner}</div>']
    parts += [f"<p>{_e(w)}</p>" for w in meta["p_value_in_words"]]
    if ev.get("summary"):
        parts.append(f"<p>Tool summary: {_e(ev['summary'])}</p>")
    for w in ev.get("warnings") or []:
        parts.append(f'<p class="bad">Warning: {_e(w)}</p>')

    # the leak
    check = meta["leak_file"]
    matches = {True: "yes", False: "NO: the file has changed since it was analysed",
               None: "file not available when the report was written"}[check["sha256_matches_file"]]
    parts += ["<h2>The leaked file</h2>", _table([
        ("path", leak.get("path")), ("SHA-256", leak.get("sha256")),
        ("SHA-256 checked against the file now", matches),
        ("format", leak.get("format")),
        ("size", f"{leak.get('width')} x {leak.get('height')} px"
                 + (f", {check['size_bytes']:,} bytes" if check["size_bytes"] is not None else "")),
    ], mono=("SHA-256", "path"))]
    parts.append(_figure_html(*fig["leak"]))

    # the original and its export record
    parts.append("<h2>The matched original and its export record</h2>")
    source = ev.get("source")
    if isinstance(source, dict):
        twin = source.get("registered_on")
        rows = [("SOP Instance UID", source.get("sop_instance_uid")), ("path", source.get("path")),
                ("exported (UTC)", source.get("export_time"))]
        if isinstance(twin, dict):  # the same image in another source file
            rows.append(("registered on (same image, another file)", twin.get("path")))
        parts.append(_table(rows, mono=("SOP Instance UID", "path",
                                        "registered on (same image, another file)")))
        export = source.get("export")
        if isinstance(export, dict):
            parts.append("<p>The export record in the ledger:</p>")
            parts.append(_table([(k, v) for k, v in export.items()],
                                mono=tuple(k for k in export if k.endswith(("sha256", "hash",
                                                                            "uid", "path",
                                                                            "payload")))))
        copies = source.get("recipient_exports")
        if isinstance(copies, list) and len(copies) > 1:
            ids = ", ".join(str(c.get("id")) for c in copies if isinstance(c, dict))
            parts.append(
                f'<p class="note">This recipient received {len(copies)} copies of this image '
                f"(exports {_e(ids)}). They carry the same mark, or nearly the same when made "
                "from different files of the image: the mark depends on the recipient and the "
                "image, not on the copy. The leak therefore shows that it comes from one of "
                "them, not from which; the newest is shown above.</p>")
    else:
        parts.append('<p class="note">No original: '
                     + ("this was blind detection, which reads the mark from the leak alone and "
                        "does not identify which exported film it shows."
                        if ev.get("mode", "blind") == "blind"
                        else "none of the ledger's exports could be matched to the leak.")
                     + "</p>")
    parts.append("<h3>Alignment</h3>")
    alignment = ev.get("alignment")
    if isinstance(alignment, dict):
        transform = alignment.get("transform")
        shown = ("<br>".join(" ".join(f"{float(v):.5g}" for v in row) for row in transform)
                 if isinstance(transform, list) and all(isinstance(r, list) for r in transform)
                 else _e(transform))
        parts.append("<table><tr><th>transform (3 x 3, leak to original)</th>"
                     f'<td class="mono">{shown}</td></tr></table>')
        leak = ev.get("leak") if isinstance(ev.get("leak"), dict) else {}
        words = _transform_in_words(transform, alignment,
                                    (leak.get("width") or 1000, leak.get("height") or 1000))
        if words:
            parts.append(f"<p>{_e(words)}</p>")
        parts.append(_table([(k, v) for k, v in alignment.items() if k != "transform"]))
    for name in ("alignment", "original"):
        if name in fig:
            parts.append(_figure_html(*fig[name]))
    if "alignment" in why:
        parts.append(f'<p class="note">{_e(why["alignment"])}</p>')

    # scores
    parts.append("<h2>Recipients tested</h2>")
    if "scores" in fig:
        parts.append(_figure_html(*fig["scores"]))
    else:
        parts.append(f'<p class="note">{_e(why["scores"])}</p>')
    rows = ["<table><tr><th>recipient</th><th>number</th><th>score</th><th>p-value</th></tr>"]
    for c in ev.get("candidates") or []:
        if isinstance(c, dict):
            score = c.get("score")
            rows.append(f"<tr><td>{_e(c.get('recipient'))}</td><td>{_e(c.get('recipient_number'))}"
                        f"</td><td>{_e(f'{score:.2f}' if isinstance(score, float) else score)}"
                        f"</td><td>{_fmt_p(c.get('p_value'))}</td></tr>")
    rows.append("</table>")
    parts.append("".join(rows))
    parts.append(_table([("decision threshold (p-value)", f"{meta['threshold']:.0e}"),
                         ("mode", ev.get("mode", "blind")), ("search", ev.get("search")),
                         ("hypotheses tested (n_tests)", ev.get("n_tests")),
                         ("false-accusation rate", ev.get("false_accusation_rate"))]))

    # ledger
    parts.append("<h2>The ledger</h2>")
    lc = ev.get("ledger_check")
    rows = [("ledger", ev.get("ledger")), ("ledger id", ev.get("ledger_id"))]
    if isinstance(lc, dict):
        state = "intact" if lc.get("ok") else f"{len(lc.get('problems') or [])} problem(s)"
        rows += [("hash chain", state), ("export records", lc.get("n_records")),
                 ("chain head", lc.get("head_hash"))]
    parts.append(_table(rows, mono=("ledger", "ledger id", "chain head")))
    if isinstance(lc, dict):
        cls, text = (("ok", "The ledger's hash chain is intact: no export record was edited, "
                      "deleted, inserted or reordered (the newest records can only be checked "
                      "against a chain head noted elsewhere: compare the chain head above).")
                     if lc.get("ok") else ("bad", "The ledger's hash chain is broken:"))
        parts.append(f'<p class="{cls}">{_e(text)}</p>')
        if lc.get("problems"):
            parts.append("<ul>" + "".join(f"<li>{_e(p)}</li>" for p in lc["problems"]) + "</ul>")
    else:
        parts.append('<p class="note">The ledger was not checked for this report.</p>')

    # tool
    parts += ["<h2>Tool</h2>", _table([
        ("leaktrace version", meta["leaktrace_version"]),
        ("key fingerprint", meta["key_fingerprint"]),
        ("report written (UTC)", meta["written_utc"]),
    ], mono=("key fingerprint",)),
        "<p class=\"note\">The key fingerprint names the site key used; it does not reveal "
        "it. The key itself is in no report.</p>",
        "<details><summary>The evidence as JSON</summary><pre>"
        + _e(json.dumps(ev, indent=1, ensure_ascii=False)) + "</pre></details>",
        "</body></html>"]
    return "\n".join(parts)


def _figure_html(title: str, data: str) -> str:
    return (f'<figure><img alt="{_e(title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(title)}</figcaption></figure>")
