"""Detection statistics: from soft bits to a p-value, with a union bound over everything tried.

The test
--------
For an image that does not carry the tested codeword, the soft bits ``y`` (see
:func:`watermark.dwt.soft_bits`) are independent and each symmetric about zero, because every
one is a sum of image values with signs drawn by the key. For a codeword ``c`` of +1/-1,
``S = sum(c * y)`` is then a Rademacher sum given the magnitudes ``|y|``, and Hoeffding's
inequality gives, whatever the image::

    P(S >= t) <= exp(-t**2 / (2 * sum(y**2)))

(Hoeffding, JASA 58(301), 1963, doi:10.1080/01621459.1963.10500830; used self-normalised as in
Efron, JASA 64(328), 1969, doi:10.1080/01621459.1969.10501056). With the normalised
correlation ``z = S / sqrt(sum(y**2))`` the one-sided p-value is at most ``exp(-z**2 / 2)``.
It holds for an unmarked film, a film marked under another key, and (because codewords are
keyed pseudo-random, see :mod:`watermark.payload`) a film marked for another recipient.

Every extra hypothesis tried (polarity, working grid, recipient) multiplies the chance of a
false hit; :func:`union_p_value` applies the Bonferroni (union) bound.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["FALSE_ACCUSATION_RATE", "normalised_correlation", "p_value_bound", "union_p_value",
           "z_threshold"]

FALSE_ACCUSATION_RATE = 1e-6
"""Designed false-accusation probability per query, over all recipients and hypotheses."""


def normalised_correlation(soft: np.ndarray, codewords: np.ndarray) -> np.ndarray:
    """``z`` of each codeword against soft bits.

    Parameters
    ----------
    soft : (n,) float array
    codewords : (n,) or (k, n) array of +1/-1

    Returns
    -------
    float64 array, shape ``codewords.shape[:-1]`` (a 0-d array for one codeword)
        ``sum(c * soft) / sqrt(sum(soft**2))``; 0 where ``soft`` is all zeros.
    """
    soft = np.asarray(soft, dtype=np.float64)
    norm = math.sqrt(float(soft @ soft))
    if norm == 0.0:
        return np.zeros(np.shape(codewords)[:-1])
    return (np.asarray(codewords, dtype=np.float64) @ soft) / norm


def p_value_bound(z) -> np.ndarray:
    """One-sided p-value bound ``exp(-z**2 / 2)`` for ``z > 0``, 1 otherwise (float64)."""
    z = np.asarray(z, dtype=np.float64)
    return np.where(z > 0, np.exp(-0.5 * np.maximum(z, 0.0) ** 2), 1.0)


def union_p_value(z, n_tests: int) -> np.ndarray:
    """Bonferroni-corrected p-value: ``min(1, n_tests * exp(-z**2 / 2))``.

    Computed in log space; a bound below the smallest normal float (2.2e-308) is reported as
    that float, which is still a valid upper bound, so a p-value is never exactly 0.
    """
    if n_tests < 1:
        raise ValueError(f"n_tests must be >= 1, got {n_tests}")
    z = np.asarray(z, dtype=np.float64)
    log_p = np.log(n_tests) - 0.5 * np.maximum(z, 0.0) ** 2
    p = np.maximum(np.exp(np.minimum(log_p, 0.0)), np.finfo(np.float64).tiny)
    return np.where(z > 0, p, 1.0)


def z_threshold(n_tests: int, alpha: float = FALSE_ACCUSATION_RATE) -> float:
    """Smallest ``z`` whose union-bound p-value is at most ``alpha``."""
    return math.sqrt(2.0 * math.log(n_tests / alpha))
