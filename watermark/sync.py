"""Blind geometric resynchronisation for the tiled mark of :mod:`watermark.dwt`.

The mark repeats every 128 px of the working grid, in both directions. A leak that was
resized, cropped, framed by a viewer's UI, rotated by a small angle, mirrored or turned by 90
degrees still carries that periodic lattice, only scaled, rotated and shifted. The detector
recovers the geometry in two steps, both from the leak alone:

1. **Lattice (scale and angle).** A periodic pattern concentrates its energy on a lattice of
   spectral lines; the whitened power spectrum of the leak is sampled on the candidate lattice
   for every period (px) and angle, and the periods/angles whose lattice stands out are kept
   (:func:`lattice_candidates`). This is the self-reference of periodic watermarks (Kutter,
   Proc. SPIE 3528, 1999, doi:10.1117/12.337432), read in the magnitude spectrum as in
   Deguillaume, Voloshynovskiy & Pun, Proc. SPIE 4675, 2002, doi:10.1117/12.465313.
2. **Translation, mirror, quarter turns.** The leak is whitened (band-pass, local RMS, flat
   areas masked), resampled so that the period becomes 128 px again, and folded modulo 128 px
   into one tile (cropping and margins only shift the fold cyclically). A leak whose period
   is under 128 px is whitened at its own resolution, before it is upsampled; a larger one
   after it is reduced: whichever grid has fewer pixels. Every cyclic shift (all 128 x 128), every one of the 8 flips and
   quarter turns of the tile, is scored at once by FFT correlation of the tile's DWT subbands
   with the keyed bit patterns (:func:`fold_search`).

Each position tried is one more hypothesis for the union bound of :mod:`watermark.stats`;
:data:`N_TRANSLATIONS` and :data:`N_DIHEDRAL` say how many.

Coordinates: arrays are (row, column); angles are in degrees, counter-clockwise in the
displayed image (row axis pointing down), periods in leak pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pywt
import scipy.fft
from scipy import ndimage
from skimage.transform import AffineTransform, warp

from .dwt import LEVELS, MODE, N_LEVELS, TILE, WAVELET, _layout, block_reduce_to, soft_bits_from_folded
from .keys import SiteKey
from .payload import N_BITS

__all__ = ["Lattice", "SyncHit", "PreparedLattice", "lattice_candidates", "related_lattices", "prepare",
           "search", "fold_search", "N_TRANSLATIONS", "N_DIHEDRAL", "N_LATTICES", "MIN_PERIOD",
           "MAX_PERIOD"]

N_TRANSLATIONS = TILE * TILE
N_DIHEDRAL = 8
N_LATTICES = 17  # most lattice candidates (8 peaks, their doubles, a half), all in the union bound
MIN_PERIOD = 30.0  # leak px: below this the mark's finest periods are under 1 px of the leak
MAX_PERIOD = 320.0  # px of the spectrum image (leak reduced to _SPECTRUM_EDGE): 2.5x the grid
_BAND = (8.0, 32.0)  # lattice indices |k| covered by the mark (periods 16..4 working px)
# Parseval weights of the half-plane (16 x 9) spectrum: columns 0 and 8 count once, others twice
_HALF_WEIGHTS = np.tile(np.r_[1.0, np.full(7, 2.0), 1.0], 16)
_NMS_PX = 9  # two hits closer than this (working px, cyclic) are one peak
_SEARCH_BITS = 32  # bits used to score positions; the full 256 are used at the best ones
_SPECTRUM_EDGE = 1024  # the spectrum is computed on at most this many px per side
_COMB_BLOCK = 64  # periods per block in _comb (work arrays of 64 x 1508 points, 0.8 MB each)
_COMB_NYQUIST = 0.3  # cycles per px: higher lattice points (lost when a leak shrank the mark) are left out
_MAX_WORK = 1536  # the resampled leak is cut to its central 1536 x 1536 px (144 tiles) at most


@dataclass(frozen=True)
class Lattice:
    """A candidate geometry: ``period`` in leak px, ``angle`` in degrees, comb ``score`` (in
    standard deviations over an unmarked spectrum, see :func:`_comb`; 0 for a harmonic)."""

    period: float
    angle: float
    score: float


@dataclass(frozen=True)
class SyncHit:
    """A position found by :func:`fold_search`.

    ``soft`` is the (256,) float64 vector of soft bits there; ``energy`` the search score;
    ``dihedral`` 0..7 (k quarter turns, then a transpose if >= 4); ``shift`` (rows, cols) in
    working px.
    """

    soft: np.ndarray
    energy: float
    dihedral: int
    shift: tuple[int, int]
    lattice: Lattice


def _whitened_spectrum(image: np.ndarray) -> tuple[np.ndarray, float]:
    """Power spectrum divided by its local mean (fftshifted), and the resampling factor used.

    ``image`` (rows, columns) any real dtype; returns a (rows', columns') float64 array, the
    image's shape times the factor (at most :data:`_SPECTRUM_EDGE` px a side).
    """
    factor = min(1.0, _SPECTRUM_EDGE / max(image.shape))
    if factor < 1.0:
        target = (max(1, round(image.shape[0] * factor)), max(1, round(image.shape[1] * factor)))
        reduced = block_reduce_to(image, target, np.float64)
        zoom = factor * image.shape[0] / reduced.shape[0]
        image = _blur_zoom(reduced, 0.5 / zoom, zoom)
        del reduced
    g = _box_mean(image, 9)
    np.subtract(image, g, out=g)
    del image
    rows, cols = np.hanning(g.shape[0]), np.hanning(g.shape[1])
    for a in range(0, g.shape[0], _STRIP):
        g[a:a + _STRIP] *= np.outer(rows[a:a + _STRIP], cols)
    spectrum = np.empty(g.shape, dtype=np.complex128)
    spectrum.real = g
    spectrum.imag = 0.0
    del g
    np.fft.fft2(spectrum, out=spectrum)
    power = np.abs(spectrum)
    del spectrum
    np.square(power, out=power)
    power = np.fft.fftshift(power)
    local = _box_mean(power, 15, mode="wrap")
    local += 1e-12
    return np.divide(power, local, out=power), factor


def _blur_zoom(image: np.ndarray, sigma: float, zoom: float) -> np.ndarray:
    """``ndimage.zoom(ndimage.gaussian_filter(image, sigma), zoom, order=1)`` computed in
    float64 a band of output rows at a time: the same numbers, without an image-sized blurred
    copy (each band blurs only the leak rows it reads, with the filter's reach around them).

    ``image`` (rows, columns) any real dtype; returns (round(rows * zoom), round(columns *
    zoom)) float64.
    """
    out_shape = tuple(int(round(n * zoom)) for n in image.shape)
    r0, r1, wr0, wr1 = _linear_zoom_weights(image.shape[0], out_shape[0])
    c0, c1, wc0, wc1 = _linear_zoom_weights(image.shape[1], out_shape[1])
    reach = int(4.0 * sigma + 0.5)  # gaussian_filter's radius (truncate=4)
    out = np.empty(out_shape)
    for a in range(0, out_shape[0], _ZOOM_BAND):
        b = min(out_shape[0], a + _ZOOM_BAND)
        first, last = int(r0[a]), int(r1[b - 1]) + 1  # blurred rows read by the band
        lo, hi = max(0, first - reach), min(image.shape[0], last + reach)
        blurred = ndimage.gaussian_filter(image[lo:hi], sigma, output=np.float64)[first - lo:last - lo]
        top, bottom = blurred[r0[a:b] - first], blurred[r1[a:b] - first]
        # ndimage's order: sum over the 2 x 2 neighbours (column fastest) of value * w_row * w_col
        w_top, w_bottom = wr0[a:b, None], wr1[a:b, None]
        band = out[a:b]
        np.multiply(top[:, c0] * w_top, wc0, out=band)
        band += top[:, c1] * w_top * wc1
        band += bottom[:, c0] * w_bottom * wc0
        band += bottom[:, c1] * w_bottom * wc1
    return out


_ZOOM_BAND = 64  # output rows per band in _blur_zoom


def _linear_zoom_weights(n_in: int, n_out: int):
    """Per output index along one axis, the two input indices read by ``ndimage.zoom(order=1,
    grid_mode=False)`` and their weights, computed as ndimage does (the second weight is
    ``1 - first``; a neighbour past the last pixel has weight 0 and reads the last one)."""
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 1.0
    coord = np.arange(n_out, dtype=np.float64) * scale
    first = np.floor(coord)
    w0 = 1.0 - (coord - first)
    i0 = np.minimum(first.astype(np.intp), n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), w0, 1.0 - w0


@lru_cache(maxsize=1)
def _lattice_points() -> np.ndarray:
    k = np.arange(-int(_BAND[1]), int(_BAND[1]) + 1)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    radius = np.hypot(ky, kx)
    half = (kx > 0) | ((kx == 0) & (ky > 0))  # the spectrum is symmetric: one half plane
    keep = (radius >= _BAND[0]) & (radius <= _BAND[1]) & half
    return np.stack([ky[keep], kx[keep]], axis=1).astype(np.float64)


def _comb(spectrum: np.ndarray, periods: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Comb score of the lattice for each (period, angle): shape (len(periods), len(angles)).

    The score is the excess of the mean whitened power over its value without a lattice (1),
    in standard deviations of that mean: ``(mean - 1) * sqrt(count)`` for the ``count``
    lattice points under :data:`_COMB_NYQUIST` (whitened power is about exponential, mean
    and standard deviation 1, where there is no lattice). Ranking by the mean instead would
    favour the small periods, whose few points inside the band give the noisiest means.
    A (period, angle) whose lattice has fewer than 50 points inside the spectrum scores 0.
    Periods are taken in blocks of :data:`_COMB_BLOCK`, so that the work arrays stay small
    while each numpy call does enough work to amortise its overhead (blocks of 64 periods
    made the coarse comb of a 1080p screenshot about a fifth faster than blocks of 8, with
    the same scores bit for bit); a block whose lattices lie wholly inside the spectrum skips
    the masking.
    """
    rows, cols = spectrum.shape
    flat = spectrum.ravel()
    points = _lattice_points()
    n_points = len(points)
    periods = np.asarray(periods, dtype=np.float64)
    out = np.zeros((len(periods), len(angles)))
    size = min(_COMB_BLOCK, len(periods)) * n_points
    work = np.empty(size)
    spare = np.empty(size)
    index = np.empty(size, dtype=np.intp)
    for j, angle in enumerate(np.deg2rad(angles)):
        c, s = np.cos(angle), np.sin(angle)
        # rotate the lattice counter-clockwise in the displayed image (row axis down)
        fy = points[:, 0] * c - points[:, 1] * s
        fx = points[:, 0] * s + points[:, 1] * c
        extent = np.maximum(np.abs(fy), np.abs(fx))
        widest = extent.max()
        for start in range(0, len(periods), _COMB_BLOCK):
            block = periods[start:start + _COMB_BLOCK, None]
            shape = (len(block), n_points)
            inside = bool(widest / block.min() < _COMB_NYQUIST)  # every point of every lattice
            if not inside:
                # a point is inside when |fy| / period and |fx| / period (cycles per px) < _COMB_NYQUIST
                ok = extent / block < _COMB_NYQUIST  # (block, points)
                count = ok.sum(axis=1)
                if not np.any(count >= 50):
                    continue
            w = work[:shape[0] * n_points].reshape(shape)
            wx = spare[:w.size].reshape(shape)
            iy = index[:w.size].reshape(shape)
            # flat index (row + rows // 2) * cols + column + cols // 2, in float64: every
            # term is an integer far below 2**53, so the sums are exact
            np.divide(fy, block, out=w)
            w *= rows
            np.rint(w, out=w)
            w *= cols
            np.divide(fx, block, out=wx)
            wx *= cols
            np.rint(wx, out=wx)
            w += wx
            w += (rows // 2) * cols + cols // 2
            iy[...] = w
            if inside:
                np.take(flat, iy, out=w)
                out[start:start + len(block), j] = (w.sum(axis=1) / n_points - 1.0) * np.sqrt(n_points)
                continue
            np.putmask(iy, ~ok, 0)  # outside points read any value, then get weight 0
            np.take(flat, iy, out=w)
            w *= ok
            total = w.sum(axis=1)
            keep = count >= 50
            out[start:start + len(block), j][keep] = ((total[keep] / count[keep] - 1.0)
                                                      * np.sqrt(count[keep]))
    return out


# Coarse comb grid. A lattice point at radius R spectrum bins moves R * d bins when the period
# is off by a relative d and R * theta bins when the angle is off by theta radians; points
# reach R ~ 150 bins under _COMB_NYQUIST, and a point more than about one bin off no longer
# adds its peak. Half a step of 0.0075 in log period (0.56 bins) and of 0.6 degrees (0.79
# bins) keep every lattice within a bin of a grid node. With 1-degree steps (and 0.006) a
# rotation of 0.5 or 1.5 degrees fell 1.3 bins off and was missed blind while 1 and 2 degrees
# were found (NIH film, 11 angles from 0.5 to 14.5 degrees: 5/11 found, now 11/11; the
# 440 px Fuji film, whose weak mark scores near the comb's noise: 6/11, now 9/11). The comb
# costs about a third more.
_COARSE_LOG_PERIOD_STEP = 0.0075
_COARSE_ANGLE_STEP = 0.6  # degrees


def _coarse_angles(max_angle: float) -> np.ndarray:
    """Coarse angles in degrees, symmetric about and including 0, covering +-max_angle."""
    k = int(np.ceil(max_angle / _COARSE_ANGLE_STEP - 1e-9))
    return np.arange(-k, k + 1) * _COARSE_ANGLE_STEP


def lattice_candidates(image: np.ndarray, *, max_angle: float = 15.0,
                       n: int = N_LATTICES) -> list[Lattice]:
    """Candidate (period, angle) of the mark's lattice in a leak, best first.

    Parameters
    ----------
    image : (rows, columns) array
        Grey values, any scale or polarity.
    max_angle : float
        Largest rotation searched, degrees (both directions). Quarter turns and mirrors do
        not change the lattice; :func:`fold_search` resolves them.
    n : int
        Most candidates returned: the ``(n - 1) // 2`` best peaks of the comb, each followed
        by its double period (a lattice also scores at half its period), then the best
        peak's half period, without duplicates and within the searchable range. Every one
        may be the right one: a weak mark's lattice often scores below the best peaks of an
        unmarked leak's spectrum, so candidates are not pruned by score. With the noise-
        capped mark of :mod:`watermark.dwt`, three peaks missed the lattice of 10 of 18
        messenger screenshots in the robustness benchmark; eight missed none.

    Returns
    -------
    list of Lattice
        Periods in px of ``image``, angles in degrees. A harmonic (double or half period of a
        peak) has score 0: it was not measured.
    """
    spectrum, factor = _whitened_spectrum(np.asarray(image))
    # search range in px of the (possibly reduced) spectrum image: a leak larger than
    # _SPECTRUM_EDGE is searched for proportionally larger periods too
    hi = min(MAX_PERIOD, min(spectrum.shape) / 1.5)
    lo = max(MIN_PERIOD * factor, 16.0)
    if hi <= lo:
        return []
    periods = np.exp(np.arange(np.log(lo), np.log(hi), _COARSE_LOG_PERIOD_STEP))
    angles = _coarse_angles(max_angle)
    coarse = _comb(spectrum, periods, angles)
    peaks: list[Lattice] = []
    for index in np.argsort(coarse, axis=None)[::-1]:
        i, j = np.unravel_index(index, coarse.shape)
        p, a = periods[i], angles[j]
        if any(_same_lattice(p / factor, a, f) for f in peaks):
            continue
        fine_p = p * np.exp(np.arange(-0.009, 0.0091, 0.0015))
        fine_a = a + np.arange(-0.75, 0.76, 0.25)
        fine = _comb(spectrum, fine_p, fine_a)
        fi, fj = np.unravel_index(np.argmax(fine), fine.shape)
        peaks.append(Lattice(float(fine_p[fi] / factor), float(fine_a[fj]), float(fine[fi, fj])))
        if len(peaks) >= max(1, (n - 1) // 2):
            break
    # a lattice also scores at half its period (its even points): try each peak's double
    options = [lat for peak in peaks for lat in (peak, _harmonic(peak, 2.0))]
    options += [_harmonic(peaks[0], 0.5)] if peaks else []
    inside = [lat for lat in options if lo <= lat.period * factor <= hi]
    return _distinct(inside)[:n]


def _distinct(options: list[Lattice]) -> list[Lattice]:
    """``options`` in order without repeats (:func:`_same_lattice`); a measured peak (score
    > 0) takes the place of an earlier harmonic (score 0) that it resembles.

    The double of a (63.0 px, 2.4 degree) peak had taken the place of the measured (128.0 px,
    1.45 degree) lattice of an NIH film rotated by 1.5 degrees, and the search at the
    harmonic's angle, 0.95 degrees off, missed the mark (p = 1).
    """
    found: list[Lattice] = []
    for lat in options:
        same = next((k for k, f in enumerate(found) if _same_lattice(lat.period, lat.angle, f)), None)
        if same is None:
            found.append(lat)
        elif found[same].score == 0.0 and lat.score > 0.0:
            found[same] = lat
    return found


def related_lattices(a: Lattice, b: Lattice) -> bool:
    """Whether two candidates are one lattice seen at different harmonics.

    True when the angles are within 2.5 degrees and the period ratio is within 3 % of
    ``m / k`` with ``m, k`` in 1..4 (the comb also scores a lattice at a half or a third of
    its period; the candidate list adds doubles and halves). The detector stops searching a
    lattice's harmonics once it has named a recipient on it.
    """
    if abs(a.angle - b.angle) >= 2.5:
        return False
    ratio = np.log(a.period / b.period)
    return any(abs(ratio - np.log(m / k)) < 0.03 for m in range(1, 5) for k in range(1, 5))


def _same_lattice(period: float, angle: float, other: Lattice) -> bool:
    """Within 3 % in period and 2.5 degrees in angle of ``other``: one candidate, not two."""
    return abs(np.log(period / other.period)) < 0.03 and abs(angle - other.angle) < 2.5


def _harmonic(lattice: Lattice, ratio: float) -> Lattice:
    return Lattice(lattice.period * ratio, lattice.angle, 0.0)


def _polyphase(bands_by_level: dict) -> np.ndarray:
    """Stack subband tiles on the 16 x 16 level-3 grid: (..., 15, 16, 16).

    Level 3's three (16, 16) subbands are kept; each of level 2's three (32, 32) subbands is
    split into its four polyphase components ``x[i::2, j::2]``, since a level-3 shift of
    ``(a, b)`` is a level-2 shift of ``(2a, 2b)``: the level-2 correlation at even shifts is the
    sum of the four components' correlations.
    """
    parts = []
    for level in LEVELS:
        x = bands_by_level[level]
        step = 1 << (max(LEVELS) - level)
        for i in range(step):
            for j in range(step):
                parts.append(x[..., i::step, j::step])
    return np.concatenate(parts, axis=-3)


_BITS_PER_BLOCK = 16  # bits transformed at a time in _search_filters


def _bit_spectra(key: SiteKey, bits: np.ndarray) -> np.ndarray:
    """Conjugate FFTs of the signed slot patterns of ``bits`` (indices into the 256 coded
    bits) on the level-3 grid: (144 frequencies, 15 components, len(bits)) complex128 (the
    half plane of a real 16 x 16 transform), laid out for a batched matrix product over
    frequencies."""
    layout = _layout(key)
    bits = np.asarray(bits)
    masks = {}
    for level in LEVELS:
        t = TILE >> level
        m = np.zeros((len(bits), 3, t, t))
        for o in range(3):
            owner = np.searchsorted(bits, layout.bits[level][o])  # bits is sorted
            inside = (owner < len(bits)) & (bits[np.minimum(owner, len(bits) - 1)] == layout.bits[level][o])
            m[owner[inside], o, *np.nonzero(inside)] = layout.signs[level][o][inside]
        masks[level] = m
    spectra = np.conj(np.fft.rfft2(_polyphase(masks)))  # (bits, 15, 16, 9)
    return np.ascontiguousarray(spectra.reshape(len(bits), spectra.shape[1], -1).transpose(2, 1, 0))


@lru_cache(maxsize=8)
def _search_filters(key: SiteKey, codes: bytes | None, n_codewords: int) -> np.ndarray:
    """The filters :func:`search` correlates with: (144 frequencies, 15 components, k)
    complex64, single precision like the phase spectra they meet.

    With ``codes`` (the recipients' codewords, ``np.packbits(codewords < 0, axis=1)``, k =
    ``n_codewords``), each recipient's matched filter: the sum of the bit patterns' spectra
    signed by its codeword. Without, the spectra of the first :data:`_SEARCH_BITS` bits. The
    bits are transformed :data:`_BITS_PER_BLOCK` at a time, so that no table of all 256 bits'
    spectra (8.8 MB) is made or kept.
    """
    if codes is None:
        return _bit_spectra(key, np.arange(_SEARCH_BITS)).astype(np.complex64)
    signs = np.unpackbits(np.frombuffer(codes, dtype=np.uint8)).reshape(n_codewords, -1)[:, :N_BITS]
    codewords = 1.0 - 2.0 * signs
    filters = None
    for first in range(0, N_BITS, _BITS_PER_BLOCK):
        bits = np.arange(first, min(N_BITS, first + _BITS_PER_BLOCK))
        part = _bit_spectra(key, bits) @ codewords[:, bits].T
        filters = part if filters is None else filters + part
    return filters.astype(np.complex64)


def _working_geometry(shape: tuple[int, int], lattice: Lattice,
                      zoom: float | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """The working grid of a lattice: the 3 x 3 matrix mapping a working pixel (x, y) to the
    leak's (x, y), and the grid's shape (at most ``_MAX_WORK`` px a side, centred).

    ``zoom`` is working px per px of the (possibly block-reduced) ``shape``; by default
    ``TILE / lattice.period``.
    """
    zoom = TILE / lattice.period if zoom is None else zoom
    rows, cols = shape
    out_shape = (min(_MAX_WORK, max(1, int(np.ceil(rows * zoom)))),
                 min(_MAX_WORK, max(1, int(np.ceil(cols * zoom)))))
    # output (x, y) -> input (x, y): undo the rotation about the centre, then scale
    centre_out = np.array([out_shape[1], out_shape[0]]) / 2.0
    centre_in = np.array([cols, rows]) / 2.0
    to_origin = AffineTransform(translation=-centre_out)
    rot_scale = AffineTransform(scale=1.0 / zoom, rotation=-np.deg2rad(lattice.angle))
    back = AffineTransform(translation=centre_in)
    return back.params @ rot_scale.params @ to_origin.params, out_shape


def _to_working(image: np.ndarray, lattice: Lattice) -> np.ndarray:
    """Resample and rotate so that the lattice period becomes TILE px and the angle 0.

    Pixels that fall outside the leak are NaN. At most the central ``_MAX_WORK`` px a side are
    kept (enough tiles for any leak the mark survives in; bounds time and memory). ``image``
    (rows, columns) any real dtype; returns the working grid, float64. Without rotation, the
    antialiasing blur is made band by band as the grid reads the leak (:class:`_BlurredRows`).
    """
    zoom = TILE / lattice.period
    if zoom < 0.5:  # a very large leak: average blocks first (cheap antialiasing)
        target = (max(1, round(image.shape[0] * zoom)), max(1, round(image.shape[1] * zoom)))
        reduced = block_reduce_to(image, target, np.float64)
        zoom *= image.shape[0] / reduced.shape[0]
        image = reduced
    matrix, out_shape = _working_geometry(image.shape, lattice, zoom)
    if zoom < 1.0 and matrix[0, 1] == 0 and matrix[1, 0] == 0:
        image = _BlurredRows(image, 0.5 / zoom)
    elif zoom < 1.0:
        image = ndimage.gaussian_filter(image, 0.5 / zoom, output=np.float64)
    else:
        image = np.asarray(image, dtype=np.float64)
    return _gather(_resample_chunks(image, matrix, out_shape), out_shape)


class _BlurredRows:
    """``ndimage.gaussian_filter(image, sigma)`` in float64, as :func:`_scale_bilinear_chunks`
    reads it (``shape``, ``min()``, ``max()`` and rows by sorted indices), never held whole.

    Each read blurs only the rows asked for, with the filter's reach of rows around them: the
    same numbers as the whole blurred image. ``min()`` and ``max()`` (the range the resampled
    grid is clipped to) are the leak's own: a gaussian's weights are positive and sum to one,
    so the blurred leak lies within it, and a bilinear value within its neighbours' range.
    Clipping to it instead of to the blurred image's range (which needed a blur of the whole
    leak first, about a third of the resampling's time) changes a value only where rounding
    took it past the blurred range, by a few units in the last place.
    """

    def __init__(self, image: np.ndarray, sigma: float):
        self.image, self.sigma, self.shape = image, sigma, image.shape
        self.reach = int(4.0 * sigma + 0.5)  # gaussian_filter's radius (truncate=4)
        self._range = (float(image.min()), float(image.max()))

    def _rows(self, a: int, b: int) -> np.ndarray:
        lo, hi = max(0, a - self.reach), min(self.shape[0], b + self.reach)
        return ndimage.gaussian_filter(self.image[lo:hi], self.sigma, output=np.float64)[a - lo:b - lo]

    def min(self) -> float:
        return self._range[0]

    def max(self) -> float:
        return self._range[1]

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        if len(rows) == 0:
            return np.empty((0, self.shape[1]))
        return self._rows(int(rows[0]), int(rows[-1]) + 1)[rows - rows[0]]


def _gather(chunks, shape: tuple[int, int]) -> np.ndarray:
    """Write ``(first row, rows)`` blocks into one array of ``shape`` (float64)."""
    out = np.empty(shape)
    for a, rows in chunks:
        out[a:a + rows.shape[0]] = rows
    return out


def _resample_chunks(image: np.ndarray, matrix: np.ndarray, out_shape: tuple[int, int]):
    """The working grid ``matrix`` maps onto ``image``, bilinear, NaN beyond the image, as
    ``(first row, rows)`` float64 blocks (``_SCALE_CHUNK`` rows without rotation,
    ``_WARP_CHUNK`` with; none crosses a multiple of TILE rows): scikit-image's
    ``warp(order=1, mode="constant", cval=NaN, preserve_range=True)``
    (:func:`_scale_bilinear_chunks` without rotation), one block at a time so that the whole grid need not be held. Computed
    in float64 whatever the image's dtype (scikit-image would warp float32 in float32).
    """
    if matrix[0, 1] == 0 and matrix[1, 0] == 0:  # no rotation
        yield from _scale_bilinear_chunks(image, matrix, out_shape)
        return
    image = np.asarray(image, dtype=np.float64)
    for a in range(0, out_shape[0], _WARP_CHUNK):
        b = min(out_shape[0], a + _WARP_CHUNK)
        shifted = matrix @ AffineTransform(translation=(0, a)).params
        yield a, warp(image, AffineTransform(matrix=shifted), output_shape=(b - a, out_shape[1]),
                      order=1, mode="constant", cval=np.nan, preserve_range=True)


_WARP_CHUNK = TILE  # output rows per warped block (rotation): each folds onto the whole tile
_SCALE_CHUNK = TILE // 2  # output rows per block of _scale_bilinear_chunks: half the tile


def _scale_bilinear_chunks(image: np.ndarray, matrix: np.ndarray, out_shape: tuple[int, int]):
    """``skimage.transform.warp(image, matrix, order=1, mode="constant", cval=NaN,
    preserve_range=True)`` for a matrix without rotation or shear, as ``(first row, rows)``
    blocks of ``_SCALE_CHUNK`` rows: the same numbers, by separable interpolation (about 1.5
    times faster), each block reading about ``_SCALE_CHUNK / zoom`` rows of the leak, held in
    float64 while it is made.

    As in scikit-image, a pixel maps to (r, c) = (m11 y + m12, m00 x + m02) of the leak and
    takes ``(1 - dr) * top + dr * bottom`` with ``top = (1 - dc) * image[floor r, floor c] +
    dc * image[floor r, ceil c]`` (likewise ``bottom`` on row ``ceil r``), any neighbour
    outside the leak being NaN; then the result is clipped to the leak's range. Here the
    interpolation along rows is done once for each leak row that is read, then combined.
    """
    rows, cols = image.shape
    out_r, out_c = out_shape
    c = matrix[0, 0] * np.arange(out_c, dtype=np.float64) + matrix[0, 2]
    r = matrix[1, 1] * np.arange(out_r, dtype=np.float64) + matrix[1, 2]
    min_c, max_c = np.floor(c), np.ceil(c)
    dc = c - min_c
    min_r, max_r = np.floor(r), np.ceil(r)
    dr = r - min_r
    # column indices into each leak row padded with one NaN either side
    col0 = (np.clip(min_c, -1, cols) + 1).astype(np.intp)
    col1 = (np.clip(max_c, -1, cols) + 1).astype(np.intp)
    lo, hi = image.min(), image.max()
    for a in range(0, out_r, _SCALE_CHUNK):
        b = min(out_r, a + _SCALE_CHUNK)
        row0 = np.clip(min_r[a:b], -1, rows).astype(np.intp)
        row1 = np.clip(max_r[a:b], -1, rows).astype(np.intp)
        read = np.unique(np.concatenate([row0, row1]))  # leak rows read by this block
        source = np.full((len(read), cols + 2), np.nan)
        inside = (read >= 0) & (read < rows)
        source[inside, 1:-1] = image[read[inside]]
        along = (1 - dc) * source[:, col0]
        along += dc * source[:, col1]
        out = along[np.searchsorted(read, row0)]
        out *= (1 - dr[a:b])[:, None]
        bottom = along[np.searchsorted(read, row1)]
        bottom *= dr[a:b, None]
        out += bottom
        # scikit-image's clip to the input range (NaN stays NaN)
        np.clip(out, lo, hi, out=out)
        yield a, out


# whitening filters, in working px (the lattice period is TILE px): local standard deviation
# (flat-area test), erosion of the mask, band-pass box, local RMS box
_FILTERS = (7, 8, 13, 17)


def _scaled_filters(scale: float) -> tuple[int, int, int, int]:
    """:data:`_FILTERS` in px of a leak whose lattice period is ``scale * TILE`` px: odd boxes
    of at least 3 px, at least 1 px of erosion."""
    def odd(x: float) -> int:
        return max(3, 2 * int(round((x - 1) / 2)) + 1)

    flat, edge, band, rms = _FILTERS
    return odd(flat * scale), max(1, int(round(edge * scale))), odd(band * scale), odd(rms * scale)


def _whiten(work: np.ndarray, filters: tuple[int, int, int, int] = _FILTERS) -> np.ndarray:
    """Band-pass and normalise by local RMS; zero outside the film.

    "Outside" is NaN (beyond the leak) or flat (a viewer's black pane, UI bars, collimation):
    local standard deviation under 0.5 grey level. Both are widened by ``filters[1]`` px (8 on
    the working grid) so that the hard edge between film and background, which folds into a
    strong straight line, is left out. Box filters keep this linear in the number of pixels.

    The detector runs :func:`_whiten_strips` (the same numbers, strip by strip, with less
    memory); this whole-image form is the reference the tests compare it with.
    """
    flat, edge, band_box, rms_box = filters
    valid = np.isfinite(work)
    all_valid = bool(valid.all())
    filled = work if all_valid else np.where(valid, work, np.nanmean(work) if valid.any() else 0.0)
    var = _box_mean(filled * filled, flat)
    mean = _box_mean(filled, flat)
    var -= np.square(mean, out=mean)
    valid &= var > 0.25  # local standard deviation above 0.5
    del mean, var
    valid = _erode(valid, edge)
    band = filled - _box_mean(filled, band_box)
    local = _box_mean(band * band, rms_box)
    np.maximum(local, 0.0, out=local)
    np.sqrt(local, out=local)
    floor = max(float(np.median(local[valid])) * 0.05, 1e-9) if valid.any() else 1.0
    np.maximum(local, floor, out=local)
    white = np.divide(band, local, out=band)
    np.clip(white, -2.0, 2.0, out=white)
    white[~valid] = 0.0
    return white


_STRIP = 128  # rows per strip in _whiten_strips


def _whiten_strips(work: np.ndarray, filters: tuple[int, int, int, int] = _FILTERS) -> np.ndarray:
    """``_whiten(work, filters)``, computed strip by strip in ``work`` (overwritten, and
    returned): (rows, columns) float64 or float32.

    The same filters, mask and floor as :func:`_whiten` (equal within rounding, about 1e-12
    relative at most for float64 ``work``; a float32 ``work`` stores the band and the result
    rounded to float32, about 1e-7 relative, computing each strip in float64), with far less
    memory: every filter is local, so each strip of
    :data:`_STRIP` rows is filtered with the few rows around it that its boxes reach, and
    only ``work`` (NaN filled, then the band-pass, then the result) and the mask are
    image-sized. The floor needs the median of the local RMS over the whole film: the RMS of
    the film's pixels is gathered for it (not kept per pixel), and computed again, strip by
    strip, for the division, from the same band values (each strip keeps the rows of band it
    computed beyond its own, which differ from its neighbours' in the last bits). The median
    is taken of their float32 roundings (the floor within 1e-7 relative, at half the memory).
    """
    flat, edge, band_box, rms_box = filters
    n = work.shape[0]
    valid = np.isfinite(work)
    if not valid.all():
        np.copyto(work, np.nanmean(work) if valid.any() else 0.0, where=~valid)
    # local standard deviation above 0.5
    for a, b, lo, hi in _strips(n, flat // 2):
        block = work[lo:hi]
        var = np.square(block, dtype=np.float64)
        var = _box_mean(var, flat, out=var)
        mean = _box_mean(block, flat)
        var -= np.square(mean, out=mean)
        valid[a:b] &= var[a - lo:b - lo] > 0.25
        del var, mean
    valid = _erode(valid, edge)
    # band-pass and its local RMS: each strip's band overwrites its rows of `work` at once; the
    # rows the next strip reads above itself are kept as they were and put back while it reads
    # them (strips are longer than those rows)
    halo = band_box // 2 + rms_box // 2
    assert halo < _STRIP // 2
    strips = list(_strips(n, halo))
    film_rms = np.empty(int(np.count_nonzero(valid)), dtype=np.float32)  # for the median only
    filled = 0
    margins = []  # per strip, its band's rows above and below its own
    above = None  # rows lo:a of the current strip as they were before they held band
    for a, b, lo, hi in strips:
        if above is not None:
            held = work[lo:a].copy()
            work[lo:a] = above
        block = work[lo:hi]
        band = _box_mean(block, band_box)
        np.subtract(block, band, out=band)
        if above is not None:
            work[lo:a] = held
        above = work[b - halo:b].copy()
        blo = max(0, a - rms_box // 2)
        band = band[blo - lo:min(n, b + rms_box // 2) - lo]
        rms = _local_rms(band, a - blo, b - blo, rms_box)[valid[a:b]]
        film_rms[filled:filled + rms.size] = rms
        filled += rms.size
        margins.append((band[:a - blo].copy(), band[b - blo:].copy()))
        work[a:b] = band[a - blo:b - blo]
        del band, rms
    floor = max(float(np.median(film_rms, overwrite_input=True)) * 0.05, 1e-9) if filled else 1.0
    del film_rms
    # divide by the local RMS, computed again from the band as above (from the strip's own
    # rows of `work` and its margins: a strip's result can overwrite its rows at once)
    for (a, b, _, _), (top, bottom) in zip(strips, margins):
        rms = _local_rms(np.concatenate([top, work[a:b], bottom]), len(top), len(top) + b - a,
                         rms_box)
        white = np.maximum(rms, floor, out=rms)
        np.divide(work[a:b], white, out=white)
        np.clip(white, -2.0, 2.0, out=white)
        white[~valid[a:b]] = 0.0
        work[a:b] = white
        del rms, white
    return work


def _local_rms(band: np.ndarray, a: int, b: int, size: int) -> np.ndarray:
    """Rows ``a:b`` of the local RMS of ``band`` (rows, columns) float64 over ``size x size``
    boxes: (b - a, columns) float64."""
    rms = np.square(band)
    rms = _box_mean(rms, size, out=rms)[a:b]
    np.maximum(rms, 0.0, out=rms)
    return np.sqrt(rms, out=rms)


def _whiten_folded(work: np.ndarray) -> np.ndarray:
    """``_fold(_whiten(work))`` by :func:`_whiten_strips` (``work`` is overwritten): (TILE,
    TILE) float64."""
    tile = np.zeros((TILE, TILE))
    white = _whiten_strips(work)
    for a in range(0, white.shape[0], TILE):
        _fold_add(tile, a, white[a:a + TILE])
    return tile


def _fold_add(tile: np.ndarray, first: int, rows: np.ndarray) -> None:
    """Add rows of the working grid, from row ``first`` on, into the folded (TILE, TILE) tile;
    they must not wrap (``first % TILE + len(rows) <= TILE``)."""
    t = first % TILE
    for c in range(0, rows.shape[1], TILE):
        part = rows[:, c:c + TILE]
        tile[t:t + part.shape[0], :part.shape[1]] += part


def _whiten_resample_folded(image: np.ndarray, lattice: Lattice) -> np.ndarray:
    """The folded, whitened working grid of a lattice whose period is at most TILE px: the
    leak is whitened at its own resolution, with :data:`_FILTERS` scaled to its pixels, then
    resampled onto the working grid block by block and folded: (TILE, TILE) float64.

    Interpolation adds no detail, so whitening before upsampling gives the working grid's
    whitening at a fraction of the cost (the leak's px, not the working grid's, and only the
    part of the leak the grid covers), and the working grid is never held whole. Pixels
    beyond the leak contribute 0, as masked pixels do.
    """
    zoom = TILE / lattice.period
    filters = _scaled_filters(1.0 / zoom)
    matrix, out_shape = _working_geometry(image.shape, lattice)
    # the leak px the grid reads, and a margin in which the crop's own edges (eroded and
    # reflected as if they were the leak's) do not reach them
    h, w = out_shape
    corners = matrix @ np.array([[0, w, 0, w], [0, 0, h, h], [1, 1, 1, 1]], dtype=np.float64)
    margin = filters[1] + filters[0] // 2 + filters[2] // 2 + filters[3] // 2 + 2
    c0, c1 = (int(np.floor(corners[0].min())) - margin, int(np.ceil(corners[0].max())) + margin + 1)
    r0, r1 = (int(np.floor(corners[1].min())) - margin, int(np.ceil(corners[1].max())) + margin + 1)
    r0, c0 = max(0, r0), max(0, c0)
    r1, c1 = min(image.shape[0], r1), min(image.shape[1], c1)
    white = _whiten_strips(np.array(image[r0:r1, c0:c1], dtype=np.float32), filters)
    matrix = AffineTransform(translation=(-c0, -r0)).params @ matrix
    tile = np.zeros((TILE, TILE))
    for a, rows in _resample_chunks(white, matrix, out_shape):
        np.nan_to_num(rows, copy=False, nan=0.0)
        _fold_add(tile, a, rows)
    return tile


def _strips(n: int, halo: int):
    """(a, b, lo, hi) for strips [a, b) of ``_STRIP`` rows (a short last one joins the one
    before) and their rows with ``halo`` either side, [lo, hi), within 0..n."""
    starts = list(range(0, n, _STRIP))
    if len(starts) > 1 and n - starts[-1] < _STRIP // 2:
        starts.pop()
    for k, a in enumerate(starts):
        b = starts[k + 1] if k + 1 < len(starts) else n
        yield a, b, max(0, a - halo), min(n, b + halo)


def _box_mean(image: np.ndarray, size: int, mode: str = "reflect",
              out: np.ndarray | None = None) -> np.ndarray:
    """Mean over ``size x size`` boxes: ``scipy.ndimage.uniform_filter(image, size, mode=mode)``
    for ``mode`` "reflect" or "wrap" (float64, equal to it within rounding, about 1e-13
    relative), written into ``out`` if given (a float64 array of the image's shape, which may
    be ``image`` itself).

    SciPy filters along columns far more slowly than along rows (it gathers each column
    into a buffer). Here the row pass is SciPy's, written into ``out``; the column pass turns
    ``out`` into running sums down the columns, in place, and then each box sum is the
    difference of two of them (:func:`_box_sums_down`). No other image-sized array is made:
    numpy makes a large temporary array slowly (its pages are faulted in anew each time).
    """
    r = size // 2
    n = image.shape[0]
    if n < 2 * size:  # too few rows for the running sums' edges: leave it to SciPy
        rows = ndimage.uniform_filter1d(image, size, axis=1, mode=mode, output=np.float64)
        return ndimage.uniform_filter1d(rows, size, axis=0, mode=mode, output=out)
    if mode not in ("reflect", "wrap"):
        raise ValueError(f"mode must be 'reflect' or 'wrap', got {mode!r}")
    out = np.empty(image.shape) if out is None else out
    # a 1-D filter reads each line into a buffer first, so it may write over its input
    ndimage.uniform_filter1d(image, size, axis=1, mode=mode, output=out)
    _box_sums_down(out.reshape(n, -1), r, mode)
    out *= 1.0 / size
    return out


def _box_sums_down(x: np.ndarray, r: int, mode: str) -> None:
    """Replace each row of ``x`` (n, m) float64 by the sum of rows ``i - r .. i + r`` of the
    column extended by ``mode`` ("reflect": d c b a | a b c d | d c b a, or "wrap"), in place.

    With the running sums ``P[k] = x[0] + ... + x[k]`` (made in ``x`` itself) and ``E(k)``
    the sum of the extended rows up to ``k`` (``E(k) = P[k]`` inside; beyond the edges, from
    the reflected or wrapped rows, also running sums), row ``i`` gets ``E(i + r) - E(i - r -
    1)``. Rows are written a block at a time, once the running sums they hold are no longer
    needed; the few that later rows still read are kept aside. Needs ``n >= 2 * (2r + 1)``.
    """
    n = x.shape[0]
    for i in range(1, n):  # np.cumsum along axis 0 of a row-major array is several times slower
        x[i] += x[i - 1]
    last = x[n - 1].copy()

    def extended(k: int) -> np.ndarray:  # E(k) for -r - 1 <= k < n + r, read before any write
        if 0 <= k < n:
            return x[k]
        if k == -1:
            return np.zeros(x.shape[1])
        if mode == "wrap":
            return x[n + k] - last if k < 0 else last + x[k - n]
        return -x[-k - 2] if k < 0 else 2.0 * last - x[2 * n - 2 - k]

    # the first r + 1 and last r rows read the extension: made first, from the intact sums
    top = np.stack([extended(i + r) - extended(i - r - 1) for i in range(r + 1)])
    bottom = np.stack([extended(i + r) - extended(i - r - 1) for i in range(n - r, n)])
    # the rows between: row i = P[i + r] - P[i - r - 1], in blocks of at least r + 1 rows
    block = max(_ROW_BLOCK, r + 1)
    lower = x[:r + 1].copy()  # P[a - r - 1 .. a - 1] for the block starting at a
    buf = np.empty((block, x.shape[1]))
    for a in range(r + 1, n - r, block):
        b = min(n - r, a + block)
        d = buf[:b - a]
        np.subtract(x[a + r:b + r], np.concatenate([lower, x[a:b - r - 1]])[:b - a], out=d)
        lower = x[b - r - 1:b].copy()
        x[a:b] = d
    x[:r + 1] = top
    x[n - r:] = bottom


_ROW_BLOCK = 32  # rows per block of _box_sums_down


def _erode(mask: np.ndarray, iterations: int) -> np.ndarray:
    """``scipy.ndimage.binary_erosion(mask, iterations=...)`` (cross-shaped structuring
    element, outside counted as False): the same result, many times faster.

    The mask is packed 64 pixels to a machine word along rows (``np.packbits``, the padding
    bits False like the outside), so that each step is a few word-wide ANDs: with the rows
    above and below, and with the row shifted by one pixel either way (the carry between
    words taken from the neighbouring word).
    """
    rows, cols = mask.shape
    packed = np.packbits(mask, axis=1, bitorder="little")  # pixel j: byte j // 8, bit j % 8
    words = -(-packed.shape[1] // 8)
    buf = np.zeros((rows, 8 * words), dtype=np.uint8)
    buf[:, :packed.shape[1]] = packed
    out = buf.view("<u8")  # pixel j: word j // 64, bit j % 64
    one, top = np.uint64(1), np.uint64(63)
    nxt = np.empty_like(out)
    side = np.empty_like(out)
    for _ in range(iterations):
        np.copyto(nxt, out)
        nxt[1:] &= out[:-1]  # the pixel above
        nxt[:-1] &= out[1:]  # the pixel below
        nxt[0] = nxt[-1] = 0  # outside is False
        np.right_shift(out, one, out=side)  # the pixel to the right (j + 1) ...
        side[:, :-1] |= out[:, 1:] << top  # ... crossing into the next word
        nxt &= side
        np.left_shift(out, one, out=side)  # the pixel to the left (j - 1)
        side[:, 1:] |= out[:, :-1] >> top
        nxt &= side
        out, nxt = nxt, out
    return np.unpackbits(out.view(np.uint8), axis=1, count=cols, bitorder="little").view(bool)


def _fold(white: np.ndarray) -> np.ndarray:
    rows, cols = white.shape
    padded = np.zeros((-(-rows // TILE) * TILE, -(-cols // TILE) * TILE))
    padded[:rows, :cols] = white
    return padded.reshape(padded.shape[0] // TILE, TILE, padded.shape[1] // TILE, TILE).sum(axis=(0, 2))


def _dihedral(tile: np.ndarray, d: int) -> np.ndarray:
    out = np.rot90(tile, d % 4)
    return out.T if d >= 4 else out


def _soft_at_origin(tile: np.ndarray, key: SiteKey) -> np.ndarray:
    """All 256 soft bits of an aligned folded tile (no shift): (256,) float64."""
    coeffs = pywt.wavedec2(tile, WAVELET, mode=MODE, level=N_LEVELS)
    return soft_bits_from_folded({lvl: np.stack(coeffs[N_LEVELS + 1 - lvl]) for lvl in LEVELS}, key)


@dataclass(frozen=True)
class PreparedLattice:
    """Key-independent search data for one lattice candidate: the folded tile and, for each
    of the 8 flips/turns, the spectra of its 64 sub-grid phases (f, 64, 15) complex64."""

    lattice: Lattice
    tile: np.ndarray
    spectra: tuple


def prepare(image: np.ndarray, lattice: Lattice) -> PreparedLattice:
    """Resample, whiten and fold a leak for one lattice; transform every flip and phase.

    Everything here is independent of the key, so one preparation serves any number of keys
    (the false-positive benchmark tests thousands of keys on each control leak). ``image``
    (rows, columns) may be of any real dtype: the work is done in float64 on the parts read.
    """
    image = np.asarray(image)
    if lattice.period < TILE:  # the working grid is larger than the leak: whiten, then resample
        tile = _whiten_resample_folded(image, lattice)
    else:
        tile = _whiten_folded(_to_working(image, lattice))
    # one flip at a time (a stack of all 8 is slower: its work arrays leave the cache); the
    # transposed flips 4..7 are read from the spectra of 0..3
    # kept in single precision: they only rank positions (the soft bits at the best ones are
    # computed again from the tile in double precision), at half the memory and FFT time
    spectra = [_phase_spectra(_dihedral(tile, d)).astype(np.complex64) for d in range(N_DIHEDRAL // 2)]
    spectra += [_transposed_spectra(s) for s in spectra]
    return PreparedLattice(lattice, tile, tuple(spectra))


@lru_cache(maxsize=1)
def _transpose_maps() -> tuple:
    """Index maps of :func:`_transposed_spectra`: source frequency, phase and component, and
    which frequencies are conjugated."""
    t = TILE >> max(LEVELS)
    u, v = np.meshgrid(np.arange(t), np.arange(t // 2 + 1), indexing="ij")  # f = u * 9 + v
    # F(A.T)[u, v] = F(A)[v, u]; for u past the half plane, conj F(A)[-v, -u]
    upper = u > t // 2
    src_row = np.where(upper, (t - v) % t, v)
    src_col = np.where(upper, t - u, u)
    freq = (src_row * (t // 2 + 1) + src_col).ravel()
    dy, dx = np.divmod(np.arange(64), 8)
    phase = 8 * dx + dy  # roll(A.T, (-dy, -dx)) = roll(A, (-dx, -dy)).T
    swap = [1, 0, 2]  # the transpose's horizontal details are the vertical ones, transposed
    comp = []
    for level in LEVELS:
        step = 1 << (max(LEVELS) - level)
        base = len(comp)
        for i in range(step):
            for j in range(step):  # polyphase part (i, j) of B.T is part (j, i) of B, transposed
                comp += [base + (j * step + i) * 3 + swap[o] for o in range(3)]
    return freq, phase, np.array(comp), upper.ravel()


def _transposed_spectra(spectra: np.ndarray) -> np.ndarray:
    """:func:`_phase_spectra` of a tile's transpose, from the tile's own (the same numbers
    within rounding, without the wavelet transforms and FFTs).

    The separable DWT commutes with transposition (horizontal and vertical details trade
    places), a phase ``(dy, dx)`` of the transpose is the phase ``(dx, dy)`` of the tile, and
    the 2-D FFT of a transposed array is the transposed FFT, read from the half plane by
    conjugate symmetry.
    """
    freq, phase, comp, upper = _transpose_maps()
    # one axis at a time: several times faster than the same np.ix_ fancy indexing, and no
    # index table of the whole array is kept
    out = np.take(np.take(np.take(spectra, freq, axis=0), phase, axis=1), comp, axis=2)
    out[upper] = np.conj(out[upper])
    return out


def _phase_spectra(tile: np.ndarray) -> np.ndarray:
    """(144 frequencies, 64 phases, 15 components) half-plane spectra of a tile's shifted subbands.

    Phase ``(dy, dx)`` (0..7 each, index ``8 * dy + dx``) holds the level-2 and level-3
    subbands of ``np.roll(tile, (-dy, -dx))``. They are computed as a tree rather than 64 full
    transforms: with periodic extension, shifting a signal by 2 shifts its one-level DWT by 1,
    so the one-level transforms of the 4 shifts ``(dy, dx) mod 2`` give every level-1 result,
    the 16 level-2 transforms of their approximations every level-2 result, and 64 small
    level-3 transforms the rest (the same coefficients, about 7 times less work).

    A stack of tiles ``(..., 128, 128)`` gives ``(144, ..., 64, 15)``, the same numbers as one
    tile at a time (which is faster: the work arrays of one tile stay in the cache).
    """
    lead = tile.shape[:-2]
    tile = tile.reshape((-1,) + tile.shape[-2:])  # (n tiles, 128, 128)

    def shifted(x: np.ndarray) -> np.ndarray:  # the 4 shifts (a, b) in {0, 1}^2, before the grid
        return np.stack([np.roll(x, (-a, -b), axis=(-2, -1)) for a in (0, 1) for b in (0, 1)],
                        axis=-3)

    def dwt(x: np.ndarray):
        return pywt.dwt2(x, WAVELET, mode=MODE, axes=(-2, -1))

    ca1 = dwt(shifted(tile))[0]  # (n, 4 s1, 64, 64); level-1 details are not marked
    ca2, d2 = dwt(shifted(ca1))  # (n, 4 s1, 4 s2, 32, 32)
    d2 = np.stack(d2, axis=-3)  # (n, 4, 4, 3, 32, 32)
    d3 = np.stack(dwt(shifted(ca2))[1], axis=-3)  # (n, 4 s1, 4 s2, 4 s3, 3, 16, 16)
    bit = np.arange(8)
    dy, dx = np.repeat(bit, 8), np.tile(bit, 8)  # phase p = 8 * dy + dx
    s1, s2, s3 = (((dy >> k) & 1) * 2 + ((dx >> k) & 1) for k in (0, 1, 2))
    # a level-1 shift of 2 * a3 + a2 (a3 in {0, 1}) is a level-2 shift of a3: the phases
    # with the same (dy >> 2, dx >> 2) are rolled together
    b2 = d2[:, s1, s2]  # (n, 64, 3, 32, 32)
    for a in (0, 1):
        for b in (0, 1):
            if a or b:
                p = (dy >> 2 == a) & (dx >> 2 == b)
                b2[:, p] = np.roll(b2[:, p], (-a, -b), axis=(-2, -1))
    comps = _polyphase({2: b2, 3: d3[:, s1, s2, s3]})  # (n, 64, 15, 16, 16)
    n_tile, n_phase, n_comp, t, _ = comps.shape
    half = scipy.fft.rfft2(comps).reshape(n_tile, n_phase, n_comp, -1)
    half = np.ascontiguousarray(half.transpose(3, 0, 1, 2))  # (144, n, 64, 15)
    return half.reshape((half.shape[0],) + lead + (n_phase, n_comp))


def search(prepared: PreparedLattice, key: SiteKey, codewords: np.ndarray | None = None, *,
           n_hits: int = 4) -> list[SyncHit]:
    """Best positions of the mark for one prepared lattice candidate and one key.

    Every one of the ``N_DIHEDRAL * N_TRANSLATIONS`` positions is scored; the ``n_hits`` best
    distinct positions (non-maximum suppression over ``_NMS_PX``) get all 256 soft bits. The
    caller's union bound must count all positions.

    Parameters
    ----------
    prepared : PreparedLattice
    key : SiteKey
    codewords : (k, 256) array of +1/-1, optional
        The recipients that may be named. With them (k <= 256) each position is scored by the
        matched filter, ``max_r |correlation with codeword r| / ||tile||``, which sums all 256
        bits coherently; without them, by the energy of ``_SEARCH_BITS`` soft bits (used to
        decode a payload with no list).
    n_hits : int
        How many positions to return (two films of two recipients in one screenshot give two
        peaks).

    Returns
    -------
    list of SyncHit, best first.
    """
    matched = codewords is not None and 0 < len(codewords) <= N_BITS
    if matched:
        codewords = np.asarray(codewords)
        filters = _search_filters(key, np.packbits(codewords < 0, axis=1).tobytes(), len(codewords))
    else:
        filters = _search_filters(key, None, 0)
    candidates = []
    for d, freq in enumerate(prepared.spectra):
        out = _correlate(freq, filters)  # (64 phases, k, 16, 16)
        if matched:
            norm = np.sqrt(np.maximum(np.einsum("f,fpc->p", _HALF_WEIGHTS, np.abs(freq) ** 2), 1e-30))
            score = np.abs(out).max(axis=1) / norm[:, None, None]
        else:
            score = (out**2).sum(axis=1)
        # as a (128, 128) map over translations (rows, cols) in working px
        full = score.reshape(8, 8, 16, 16).transpose(2, 0, 3, 1).reshape(TILE, TILE)
        peaks = full == ndimage.maximum_filter(full, size=_NMS_PX, mode="wrap")
        rows, cols = np.nonzero(peaks)
        order = np.argsort(full[rows, cols])[::-1][:n_hits]
        candidates += [(float(full[rows[i], cols[i]]), d, (int(rows[i]), int(cols[i]))) for i in order]
    candidates.sort(reverse=True)
    hits = []
    for value, d, shift in candidates[:n_hits]:
        t = np.roll(_dihedral(prepared.tile, d), (-shift[0], -shift[1]), axis=(0, 1))
        hits.append(SyncHit(_soft_at_origin(t, key), value, d, shift, prepared.lattice))
    return hits


def _correlate(freq: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """Circular correlation of every phase with every filter: (64 phases, k, 16, 16), real
    (float32 for complex64 spectra)."""
    product = np.matmul(freq, filters)  # (f, p, k): a batched matrix product (BLAS)
    t = TILE >> max(LEVELS)
    product = np.ascontiguousarray(product.transpose(1, 2, 0)).reshape(freq.shape[1], -1, t, t // 2 + 1)
    return scipy.fft.irfft2(product, s=(t, t), overwrite_x=True)  # faster than numpy's here


def fold_search(image: np.ndarray, lattice: Lattice, key: SiteKey, codewords=None, *,
                n_hits: int = 4) -> list[SyncHit]:
    """Best positions of the mark in a leak, for one lattice candidate: ``search(prepare(...))``.

    Parameters
    ----------
    image : (rows, columns) array
    lattice : Lattice
        From :func:`lattice_candidates`.
    key : SiteKey
    codewords : (k, 256) array, optional
        See :func:`search`.
    n_hits : int
        How many distinct positions to return.

    Returns
    -------
    list of SyncHit, best first.
    """
    return search(prepare(image, lattice), key, codewords, n_hits=n_hits)
