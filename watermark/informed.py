"""Informed detection: reading the mark with the original film at hand.

With the original, the film itself can be subtracted before looking for the mark, which
leaves the mark plus whatever the leak added (compression, resampling, sensor noise) instead
of the mark buried in anatomy (Cox, Kilian, Leighton & Shamoon, "Secure spread spectrum
watermarking for multimedia", IEEE TIP 6(12), 1997, doi:10.1109/83.650120, section IV).

Everything here works on the film's *working grid* (:func:`watermark.dwt.working_shape`),
where the mark was designed, with the leak already registered onto it
(:mod:`forensics.register`):

1. :func:`informed_residual` undoes the leak's unknown intensity mapping (window/level, VOI
   LUT, inversion, gamma, 8-bit quantisation) by regression of the original's display on the
   leak's grey values: the conditional mean of the original per leak grey level (a
   non-parametric fit that covers any monotone mapping, increasing or decreasing). Grey levels
   that gather very different original values (clipped by a narrow window, or saturated) are
   left out. The residual is the fitted leak minus the original.
2. :func:`informed_soft_bits` correlates the residual's DWT coefficients with the keyed
   pattern, each weighted by the embedding strength the original gives it and divided by the
   local residual power (a matched filter for additive noise of slowly varying power).
3. :func:`name_recipients` tests candidate codewords on those soft bits. It names the best
   candidate if its union-bound p-value is small enough, projects its codeword out of the soft
   bits, and repeats, so that copies averaged by colluders are each found and a named copy
   does not lift the score of the others (successive interference cancellation).

The soft bits keep the property :mod:`watermark.stats` relies on: for a codeword that was not
embedded, its correlation with them is a sum with key-chosen signs, so the Hoeffding bound
``exp(-z**2 / 2)`` still holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pywt
from scipy import ndimage

from . import dwt, stats
from .keys import SiteKey

__all__ = ["informed_residual", "informed_soft_bits", "name_recipients", "n_tests_for",
           "Named", "MAX_NAMED"]

MAX_NAMED = 4  # most recipients named in one leak (rounds of the successive test)
_MIN_BIN = 16  # fewest pixels for a grey level's conditional mean
_CLIPPED_SPREAD = 4.0  # a grey level whose originals spread this many times the median is clipped


def informed_residual(aligned: np.ndarray, original: np.ndarray, *, n_bins: int = 256
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The leak, mapped back to the original's grey levels, minus the original.

    Parameters
    ----------
    aligned : (rows, columns) float array
        The leak resampled into the original's frame (any grey scale or polarity); NaN where
        the leak does not cover the film.
    original : (rows, columns) float array
        The original's default display (grey levels 0..255) in the same frame.
    n_bins : int
        Grey-level bins of the leak (quantiles; fewer for an 8-bit leak with few levels).

    Returns
    -------
    residual : (rows, columns) float64
        In the original's display grey levels; 0 where unusable.
    usable : (rows, columns) bool
        Pixels that are inside the leak and in a grey level that is not clipped.

    Raises
    ------
    ValueError
        Shapes differ.
    """
    aligned = np.asarray(aligned, dtype=np.float64)
    original = np.asarray(original, dtype=np.float64)
    if aligned.shape != original.shape:
        raise ValueError(f"shapes differ: aligned {aligned.shape}, original {original.shape}")
    inside = np.isfinite(aligned)
    residual = np.zeros_like(original)
    if inside.sum() < _MIN_BIN * 4:
        return residual, np.zeros_like(inside)
    a, o = aligned[inside], original[inside]
    edges = np.unique(np.quantile(a, np.linspace(0.0, 1.0, n_bins + 1)))
    if len(edges) < 3:  # a flat leak
        return residual, np.zeros_like(inside)
    index = np.searchsorted(edges, a, side="right")
    del a
    index -= 1
    np.clip(index, 0, len(edges) - 2, out=index)
    count = np.bincount(index, minlength=len(edges) - 1).astype(np.float64)
    total = np.bincount(index, weights=o, minlength=len(edges) - 1)
    total2 = np.bincount(index, weights=o * o, minlength=len(edges) - 1)
    mean = total / np.maximum(count, 1.0)
    spread = np.sqrt(np.maximum(total2 / np.maximum(count, 1.0) - mean**2, 0.0))
    filled = count >= _MIN_BIN
    typical = float(np.median(spread[filled])) if filled.any() else 0.0
    good = filled & (spread <= _CLIPPED_SPREAD * max(typical, 0.5))
    keep = good[index]
    values = mean[index]
    values -= o
    values[~keep] = 0.0
    usable = np.zeros_like(inside)
    usable[inside] = keep
    residual[inside] = values
    return residual, usable


def informed_soft_bits(residual: np.ndarray, original: np.ndarray, key: SiteKey) -> np.ndarray:
    """Soft payload bits from an informed residual on the working grid.

    Parameters
    ----------
    residual : (rows, columns) float array
        From :func:`informed_residual`, on the film's working grid (shape
        ``watermark.dwt.working_shape(film_shape)``), display grey levels.
    original : (rows, columns) float array
        The original's default display on the same grid.
    key : SiteKey
        The key the film was marked with (scoped to the ledger).

    Returns
    -------
    (256,) float64
        One value per coded bit, as :func:`watermark.dwt.soft_bits` (same sign convention).
    """
    residual = np.asarray(residual, dtype=np.float64) * dwt.luminance_mask(original)
    coeffs_r = pywt.wavedec2(residual, dwt.WAVELET, mode=dwt.MODE, level=dwt.N_LEVELS)
    coeffs_o = pywt.wavedec2(np.asarray(original, dtype=np.float64), dwt.WAVELET,
                             mode=dwt.MODE, level=dwt.N_LEVELS)
    strengths = dwt.embedding_strength(coeffs_o)
    folded = {}
    for level in dwt.LEVELS:
        index = dwt.N_LEVELS + 1 - level
        bands_r, strength = coeffs_r[index], strengths[level]
        power = ndimage.uniform_filter(sum(b * b for b in bands_r) / 3.0, 9, mode="reflect")
        floor = max(float(np.median(power[power > 0])) * 0.05, 1e-9) if np.any(power > 0) else 1.0
        weight = strength / np.maximum(power, floor)
        t = dwt.TILE >> level
        folded[level] = np.stack([dwt.fold_tiles(weight * b, t) for b in bands_r])
    return dwt.soft_bits_from_folded(folded, key)


@dataclass(frozen=True)
class Named:
    """One candidate's result in :func:`name_recipients`.

    ``index`` is into the codewords given; ``z`` the normalised correlation in the round the
    candidate was last tested (named, or the last round); ``p_value`` corrected over all
    candidates and rounds; ``named`` whether its mark is present.
    """

    index: int
    z: float
    p_value: float
    named: bool


def n_tests_for(k: int, max_named: int = MAX_NAMED) -> int:
    """Tests :func:`name_recipients` counts in its union bound for ``k`` candidates:
    ``k`` per round, ``min(k, max_named)`` rounds (1 when there is no candidate)."""
    return max(1, k * min(k, max_named))


def name_recipients(soft: np.ndarray, codewords: np.ndarray, *,
                    alpha: float = stats.FALSE_ACCUSATION_RATE,
                    max_named: int = MAX_NAMED) -> tuple[list[Named], int]:
    """Which candidate codewords are present in the soft bits.

    Parameters
    ----------
    soft : (256,) float array
    codewords : (k, 256) array of +1/-1
        The candidates (the recipients who received this film).
    alpha : float
        Probability of naming any candidate whose codeword is not present (over all).
    max_named : int
        Rounds of the successive test (most candidates named).

    Returns
    -------
    results : list of Named
        One per candidate, named ones first (in the order named), then the rest by ``z``.
    n_tests : int
        ``k * min(k, max_named)``: every (candidate, round) pair that can be tested, the
        count in the union bound.

    Notes
    -----
    Round ``r`` tests every candidate not yet named on the soft bits with the codewords
    named so far projected out (least squares), and names the best one if its p-value,
    ``n_tests * exp(-z**2 / 2)`` (:func:`watermark.stats.union_p_value`), is at most
    ``alpha``. The test stops at the first round that names nobody.
    """
    soft = np.asarray(soft, dtype=np.float64)
    c = np.asarray(codewords, dtype=np.float64).reshape(-1, soft.size)
    k = len(c)
    if k == 0:
        return [], 1
    rounds = min(k, max_named)
    n_tests = n_tests_for(k, max_named)
    named: list[int] = []
    last_z = np.zeros(k)
    y = soft
    for _ in range(rounds):
        if named:
            basis = c[named].T  # (256, r)
            coef, *_ = np.linalg.lstsq(basis, soft, rcond=None)
            y = soft - basis @ coef
        z = stats.normalised_correlation(y, c)
        open_ = [i for i in range(k) if i not in named]
        for i in open_:
            last_z[i] = z[i]
        best = max(open_, key=lambda i: z[i])
        if float(stats.union_p_value(z[best], n_tests)) > alpha:
            break
        named.append(best)
        if len(named) == k:
            break
    p = stats.union_p_value(last_z, n_tests)
    rest = sorted((i for i in range(k) if i not in named), key=lambda i: -last_z[i])
    results = [Named(i, float(last_z[i]), float(p[i]), i in named) for i in named + rest]
    return results, n_tests
