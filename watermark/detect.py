"""Blind detection: does an image carry a mark, for which recipient, and how sure are we?

"Blind" means the original film is not needed: only the leaked image, the site key and the
list of recipient numbers (from the ledger) that could be named.

Hypotheses tried, each counted in the union bound of :mod:`watermark.stats`:

* the working grid: every long edge in :data:`watermark.dwt.WORKING_EDGES` up to 4 times the
  leak's long edge (the leak may have been resized, so its own size does not tell which grid
  the film was marked on; a grid more than 4 times larger would put even the coarsest period
  of the mark below 4 px of the leak, where nothing of it survives, so it is not tested);
* two readings of each grid: :func:`watermark.dwt.folded_subbands` (levels 2 and 3) and
  :func:`watermark.dwt.folded_coarse_robust` (level 3 only, signs weighted by activity, for
  small leaks after strong codecs where level 2 is gone);
* both polarities (a MONOCHROME1 film's leak may show display or stored polarity, a viewer may
  invert); inversion flips the sign of every soft bit, so a recipient is found by ``|z|``;
* every recipient number in the list.

Two families of hypotheses are tested, the first at ``0.9 * alpha`` and the second at
``0.1 * alpha`` (a weighted Bonferroni split; the second family is so large that a tenth of
alpha raises its threshold only from z = 8.3 to 8.5):

* **whole film** - the leak shows the whole film, in any size: the grids above, both
  polarities, both readings, every recipient;
* **geometric search** - only when the first family names nobody: the film may be cropped,
  framed by a viewer's UI, rotated, mirrored, turned by quarter turns or shown beside another
  film; :mod:`watermark.sync` estimates the lattice and searches every translation and
  flip (``N_DIHEDRAL * N_TRANSLATIONS`` positions for each of ``N_LATTICES`` lattice
  candidates), both polarities, every recipient. The candidates are searched best first and
  the search stops at the first lattice that names a recipient (the union bound still counts
  all of them); every recipient whose mark is found there is named (two films of two
  recipients in one screenshot give two names).

A recipient is named only when its union-bound p-value is at most ``alpha`` (default 1e-6).
Independently, the soft bits are decoded through the Reed-Solomon code and CRC
(:func:`watermark.payload.decode`) without any list; a number found that way is reported as
``decoded_number`` with its own p-value (union over all 2**32 numbers), never as a name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import dwt, payload, stats, sync
from .errors import CapacityError, InvalidInputError
from .keys import SiteKey

__all__ = ["Candidate", "Detection", "PreparedLeak", "detect", "detect_prepared", "N_LATTICES"]

N_LATTICES = sync.N_LATTICES  # lattice candidates searched in the geometric family
WHOLE_FILM_SHARE = 0.9  # share of alpha spent on the whole-film family


@dataclass(frozen=True)
class Candidate:
    """One recipient's test result. ``z`` is the normalised correlation, ``p_value`` corrected."""

    number: int
    z: float
    p_value: float


@dataclass(frozen=True)
class Detection:
    """Result of :func:`detect`.

    Attributes
    ----------
    decision : str
        ``"traced"`` when ``recipient_number`` is set, else ``"not_found"``.
    recipient_number : int or None
        The recipient whose mark is present, from the given list.
    p_value : float
        Union-bound probability that an image without this recipient's mark scores at least
        as high as the best candidate (over all hypotheses and recipients tested). With no
        candidates, 1.0.
    z : float
        Normalised correlation of the best candidate (the sign is the polarity found).
    n_tests : int
        Number of hypotheses in the union bound (grids x readings x polarities x recipients).
    long_edge, polarity : int
        Working grid and polarity of the best hypothesis (+1: display polarity as marked).
    decoded_number : int or None
        Recipient number read from the payload alone (Reed-Solomon + CRC), if any.
    decoded_p_value : float
        Its p-value with the union over all 2**32 recipient numbers and the hypotheses.
    candidates : list of Candidate
        Every listed recipient, best first.
    recipient_numbers : list of int
        Every recipient named (usually one; two films of two recipients in one leak give two).
    search : str
        ``"whole_film"`` or ``"geometric"``: the family in which the best result was found.
    geometry : dict
        For the geometric family: the lattice period (px), angle (degrees), flip/turn index and
        translation (working px) of the best position.
    soft_bits : (256,) float64 array or None
        The soft bits (coded bits before Reed-Solomon decoding, as read) of the best
        hypothesis: ``sign(polarity * soft_bits)`` against a recipient's codeword
        (:func:`watermark.payload.encode`) gives the raw bit accuracy.
    """

    decision: str
    recipient_number: int | None
    p_value: float
    z: float
    n_tests: int
    long_edge: int
    polarity: int
    decoded_number: int | None = None
    decoded_p_value: float = 1.0
    candidates: list = field(default_factory=list)
    recipient_numbers: list = field(default_factory=list)
    search: str = "whole_film"
    geometry: dict = field(default_factory=dict)
    soft_bits: np.ndarray | None = None


def detect(image: np.ndarray, key: SiteKey, recipients: Sequence[int] = (), *,
           alpha: float = stats.FALSE_ACCUSATION_RATE, all_lattices: bool = False) -> Detection:
    """Test an image for the marks of the listed recipients.

    Parameters
    ----------
    image : (rows, columns) array
        Grey values, any dtype, unit, gain, offset or polarity (a colour leak must be
        converted to luma first).
    key : SiteKey
    recipients : sequence of int
        Recipient numbers that may be named (normally every recipient in the ledger).
    alpha : float
        Largest p-value for which a recipient is named (false-accusation rate per query).
    all_lattices : bool
        Search every lattice candidate of the geometric family even after one has named a
        recipient (a second film shown at another scale or angle than the first). By default
        the search stops at the first lattice that names anyone: every film found on that
        lattice is still named (two copies side by side at one scale). Either way the union
        bound counts every candidate, so stopping early cannot raise the false-accusation
        rate.

    Returns
    -------
    Detection

    Raises
    ------
    CapacityError
        The image is smaller than ``watermark.dwt.MIN_DETECT_EDGE`` px on a side: too small
        to hold a detectable mark.
    """
    return detect_prepared(PreparedLeak(image, keep_lattices=False), key, recipients, alpha=alpha,
                           all_lattices=all_lattices)


class PreparedLeak:
    """The key-independent work of detection on one leak, done once and reused for any key.

    Parameters
    ----------
    image : (rows, columns) array
        As for :func:`detect`.
    keep_lattices : bool
        Keep each prepared lattice candidate for later keys (about 9 MB each); False for a
        single query, which then holds one at a time.

    Attributes
    ----------
    image : (rows, columns) array
        The leak's grey values: 8- or 16-bit integers, float32 or float64 (see
        :func:`_grey_values`).

    Raises
    ------
    CapacityError
        The image is smaller than ``watermark.dwt.MIN_DETECT_EDGE`` px on a side.
    """

    def __init__(self, image: np.ndarray, *, keep_lattices: bool = True):
        if np.ndim(image) != 2:
            raise InvalidInputError(
                f"detection wants a 2-D grey array (rows, columns), got shape "
                f"{np.shape(image)}: convert a colour image to luma first (as "
                "watermark.imageio.read_leak does for a file)")
        image = _grey_values(image)
        if image.ndim != 2 or min(image.shape) < dwt.MIN_DETECT_EDGE:
            raise CapacityError(
                f"image of {image.shape[1] if image.ndim > 1 else 0} x {image.shape[0]} px is too "
                f"small: a leaktrace mark needs at least {dwt.MIN_DETECT_EDGE} px on each side"
            )
        self.image = image
        edges = [e for e in dwt.WORKING_EDGES if e <= 4 * max(image.shape)] or [dwt.WORKING_EDGES[0]]
        # each grid read twice: dwt.folded_subbands, then the noise-robust folding of
        # dwt.folded_coarse_robust (small leaks after strong codecs); the leak is resampled
        # to each grid once for both readings
        plain, robust = [], []
        for e in edges:
            work = dwt._working_grid(image, e)
            plain.append((e, dwt._folded_subbands_of(work)))
            robust.append((e, dwt._folded_coarse_robust_of(work)))  # overwrites work
            del work
        self.whole = plain + robust
        self._candidates = None
        self._prepared = {}
        self._keep = keep_lattices

    @property
    def candidates(self) -> list:
        """Lattice candidates of the geometric search, at most ``N_LATTICES`` (computed on
        first use)."""
        if self._candidates is None:
            self._candidates = sync.lattice_candidates(self.image, n=N_LATTICES)
        return self._candidates

    def prepared(self, index: int) -> sync.PreparedLattice:
        """The prepared search data of candidate ``index`` (computed on first use, then kept)."""
        if index in self._prepared:
            return self._prepared[index]
        prepared = sync.prepare(self.image, self.candidates[index])
        if self._keep:
            self._prepared[index] = prepared
        return prepared

    @property
    def lattices(self) -> list:
        """Every prepared lattice candidate for the geometric search."""
        return [self.prepared(i) for i in range(len(self.candidates))]


def _grey_values(image) -> np.ndarray:
    """The leak as kept during detection (rows, columns): integers of at most 16 bits (8- and
    16-bit files) as they are, float32 as it is, any other dtype in float64.

    Every step reads it in float64 (a band or a crop at a time), so an 8-bit leak is held in
    one byte a pixel and its results are those of its float64 copy.
    """
    image = np.asarray(image)
    if (image.dtype.kind in "iu" and image.dtype.itemsize <= 2) or image.dtype == np.float32:
        return image
    return image.astype(np.float32 if image.dtype == np.bool_ else np.float64, copy=False)


def detect_prepared(leak: PreparedLeak, key: SiteKey, recipients: Sequence[int] = (), *,
                    alpha: float = stats.FALSE_ACCUSATION_RATE,
                    all_lattices: bool = False) -> Detection:
    """:func:`detect` on a :class:`PreparedLeak` (same result; the preparation is reused).

    ``alpha`` and ``all_lattices`` are as for :func:`detect`. Lattice candidates are prepared
    only when the geometric search reaches them (and kept if the leak keeps them).
    """
    numbers = [int(n) for n in recipients]
    table = payload.codeword_table(numbers, key).astype(np.float64)
    n_rec = max(len(numbers), 1)

    # family 1: the whole film, any size
    whole = [(dwt.soft_bits_from_folded(folded, key), {"working_grid_long_edge": e})
             for e, folded in leak.whole]
    n_whole = 2 * len(leak.whole)
    result = _evaluate(whole, numbers, table, key, n_tests=n_whole * n_rec, n_hyp=n_whole,
                       weight=1 / WHOLE_FILM_SHARE, alpha=alpha, search="whole_film")
    if result.decision == "traced":
        return result

    # family 2: geometric search (crop, margins, rotation, flips, several films). The union
    # bound counts every position of all N_LATTICES candidates, the most that can be searched,
    # fixed before the search starts: fewer are searched when the comb finds fewer, when a
    # lattice's harmonics are skipped once it has named a recipient (they would find the same
    # film again), and when the search stops early, so none of these can raise the rate of
    # false accusations. Candidates are prepared one at a time, best first (the comb's order:
    # each peak, then its double); the search stops after the first lattice that names a
    # recipient unless ``all_lattices``.
    n_geo = N_LATTICES * sync.N_DIHEDRAL * sync.N_TRANSLATIONS * 2
    weight = 1 / (1 - WHOLE_FILM_SHARE)
    z_named = stats.z_threshold(n_geo * n_rec, alpha / weight)
    hits, named_on = [], []
    for index, lattice in enumerate(leak.candidates):
        if any(sync.related_lattices(lattice, other) for other in named_on):
            continue
        found = sync.search(leak.prepared(index), key, table if len(numbers) else None)
        for hit in found:
            hits.append((hit.soft, {"lattice_period_px": lattice.period,
                                    "lattice_angle_deg": lattice.angle,
                                    "dihedral": hit.dihedral,
                                    "translation_working_px": list(hit.shift)}))
        if numbers and any(np.max(np.abs(stats.normalised_correlation(hit.soft, table))) >= z_named
                           for hit in found):
            named_on.append(lattice)
            if not all_lattices:
                break
    if not hits:
        return result
    geometric = _evaluate(hits, numbers, table, key, n_tests=n_geo * n_rec, n_hyp=n_geo,
                          weight=weight, alpha=alpha, search="geometric")
    if geometric.decision == "traced" or geometric.p_value < result.p_value:
        return geometric
    return result


def _evaluate(hypotheses, numbers, table, key, *, n_tests, n_hyp, weight, alpha, search,
              n_decode: int = 4) -> Detection:
    """Score every (soft bits, geometry) hypothesis against every recipient; decode payloads.

    The payload is decoded (Reed-Solomon + CRC, both polarities) for the ``n_decode``
    hypotheses with the most energetic soft bits only: decoding is the slow part, and a
    hypothesis that carries a mark has far more energy than one that does not.
    """
    energies = [float(np.sum(soft**2)) for soft, _ in hypotheses]
    to_decode = set(np.argsort(energies)[::-1][:n_decode].tolist())
    per_recipient = np.zeros(len(numbers))
    best_z, best_geometry, best_soft = 0.0, hypotheses[0][1], hypotheses[0][0]
    decoded, decoded_z = None, 0.0
    for index, (soft, geometry) in enumerate(hypotheses):
        if numbers:
            z = stats.normalised_correlation(soft, table)
            per_recipient = np.maximum(per_recipient, np.abs(z))
            i = int(np.argmax(np.abs(z)))
            if abs(z[i]) > abs(best_z):
                best_z, best_geometry, best_soft = float(z[i]), geometry, soft
        for polarity in ((1, -1) if index in to_decode else ()):
            number = payload.decode(polarity * soft, key)
            if number is None:
                continue
            zd = float(stats.normalised_correlation(polarity * soft, payload.encode(number, key)))
            if zd > decoded_z:
                decoded, decoded_z = number, zd
                if not numbers:
                    best_geometry, best_soft = geometry, soft

    def corrected(z: float, n: int) -> float:
        return float(min(1.0, weight * stats.union_p_value(z, n)))

    candidates = sorted((Candidate(n, float(zr), corrected(zr, n_tests))
                         for n, zr in zip(numbers, per_recipient)), key=lambda c: c.p_value)
    named = [c.number for c in candidates if c.p_value <= alpha]
    p_best = candidates[0].p_value if candidates else 1.0
    geometry = dict(best_geometry)
    long_edge = int(geometry.get("working_grid_long_edge", 0))
    return Detection(
        decision="traced" if named else "not_found",
        recipient_number=named[0] if named else None,
        p_value=p_best,
        z=best_z,
        n_tests=n_tests,
        long_edge=long_edge,
        polarity=1 if best_z >= 0 else -1,
        decoded_number=decoded,
        decoded_p_value=corrected(decoded_z, n_hyp * 2**32) if decoded is not None else 1.0,
        candidates=candidates,
        recipient_numbers=named,
        search=search,
        geometry=geometry,
        soft_bits=np.asarray(best_soft, dtype=np.float64),
    )
