"""Benchmark leaktrace against other watermarking libraries: same films, same leaks, one run.

Every method marks the same films for the same recipients; every marked copy goes through the
same leak pipelines (:data:`forensics.leaks.PIPELINES`, the raw 16-bit export of the stored
values, and strength sweeps of single leaks built from the registry :data:`forensics.leaks.LEAKS`)
with the same random seed per (film, pipeline, recipient); each method then reads its own
leaks back. The unmarked film goes through every pipeline too (controls).

Methods (:data:`METHODS`)
-------------------------
``leaktrace``
    Marks the DICOM film's stored values (:func:`forensics.export.mark_film`, the key scoped to
    the benchmark's ledger as ``leaktrace embed`` does); blind detection
    (:func:`watermark.detect.detect`) against the ledger's recipients.
``leaktrace-trace``
    The same marked copies (also exported into the ledger), read by the informed trace
    ``forensics.trace.trace_array`` with the ledger (skipped, with the reason, when that
    function does not exist; DICOM films only, since only they are exported).
``invisible-watermark-dwtDct``, ``invisible-watermark-dwtDctSvd``, ``blind-watermark``
    The peers of :mod:`forensics.bench.peers`: they mark the film's 8-bit default-window display
    with a 32-bit payload (how they are adapted to grey films is explained there).

What is measured
----------------
Per query (method x film x recipient-or-control x pipeline): the recipients named, whether
the right one was named (right ID) or another one (wrong ID), the bit accuracy where the
method outputs bits, the p-value of the true recipient, and the detection time and peak memory.

* **Recipients.** The ledger holds :data:`N_RECIPIENTS` recipients; each film is marked for a
  few of them. A peer's recipient ``n`` is given a keyed random 32-bit payload
  (:func:`peer_payload`); a peer names ``n`` when the decoded bits equal that payload exactly
  (wrong ID: equal to another of the 20 payloads, which a 32-bit code almost never produces
  by chance with so few recipients, so wrong-ID rates of peers say little).
* **Bit accuracy.** Peers: share of the 32 decoded bits equal to the payload. leaktrace: share
  of the 32 bits of the recipient number read from the payload alone (Reed-Solomon + CRC,
  ``decoded_number``) when the decoder returns one; undefined (empty) when it returns none.
* **TPR at FPR 1e-6.** leaktrace: the true recipient's p-value (the union bound over every
  recipient and hypothesis, :mod:`watermark.stats`) is at most :data:`FPR`. Peers: the
  p-value of ``k`` agreeing bits out of 32 under "no mark" (each bit a fair coin), the
  binomial tail ``P(X >= k)``, times the number of recipients (Bonferroni), at most
  :data:`FPR`; with 20 recipients that needs 31 or 32 agreeing bits. The peers' bits are not
  independent fair coins on unmarked images, so that p-value is nominal; the controls give
  the observed rate.
* **Imperceptibility** (per marked copy): PSNR and SSIM (scikit-image, ``data_range`` given)
  in the stored domain (peak ``2**BitsStored - 1``; only leaktrace marks stored values: for a
  peer the field is empty on DICOM films, as its output is an 8-bit rendering; on PNG films
  stored and display are the same 8-bit image) and in the display domain (default window,
  8 bits, peak 255).
* **Time and memory.** Marking (in memory: film already read, nothing written) and
  detection (the leak already decoded to an array) are timed with ``time.perf_counter``.
  Peak memory is the peak resident set size above the resident size before the call
  (Linux: ``/proc/self/clear_refs`` resets the high-water mark ``VmHWM``); it counts what
  the libraries allocate in C too. Empty where ``/proc`` does not allow it.

Leaks of DICOM-side pipelines (``dicom_jpeg_q80``, ``dicom_j2k_20to1``) and ``raw16_stored``
act on the stored values of leaktrace's copy and on the peers' 8-bit copy (a peer's export is
an 8-bit image); they are not run on PNG films (no stored values behind a PNG).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from watermark import dwt, payload
from watermark.dicomio import Film, read_film
from watermark.display import render, to_uint8
from watermark.errors import LeaktraceError
from watermark.keys import SiteKey

from .. import leaks
from . import runners
from .peers import PAYLOAD_BITS, PEERS, PeerError

__all__ = ["BenchError", "BenchPipeline", "Method", "METHODS", "QUICK", "FPR", "N_RECIPIENTS",
           "bench_pipelines", "find_films", "leak_image", "peer_payload", "run_bench",
           "film_data_dir", "run_description", "read_manifest", "DATA_ENV", "BENCH_LEDGER_ID",
           "FPRS", "strength_methods"]

DATA_ENV = "LEAKTRACE_TEST_DATA"
FPR = 1e-6
"""False-positive rate at which the true-positive rate is reported (``tp_at_fpr``)."""
FPRS = (1e-3, 1e-6)
"""Every false-positive rate with a TPR column in the summary (``tpr_at_fpr_1e-3``...), the
operating points WAVES and omnisealbench report."""
N_RECIPIENTS = 20
"""Recipients in the benchmark's ledger (and the peers' codebook)."""
BENCH_KEY = SiteKey(bytes(range(32)))
"""The benchmark's fixed site key (a benchmark is reproducible, not secret)."""
BENCH_LEDGER_ID = b"leaktrace bench!".hex()
"""The fixed id of every benchmark ledger: with :data:`BENCH_KEY` it fixes the marks, so two
runs (on any runner) give the same rows but for the measured times."""


class BenchError(LeaktraceError):
    """Bad benchmark arguments: unknown method or pipeline, no films, no usable method."""


# -- where the films are, and how a run describes itself -----------------------------------

def film_data_dir() -> Path:
    """The shared film folder: ``$LEAKTRACE_TEST_DATA``, else ``<repo>/../shared/data/cxr``
    (the same rule as the tests' ``conftest.film_data_dir``)."""
    base = os.environ.get(DATA_ENV)
    return Path(base) if base else Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr"


def run_description(**extra) -> dict:
    """The command line and the machine, recorded with every benchmark's numbers."""
    argv0 = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    words = ([argv0] if argv0 == "leaktrace" else [Path(sys.executable).name, *sys.argv[:1]])
    return {"command": " ".join(words + sys.argv[1:]),
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "python": platform.python_version(), "cpus": os.cpu_count(), **extra}}


def find_films(folder: str | os.PathLike, *, png: int = 2) -> list[Path]:
    """The human films of a film folder.

    Parameters
    ----------
    folder : path
        The shared layout (``dicom/*.dcm`` and ``png/<set>/<image>``), or any folder of
        ``.dcm``, ``.png``, ``.jpg`` and ``.jpeg`` files (searched recursively).
    png : int
        How many PNG/JPEG films to take, in turn from each sub-folder of ``png/`` (0: none).
        In a plain folder, every image is taken.

    Returns
    -------
    list of Path
        DICOM films first (sorted), then the PNG/JPEG films. Files whose name contains
        ``veterinary`` are left out: the shared set's dog film is a format case, not a
        human chest film.

    Raises
    ------
    BenchError
        ``png`` is negative, or the folder does not exist or holds no film.
    """
    if png < 0:
        raise BenchError(f"--png must be >= 0, got {png}")
    folder = Path(folder)
    if folder.is_file():
        raise BenchError(f"--films {folder}: is a file; give the folder that holds the films, "
                         "or a manifest (.csv)")
    if not folder.is_dir():
        raise BenchError(f"--films {folder}: no such folder")
    human = lambda p: "veterinary" not in p.name.lower()  # noqa: E731
    if (folder / "dicom").is_dir() or (folder / "png").is_dir():
        films = [p for p in sorted((folder / "dicom").glob("*.dcm")) if human(p)]
        sets = [sorted(p for p in d.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
                for d in sorted((folder / "png").glob("*")) if d.is_dir()]
        picked, i = [], 0
        while len(picked) < png and any(i < len(s) for s in sets):
            picked += [s[i] for s in sets if i < len(s)][: png - len(picked)]
            i += 1
        films += picked
    else:
        films = [p for p in sorted(folder.rglob("*"))
                 if p.suffix.lower() in (".dcm", ".png", ".jpg", ".jpeg") and human(p)]
        films.sort(key=lambda p: p.suffix.lower() != ".dcm")
    if not films:
        raise BenchError(f"--films {folder}: no DICOM (.dcm) or PNG/JPEG film found")
    return films


def read_manifest(path: str | os.PathLike) -> tuple[list[Path], dict[Path, dict[str, str]]]:
    """The films of a manifest: a CSV with a ``path`` column and any other columns.

    A public film set keeps its own layout: list its files with the labels to break the
    results down by (``dataset``, ``view``, ``site``...; a ``patient`` column is kept in the
    rows but not summarised). Relative paths are taken from the manifest's folder; a ``#``
    in a path is part of the path (the file has no comment lines).

    Returns
    -------
    (list of Path, dict of Path to dict of str to str)
        The films, in the manifest's order (a film listed twice once), and each film's other
        columns (empty values kept as ``""``).

    Raises
    ------
    BenchError
        The file cannot be read, is not CSV with a ``path`` column, has an empty path,
        names no film, or names a film that does not exist (the first few are listed).
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BenchError(f"--films {path}: cannot read the manifest ({exc})") from None
    if "path" not in columns:
        raise BenchError(f"--films {path}: a manifest needs a 'path' column (it has "
                         f"{', '.join(map(repr, columns)) or 'no header'})")
    films, labels, missing = [], {}, []
    for n, row in enumerate(rows, start=2):
        if not row.get("path"):
            raise BenchError(f"--films {path}: line {n} has an empty path")
        film = Path(row["path"]).expanduser()
        film = film if film.is_absolute() else path.parent / film
        if not film.is_file():
            missing.append(str(film))
            continue
        if film not in labels:
            films.append(film)
            labels[film] = {c: row.get(c, "") for c in columns if c and c != "path"}
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise BenchError(f"--films {path}: no such film: {', '.join(missing[:3])}{more}")
    if not films:
        raise BenchError(f"--films {path}: the manifest lists no film")
    return films, labels


# -- pipelines -----------------------------------------------------------------------------

@dataclass(frozen=True)
class BenchPipeline:
    """One leak pipeline of the benchmark.

    Attributes
    ----------
    name : str
    steps : list of (leak name, parameter overrides)
        As for :func:`forensics.leaks.apply`; empty for ``raw16_stored``.
    family : str
        Attack family (``jpeg``, ``downscale``, ``crop_centre``, ``rotate``, ``noise``,
        ``blur``), or the pipeline's own name when it is not part of a strength sweep.
    strength : float or None
        The family's strength parameter (see ``unit``).
    unit : str
    stretch : bool
        A stretch pipeline of the robustness issue (:data:`forensics.leaks.STRETCH`).
    stored_side : bool
        Acts on stored values (DICOM-side recompression, raw 16-bit export); not run on
        PNG/JPEG films, which have no stored values behind them.
    sweep_only : bool
        A strength-sweep pipeline, not one of the robustness issue's.
    """

    name: str
    steps: list
    family: str
    strength: float | None = None
    unit: str = ""
    stretch: bool = False
    stored_side: bool = False
    sweep_only: bool = False


STORED_SIDE_LEAKS = ("dicom_jpeg", "dicom_j2k", "dicom_dcmtk_jpeg")

# strength sweeps: pipelines of forensics.leaks.PIPELINES that belong to a family, and the
# extra pipelines (single registry leaks, saved as 8-bit PNG where they do not encode
# themselves) that complete each family
_FAMILY = {
    "jpeg_q90": ("jpeg", 90, "JPEG quality"), "viewer_jpeg_q75": ("jpeg", 75, "JPEG quality"),
    "jpeg_q50": ("jpeg", 50, "JPEG quality"), "jpeg_q30": ("jpeg", 30, "JPEG quality"),
    "long_edge_1024px": ("downscale", 1024, "long edge (px)"),
    "long_edge_512px": ("downscale", 512, "long edge (px)"),
    "long_edge_256px": ("downscale", 256, "long edge (px)"),
    "crop_centre_keep50pct": ("crop_centre", 50, "area kept (%)"),
    "crop_centre_keep36pct": ("crop_centre", 36, "area kept (%)"),
    "crop_centre_keep25pct": ("crop_centre", 25, "area kept (%)"),
    "crop_centre_keep10pct": ("crop_centre", 10, "area kept (%)"),
    "rotate_1deg": ("rotate", 1, "angle (degrees)"), "rotate_3deg": ("rotate", 3, "angle (degrees)"),
    "rotate_10deg": ("rotate", 10, "angle (degrees)"),
    "noise_s2": ("noise", 2, "noise sigma (grey levels)"),
    "noise_s5": ("noise", 5, "noise sigma (grey levels)"),
    "blur_s1": ("blur", 1, "blur sigma (px)"), "blur_s2": ("blur", 2, "blur sigma (px)"),
}
_SWEEPS = {
    "jpeg_q90": [("jpeg_q90", {})],
    "jpeg_q50": [("jpeg_q50", {})],
    "long_edge_1024px": [("long_edge_1024px", {}), ("png8", {})],
    "long_edge_512px": [("long_edge_512px", {}), ("png8", {})],
    "crop_centre_keep50pct": [("crop_centre_keep50pct", {}), ("png8", {})],
    "crop_centre_keep25pct": [("crop_centre_keep25pct", {}), ("png8", {})],
    "rotate_1deg": [("rotate_1deg", {}), ("png8", {})],
    "noise_s2": [("noise_s2", {}), ("png8", {})],
    "noise_s5": [("noise_s5", {}), ("png8", {})],
    "blur_s1": [("blur_s1", {}), ("png8", {})],
    "blur_s2": [("blur_s2", {}), ("png8", {})],
}


def bench_pipelines() -> dict[str, BenchPipeline]:
    """Every benchmark pipeline: :data:`forensics.leaks.PIPELINES`, ``raw16_stored`` (the
    stored values as a 16-bit PNG, no window) and the strength sweeps, in that order."""
    table = {**leaks.PIPELINES, "raw16_stored": [], **_SWEEPS}
    out = {}
    for name, steps in table.items():
        family, strength, unit = _FAMILY.get(name, (name, None, ""))
        stored = not steps or steps[0][0].startswith(STORED_SIDE_LEAKS)
        out[name] = BenchPipeline(name, list(steps), family, strength, unit,
                                  stretch=name in leaks.STRETCH, stored_side=stored,
                                  sweep_only=name in _SWEEPS)
    return out


@dataclass(frozen=True)
class Quick:
    """What ``--quick`` runs (under 5 minutes on 2 cores): the two smallest human DICOM films,
    one recipient each, these pipelines."""

    films: int = 2
    recipients: int = 1
    png: int = 0
    pipelines: tuple = ("viewer_png8", "viewer_jpeg_q75", "jpeg_q50", "jpeg_q30",
                        "screenshot_ui_messenger_1280px_jpeg_q70", "long_edge_512px_jpeg_q80",
                        "crop_centre_keep36pct", "rotate_3deg", "inverted", "dicom_j2k_20to1")


QUICK = Quick()


# -- sources and leaks ---------------------------------------------------------------------

@dataclass
class Source:
    """A film as the benchmark uses it.

    ``stored`` holds the stored values (float64; for a PNG/JPEG film its 8-bit grey values),
    ``display`` the 8-bit default-window display (uint8), ``peak`` the stored-domain peak.
    """

    path: Path
    kind: str  # "dicom" or "png"
    film: Film | None
    stored: np.ndarray
    display: np.ndarray
    peak: float
    colour: bool = False  # a colour PNG/JPEG, turned to grey (PIL's ITU-R 601-2 luma)

    @property
    def name(self) -> str:
        return self.path.name

    def render8(self, stored: np.ndarray) -> np.ndarray:
        """8-bit default display of stored values (identity for a PNG film)."""
        if self.film is None:
            return to_uint8(stored)
        return to_uint8(render(self.film, pixels=stored))


@lru_cache(maxsize=2)
def load_source(path: Path) -> Source:
    """Read a film once per process (tasks of one film run one after another)."""
    if path.suffix.lower() == ".dcm":
        film = read_film(path)
        return Source(path, "dicom", film, film.pixels.astype(np.float64), to_uint8(render(film)),
                      float(2**film.bits_stored - 1))
    from PIL import Image

    try:
        with Image.open(path) as im:
            colour = im.mode not in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
            grey = np.asarray(im.convert("L"), dtype=np.float64)
    except OSError as exc:
        raise BenchError(f"{path}: cannot read this image ({exc})") from None
    return Source(path, "png", None, grey, grey.astype(np.uint8), 255.0, colour)


def leak_image(source: Source, values: np.ndarray, pipeline: BenchPipeline | Sequence,
               rng: np.random.Generator, *, domain: str = "stored") -> np.ndarray:
    """The leak of one (marked or unmarked) copy through one pipeline.

    Parameters
    ----------
    source : Source
    values : (rows, columns) array
        ``domain="stored"``: stored values of a copy of a DICOM film (rendered with the
        film's default display after any stored-side step), or the 8-bit grey values of a
        PNG film. ``domain="display"``: an 8-bit display image (a peer's copy), which is its
        own stored values (stored-side steps treat it as 8-bit data).
    pipeline : BenchPipeline or list of (leak name, overrides)
    rng : numpy.random.Generator
    domain : {"stored", "display"}

    Returns
    -------
    (rows', columns') float64 array
        The leaked grey image (0..255, or 0..65535 for 16-bit exports).
    """
    steps = pipeline.steps if isinstance(pipeline, BenchPipeline) else list(pipeline)
    rendered = domain == "stored" and source.kind == "dicom"  # values need the film's display
    if not steps:  # raw16_stored: the stored values as they are
        return np.asarray(values, dtype=np.float64).copy()
    if steps[0][0].startswith(STORED_SIDE_LEAKS):
        first = steps[0] if rendered else (steps[0][0], {**steps[0][1], "bits_stored": 8})
        stored = leaks.apply(values, [first], rng)
        shown = render(source.film, pixels=stored) if rendered else stored
        return leaks.apply(shown, steps[1:], rng)
    return leaks.apply(render(source.film, pixels=values) if rendered else values, steps, rng)


# -- methods -------------------------------------------------------------------------------

def peer_payload(number: int, key: SiteKey = BENCH_KEY) -> np.ndarray:
    """The 32-bit payload a peer carries for recipient ``number``: keyed random bits
    (HMAC-SHA256 of the number, first 4 bytes), so that recipients' payloads differ in about
    half their bits, as a deployment of a peer would choose them.

    Returns
    -------
    (32,) bool array
    """
    digest = key.digest("bench-peer-payload", int(number).to_bytes(8, "big"))
    return np.unpackbits(np.frombuffer(digest[: PAYLOAD_BITS // 8], dtype=np.uint8)).astype(bool)


@dataclass(frozen=True)
class Context:
    """What every task needs (picklable): the key, the ledger, the recipients."""

    key: SiteKey
    ledger_path: str
    ledger_id: str
    numbers: tuple  # the ledger's recipient numbers (every method's candidate list)

    @property
    def mark_key(self) -> SiteKey:
        """The site key scoped to the ledger, as ``leaktrace embed`` marks with it."""
        return self.key.scoped(self.ledger_id)


@dataclass(frozen=True)
class Outcome:
    """What a method read from one leak."""

    named: list
    p_truth: float | None = None  # p-value of the true recipient (None: not defined)
    p_best: float | None = None  # smallest p-value over the recipients
    bit_accuracy: float | None = None


class Method:
    """A watermarking method in the benchmark.

    ``domain`` is ``"stored"`` when the method marks a DICOM film's stored values, or
    ``"display"`` when it marks the 8-bit default display. Subclasses define :meth:`embed`
    and :meth:`detect`; :meth:`unavailable` says why a method cannot run here.
    """

    name = ""
    domain = "stored"
    dicom_only = False

    def unavailable(self) -> str | None:
        return None

    def prepare(self, ctx: Context, book, jobs: Sequence[tuple[Path, int]], folder: Path) -> None:
        """Parent-side set-up before any task (for example, exports into the ledger)."""

    def embed(self, source: Source, number: int, ctx: Context) -> np.ndarray:
        """The copy of ``source`` marked for recipient ``number``.

        Returns
        -------
        (rows, columns) array
            Stored values (``domain="stored"``; the 8-bit grey values for a PNG film) or
            the 8-bit display (``domain="display"``).

        Raises
        ------
        LeaktraceError
            The method cannot mark this film (recorded in the run, which goes on).
        """
        raise NotImplementedError

    def detect(self, leak: np.ndarray, ctx: Context, truth: int | None) -> Outcome:
        """Read a leak (a (rows, columns) grey array) against ``ctx.numbers``; ``truth`` is
        the marked recipient (None for a control) and is used only to score bits and
        p-values, never to decide whom to name.

        Raises
        ------
        LeaktraceError
            The method cannot read this leak (recorded as a failed query).
        """
        raise NotImplementedError

    def original(self, source: Source) -> np.ndarray:
        """The unmarked copy in this method's domain (for controls and metrics)."""
        return source.stored if self.domain == "stored" else source.display


class Leaktrace(Method):
    """leaktrace's mark and its blind detection (:func:`watermark.detect.detect`)."""

    name = "leaktrace"

    def __init__(self, strength: float = 1.0):
        self.strength = float(strength)
        if self.strength != 1.0:
            self.name = f"{type(self).name}@{self.strength:g}"

    def embed(self, source: Source, number: int, ctx: Context) -> np.ndarray:
        from ..export import mark_film

        if source.film is not None:
            lo, hi = source.film.value_range
            return np.clip(np.rint(mark_film(source.film, number, ctx.mark_key,
                                             strength=self.strength)), lo, hi)
        image = source.stored
        residual = dwt.mark_residual(image, payload.encode(number, ctx.mark_key), ctx.mark_key,
                                     quantum=1.0, strength=self.strength)
        return leaks.quantize_8bit(image + residual)

    def detect(self, leak: np.ndarray, ctx: Context, truth: int | None) -> Outcome:
        from watermark.detect import detect

        d = detect(leak, ctx.mark_key, list(ctx.numbers))
        p = {c.number: c.p_value for c in d.candidates}
        accuracy = None
        if truth is not None and d.soft_bits is not None:
            # raw accuracy of the 256 coded bits read at the best hypothesis (before the
            # Reed-Solomon decoder), against the true recipient's codeword
            read = np.sign(d.polarity * d.soft_bits)
            accuracy = float(np.mean(read == payload.encode(truth, ctx.mark_key)))
        return Outcome(list(d.recipient_numbers), p.get(truth) if truth is not None else None,
                       d.p_value, accuracy)


@lru_cache(maxsize=1)
def _ledger_readonly(path: str):
    from ..ledger import Ledger

    return Ledger(path, create=False)


class LeaktraceTrace(Leaktrace):
    """leaktrace's informed trace with the ledger (``forensics.trace.trace_array``)."""

    name = "leaktrace-trace"
    dicom_only = True  # only DICOM films are exported into the ledger

    def prepare(self, ctx: Context, book, jobs, folder: Path) -> None:
        from ..export import export_film

        for path, number in jobs:
            if path.suffix.lower() == ".dcm":
                export_film(path, folder / f"{number}_{path.name}", recipient=_recipient(number),
                            ledger=book, key=ctx.key)

    def detect(self, leak: np.ndarray, ctx: Context, truth: int | None) -> Outcome:
        from ..trace import trace_array

        report = trace_array(leak, ledger=_ledger_readonly(ctx.ledger_path), key=ctx.key)
        named = [int(n) for n in (report.recipient_numbers or [])]
        p_best = float(report.p_value) if report.p_value is not None else None
        p_truth = None
        if truth is not None:
            per = {int(c.number): float(c.p_value) for c in getattr(report, "candidates", []) or []
                   if hasattr(c, "number") and hasattr(c, "p_value")}
            p_truth = per.get(truth, p_best if truth in named else 1.0)
        return Outcome(named, p_truth, p_best, None)


class PeerMethod(Method):
    """A peer library of :mod:`forensics.bench.peers`, on the 8-bit display, 32-bit payloads."""

    domain = "display"

    def __init__(self, peer_name: str):
        self.name = peer_name
        self._peer = None

    @property
    def peer(self):
        if self._peer is None:
            self._peer = PEERS[self.name]()
            if self.name == "blind-watermark":  # its "key": two seeds, from the bench key
                digest = BENCH_KEY.digest("bench-blind-watermark")
                self._peer.password_wm = int.from_bytes(digest[:4], "big") % 2**31
                self._peer.password_img = int.from_bytes(digest[4:8], "big") % 2**31
        return self._peer

    def unavailable(self) -> str | None:
        return self.peer.available()

    def embed(self, source: Source, number: int, ctx: Context) -> np.ndarray:
        return self.peer.embed(source.display, peer_payload(number, ctx.key))

    def detect(self, leak: np.ndarray, ctx: Context, truth: int | None) -> Outcome:
        from scipy.stats import binom

        if leak.size and float(np.max(leak)) > 255:  # a 16-bit leak, read as 8 bits the way
            leak = leak * (255.0 / 65535.0)          # OpenCV's imread(IMREAD_COLOR) reads it
        bits = self.peer.decode(leak)
        agree = {n: int(np.sum(bits == peer_payload(n, ctx.key))) for n in ctx.numbers}
        n_rec = len(ctx.numbers)
        p = {n: min(1.0, n_rec * float(binom.sf(k - 1, PAYLOAD_BITS, 0.5))) for n, k in agree.items()}
        named = [n for n, k in agree.items() if k == PAYLOAD_BITS]
        return Outcome(named, p.get(truth) if truth is not None else None, min(p.values()),
                       agree[truth] / PAYLOAD_BITS if truth is not None else None)


METHODS: dict[str, Callable[[], Method]] = {
    "leaktrace": Leaktrace,
    "leaktrace-trace": LeaktraceTrace,
    **{name: (lambda name=name: PeerMethod(name)) for name in PEERS},
}
"""Method name -> factory. Adding a method is one class and one line here."""


STRENGTH_METHOD = "leaktrace"
"""The method that runs at other embedding strengths (``--strengths``), as ``leaktrace@S``."""


@lru_cache(maxsize=None)
def _method(name: str) -> Method:
    base, _, strength = name.partition("@")
    if strength:
        return Leaktrace(float(strength))
    return METHODS[base]()


def strength_methods(strengths: Sequence[float] | None) -> list[str]:
    """The method names of leaktrace's blind detection at each embedding strength
    (relative to the strength model's choice, :func:`forensics.export.mark_film`): 1 is
    ``leaktrace``, any other S ``leaktrace@S``.

    Raises
    ------
    BenchError
        A strength outside (0, 8].
    """
    names = []
    for s in strengths or ():
        s = float(s)
        if not (0 < s <= 8) or math.isnan(s):
            raise BenchError(f"--strengths: each must be in (0, 8], got {s:g}")
        names.append(STRENGTH_METHOD if s == 1 else f"{STRENGTH_METHOD}@{s:g}")
    return list(dict.fromkeys(names))


def _recipient(number: int) -> str:
    return f"bench recipient {number:02d}"


# -- measuring -----------------------------------------------------------------------------

def _malloc_trim() -> None:
    """Give freed heap memory back to the system (glibc), so that memory freed by earlier
    work is not silently reused inside a measured block; a no-op where unavailable."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None


class _PeakMemory:
    """Peak resident memory of this process during a block, above its resident size before
    (Linux ``/proc/self/clear_refs`` + ``VmHWM``, after glibc's ``malloc_trim``); ``mb`` is
    None where that is unavailable. Also times the block: ``seconds`` (wall clock,
    ``time.perf_counter``) and ``cpu_seconds`` (this process, ``time.process_time``)."""

    def __enter__(self):
        self.mb, self._before = None, None
        _malloc_trim()
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self._before = self._status("VmRSS")
        except OSError:
            pass
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    @staticmethod
    def _status(field: str) -> float:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
        raise OSError(f"/proc/self/status has no {field}")

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._wall
        self.cpu_seconds = time.process_time() - self._cpu
        if self._before is not None:
            try:
                self.mb = max(0.0, self._status("VmHWM") - self._before)
            except OSError:
                self.mb = None
        return False


def _imperceptibility(source: Source, method: Method, marked: np.ndarray) -> dict:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    def pair(a, b, peak):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        return (float(peak_signal_noise_ratio(a, b, data_range=peak)),
                float(structural_similarity(a, b, data_range=peak)))

    if method.domain == "stored":
        shown = source.render8(marked)
        stored = pair(source.stored, marked, source.peak)
    else:
        shown = marked
        stored = pair(source.stored, marked, 255.0) if source.kind == "png" else (None, None)
    display = pair(source.display, shown, 255.0)
    return {"psnr_stored_db": stored[0], "ssim_stored": stored[1],
            "psnr_display_db": display[0], "ssim_display": display[1]}


def _seed(*parts) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


@dataclass(frozen=True)
class _Task:
    path: Path
    method: str
    truth: int | None
    pipelines: tuple  # BenchPipeline
    ctx: Context


def _run_task(task: _Task) -> tuple[dict | None, list[dict]]:
    """Mark one film for one recipient (or take it unmarked), leak it through every
    pipeline, read each leak back. Returns (embed row or None, query rows)."""
    method = _method(task.method)
    source = load_source(task.path)
    base = {"method": method.name, "film": source.name, "kind": source.kind,
            "truth": task.truth if task.truth is not None else ""}
    embed_row, values = None, method.original(source)
    if task.truth is not None:
        embed_row = {**base, "embed_s": None, "embed_cpu_s": None, "embed_peak_mb": None,
                     "psnr_stored_db": None,
                     "ssim_stored": None, "psnr_display_db": None, "ssim_display": None,
                     "error": ""}
        try:
            with _PeakMemory() as mem:
                values = method.embed(source, task.truth, task.ctx)
            embed_row.update(embed_s=mem.seconds, embed_cpu_s=mem.cpu_seconds,
                             embed_peak_mb=mem.mb)
            embed_row.update(_imperceptibility(source, method, values))
        except Exception as exc:  # noqa: BLE001 - a benchmark records failures, never stops
            message = str(exc) if isinstance(exc, LeaktraceError) else f"{type(exc).__name__}: {exc}"
            embed_row["error"] = message
            return embed_row, [_query_row(base, p, None, None, f"not marked: {message}")
                               for p in task.pipelines]
    rows = []
    for p in task.pipelines:
        leak_error = None
        try:
            rng = np.random.default_rng(_seed(source.name, p.name, task.truth))
            leak = leak_image(source, values, p, rng, domain=method.domain)
        except Exception as exc:  # noqa: BLE001 - a benchmark records failures, never stops
            leak_error = f"leak failed: {type(exc).__name__}: {exc}"
        if leak_error:
            rows.append(_query_row(base, p, None, None, leak_error))
            continue
        outcome, error = None, ""
        with _PeakMemory() as mem:
            try:
                outcome = method.detect(leak, task.ctx, task.truth)
            except (LeaktraceError, PeerError) as exc:
                error = str(exc)
            except Exception as exc:  # noqa: BLE001
                error = f"{type(exc).__name__}: {exc}"
        rows.append(_query_row(base, p, outcome, mem, error))
    return embed_row, rows


def _query_row(base: dict, p: BenchPipeline, outcome: Outcome | None,
               mem: _PeakMemory | None, error: str) -> dict:
    truth = base["truth"] if base["truth"] != "" else None
    named = outcome.named if outcome else []
    p_truth = outcome.p_truth if outcome else None
    return {**base, "pipeline": p.name, "family": p.family,
            "strength": p.strength if p.strength is not None else "", "unit": p.unit,
            "stretch": p.stretch,
            "right": truth is not None and truth in named,
            "wrong": any(n != truth for n in named),
            "miss": truth is not None and truth not in named,
            "named": " ".join(map(str, named)),
            "bit_accuracy": outcome.bit_accuracy if outcome else None,
            "p_truth": p_truth,
            "p_best": outcome.p_best if outcome else None,
            "tp_at_fpr": truth is not None and p_truth is not None and p_truth <= FPR,
            "any_at_fpr": bool(outcome and outcome.p_best is not None and outcome.p_best <= FPR),
            "detect_s": mem.seconds if mem else None,
            "detect_cpu_s": mem.cpu_seconds if mem else None,
            "detect_peak_mb": mem.mb if mem else None, "error": error,
            "tp_at_fpr_1e-3": truth is not None and p_truth is not None and p_truth <= 1e-3,
            "any_at_fpr_1e-3": bool(outcome and outcome.p_best is not None
                                    and outcome.p_best <= 1e-3)}


_QUERY_COLUMNS = frozenset({
    "method", "film", "kind", "truth", "pipeline", "family", "strength", "unit", "stretch",
    "right", "wrong", "miss", "named", "bit_accuracy", "p_truth", "p_best", "tp_at_fpr",
    "any_at_fpr", "detect_s", "detect_cpu_s", "detect_peak_mb", "error", "tp_at_fpr_1e-3",
    "any_at_fpr_1e-3", "path", "_path"})
"""The columns of ``bench_queries.csv`` (a manifest's columns may not reuse them)."""


# -- the run -------------------------------------------------------------------------------

def select(names: Sequence[str] | None, known: Sequence[str], what: str) -> list[str]:
    """Names picked by the user (comma-separated items allowed), in the given order.

    Raises
    ------
    BenchError
        An unknown name (the message lists the known ones), or only empty names.
    """
    if not names:
        return list(known)
    picked = [n.strip() for item in names for n in str(item).split(",") if n.strip()]
    if not picked:
        raise BenchError(f"no {what} given; known: {', '.join(known)}")
    unknown = [n for n in picked if n not in known]
    if unknown:
        raise BenchError(f"unknown {what} {', '.join(map(repr, unknown))}; known: "
                         f"{', '.join(known)}")
    return list(dict.fromkeys(picked))


@dataclass
class BenchResult:
    """What :func:`run_bench` measured and where it wrote it."""

    queries: list = field(default_factory=list)
    embeds: list = field(default_factory=list)
    summary: list = field(default_factory=list)
    summary_by_group: list = field(default_factory=list)
    methods: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)
    skipped_films: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    files: list = field(default_factory=list)


def run_bench(films: Sequence[Path], *, methods: Sequence[str] | None = None,
              pipelines: Sequence[str] | None = None, recipients: int = 2,
              workers: int = 1, out: str | os.PathLike | None = None,
              progress: Callable[[int, int], None] | None = None,
              say: Callable[[str], None] | None = None, plots: bool = True,
              settings: dict | None = None, scheduler: str | None = None,
              resume: bool = False, groups: Mapping[Path, Mapping[str, str]] | None = None,
              strengths: Sequence[float] | None = None) -> BenchResult:
    """Run every method on every film and pipeline; summarise; write the files.

    Parameters
    ----------
    films : sequence of Path
        DICOM and PNG/JPEG films (see :func:`find_films` and :func:`read_manifest`).
    methods, pipelines : sequence of str, optional
        Names from :data:`METHODS` and :func:`bench_pipelines` (default: all). Methods that
        cannot run here (a peer not installed, the informed trace not available) are skipped
        and listed in ``skipped`` with the reason.
    recipients : int
        Recipients each film is marked for (1..:data:`N_RECIPIENTS`); every film and method
        also runs unmarked (the controls).
    workers : int
        Processes (1: in this process), or the worker processes of ``scheduler="local"``.
    out : path, optional
        Folder for ``bench_queries.csv``, ``bench_embeds.csv``, ``bench_summary.csv``,
        ``bench.json``, the plots, the run's ledger ``bench_ledger.sqlite`` and its journal
        ``bench_journal.jsonl``; nothing is kept when None.
    progress : callable(done, total), optional
        Called as queries finish (and once at the start when resuming).
    say : callable(str), optional
        Receives notes (skipped methods and films, colour films, results replaced).
    scheduler : str, optional
        Run the tasks on Dask (:mod:`forensics.bench.runners`): ``"local"`` starts a LocalCluster
        of ``workers`` processes; an address (``tcp://host:8786``) uses an existing cluster,
        whose workers must read the films and ``out`` at the same paths (shared storage).
        Every runner gives the same rows but for the measured times and memory.
    resume : bool
        Run only the tasks that the journal in ``out`` does not hold (an earlier run of the
        same plan, interrupted); the rows it holds are used as they are.
    groups : mapping of Path to mapping of str to str, optional
        Per film, the manifest's columns (dataset, view...; :func:`read_manifest`): added to
        every query row, and summarised per column and value in ``summary_by_group``
        (``bench_summary_by_group.csv``). A column named ``patient`` is kept in the rows but
        not summarised.
    strengths : sequence of float, optional
        Also run leaktrace's blind method at these embedding strengths (relative to the
        strength model's choice), as methods ``leaktrace@S`` (:func:`strength_methods`):
        the quality-against-robustness plot then has one point per strength.

    The benchmark's ledger has the fixed id :data:`BENCH_LEDGER_ID` and the key
    :data:`BENCH_KEY`, so the marks, leaks and results of two runs with the same settings are
    the same. Ctrl-C (KeyboardInterrupt) while the leaks are read stops the workers; the
    queries done so far are summarised and written, with ``interrupted: true`` in
    ``bench.json``, and ``--resume`` finishes the run. Films that cannot be read or are too
    small to mark are left out with a note (and listed in ``skipped_films``).

    Raises
    ------
    BenchError
        Unknown method or pipeline, bad ``recipients`` or ``workers``, ``out`` not writable,
        no usable film, no method can run, ``resume`` without ``out`` or with a journal of
        other settings, a manifest column that clashes with a result column, or the
        scheduler cannot be reached.
    """
    say = say or (lambda text: None)
    method_names = select(methods, list(METHODS), "method")
    method_names += [n for n in strength_methods(strengths) if n not in method_names]
    table = bench_pipelines()
    chosen = [table[n] for n in select(pipelines, list(table), "pipeline")]
    workers = check_settings(recipients, workers)
    if resume and out is None:
        raise BenchError("--resume needs the output folder of the run to resume (--out)")
    group_columns = _group_columns(groups)
    if out is not None:
        out = prepare_out(out, None if resume else say)
    result = BenchResult()
    films, result.skipped_films = readable_films([Path(f) for f in films], say)
    if not films:
        raise BenchError("no film to run on" + (": " + "; ".join(result.skipped_films.values())
                                                 if result.skipped_films else ""))
    if scheduler and scheduler != runners.LOCAL:
        films = [f.resolve() for f in films]  # the cluster's workers read them by these paths
    usable = _usable_methods(method_names, films, result, say)

    started, cpu_started = time.perf_counter(), _cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="leaktrace-bench-") as tmp:
        work = Path(out).resolve() if out is not None else Path(tmp)
        plan = {"films": [str(f) for f in films], "methods": usable,
                "pipelines": [p.name for p in chosen], "recipients_per_film": recipients,
                "ledger_id": BENCH_LEDGER_ID, "leaktrace": _version()}
        try:
            journal = runners.Journal(work, plan, resume=resume) if out is not None else None
        except runners.RunnerError as exc:
            raise BenchError(str(exc)) from None
        if resume and not journal.resumed:
            say(f"nothing to resume in {out} (no journal of an earlier run): starting the run")
        if journal is not None and journal.resumed:
            say(f"resuming the run in {out}: {len(journal.done)} task(s) already done")
        ctx, truths = _prepare(usable, films, recipients, work, Path(tmp),
                               fresh=not (journal is not None and journal.resumed))
        tasks, ids = [], []
        for path in films:
            kind = "dicom" if path.suffix.lower() == ".dcm" else "png"
            for name in usable:
                if _method(name).dicom_only and kind != "dicom":
                    continue
                mine = tuple(p for p in chosen if not (p.stored_side and kind == "png"))
                for truth in [*truths[path], None]:
                    tasks.append(_Task(path, name, truth, mine, ctx))
                    ids.append(runners.task_id(str(path), name, truth, [p.name for p in mine]))
        total = sum(len(t.pipelines) for t in tasks)
        done, interrupted = 0, False

        def take(outcome) -> None:
            nonlocal done
            embed_row, rows = outcome
            if embed_row is not None:
                result.embeds.append(embed_row)
            result.queries.extend(rows)
            done += len(rows)

        todo = []
        for i, tid in enumerate(ids):
            if journal is not None and tid in journal.done:
                take(journal.done[tid])
            else:
                todo.append(i)
        if progress and done:
            progress(done, total)
        if journal is not None:
            journal.open()
        order = _largest_first([tasks[i] for i in todo])
        runs = runners.execute(_run_task, [tasks[todo[j]] for j in order], workers=workers,
                                scheduler=scheduler, keys=[ids[todo[j]] for j in order])
        try:
            for j, outcome in runs:
                i = todo[order[j]]
                lost = isinstance(outcome, runners.TaskLost)
                if lost:  # recorded as failed queries; not journalled, so --resume retries it
                    say(f"{tasks[i].path.name}, {tasks[i].method}: task lost ({outcome.message})")
                    outcome = _lost_task_rows(tasks[i], outcome.message)
                outcome = _plain(outcome)
                for row in outcome[1]:  # which film (the manifest's groups); not in the files
                    row["_path"] = str(tasks[i].path)
                if journal is not None and not lost:
                    journal.record(ids[i], outcome)
                take(outcome)
                if progress:
                    progress(done, total)
        except KeyboardInterrupt:  # Ctrl-C: keep what is done
            interrupted = True
        except runners.RunnerError as exc:
            raise BenchError(str(exc)) from None
        finally:
            runs.close()  # stops the workers if the run did not finish
            if journal is not None:
                journal.close()
    elapsed, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_started
    rank = {n: i for i, n in enumerate(usable)}
    key = lambda r: (rank[r["method"]], r["film"], str(r["truth"]))  # noqa: E731
    result.embeds.sort(key=key)
    result.queries.sort(key=lambda r: (*key(r), r["pipeline"]))
    if group_columns:
        labels_of = {str(Path(k).resolve()): v for k, v in groups.items()}
        for q in result.queries:
            labels = labels_of.get(str(Path(q.pop("_path")).resolve()), {})
            q.update({c: labels.get(c, "") for c in group_columns})
    else:
        for q in result.queries:
            q.pop("_path", None)
    result.methods = _method_summary(result.embeds, result.queries, usable)
    result.summary = _summary(result.queries, result.methods, usable, chosen)
    result.summary_by_group = _group_summary(result.queries, result.methods, usable, chosen,
                                             [c for c in group_columns if c not in _NOT_GROUPED])
    result.meta = {
        **run_description(workers=workers, scheduler=scheduler or "processes"),
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "settings": {"films": [str(f) for f in films], "methods": usable,
                     "pipelines": [p.name for p in chosen], "recipients_per_film": recipients,
                     "ledger_recipients": N_RECIPIENTS, "ledger_id": BENCH_LEDGER_ID,
                     "fpr": FPR, "fprs_reported": list(FPRS),
                     "peer_payload_bits": PAYLOAD_BITS, **(settings or {})},
        "skipped_methods": result.skipped,
        "skipped_films": result.skipped_films,
        "interrupted": interrupted,
        "resumed_tasks": len(tasks) - len(todo),
        "tasks": len(tasks),
        "queries": len(result.queries),
        "queries_planned": total,
        "methods": result.methods,
        "summary": result.summary,
        "summary_by_group": result.summary_by_group,
    }
    if out is not None and result.queries:
        result.files = write_outputs(result, Path(out), plots=plots)
    return result


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("leaktrace")
    except PackageNotFoundError:
        return "unknown"


def _usable_methods(names: list[str], films: list[Path], result: BenchResult, say) -> list[str]:
    usable = []
    for name in names:
        reason = _method(name).unavailable()
        others = [f for f in films if f.suffix.lower() != ".dcm"] if _method(name).dicom_only else []
        if reason is None and len(others) == len(films):
            reason = "only DICOM films are exported into a ledger, and no DICOM film was given"
        if reason:
            result.skipped[name] = reason
            say(f"skipping {name}: {reason}")
            continue
        if others:
            say(f"{name} runs on the DICOM films only (only they are exported into a ledger): "
                f"{len(others)} PNG/JPEG film(s) left out for it")
        usable.append(name)
    if not usable:
        raise BenchError("no method can run: " + "; ".join(f"{k}: {v}" for k, v in result.skipped.items()))
    return usable


LEDGER_NAME = "bench_ledger.sqlite"


def _prepare(usable: list[str], films: list[Path], recipients: int, work: Path, scratch: Path,
             *, fresh: bool) -> tuple[Context, dict]:
    """The run's ledger in ``work`` (made anew when ``fresh``; else the resumed run's, as it
    is), its recipients, each film's recipients, and the methods' set-up (exports, whose
    files go to ``scratch``: the ledger records them, nothing reads them afterwards)."""
    from ..ledger import Ledger

    path = work / LEDGER_NAME
    if fresh:
        for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            leftover.unlink(missing_ok=True)
    elif not path.exists():
        raise BenchError(f"--resume: the run's ledger {path} is gone; run without --resume "
                         "to start over")
    with Ledger(path, ledger_id=BENCH_LEDGER_ID) as book:
        if book.ledger_id != BENCH_LEDGER_ID:
            raise BenchError(f"--resume: {path} is not this benchmark's ledger; run without "
                             "--resume to start over")
        numbers = tuple(book.recipient_number(_recipient(i), create=True)
                        for i in range(1, N_RECIPIENTS + 1))
        ctx = Context(BENCH_KEY, str(book.path), book.ledger_id, numbers)
        truths = {path_: [numbers[(i * recipients + j) % N_RECIPIENTS] for j in range(recipients)]
                  for i, path_ in enumerate(films)}
        if fresh:
            jobs = [(p, n) for p, ns in truths.items() for n in ns]
            for name in usable:
                _method(name).prepare(ctx, book, jobs, scratch)
    _ledger_readonly.cache_clear()
    return ctx, truths


def _largest_first(tasks: list[_Task]) -> list[int]:
    """Indices of ``tasks``, largest film first (so the long tasks do not finish last)."""
    sizes = {}
    for t in tasks:
        if t.path not in sizes:
            try:
                sizes[t.path] = t.path.stat().st_size
            except OSError:
                sizes[t.path] = 0
    return sorted(range(len(tasks)), key=lambda i: -sizes[tasks[i].path])


def _lost_task_rows(task: _Task, message: str) -> tuple[dict | None, list[dict]]:
    """The rows of a task that did not come back from the cluster: every query failed."""
    base = {"method": task.method, "film": task.path.name,
            "kind": "dicom" if task.path.suffix.lower() == ".dcm" else "png",
            "truth": task.truth if task.truth is not None else ""}
    embed_row = None
    if task.truth is not None:
        embed_row = {**base, "embed_s": None, "embed_cpu_s": None, "embed_peak_mb": None,
                     "psnr_stored_db": None, "ssim_stored": None, "psnr_display_db": None,
                     "ssim_display": None, "error": f"task lost: {message}"}
    return embed_row, [_query_row(base, p, None, None,
                                  f"task lost: {message}") for p in task.pipelines]


_NOT_GROUPED = frozenset({"patient", "patient_id"})


def _group_columns(groups) -> list[str]:
    if not groups:
        return []
    columns = list(dict.fromkeys(c for labels in groups.values() for c in labels))
    clash = [c for c in columns if c in _QUERY_COLUMNS]
    if clash:
        raise BenchError(f"manifest column(s) {', '.join(map(repr, clash))} clash with the "
                         "benchmark's own result columns; rename them in the manifest")
    return columns


def _group_summary(queries, methods, usable, pipelines, columns) -> list[dict]:
    """:func:`_summary` over each value of each manifest column."""
    out = []
    for column in columns:
        for value in sorted({q[column] for q in queries}):
            subset = [q for q in queries if q[column] == value]
            for row in _summary(subset, methods, usable, pipelines):
                out.append({"group": column, "value": value, **row})
    return out


def check_settings(recipients: int, workers: int) -> int:
    """Check ``recipients`` (1..:data:`N_RECIPIENTS`) and ``workers`` (0: one per CPU core);
    returns the number of processes to use.

    Raises
    ------
    BenchError
        Either is out of range.
    """
    if not 1 <= recipients <= N_RECIPIENTS:
        raise BenchError(f"--recipients must be 1..{N_RECIPIENTS}, got {recipients}")
    if workers < 0:
        raise BenchError(f"--workers must be >= 0 (0: one per CPU core), got {workers}")
    return workers or os.cpu_count() or 1


def prepare_out(out: str | os.PathLike, say: Callable[[str], None] | None = None) -> Path:
    """Create the output folder and check that a file can be written in it, before the slow
    part (so that a run is not lost at the end); notes when an earlier run's results will be
    replaced.

    Raises
    ------
    BenchError
        ``out`` is a file, or the folder cannot be created or written.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".leaktrace-probe-"):
            pass
    except OSError as exc:
        raise BenchError(f"--out {out}: cannot write the results there "
                         f"({exc.strerror or exc})") from None
    if say and (out / "bench.json").exists():
        say(f"the results of an earlier run in {out} will be replaced")
    return out


def readable_films(films: Sequence[Path], say: Callable[[str], None]) -> tuple[list[Path], dict]:
    """The films that can be read and are large enough to mark; the others, each with the
    reason (also passed to ``say``), are left out of the run.

    Returns
    -------
    (list of Path, dict of str to str)
        The usable films, and ``{path: reason}`` for those left out.
    """
    usable, skipped = [], {}
    for path in films:
        try:
            source = load_source(path)
            rows, cols = source.stored.shape[:2]
            if min(rows, cols) < dwt.MIN_EMBED_EDGE:
                raise BenchError(f"{path}: {cols} x {rows} px is too small to carry a mark (at "
                                 f"least {dwt.MIN_EMBED_EDGE} px a side)")
        except Exception as exc:  # noqa: BLE001 - any unreadable file is left out, with why
            skipped[str(path)] = (str(exc) if isinstance(exc, LeaktraceError)
                                  else f"{path}: cannot read this film ({type(exc).__name__}: {exc})")
            say(f"skipping {skipped[str(path)]}")
            continue
        if source.colour:
            say(f"{path}: a colour image; its luma (ITU-R BT.601) is the film")
        usable.append(path)
    load_source.cache_clear()  # the workers read their films themselves
    return usable, skipped


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the workers), in seconds."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _median(values) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(statistics.median(values)) if values else None


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _method_summary(embeds: list[dict], queries: list[dict], methods: list[str]) -> list[dict]:
    out = []
    for m in methods:
        rows = [r for r in embeds if r["method"] == m and not r["error"]]
        marked = [q for q in queries if q["method"] == m and q["truth"] != ""
                  and not _stretch_or_sweep(q)]
        out.append({
            "method": m, "copies": len(rows),
            "failed_copies": sum(1 for r in embeds if r["method"] == m and r["error"]),
            "psnr_display_db_median": _median(r["psnr_display_db"] for r in rows),
            "psnr_display_db_min": min((r["psnr_display_db"] for r in rows
                                        if r["psnr_display_db"] is not None), default=None),
            "ssim_display_median": _median(r["ssim_display"] for r in rows),
            "psnr_stored_db_median": _median(r["psnr_stored_db"] for r in rows),
            "ssim_stored_median": _median(r["ssim_stored"] for r in rows),
            "embed_s_median": _median(r["embed_s"] for r in rows),
            "embed_cpu_s_median": _median(r["embed_cpu_s"] for r in rows),
            "embed_peak_mb_max": max((r["embed_peak_mb"] for r in rows
                                      if r["embed_peak_mb"] is not None), default=None),
            "detect_s_median": _median(q["detect_s"] for q in queries
                                       if q["method"] == m and q["truth"] != ""),
            "detect_cpu_s_median": _median(q["detect_cpu_s"] for q in queries
                                           if q["method"] == m and q["truth"] != ""),
            "detect_s_median_controls": _median(q["detect_s"] for q in queries
                                                if q["method"] == m and q["truth"] == ""),
            "detect_peak_mb_max": max((q["detect_peak_mb"] for q in queries if q["method"] == m
                                       and q["detect_peak_mb"] is not None), default=None),
            "right_rate_main_pipelines": _mean(q["right"] for q in marked),
        })
    return out


_SWEEP_NAMES = frozenset(_SWEEPS)


def _stretch_or_sweep(q: dict) -> bool:
    return bool(q["stretch"]) or q["pipeline"] in _SWEEP_NAMES or q["pipeline"] == "raw16_stored"


def _summary(queries: list[dict], methods: list[dict], usable: list[str],
             pipelines: list[BenchPipeline]) -> list[dict]:
    per_method = {m["method"]: m for m in methods}
    out = []
    for m in usable:
        for p in pipelines:
            rows = [q for q in queries if q["method"] == m and q["pipeline"] == p.name]
            if not rows:
                continue
            marked = [q for q in rows if q["truth"] != ""]
            controls = [q for q in rows if q["truth"] == ""]
            n = len(marked)
            out.append({
                "method": m, "pipeline": p.name, "family": p.family,
                "strength": p.strength if p.strength is not None else "", "unit": p.unit,
                "stretch": p.stretch, "queries": n,
                "right_rate": sum(q["right"] for q in marked) / n if n else None,
                "wrong_rate": sum(q["wrong"] for q in marked) / n if n else None,
                "bit_accuracy_mean": _mean(q["bit_accuracy"] for q in marked),
                "tpr_at_fpr_1e-6": sum(q["tp_at_fpr"] for q in marked) / n if n else None,
                "tpr_at_fpr_1e-3": sum(q["tp_at_fpr_1e-3"] for q in marked) / n if n else None,
                "controls": len(controls),
                "controls_named": sum(bool(q["named"]) for q in controls),
                "controls_at_fpr_1e-6": sum(q["any_at_fpr"] for q in controls),
                "controls_at_fpr_1e-3": sum(q["any_at_fpr_1e-3"] for q in controls),
                "errors": sum(bool(q["error"]) for q in rows),
                "psnr_display_db_median": per_method[m]["psnr_display_db_median"],
                "ssim_display_median": per_method[m]["ssim_display_median"],
                "psnr_stored_db_median": per_method[m]["psnr_stored_db_median"],
                "ssim_stored_median": per_method[m]["ssim_stored_median"],
                "embed_s_median": per_method[m]["embed_s_median"],
                "embed_peak_mb_max": per_method[m]["embed_peak_mb_max"],
                "detect_s_median": _median(q["detect_s"] for q in marked),
                "detect_cpu_s_median": _median(q["detect_cpu_s"] for q in marked),
                "detect_peak_mb_max": max((q["detect_peak_mb"] for q in rows
                                           if q["detect_peak_mb"] is not None), default=None),
            })
    return out


# -- files ---------------------------------------------------------------------------------

def _plain(value):
    """JSON/CSV-ready value: non-finite floats become None (PSNR of an unchanged image is inf)."""
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _csv_bytes(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows([{k: ("" if v is None else v) for k, v in _plain(r).items()} for r in rows])
    return buf.getvalue().encode()


def write_outputs(result: BenchResult, out: Path, *, plots: bool = True) -> list[Path]:
    """Write the CSVs, the JSON and (with matplotlib) the plots to ``out``; each file is
    written atomically. Returns the paths written.

    Raises
    ------
    BenchError
        ``out`` cannot be created or written.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        files = []
        for name, rows in (("bench_queries.csv", result.queries), ("bench_embeds.csv", result.embeds),
                           ("bench_summary.csv", result.summary),
                           ("bench_summary_by_group.csv", result.summary_by_group)):
            if not rows and name == "bench_summary_by_group.csv":
                (out / name).unlink(missing_ok=True)  # no manifest groups: no earlier run's file
                continue
            _write_atomic(out / name, _csv_bytes(rows))
            files.append(out / name)
        _write_atomic(out / "bench.json", json.dumps(_plain(result.meta), indent=2).encode())
        files.append(out / "bench.json")
        if plots:
            from functools import partial

            from .plots import plot_strength, plot_tpr, plot_tradeoff

            for name, draw in (("bench_strength.png", plot_strength),
                               ("bench_tpr_1e-6.png", partial(plot_tpr, fpr="1e-6")),
                               ("bench_tpr_1e-3.png", partial(plot_tpr, fpr="1e-3")),
                               ("bench_tradeoff.png", plot_tradeoff)):
                data = draw(result.summary, result.methods)
                if data is not None:
                    _write_atomic(out / name, data)
                    files.append(out / name)
                else:  # nothing to plot (no strength sweep): no earlier run's plot either
                    (out / name).unlink(missing_ok=True)
    except OSError as exc:
        raise BenchError(f"--out {out}: cannot write the results ({exc.strerror or exc})") from None
    return files


def quick_films(films: Sequence[Path], n: int = QUICK.films) -> list[Path]:
    """The ``n`` DICOM films with the fewest pixels (``--quick``), read from their headers."""
    import pydicom

    def pixels(path: Path) -> int:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            return int(ds.Rows) * int(ds.Columns)
        except Exception:  # noqa: BLE001 - an unreadable header sorts last; the run reports it
            return sys.maxsize

    dicom = [p for p in films if p.suffix.lower() == ".dcm"]
    return sorted(dicom, key=pixels)[:n] or list(films)[:n]


def format_table(result: BenchResult) -> str:
    """The summary as a plain-text table (one line per method x pipeline, then per method)."""
    lines = [f"{'method':30s} {'pipeline':42s} {'right':>6s} {'wrong':>6s} {'bits':>5s} "
             f"{'TPR@1e-6':>8s} {'ctrl FP':>7s} {'detect s':>8s}"]

    def pct(v):
        return "   -  " if v is None else f"{100 * v:5.1f}%"

    for s in result.summary:
        bits = "  -  " if s["bit_accuracy_mean"] is None else f"{s['bit_accuracy_mean']:.3f}"
        det = "-" if s["detect_s_median"] is None else f"{s['detect_s_median']:.2f}"
        lines.append(f"{s['method']:30s} {s['pipeline']:42s} {pct(s['right_rate'])} "
                     f"{pct(s['wrong_rate'])} {bits} {pct(s['tpr_at_fpr_1e-6']):>8s} "
                     f"{s['controls_named']:3d}/{s['controls']:<3d} {det:>8s}")
    lines.append("")
    lines.append(f"{'method':30s} {'PSNR disp':>9s} {'min':>6s} {'SSIM disp':>9s} {'PSNR stored':>11s} "
                 f"{'embed s':>8s} {'embed MB':>8s} {'detect s':>8s} {'right (main)':>12s}")

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    for m in result.methods:
        lines.append(f"{m['method']:30s} {num(m['psnr_display_db_median'], '9.1f'):>9s} "
                     f"{num(m['psnr_display_db_min'], '6.1f'):>6s} {num(m['ssim_display_median'], '9.4f'):>9s} "
                     f"{num(m['psnr_stored_db_median'], '11.1f'):>11s} {num(m['embed_s_median'], '8.2f'):>8s} "
                     f"{num(m['embed_peak_mb_max'], '8.0f'):>8s} {num(m['detect_s_median'], '8.2f'):>8s} "
                     f"{pct(m['right_rate_main_pipelines']):>12s}")
    return "\n".join(lines)
