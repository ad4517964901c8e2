"""Array-level embedding and extraction of the mark in the DWT domain.

Where the mark lives
--------------------
The image is first resampled to a *working grid* whose long edge is a power of two
(256, 512 or 1024 px, the nearest in log2 to the image's long edge; see
:func:`working_long_edge`). On that grid a 3-level 2-D DWT is taken (``pywt.wavedec2``,
wavelet ``db2``, mode ``periodization``)::

    coeffs = [cA3, (cH3, cV3, cD3), (cH2, cV2, cD2), (cH1, cV1, cD1)]
                    ^^^^ level 3 ^^^^  ^^^^ level 2 ^^^^   not marked

The mark is added to the six detail subbands of levels 2 and 3 (horizontal, vertical and
diagonal). On the working grid these are periods of 4 to 16 px, that is between 1/256 and
1/64 of the long edge: coarse enough to survive downscaling a leak to a 512 px long edge,
JPEG and 8-bit quantisation; fine enough to hide in anatomical texture.

Each subband is cut into square tiles covering 128 working-grid pixels (32 x 32
coefficients at level 2, 16 x 16 at level 3). Every tile carries the same keyed pattern
(a tiled, periodic mark; Kutter, "Watermarking resisting to translation, rotation and
scaling", Proc. SPIE 3528, 1999, doi:10.1117/12.337432): each of the 3 x (32^2 + 16^2) =
3840 positions of a tile is assigned, by the key, one of the 256 coded payload bits and a
pseudo-random sign. The coefficient at position ``(i, j)`` of a level-``l`` subband belongs
to tile position ``(i mod t_l, j mod t_l)``.

Embedding is additive spread spectrum (Cox, Kilian, Leighton & Shamoon, IEEE TIP 6(12),
1997, doi:10.1109/83.650120). Its local amplitude follows the film's own noise, not a window
(:func:`embedding_strength`):

* **noise-relative.** Quantum noise masks a pattern of the same spectrum in every window a
  reader picks, because a window multiplies noise and mark by the same gain. The local noise
  level is estimated from the finest diagonal subband of the working grid (median absolute
  deviation, Donoho & Johnstone, Biometrika 81(3), 1994, doi:10.1093/biomet/81.3.425) in
  blocks of 8 x 8 working px, so that edges and lines, which are sparse, do not raise it,
  and capped at twice the film's median (dense burned-in text reads as noise otherwise).
  Where there is no noise (collimation, burned-in label backgrounds, clipped regions) the
  mark is zero.
* **coarse level first.** Level 3 gets twice the amplitude of level 2 for the same noise:
  downscaling and lossy codecs remove the finer level first, and the coarser one is what a
  512 px messenger copy of a 2k film or a WebP of a small film keeps.
* **mild texture masking, edges not favoured.** The amplitude grows with the local activity
  over the noise only up to 1.5 times the film's median ratio, raised to 0.5 (contrast
  masking saturates; Legge & Foley, JOSA 70(12), 1980, doi:10.1364/JOSA.70.001458), so
  sharp edges, markers and lead discs get no more than textured lung.
* **not at borders nor near black and white.** The outer 2 % of each side carries nothing
  and the next 3 % ramps up; display values within 16 grey levels of 0 or 255 ramp down to
  zero (:func:`luminance_mask`).
* **capacity decides strength.** The global amplitude is the smaller of two: the mark's RMS
  at most :data:`NOISE_RATIO` times the film's noise RMS (:func:`noise_rms`, measured at the
  film's own resolution) and the amplitude at which the expected normalised correlation of
  an unaltered copy (:func:`expected_z`) reaches :data:`Z_CLEAN`. A large film, with many
  coefficients to spread the payload over, thus gets less than a small one.

Extraction divides each subband coefficient by its local RMS (a key-independent whitening
that also cancels any gain from window/level), sums the coefficients that share a tile
position, and correlates with the keyed signs to give one soft value per payload bit. The
statistics that turn those into evidence live in :mod:`watermark.stats`.

Coordinates: arrays are (row, column); shapes are written (rows, columns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pywt
import scipy.fft
from scipy import ndimage, sparse

from .keys import SiteKey
from .payload import N_BITS

__all__ = [
    "WAVELET",
    "LEVELS",
    "WORKING_EDGES",
    "NOISE_RATIO",
    "QUANTUM_RATIO",
    "Z_CLEAN",
    "noise_rms",
    "embedding_strength",
    "expected_z",
    "MIN_EMBED_EDGE",
    "MIN_DETECT_EDGE",
    "working_shape",
    "mark_residual",
    "residual_from_tiles",
    "embed",
    "soft_bits",
    "folded_subbands",
    "soft_bits_from_folded",
    "folded_coarse_robust",
]

WAVELET = "db2"
MODE = "periodization"
N_LEVELS = 3
LEVELS = (2, 3)
TILE = 128  # working-grid pixels per tile side
WORKING_EDGES = (256, 512, 1024)
NOISE_RATIO = 0.5  # mark RMS at most this times the film's noise RMS (same units; see benchmarks/fidelity.py)
QUANTUM_RATIO = 0.7  # ... or this times the output's quantisation step, whichever is larger
Z_CLEAN = 120.0  # expected coherent correlation of an unaltered marked copy (capacity target)
MIN_EMBED_EDGE = 64  # short edge in pixels below which a film cannot carry the payload
MIN_DETECT_EDGE = 48  # short edge below which a leak is too small to test

_ACTIVITY_WINDOW = 5
_NOISE_BLOCK = 8  # working px per side of a block of the local noise estimate
_MASKING_CAP = 1.5  # activity / noise, relative to the film's median, above which no more masking
_MASKING_EXPONENT = 0.5
_LEVEL_GAIN = {2: 1.0, 3: 2.0}  # amplitude per level: the coarser level survives more leaks
_BORDER_ZERO = 0.02  # share of each side next to the edge that carries no mark
_BORDER_RAMP = 0.03  # share of each side over which the mark then ramps up to full strength
_LUMINANCE_RAMP = 16.0  # display grey levels from black or white over which the mark ramps up
_NOISE_SPREAD = 2.0  # local noise estimates are capped at this times the film's median one
_MAD_TO_SIGMA = 0.6745  # median |x| of a standard normal variable


def working_long_edge(shape: tuple[int, int]) -> int:
    """The working-grid long edge for an image: 256, 512 or 1024, the nearest in log2.

    Every film of 1448 px or more is marked on the same relative grid. (A coarser grid for
    small films was tried: it lowers the detection statistic, because the host image has more
    energy at lower frequencies.)
    """
    long_edge = max(shape)
    exponent = min(max(round(math.log2(max(long_edge, 1))), 8), 10)
    return 2**exponent


def working_shape(shape: tuple[int, int], long_edge: int | None = None) -> tuple[int, int]:
    """Shape (rows, columns) of the working grid for an image of ``shape``.

    The aspect ratio is kept; the long edge becomes ``long_edge`` (default:
    :func:`working_long_edge`).
    """
    if long_edge is None:
        long_edge = working_long_edge(shape)
    scale = long_edge / max(shape)
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def block_reduce_to(image: np.ndarray, shape: tuple[int, int], dtype=None) -> np.ndarray:
    """Average ``k x k`` blocks, with the largest integer ``k`` that keeps the result at least
    twice ``shape`` on each side (no-op when ``k < 2``).

    A cheap antialiasing first step before an exact resampling of a very large image (a
    10000 x 10000 px leak): memory and time stay proportional to the pixels read once. The
    means are computed in ``dtype`` (default: the image's); float64 means of a float32 image
    are those of its float64 copy.
    """
    k = int(min(image.shape[0] / (2 * shape[0]), image.shape[1] / (2 * shape[1])))
    if k < 2:
        return image
    rows, cols = (image.shape[0] // k) * k, (image.shape[1] // k) * k
    return image[:rows, :cols].reshape(rows // k, k, cols // k, k).mean(axis=(1, 3), dtype=dtype)


def _resample(image: np.ndarray, shape: tuple[int, int], dtype=np.float64) -> np.ndarray:
    """Antialiased linear resampling to ``shape``, computed and returned in ``dtype``.

    The result is that of ``skimage.transform.resize(image, shape, order=1, mode="reflect",
    anti_aliasing=<downsampling>, preserve_range=True)`` (after :func:`block_reduce_to`),
    which leaktrace 0.2.0 called here: a Gaussian blur of sigma
    ``(factor - 1) / 2`` on each downsampled axis, then linear interpolation on the
    pixel-centre grid, both with mirror boundaries. Both steps are separable and linear, so
    each axis is one banded matrix (:func:`_axis_operator`) and the whole resampling is
    ``A0 @ image @ A1.T``: one pass per axis instead of the blur's and ``scipy.ndimage.zoom``'s
    several. The weights are non-negative and sum to 1, so resize's clipping to the input
    range has nothing to do and is not repeated. float64 results agree with resize to about
    1e-13 of the value range; float32 ones to float32 rounding.

    ``image`` (rows, columns) any real dtype; returns ``shape`` in ``dtype``. When
    downsampling, the output is made a band of rows at a time from the input rows the band
    reads, converted to ``dtype`` a block at a time: no image-sized intermediate, and a float32
    leak gives exactly the numbers of its float64 copy.
    """
    dtype = np.dtype(dtype)
    shape = (int(shape[0]), int(shape[1]))
    if image.shape == shape:
        return image.astype(dtype, copy=False)
    image = block_reduce_to(image, shape, np.float64 if dtype == np.float64 else None)
    down = shape[0] < image.shape[0] or shape[1] < image.shape[1]
    # skimage's anti-aliasing sigma: (input / output - 1) / 2 per axis, none when upsampling
    sigmas = [max(0.0, (n_in / n_out - 1.0) / 2.0) if down else 0.0
              for n_in, n_out in zip(image.shape, shape)]
    rows = _axis_operator(image.shape[0], shape[0], sigmas[0])
    cols = _axis_operator(image.shape[1], shape[1], sigmas[1])
    rows_first = shape[0] * image.shape[1] <= image.shape[0] * shape[1]  # smaller intermediate
    out = np.empty(shape, dtype=dtype)
    dense_cols = [cols.dense(*span) for span in cols.blocks]  # for this call only
    # each dense product (_apply_cols) spans at least _ROW_BAND rows (a short last band joins
    # the one before; one band when upsampling), so that BLAS sums every element in the order
    # of the whole-image product
    step = _ROW_BAND if rows_first else -(-_ROW_BAND * shape[0] // image.shape[0])
    starts = list(range(0, shape[0], step)) if down else [0]
    if len(starts) > 1 and shape[0] - starts[-1] < step:
        starts.pop()
    for start, stop in zip(starts, starts[1:] + [shape[0]]):
        part = rows.csr[start:stop]
        lo, hi = int(part.indices.min()), int(part.indices.max()) + 1
        part = part[:, lo:hi].astype(dtype)
        if rows_first:
            across = np.empty((stop - start, image.shape[1]), dtype=dtype)
            for c in range(0, image.shape[1], _ROW_BAND):
                across[:, c:c + _ROW_BAND] = part @ image[lo:hi, c:c + _ROW_BAND].astype(dtype)
            _apply_cols(cols, dense_cols, across, out[start:stop])
        else:
            out[start:stop] = part @ _apply_cols(cols, dense_cols,
                                                 np.ascontiguousarray(image[lo:hi], dtype=dtype))
    return out


_ROW_BAND = 256  # rows per band (and columns per conversion block) in _resample
_COLUMN_BLOCK = 64  # output columns per matrix product in _apply_cols


@dataclass(frozen=True)
class _AxisOperator:
    """One axis of a resampling: (n_out, n_in) banded matrix, as CSR, and the spans of its
    bands of rows (made dense only while they are applied: a cached operator stays small)."""

    csr: object  # scipy.sparse.csr_matrix, float64
    blocks: tuple  # (out_start, out_stop, in_start, in_stop): rows and the columns they read

    def dense(self, start: int, stop: int, lo: int, hi: int) -> np.ndarray:
        """Rows ``start:stop``, columns ``lo:hi`` of the matrix: (stop - start, hi - lo) float64."""
        return self.csr[start:stop, lo:hi].toarray()


@lru_cache(maxsize=16)
def _axis_operator(n_in: int, n_out: int, sigma: float) -> _AxisOperator:
    """The (n_out, n_in) matrix of one axis of :func:`_resample`.

    Column ``j`` is what ``scipy.ndimage.gaussian_filter1d(mode="mirror", truncate=4.0)``
    (skipped for ``sigma <= 1e-15``, as ``gaussian_filter`` does) followed by
    ``scipy.ndimage.zoom(order=1, mode="mirror", grid_mode=True)`` makes of a unit impulse at
    input ``j``: output ``k`` interpolates linearly at input coordinate
    ``(k + 0.5) * n_in / n_out - 0.5``, mirrored about the first and last pixel centres.
    """
    def mirror(index: np.ndarray) -> np.ndarray:  # ndimage "mirror" (whole-sample symmetric)
        if n_in == 1:
            return np.zeros_like(index)
        period = 2 * n_in - 2
        index = np.mod(index, period)
        return np.where(index > n_in - 1, period - index, index)

    # Gaussian blur, (n_in, n_in): row i holds the weights of the blurred sample i
    if sigma > 1e-15:
        radius = int(4.0 * sigma + 0.5)
        x = np.arange(-radius, radius + 1)
        kernel = np.exp(-0.5 / (sigma * sigma) * x**2)
        kernel = kernel / kernel.sum()
        i = np.repeat(np.arange(n_in), x.size)
        j = mirror(i + np.tile(x, n_in))
        blur = sparse.csr_matrix((np.tile(kernel, n_in), (i, j)), shape=(n_in, n_in))
    else:
        blur = sparse.identity(n_in, format="csr")
    # linear interpolation on the pixel-centre grid, (n_out, n_in)
    zoom = n_in / n_out
    coord = (np.arange(n_out) + 0.5) * zoom - 0.5
    if n_in == 1:
        coord = np.zeros_like(coord)
    else:
        coord = np.mod(coord, 2.0 * n_in - 2.0)
        coord = np.where(coord > n_in - 1, 2.0 * n_in - 2.0 - coord, coord)
    first = np.floor(coord)
    frac = coord - first
    first = first.astype(np.int64)
    k = np.repeat(np.arange(n_out), 2)
    j = mirror(np.stack([first, first + 1], axis=1).ravel())
    w = np.stack([1.0 - frac, frac], axis=1).ravel()
    interp = sparse.csr_matrix((w, (k, j)), shape=(n_out, n_in))
    matrix = (interp @ blur).tocsr()
    matrix.eliminate_zeros()
    matrix.sort_indices()

    blocks = []
    for start in range(0, n_out, _COLUMN_BLOCK):
        stop = min(start + _COLUMN_BLOCK, n_out)
        part = matrix[start:stop]
        lo, hi = int(part.indices.min()), int(part.indices.max()) + 1
        blocks.append((start, stop, lo, hi))
    return _AxisOperator(matrix, tuple(blocks))


def _apply_cols(op: _AxisOperator, dense: list, image: np.ndarray,
                out: np.ndarray | None = None) -> np.ndarray:
    """``image @ op.T``: resample axis 1, one band of output columns at a time (same dtype),
    into ``out`` if given. ``dense`` holds the operator's bands made dense,
    ``[op.dense(*span) for span in op.blocks]``."""
    if out is None:
        out = np.empty((image.shape[0], op.csr.shape[0]), dtype=image.dtype)
    for (start, stop, lo, hi), block in zip(op.blocks, dense):
        np.matmul(image[:, lo:hi], block.T.astype(image.dtype), out=out[:, start:stop])
    return out


@dataclass(frozen=True)
class _Layout:
    """Keyed tile layout: per level, (3, t, t) arrays of bit index and sign."""

    bits: dict
    signs: dict


@lru_cache(maxsize=8)
def _layout(key: SiteKey) -> _Layout:
    rng = key.rng("tile-layout-v1")
    sizes = {lvl: TILE >> lvl for lvl in LEVELS}
    n_slots = sum(3 * t * t for t in sizes.values())
    bit_of_slot = rng.permutation(n_slots) % N_BITS  # balanced: every bit gets n_slots/256 slots
    sign_of_slot = rng.integers(0, 2, n_slots).astype(np.int8) * 2 - 1
    bits, signs, start = {}, {}, 0
    for lvl, t in sizes.items():
        n = 3 * t * t
        bits[lvl] = bit_of_slot[start:start + n].reshape(3, t, t)
        signs[lvl] = sign_of_slot[start:start + n].reshape(3, t, t)
        start += n
    return _Layout(bits, signs)


def _tiled(tile: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Repeat a (t, t) tile to cover ``shape`` and crop."""
    t = tile.shape[0]
    reps = (-(-shape[0] // t), -(-shape[1] // t))
    return np.tile(tile, reps)[: shape[0], : shape[1]]


def _activity(bands) -> np.ndarray:
    """Local RMS of the three detail subbands of one level, over a 5 x 5 window."""
    energy = sum(b * b for b in bands) / 3.0
    return np.sqrt(np.maximum(ndimage.uniform_filter(energy, _ACTIVITY_WINDOW, mode="reflect"), 0.0))


def noise_rms(image: np.ndarray) -> float:
    """The image's noise RMS at its own resolution, in its own units.

    The Haar diagonal detail of 2 x 2 blocks, ``(a - b - c + d) / 2``, keeps white noise at
    its RMS and removes smooth anatomy; its median absolute value over the blocks whose own
    8 x 8-block median is not zero (collimation, flat labels and clipped regions excluded),
    divided by 0.6745, is the noise RMS (Donoho & Johnstone, Biometrika 81(3), 1994,
    doi:10.1093/biomet/81.3.425). Integer quantisation is part of what is measured: a
    stored unit adds 1/12 unit squared to the variance.

    Parameters
    ----------
    image : (rows, columns) array, any real dtype, at least 2 px a side

    Returns
    -------
    float
        Noise RMS, in the image's units; 0 for an image without noise (constant, or flat
        except for edges).
    """
    x = np.asarray(image)
    rows, cols = (x.shape[0] // 16) * 16, (x.shape[1] // 16) * 16
    if rows == 0 or cols == 0:
        return 0.0
    hh = np.empty((rows // 2, cols // 2), dtype=np.float32)
    for i in range(0, rows, 512):  # in bands of rows: no image-sized float temporaries
        band = np.asarray(x[i:min(i + 512, rows), :cols], dtype=np.float32)
        hh[i // 2:i // 2 + band.shape[0] // 2] = np.abs(
            band[0::2, 0::2] - band[0::2, 1::2] - band[1::2, 0::2] + band[1::2, 1::2]) / 2
    blocks = hh.reshape(hh.shape[0] // 8, 8, hh.shape[1] // 8, 8).transpose(0, 2, 1, 3)
    medians = np.median(blocks.reshape(blocks.shape[0], blocks.shape[1], 64), axis=-1)
    textured = medians > 0
    if not np.any(textured):
        return 0.0
    return float(np.median(medians[textured])) / _MAD_TO_SIGMA


def _local_noise(hh1: np.ndarray, shape3: tuple[int, int]) -> np.ndarray:
    """Local noise level on the level-3 coefficient grid (``shape3``): the median |HH| of the
    working grid's level-1 diagonal subband in blocks of 4 x 4 coefficients (8 x 8 working
    px), over 0.6745, smoothed over 3 x 3 blocks: float64."""
    rows, cols = shape3
    padded = np.zeros((rows * 4, cols * 4))
    r, c = min(hh1.shape[0], rows * 4), min(hh1.shape[1], cols * 4)
    padded[:r, :c] = np.abs(hh1[:r, :c])
    blocks = padded.reshape(rows, 4, cols, 4).transpose(0, 2, 1, 3).reshape(rows, cols, 16)
    noise = np.median(blocks, axis=-1) / _MAD_TO_SIGMA
    # dense text, markers and grids read as noise: no block gets more than a few times the
    # film's typical noise (quantum noise varies with exposure, but not by more)
    typical = noise[noise > 0]
    if typical.size:
        np.minimum(noise, _NOISE_SPREAD * float(np.median(typical)), out=noise)
    return ndimage.uniform_filter(noise, 3, mode="reflect")


def _upsample_to(grid: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Repeat each value of a coarser grid to cover ``shape`` (a power-of-two multiple)."""
    k = max(1, shape[0] // grid.shape[0])
    up = np.repeat(np.repeat(grid, k, axis=0), k, axis=1)
    out = np.empty(shape, dtype=grid.dtype)
    r, c = min(shape[0], up.shape[0]), min(shape[1], up.shape[1])
    out[:r, :c] = up[:r, :c]
    out[r:, :] = out[r - 1:r, :] if r else 0
    out[:, c:] = out[:, c - 1:c] if c else 0
    return out


def embedding_strength(coeffs: list) -> dict[int, np.ndarray]:
    """Relative strength of the mark per coefficient of each marked level (before the global
    scale), from the host's DWT.

    Parameters
    ----------
    coeffs : list
        ``pywt.wavedec2(work, WAVELET, mode=MODE, level=N_LEVELS)`` of the host's working
        grid, in any units.

    Returns
    -------
    dict
        ``{level: (rows_l, cols_l) float64}`` for each level of :data:`LEVELS`, in the host's
        units: the local noise level (see the module docstring) times the texture masking
        factor ``min(ratio / median ratio, 1.5) ** 0.5``, where ``ratio`` is the local
        activity of the level's three subbands over the local noise. Zero where there is no
        noise.
    """
    level3 = coeffs[1][0].shape
    noise3 = _local_noise(coeffs[N_LEVELS][2], level3)
    out = {}
    for level in LEVELS:
        bands = coeffs[N_LEVELS + 1 - level]
        noise = _upsample_to(noise3, bands[0].shape) if level != N_LEVELS else noise3
        act = _activity(bands)
        ratio = np.divide(act, noise, out=np.zeros_like(act), where=noise > 0)
        typical = float(np.median(ratio[noise > 0])) if np.any(noise > 0) else 1.0
        masking = np.minimum(ratio / max(typical, 1e-12), _MASKING_CAP) ** _MASKING_EXPONENT
        out[level] = _LEVEL_GAIN[level] * noise * masking
    return out


def _host_activity(coeffs: list) -> tuple[dict[int, np.ndarray], float]:
    """The detector's view of a host (:func:`folded_subbands`): per marked level the local
    activity (floored as the detector floors it), and the norm of the whitened host,
    ``sqrt(sum(min((x / act) ** 2, 16)))`` over the marked levels' coefficients."""
    acts, energy = {}, 0.0
    for level in LEVELS:
        bands = coeffs[N_LEVELS + 1 - level]
        act = _activity(bands)
        act = np.maximum(act, max(float(np.median(act)) * 0.05, 1e-9))
        acts[level] = act
        for band in bands:
            energy += float(np.sum(np.minimum(np.square(band / act), 16.0)))
    return acts, math.sqrt(energy)


def expected_z(residual_work: np.ndarray, patterns: dict, acts: dict, host_norm: float) -> float:
    """Expected normalised correlation of an unaltered marked copy.

    The detector divides every coefficient by its local activity and sums them with the
    keyed signs, so the mark adds ``sum(pattern * m / act)`` coherently while the host adds
    its whitened values with random signs, of norm ``host_norm``.

    Parameters
    ----------
    residual_work : (rows, columns) float array
        The mark, resampled onto the working grid.
    patterns : dict
        ``{level: [3 arrays]}``: the keyed sign (+1/-1) of each subband coefficient.
    acts, host_norm
        From :func:`_host_activity` of the host's working grid.

    Returns
    -------
    float
        ``z``, which grows linearly with the mark's amplitude; 0 for a flat host.
    """
    if host_norm == 0:
        return 0.0
    details = _marked_details(np.asarray(residual_work, dtype=np.float64))
    signal = 0.0
    for level in LEVELS:
        for band, pattern in zip(details[level], patterns[level]):
            signal += float(np.sum(band * pattern / acts[level]))
    return signal / host_norm


def luminance_mask(display: np.ndarray) -> np.ndarray:
    """Luminance masking: 0 where the display is black or white, ramping to 1 over
    :data:`_LUMINANCE_RAMP` (16) grey levels.

    ``display`` (rows, columns) grey levels on 0..255; returns the same shape, float32 for a
    float32 ``display`` and float64 otherwise."""
    lum = np.subtract(255.0, display)  # in place from here: one image-sized array
    np.minimum(display, lum, out=lum)
    lum /= _LUMINANCE_RAMP
    return np.clip(lum, 0.0, 1.0, out=lum)


def border_mask(n: int) -> np.ndarray:
    """Weights (n,) float64 along one side: 0 over the outer :data:`_BORDER_ZERO` of it at
    each end, then a linear ramp to 1 over the next :data:`_BORDER_RAMP`."""
    distance = np.minimum(np.arange(n), np.arange(n)[::-1]) / max(n, 1)
    return np.clip((distance - _BORDER_ZERO) / _BORDER_RAMP, 0.0, 1.0)


def fold_tiles(band: np.ndarray, t: int) -> np.ndarray:
    """Sum a 2-D array over ``t x t`` tiles anchored at (0, 0) (zero-padded): (t, t) float64."""
    rows, cols = band.shape
    padded = np.zeros((-(-rows // t) * t, -(-cols // t) * t))
    padded[:rows, :cols] = band
    return padded.reshape(padded.shape[0] // t, t, padded.shape[1] // t, t).sum(axis=(0, 2))


def _check_codeword(codeword) -> np.ndarray:
    c = np.asarray(codeword)
    if c.shape != (N_BITS,) or not np.all(np.abs(c) == 1):
        raise ValueError(f"codeword must be a ({N_BITS},) array of +1/-1, got shape {c.shape}")
    return c.astype(np.float64)


def mark_residual(image: np.ndarray, codeword, key: SiteKey, *, display: np.ndarray | None = None,
                  quantum: float | None = None, strength: float = 1.0,
                  dtype: type | np.dtype = np.float64) -> np.ndarray:
    """The additive mark for one image, in the image's own units.

    Parameters
    ----------
    image : (rows, columns) array
        The host in any unit linear in what a viewer shows (a film's default display on
        0..255, or the grey values of an 8-bit image), float or integer. Rows and columns at
        least ``MIN_EMBED_EDGE``.
    codeword : (256,) array of +1/-1
        From :func:`watermark.payload.encode`.
    key : SiteKey
    display : (rows, columns) array, optional
        What a viewer shows, 0..255, for the luminance mask (default: ``image`` itself).
    quantum : float, optional
        The step, in the image's units, to which the marked copy will be rounded (for a film
        rendered to ``image``: the display's grey levels per stored unit; 1 for an 8-bit
        image); ``None`` (default) for a continuous output. A host of integer values keeps
        only ``quantum * round(mark / quantum)``: the strength is then chosen for the
        rounded mark, and its RMS may reach ``QUANTUM_RATIO * quantum`` when the noise is
        finer than one step.
    strength : float, optional
        Embedding strength relative to the model's choice (default 1; see the module
        docstring): the mark is multiplied by it. For strength sweeps and benchmarks.
    dtype : {numpy.float64, numpy.float32}, optional
        Precision of the computation and of the result (default float64). float32 halves
        the memory and time of the image-sized steps; the mark differs from the float64 one
        by float32 rounding only.

    Returns
    -------
    (rows, columns) array of `dtype`
        Add it to ``image``. Its RMS (after rounding, with ``quantum``) is at most ``strength
        * max(NOISE_RATIO * noise_rms(image), QUANTUM_RATIO * quantum)``. An image without
        noise or texture (all black, all white, constant) gets all zeros. With ``quantum``
        the result is not rounded: the caller rounds the marked copy.

    Raises
    ------
    ValueError
        Wrong codeword, a `dtype` other than float64 or float32, a negative strength, or an
        image smaller than ``MIN_EMBED_EDGE`` on a side.
    """
    c = _check_codeword(codeword)
    layout = _layout(key)
    tiles = {level: (layout.signs[level] * c[layout.bits[level]]) for level in LEVELS}
    return residual_from_tiles(image, tiles, display=display, quantum=quantum,
                               strength=strength, dtype=dtype)


def residual_from_tiles(image: np.ndarray, tiles: dict, *, display: np.ndarray | None = None,
                        quantum: float | None = None, strength: float = 1.0,
                        dtype: type | np.dtype = np.float64) -> np.ndarray:
    """The additive mark that repeats ``tiles`` over ``image``, with the strength model of
    :func:`mark_residual` (which is this function with the keyed tiles of a codeword).

    The strength model is public; only the tiles are secret. Benchmarks of attacks without
    the key (``benchmarks/attacks.py``) call this with tiles an adversary estimated.

    Parameters
    ----------
    image, display, quantum, strength, dtype
        As in :func:`mark_residual`.
    tiles : dict
        ``{level: (3, t, t) array}`` for each level of :data:`LEVELS`, ``t = TILE >> level``:
        the value (normally +1/-1) each tile position of the H, V and D subbands carries.

    Returns
    -------
    (rows, columns) array of `dtype`
        As in :func:`mark_residual`.

    Raises
    ------
    ValueError
        As in :func:`mark_residual`, and tiles of the wrong shape.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float64, np.float32):
        raise ValueError(f"dtype is {dtype}; float64 or float32 is required")
    if not strength >= 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    for level in LEVELS:
        t = TILE >> level
        if np.shape(tiles.get(level)) != (3, t, t):
            raise ValueError(f"tiles[{level}] must have shape (3, {t}, {t}), "
                             f"got {np.shape(tiles.get(level))}")
    image = np.asarray(image, dtype=dtype)
    if image.ndim != 2 or min(image.shape) < MIN_EMBED_EDGE:
        raise ValueError(f"image must be 2-D and at least {MIN_EMBED_EDGE} px on each side, "
                         f"got shape {image.shape}")
    display = image if display is None else np.asarray(display, dtype=dtype)
    if display.shape != image.shape:
        raise ValueError(f"display shape {display.shape} differs from image shape {image.shape}")
    wshape = working_shape(image.shape)
    work = _resample(image, wshape, dtype)
    coeffs = pywt.wavedec2(work, WAVELET, mode=MODE, level=N_LEVELS)
    del work
    gains = embedding_strength(coeffs)
    acts, host_norm = _host_activity(coeffs)
    mark, patterns = [np.zeros_like(coeffs[0])], {}
    for index in range(1, N_LEVELS + 1):
        level = N_LEVELS + 1 - index
        bands = coeffs[index]
        if level not in LEVELS:
            mark.append(tuple(np.zeros_like(b) for b in bands))
            continue
        marked, patterns[level] = [], []
        for o, band in enumerate(bands):
            tile = np.asarray(tiles[level][o], dtype=dtype)
            patterns[level].append(_tiled(tile, band.shape))
            marked.append(gains[level].astype(dtype) * patterns[level][-1])
        mark.append(tuple(marked))
    del coeffs, bands, marked
    residual_work = pywt.waverec2(mark, WAVELET, mode=MODE)[: wshape[0], : wshape[1]]
    del mark
    residual = _resample(np.asarray(residual_work, dtype=dtype), image.shape, dtype)
    del residual_work
    # luminance and border masks and the RMS, in blocks of rows: no image-sized temporaries
    across = border_mask(image.shape[1]).astype(dtype)
    down = border_mask(image.shape[0]).astype(dtype)
    square_sum = 0.0
    for i in range(0, image.shape[0], _ROW_BLOCK):
        block = residual[i:i + _ROW_BLOCK]
        block *= luminance_mask(display[i:i + _ROW_BLOCK])
        block *= across[None, :]
        block *= down[i:i + _ROW_BLOCK, None]
        flat = block.ravel().astype(np.float64)
        square_sum += float(np.dot(flat, flat))
    current = math.sqrt(square_sum / residual.size)
    if current == 0.0:
        return residual
    residual *= strength * _global_scale(residual, current, image, quantum, wshape, patterns,
                                         acts, host_norm)
    return residual


def _global_scale(residual: np.ndarray, rms: float, image: np.ndarray, quantum: float | None,
                  wshape: tuple[int, int], patterns: dict, acts: dict, host_norm: float) -> float:
    """The global scale of a masked mark of RMS ``rms``: the largest at which its RMS stays
    under the noise cap, and no larger than needed for :data:`Z_CLEAN` (see the module
    docstring). With a ``quantum``, both are measured on the rounded mark, by bisection."""
    cap = NOISE_RATIO * noise_rms(image)
    coarse = quantum is not None and quantum > 0 and QUANTUM_RATIO * quantum > cap / 4
    if not coarse:
        z_unit = expected_z(_resample(residual, wshape), patterns, acts, host_norm)
        if z_unit <= 0.0 or cap == 0.0:
            return 0.0
        return min(cap / rms, Z_CLEAN / z_unit)
    cap = max(cap, QUANTUM_RATIO * quantum)

    def rounded(scale: float) -> np.ndarray:
        return quantum * np.rint(residual * (scale / quantum))

    def rms_of(x: np.ndarray) -> float:
        return math.sqrt(float(np.mean(np.square(x, dtype=np.float64))))

    lo, hi = 0.0, cap / rms * 4.0  # rounding shrinks the RMS: the cap's scale lies below hi
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        x = rounded(mid)
        if rms_of(x) > cap or expected_z(_resample(x, wshape), patterns, acts, host_norm) > Z_CLEAN:
            hi = mid
        else:
            lo = mid
    return lo


_BISECTIONS = 8  # steps of the search for the scale of a rounded mark (1/256 of the bracket)


_ROW_BLOCK = 256  # rows per block of the image-sized elementwise steps


def embed(image: np.ndarray, codeword, key: SiteKey, *, display: np.ndarray | None = None,
          strength: float = 1.0) -> np.ndarray:
    """Marked copy of an 8-bit-scale image: ``image + mark_residual(...)``, clipped to 0..255.

    Shapes and units as in :func:`mark_residual` (``image`` on 0..255); returns float64.
    """
    image = np.asarray(image, dtype=np.float64)
    return np.clip(image + mark_residual(image, codeword, key, display=display,
                                         strength=strength), 0.0, 255.0)


def _working_grid(image: np.ndarray, long_edge: int) -> np.ndarray:
    """A leak (rows, columns), any real dtype, resampled to the working grid: a new float64
    array (the caller may overwrite it), after checking the leak is big enough to test."""
    image = np.asarray(image)
    if image.ndim != 2 or min(image.shape) < MIN_DETECT_EDGE:
        raise ValueError(f"image must be 2-D and at least {MIN_DETECT_EDGE} px on each side, "
                         f"got shape {image.shape}")
    work = _resample(image, working_shape(image.shape, long_edge))
    return work.copy() if np.shares_memory(work, image) else work


def folded_subbands(image: np.ndarray, *, long_edge: int) -> dict[int, np.ndarray]:
    """Key-independent part of extraction: whitened subbands folded onto one tile.

    Parameters
    ----------
    image : (rows, columns) array
        Grey values in any unit and polarity. At least ``MIN_DETECT_EDGE`` px a side.
    long_edge : int
        The working-grid long edge to assume (one of ``WORKING_EDGES``).

    Returns
    -------
    dict
        ``{level: (3, t, t) float64}`` for each marked level, ``t = TILE >> level``: the
        H, V, D subbands divided by their local activity (clipped to +-4), summed over tiles.

    Raises
    ------
    ValueError
        An image smaller than ``MIN_DETECT_EDGE`` on a side.
    """
    return _folded_subbands_of(_working_grid(image, long_edge))


def _marked_details(work: np.ndarray) -> dict[int, tuple]:
    """The (H, V, D) detail subbands of each marked level of ``pywt.wavedec2(work, WAVELET,
    mode=MODE, level=N_LEVELS)`` (the same numbers), without keeping the unmarked levels'."""
    details, approx = {}, work
    for level in range(1, N_LEVELS + 1):
        approx, bands = pywt.dwt2(approx, WAVELET, mode=MODE)
        if level in LEVELS:
            details[level] = bands
        del bands
    return details


def _folded_subbands_of(work: np.ndarray) -> dict[int, np.ndarray]:
    """:func:`folded_subbands` of a leak already on its working grid (``_working_grid``)."""
    details = _marked_details(work)
    out = {}
    for level in LEVELS:
        bands = details[level]
        act = _activity(bands)
        floor = max(float(np.median(act)) * 0.05, 1e-9)
        t = TILE >> level
        folded = []
        for band in bands:
            folded.append(fold_tiles(np.clip(band / np.maximum(act, floor), -4.0, 4.0), t))
        out[level] = np.stack(folded)
    return out


def soft_bits_from_folded(folded: dict[int, np.ndarray], key: SiteKey) -> np.ndarray:
    """Soft payload bits (256,) float64 from :func:`folded_subbands` output (or any aligned
    folded tile's subbands), by summing each bit's slots with their keyed signs."""
    layout = _layout(key)
    total = np.zeros(N_BITS)
    for level in LEVELS:
        for o in range(3):
            total += np.bincount(layout.bits[level][o].ravel(),
                                 weights=(layout.signs[level][o] * folded[level][o]).ravel(),
                                 minlength=N_BITS)
    return total


def soft_bits(image: np.ndarray, key: SiteKey, *, long_edge: int) -> np.ndarray:
    """Soft payload bits from an image, assuming the mark's grid fills the whole image.

    Parameters
    ----------
    image : (rows, columns) array
        Grey values in any unit and polarity (gain, offset and inversion do not matter:
        inversion flips the sign of every soft bit). At least ``MIN_DETECT_EDGE`` px a side.
    key : SiteKey
    long_edge : int
        The working-grid long edge to assume (one of ``WORKING_EDGES``).

    Returns
    -------
    (256,) float64 array
        One value per coded bit. For an image that does not carry this key's mark, each
        value is a sum of terms with independent key-chosen signs, hence symmetric about 0
        and independent of the others: the basis of the p-values in :mod:`watermark.stats`.

    Raises
    ------
    ValueError
        An image smaller than ``MIN_DETECT_EDGE`` on a side.
    """
    return soft_bits_from_folded(folded_subbands(image, long_edge=long_edge), key)


def resample(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The resampling used between an image and its working grid: antialiased linear
    (the result of ``skimage.transform.resize``, after block averaging of a very large
    image; see :func:`_resample`).

    ``image`` (rows, columns) any real dtype; returns ``shape`` (rows, columns) float64.
    """
    return _resample(np.asarray(image), tuple(shape))


_ROBUST_GAMMA = 0.75  # weight of a coefficient's sign: (local activity / median) ** gamma
_ROBUST_REL = (0.3, 3.0)  # ... with the relative activity clipped to this range
_ROBUST_SMOOTH = 25  # spectrum bins averaged to estimate the power spectrum (whitening)


def folded_coarse_robust(image: np.ndarray, *, long_edge: int) -> dict[int, np.ndarray]:
    """A second, noise-robust folding of the whole leak: level 3 only, signs weighted by activity.

    For small leaks that went through a strong codec (a 440 px film scaled to 60 % and saved
    as WebP 75) level 2 of the mark falls on periods of 2-4 leak px, which the codec removes;
    summed with equal weight, level 2 then only adds noise, and the surviving level 3 drowns
    in the host's large, heavy-tailed coefficients. Here the working grid is first half
    whitened (its Fourier amplitude divided by the square root of its smoothed amplitude, which
    flattens the host's 1/f falloff inside the band), then each level-3 coefficient is replaced
    by its sign (the locally optimum nonlinearity for Laplacian, i.e. generalised Gaussian of
    shape 1, host coefficients; Hernandez, Amado & Perez-Gonzalez, IEEE TIP 9(1), 2000,
    doi:10.1109/83.817598) weighted by its local activity
    relative to the median, to the power 0.75 (the mark's strength grows with activity, see
    :func:`mark_residual`). Everything depends on the image only, never on the key, so the
    soft bits keep the null distribution of :func:`soft_bits` (symmetric, independent).

    Parameters
    ----------
    image : (rows, columns) array
        Grey values in any unit and polarity. At least ``MIN_DETECT_EDGE`` px a side.
    long_edge : int
        The working-grid long edge to assume (one of ``WORKING_EDGES``).

    Returns
    -------
    dict
        ``{level: (3, t, t) float64}`` as :func:`folded_subbands`, with level 2 all zeros.

    Raises
    ------
    ValueError
        An image smaller than ``MIN_DETECT_EDGE`` on a side.
    """
    return _folded_coarse_robust_of(_working_grid(image, long_edge))


def _folded_coarse_robust_of(work: np.ndarray) -> dict[int, np.ndarray]:
    """:func:`folded_coarse_robust` of a leak already on its working grid (``_working_grid``;
    ``work`` (rows, columns) float64 is overwritten)."""
    work -= work.mean()
    spectrum = scipy.fft.rfft2(work)
    power = np.square(spectrum.real)
    power += np.square(spectrum.imag)
    # smoothed over frequencies: cyclic along rows; the half plane mirrors at its edges
    power = ndimage.uniform_filter1d(power, _ROBUST_SMOOTH, axis=0, mode="wrap")
    power = ndimage.uniform_filter1d(power, _ROBUST_SMOOTH, axis=1, mode="reflect")
    power += 1e-12
    spectrum /= np.power(power, 0.25, out=power)
    del power
    work[...] = scipy.fft.irfft2(spectrum, s=work.shape, overwrite_x=True)
    del spectrum
    details = _marked_details(work)
    out = {}
    for level in LEVELS:
        t = TILE >> level
        if level != max(LEVELS):
            out[level] = np.zeros((3, t, t))
            continue
        bands = details[level]
        act = _activity_window(bands, 3)
        rel = act / max(float(np.median(act)), 1e-12)
        weight = np.clip(rel, *_ROBUST_REL) ** _ROBUST_GAMMA
        folded = []
        for band in bands:
            x = np.sign(band) * weight
            rows, cols = x.shape
            padded = np.zeros((-(-rows // t) * t, -(-cols // t) * t))
            padded[:rows, :cols] = x
            folded.append(padded.reshape(padded.shape[0] // t, t, padded.shape[1] // t, t).sum(axis=(0, 2)))
        out[level] = np.stack(folded)
    return out


def _activity_window(bands, window: int) -> np.ndarray:
    """Local RMS of the three detail subbands of one level, over a ``window`` square."""
    energy = sum(b * b for b in bands) / 3.0
    return np.sqrt(np.maximum(ndimage.uniform_filter(energy, window, mode="reflect"), 0.0))
