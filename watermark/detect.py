"""Blind detection: does an image carry a mark, for which recipient, and how sure are we?

"Blind" means the original film is not needed: only the leaked image, the site key and the
list of recipient numbers (from the ledger) that could be named.

Hypotheses tried, each counted in the union bound of :mod:`watermark.stats`:

* the working grid: every long edge in :data:`watermark.dwt.WORKING_EDGES` up to 4 times the
  leak's long edge (the leak may have been resized, so its own size does not tell which grid
  the film was marked on; a grid more than 4 times larger would put even the coarsest period
  of the mark below 4 px of the leak, where nothing of it survives, so it is not tested);
* both polarities (a MONOCHROME1 film's leak may show display or stored polarity, a viewer may
  invert); inversion flips the sign of every soft bit, so a recipient is found by ``|z|``;
* every recipient number in the list.

A recipient is named only when its union-bound p-value is at most ``alpha`` (default 1e-6).
Independently, the soft bits are decoded through the Reed-Solomon code and CRC
(:func:`watermark.payload.decode`) without any list; a number found that way is reported as
``decoded_number`` with its own p-value (union over all 2**32 numbers), never as a name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import dwt, payload, stats
from .errors import CapacityError
from .keys import SiteKey

__all__ = ["Candidate", "Detection", "detect"]


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
        Number of hypotheses in the union bound (grids x polarities x recipients).
    long_edge, polarity : int
        Working grid and polarity of the best hypothesis (+1: display polarity as marked).
    decoded_number : int or None
        Recipient number read from the payload alone (Reed-Solomon + CRC), if any.
    decoded_p_value : float
        Its p-value with the union over all 2**32 recipient numbers and the hypotheses.
    candidates : list of Candidate
        Every listed recipient, best first.
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


def detect(image: np.ndarray, key: SiteKey, recipients: Sequence[int] = (), *,
           alpha: float = stats.FALSE_ACCUSATION_RATE) -> Detection:
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

    Returns
    -------
    Detection

    Raises
    ------
    CapacityError
        The image is smaller than ``watermark.dwt.MIN_DETECT_EDGE`` px on a side: too small
        to hold a detectable mark.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2 or min(image.shape) < dwt.MIN_DETECT_EDGE:
        raise CapacityError(
            f"image of {image.shape[1] if image.ndim > 1 else 0} x {image.shape[0]} px is too "
            f"small: a leaktrace mark needs at least {dwt.MIN_DETECT_EDGE} px on each side"
        )
    numbers = [int(n) for n in recipients]
    table = payload.codeword_table(numbers, key).astype(np.float64)
    edges = [e for e in dwt.WORKING_EDGES if e <= 4 * max(image.shape)] or [dwt.WORKING_EDGES[0]]
    n_hyp = 2 * len(edges)
    n_tests = n_hyp * max(len(numbers), 1)

    best_z, best_index, best_edge = 0.0, None, edges[-1]
    per_recipient = np.zeros(len(numbers))
    decoded, decoded_z = None, 0.0
    for edge in edges:
        soft = dwt.soft_bits(image, key, long_edge=edge)
        if numbers:
            z = stats.normalised_correlation(soft, table)
            per_recipient = np.maximum(per_recipient, np.abs(z))
            i = int(np.argmax(np.abs(z)))
            if abs(z[i]) > abs(best_z):
                best_z, best_index, best_edge = float(z[i]), i, edge
        for polarity in (1, -1):
            number = payload.decode(polarity * soft, key)
            if number is None:
                continue
            zd = float(stats.normalised_correlation(polarity * soft, payload.encode(number, key)))
            if zd > decoded_z:
                decoded, decoded_z = number, zd
                if not numbers:
                    best_edge = edge

    candidates = sorted(
        (Candidate(n, float(zr), float(stats.union_p_value(zr, n_tests)))
         for n, zr in zip(numbers, per_recipient)),
        key=lambda c: c.p_value,
    )
    p_best = float(stats.union_p_value(abs(best_z), n_tests)) if numbers else 1.0
    traced = best_index is not None and p_best <= alpha
    decoded_p = float(stats.union_p_value(decoded_z, n_hyp * 2**32)) if decoded is not None else 1.0
    return Detection(
        decision="traced" if traced else "not_found",
        recipient_number=numbers[best_index] if traced else None,
        p_value=p_best,
        z=best_z,
        n_tests=n_tests,
        long_edge=best_edge,
        polarity=1 if best_z >= 0 else -1,
        decoded_number=decoded,
        decoded_p_value=decoded_p,
        candidates=candidates,
    )


