"""Finding an exported film in a leak and registering the leak onto it.

Two jobs, both on grey images and both key-independent:

1. **Features.** :func:`film_features` describes a film (its default display) by ORB
   keypoints (Rublee, Rabaud, Konolige & Bradski, "ORB: an efficient alternative to SIFT or
   SURF", ICCV 2011, doi:10.1109/ICCV.2011.6126544; scikit-image's implementation). They are
   computed once per source film at export time and kept in the ledger
   (:meth:`forensics.ledger.Ledger.store_source_features`), so that a leak can be matched
   against every exported film without reading the originals.
2. **Registration.** :func:`register` matches a leak's keypoints to a film's (Hamming
   distance, Lowe's ratio test) and fits a homography with RANSAC (Fischler & Bolles,
   CACM 24(6), 1981, doi:10.1145/358669.358692; ``skimage.measure.ransac``). The leak is
   tried as it is, inverted (a viewer's invert, MONOCHROME1 shown the other way) and mirrored,
   because ORB descriptors are invariant to neither. A homography covers crop, scale,
   rotation, translation, UI margins and the perspective of a photo of a screen.
   Keypoints are taken at two smoothing levels: fine detail first (crops at full
   resolution), then anatomy only (photos of a screen, whose moire and blur make fine
   corners unstable). :func:`refine` then corrects what the keypoints leave (up to a px or
   two on a small leak) with an affine fit to local shifts measured by cross-correlation
   (phase-correlation-style block matching, Kuglin & Hines, Proc. IEEE Int. Conf.
   Cybernetics and Society 1975).

Coordinates: images are (row, column) arrays; transforms are 3 x 3 homogeneous matrices
acting on (x, y) = (column, row) points, as in ``skimage.transform.ProjectiveTransform``.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.feature import ORB, match_template
from skimage.measure import ransac
from skimage.transform import ProjectiveTransform, resize, warp

__all__ = ["FilmFeatures", "KeypointSet", "Alignment", "film_features", "leak_keypoints",
           "register", "locate", "polish", "refine", "linear_scale", "warp_into", "FEATURE_EDGE", "MIN_INLIERS",
           "SMOOTHING", "THUMBNAIL_EDGE", "MIN_TEMPLATE_NCC", "TEMPLATE_MARGIN"]

FEATURE_EDGE = 768  # long edge (px) at which features are computed
N_KEYPOINTS = 1000
FAST_THRESHOLD = 0.02  # chest films are smooth: the default 0.08 finds too few corners
MAX_HAMMING = 64  # of 256 bits: a farther pair is not a match
RATIO = 0.85  # Lowe's ratio test on Hamming distances
SMOOTHING = (0.0, 1.5)  # Gaussian sigmas (px at FEATURE_EDGE): fine detail, then anatomy only
MIN_INLIERS = 12  # fewer RANSAC inliers: the film is not in the leak
THUMBNAIL_EDGE = 256  # long edge (px) of the film thumbnail kept for the template search
MIN_TEMPLATE_NCC = 0.8  # a weaker template match is not taken as the film
TEMPLATE_MARGIN = 0.05  # films matched this much less well than the best are not returned
_COARSE_EDGE = 128  # long edge (px) of the thumbnail in the coarse template search
_MIN_TEMPLATE = 32  # shortest side (px at _COARSE_EDGE) of a template: smaller ones match anywhere
_TEMPLATE_STEP = 1.15  # ratio between successive template scales (coarse search)
_FINE_STEPS = np.linspace(-0.08, 0.08, 9)  # relative scale offsets of the fine search
_FINE_FILMS = 4  # films whose coarse best goes on to the fine search
_RANSAC_TRIALS = 2000
_RANSAC_SEED = 20260411  # RANSAC is seeded: the same leak always gives the same alignment

# leak variants tried: (mirrored, inverted)
_VARIANTS = ((False, False), (False, True), (True, False), (True, True))


@dataclass(frozen=True)
class KeypointSet:
    """ORB keypoints of one image at one smoothing level.

    Attributes
    ----------
    points : (n, 2) float32
        Keypoint positions (x, y) = (column, row) in the image's px.
    descriptors : (n, 32) uint8
        256-bit binary descriptors, packed.
    """

    points: np.ndarray
    descriptors: np.ndarray


@dataclass(frozen=True)
class FilmFeatures:
    """ORB keypoints of one image, one :class:`KeypointSet` per level of :data:`SMOOTHING`,
    and a thumbnail for the template search.

    ``shape`` (rows, columns) is the image's, in px; positions refer to it. ``thumbnail`` is
    the image scaled to 0..255 (0.5 and 99.5 percentiles) at a long edge of
    :data:`THUMBNAIL_EDGE` px, uint8; ``None`` in features stored by leaktrace 0.2.0.
    """

    shape: tuple[int, int]
    sets: tuple[KeypointSet, ...]
    thumbnail: np.ndarray | None = None

    def to_bytes(self) -> bytes:
        """Compact serialisation (``numpy.savez_compressed``, no pickle) for the ledger."""
        arrays = {"shape": np.asarray(self.shape, dtype=np.int64)}
        for i, ks in enumerate(self.sets):
            arrays[f"points{i}"] = ks.points.astype(np.float32)
            arrays[f"descriptors{i}"] = ks.descriptors.astype(np.uint8)
        if self.thumbnail is not None:
            arrays["thumbnail"] = self.thumbnail.astype(np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> FilmFeatures:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            sets = tuple(KeypointSet(z[f"points{i}"], z[f"descriptors{i}"])
                         for i in range(len(SMOOTHING)) if f"points{i}" in z)
            thumbnail = z["thumbnail"] if "thumbnail" in z else None
            return cls(tuple(int(v) for v in z["shape"]), sets, thumbnail)


@dataclass(frozen=True)
class Alignment:
    """Where a leak lies on a film.

    Attributes
    ----------
    matrix : (3, 3) float64
        Homography from leak px to film px, acting on (x, y) = (column, row); if ``mirrored``,
        it applies to the leak mirrored left-right (column ``c`` -> ``width - 1 - c``) first.
    mirrored, inverted : bool
        The leak variant that matched (inverted: dark and bright swapped).
    inliers : int
        RANSAC inliers (keypoint pairs consistent with the homography); 0 for a template match.
    matches : int
        Keypoint pairs that passed the ratio test; 0 for a template match.
    template_ncc : float or None
        Normalised cross-correlation of a template match (:func:`locate`); None for keypoints.
    """

    matrix: np.ndarray
    mirrored: bool
    inverted: bool
    inliers: int
    matches: int
    template_ncc: float | None = None

    def leak_to_film(self, leak_shape: tuple[int, int]) -> np.ndarray:
        """The full (3, 3) homography from the leak's own px (mirror included) to film px."""
        if not self.mirrored:
            return self.matrix
        flip = np.array([[-1.0, 0.0, leak_shape[1] - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        return self.matrix @ flip

    def as_dict(self, leak_shape: tuple[int, int]) -> dict:
        m = self.leak_to_film(leak_shape)
        out = {"transform": (m / m[2, 2]).round(8).tolist(), "mirrored": self.mirrored,
               "inverted": self.inverted, "inliers": self.inliers, "matches": self.matches,
               "scale": round(linear_scale(m), 5), "rotation_degrees": round(_rotation_of(m), 3),
               "method": "ORB keypoints, RANSAC homography, block-matching affine refinement"}
        if self.template_ncc is not None:
            out.update(method="template search (normalised cross-correlation over scales), "
                              "block-matching affine refinement",
                       template_ncc=round(self.template_ncc, 4))
        return out


def linear_scale(m: np.ndarray) -> float:
    """Mean linear scale of a (3, 3) homography's affine part (e.g. film px per leak px):
    the square root of its determinant's magnitude."""
    a = m[:2, :2] / m[2, 2]
    return float(math.sqrt(abs(np.linalg.det(a))))


def _rotation_of(m: np.ndarray) -> float:
    a = m[:2, :2] / m[2, 2]
    return float(np.degrees(np.arctan2(a[1, 0] - a[0, 1], a[0, 0] + a[1, 1])))


def _normalised(image: np.ndarray) -> np.ndarray:
    """Grey image scaled to 0..1 by its 0.5 and 99.5 percentiles (float64)."""
    image = np.asarray(image, dtype=np.float64)
    return _scaled(image, _bounds(image))


def _bounds(image: np.ndarray) -> tuple[float, float] | None:
    """``(lo, hi)`` of :func:`_normalised` for a float64 image: the 0.5 and 99.5 percentiles
    of its finite values (``hi`` raised to ``lo + 1`` when not above ``lo``); ``None`` when
    no value is finite."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return None
    lo, hi = np.percentile(finite, [0.5, 99.5], overwrite_input=True)
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _scaled(image: np.ndarray, bounds: tuple[float, float] | None) -> np.ndarray:
    """A float64 image mapped by ``bounds`` (from :func:`_bounds`) to 0..1, clipped, NaN
    taken as ``lo``: a new float64 array of the same shape (zeros when ``bounds`` is None)."""
    if bounds is None:
        return np.zeros_like(image)
    lo, hi = bounds
    out = np.nan_to_num(image, nan=lo)
    out -= lo
    out /= hi - lo
    return np.clip(out, 0.0, 1.0, out=out)


def _orb(image01: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ORB keypoints (x, y) and packed descriptors of a 0..1 image; empty arrays if none."""
    orb = ORB(n_keypoints=N_KEYPOINTS, fast_threshold=FAST_THRESHOLD)
    try:
        orb.detect_and_extract(image01)
    except RuntimeError:  # no features at all (a flat image)
        return np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)
    points = orb.keypoints[:, ::-1].astype(np.float32)  # (row, col) -> (x, y)
    return points, np.packbits(orb.descriptors, axis=1)


def _keypoints(image01: np.ndarray, smooth: float, *, upsample: bool) -> KeypointSet:
    """ORB keypoints of a 0..1 image resized to a long edge of ``FEATURE_EDGE`` px (only
    reduced, unless ``upsample``) and smoothed by ``smooth`` px; positions in the image's px."""
    scale = FEATURE_EDGE / max(image01.shape)
    if not upsample:
        scale = min(scale, 1.0)
    small = image01
    if scale != 1.0:
        small = resize(image01, (max(1, round(image01.shape[0] * scale)),
                                 max(1, round(image01.shape[1] * scale))), anti_aliasing=True)
    if smooth > 0:  # quantum noise, moire and JPEG blocks make unstable corners
        small = ndimage.gaussian_filter(small, smooth)
    points, desc = _orb(small)
    sy, sx = image01.shape[0] / small.shape[0], image01.shape[1] / small.shape[1]
    return KeypointSet((points * np.array([sx, sy], np.float32)).astype(np.float32), desc)


def film_features(display: np.ndarray) -> FilmFeatures:
    """ORB features of a film's default display, for the ledger.

    Parameters
    ----------
    display : (rows, columns) array
        The film as shown by default (:func:`watermark.display.render`), any grey scale.

    Returns
    -------
    FilmFeatures
        Up to :data:`N_KEYPOINTS` keypoints per smoothing level, computed at a long edge of
        :data:`FEATURE_EDGE` px, positions in the film's px (a flat film has none), and a
        uint8 thumbnail at a long edge of :data:`THUMBNAIL_EDGE` px.
    """
    image = _normalised(display)
    thumbnail = np.rint(255.0 * _resized(image, THUMBNAIL_EDGE)).astype(np.uint8)
    return FilmFeatures((int(image.shape[0]), int(image.shape[1])),
                        tuple(_keypoints(image, s, upsample=True) for s in SMOOTHING), thumbnail)


def _resized(image: np.ndarray, long_edge: float) -> np.ndarray:
    """``image`` resized (anti-aliased) to a long edge of ``long_edge`` px, float64."""
    scale = long_edge / max(image.shape)
    shape = (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
    return resize(image, shape, anti_aliasing=scale < 1.0)


def leak_keypoints(leak: np.ndarray, level: int, *, mirrored: bool = False,
                   inverted: bool = False) -> KeypointSet:
    """ORB keypoints of one variant of a leak (mirrored left-right and/or inverted) at
    smoothing level ``level`` (index into :data:`SMOOTHING`); positions in px of the variant."""
    leak = np.asarray(leak, dtype=np.float64)
    return _variant_keypoints(leak, _bounds(leak), level, mirrored=mirrored, inverted=inverted)


def _variant_keypoints(leak: np.ndarray, bounds: tuple[float, float] | None, level: int, *,
                       mirrored: bool, inverted: bool) -> KeypointSet:
    """:func:`leak_keypoints` of a float64 leak whose :func:`_bounds` are known (one
    full-size 0..1 image at a time, however many variants are tried)."""
    image = _scaled(leak, bounds)
    if mirrored:
        image = image[:, ::-1]
    if inverted:
        image = 1.0 - image
    return _keypoints(image, SMOOTHING[level], upsample=False)


def _match(a: KeypointSet, b: KeypointSet) -> tuple[np.ndarray, np.ndarray]:
    """Indices (ia, ib) of keypoint pairs that pass the distance and ratio tests."""
    if len(a.descriptors) < 2 or len(b.descriptors) < 2:
        return np.zeros(0, int), np.zeros(0, int)
    xor = a.descriptors[:, None, :] ^ b.descriptors[None, :, :]
    dist = np.bitwise_count(xor).sum(axis=2, dtype=np.int32)
    order = np.argsort(dist, axis=1)[:, :2]
    rows = np.arange(len(dist))
    best, second = dist[rows, order[:, 0]], dist[rows, order[:, 1]]
    keep = (best <= MAX_HAMMING) & (best < RATIO * second)
    ia, ib = rows[keep], order[keep, 0]
    if len(ia) == 0:
        return ia, ib
    # one-to-one: each film keypoint keeps its closest leak keypoint only
    order_b = np.lexsort((best[keep], ib))
    ia, ib = ia[order_b], ib[order_b]
    first = np.r_[True, ib[1:] != ib[:-1]]
    return ia[first], ib[first]


def _fit(leak: KeypointSet, film: KeypointSet, film_shape: tuple[int, int]
         ) -> tuple[np.ndarray | None, int, int]:
    """RANSAC homography leak px -> film px: (matrix or None, inliers, matches)."""
    ia, ib = _match(leak, film)
    if len(ia) < MIN_INLIERS:
        return None, 0, len(ia)
    src, dst = leak.points[ia].astype(np.float64), film.points[ib].astype(np.float64)
    tolerance = max(2.0, 3.0 * max(film_shape) / FEATURE_EDGE)
    model, inliers = ransac((src, dst), ProjectiveTransform, min_samples=4,
                            residual_threshold=tolerance, max_trials=_RANSAC_TRIALS,
                            rng=_RANSAC_SEED)
    if model is None or inliers is None:
        return None, 0, len(ia)
    n = int(inliers.sum())
    if n >= MIN_INLIERS:  # re-fit on every inlier
        refit = ProjectiveTransform.from_estimate(src[inliers], dst[inliers])
        if refit:
            model = refit
    m = np.asarray(model.params, dtype=np.float64)
    if not np.all(np.isfinite(m)) or abs(m[2, 2]) < 1e-12:
        return None, 0, len(ia)
    a = m[:2, :2] / m[2, 2]
    if np.linalg.det(a) <= 0:  # a mirror image: the mirrored variant covers it
        return None, 0, len(ia)
    scale = linear_scale(m)
    if not 0.02 < scale < 50.0:
        return None, 0, len(ia)
    return m / m[2, 2], n, len(ia)


def register(leak: np.ndarray, films: list[FilmFeatures], *, good: int = 30
             ) -> list[tuple[int, Alignment]]:
    """Find which of ``films`` a leak shows, and where.

    Parameters
    ----------
    leak : (rows, columns) array
        The leak, grey, any scale.
    films : list of FilmFeatures
        Candidate films (from :func:`film_features`).
    good : int
        Inliers that end the search: the variants of the leak (as is, inverted, mirrored,
        both) and the smoothing levels are tried in turn until some film has this many.

    Returns
    -------
    list of (index into films, Alignment)
        Every film a homography could be fitted to (at least :data:`MIN_INLIERS` keypoint
        pairs matched), best first (by inliers). Few inliers can be chance: the caller checks
        the registered leak against the film. Empty if none is found.
    """
    leak = np.asarray(leak, dtype=np.float64)
    bounds = _bounds(leak)
    best: dict[int, Alignment] = {}
    for level in range(len(SMOOTHING)):
        index = _Index(films, level)
        for mirrored, inverted in _VARIANTS:
            variant = _variant_keypoints(leak, bounds, level, mirrored=mirrored,
                                         inverted=inverted)
            for i in index.shortlist(variant):
                m, n, n_matches = _fit(variant, films[i].sets[level], films[i].shape)
                if m is not None and (i not in best or n > best[i].inliers):
                    best[i] = Alignment(m, mirrored, inverted, n, n_matches)
            if best and max(a.inliers for a in best.values()) >= good:
                return sorted(best.items(), key=lambda item: -item[1].inliers)
    return sorted(best.items(), key=lambda item: -item[1].inliers)


def locate(leak: np.ndarray, films: list[FilmFeatures], *, top: int = 2
           ) -> list[tuple[int, Alignment]]:
    """Find which of ``films`` a leak shows, and where, by its grey levels.

    For leaks whose keypoints find nothing: a small crop of a smooth part of a film. The
    leak (as is and mirrored) is correlated, at template sizes in steps of
    ``_TEMPLATE_STEP``, with each film's thumbnail reduced to a long edge of ``_COARSE_EDGE``
    px; a negative correlation is the inverted leak. The best scale and place of the
    ``_FINE_FILMS`` best films are then refined on the full thumbnail.

    Parameters
    ----------
    leak : (rows, columns) array
        The leak, grey, any scale. No rotation is searched.
    films : list of FilmFeatures
        Candidate films; those without a thumbnail (stored by leaktrace 0.2.0) are skipped.
    top : int
        At most this many films are returned.

    Returns
    -------
    list of (index into films, Alignment)
        Films whose fine normalised cross-correlation reaches :data:`MIN_TEMPLATE_NCC` and
        is within :data:`TEMPLATE_MARGIN` of the best film's, best first; the alignment is a scale and translation (leak px -> film px, to within a
        thumbnail px), to be finished by :func:`refine`. Empty if no film matches.
        The scales tried give the leak a shorter side of at least ``_MIN_TEMPLATE`` px on
        the coarse thumbnail: a leak showing under about a quarter of a film's long edge is
        not found this way.

    Notes
    -----
    Normalised cross-correlation (Lewis, Vision Interface 1995) as computed by
    ``skimage.feature.match_template``. Chest films resemble each other, so a match is only
    a candidate: the caller registers the leak onto the original and checks it.
    """
    leak01 = _normalised(np.asarray(leak, dtype=np.float64))
    leak_shape = leak01.shape
    if max(leak01.shape) > 2 * THUMBNAIL_EDGE:  # templates are never larger than a thumbnail
        leak01 = _resized(leak01, 2 * THUMBNAIL_EDGE)
    variants = {False: leak01, True: leak01[:, ::-1]}
    templates: dict[tuple[float, bool], np.ndarray] = {}  # the same sizes recur film after film
    coarse: list[tuple[float, int, float, bool]] = []  # (ncc, film, template long edge, mirrored)
    for i, film in enumerate(films):
        if film.thumbnail is None:
            continue
        thumb = _resized(film.thumbnail / 255.0, _COARSE_EDGE)
        best = None
        for edge in _template_edges(leak01.shape, thumb.shape):
            for mirrored, image in variants.items():
                if (edge, mirrored) not in templates:
                    templates[edge, mirrored] = _resized(image, edge)
                ncc, _, _ = _best_match(thumb, templates[edge, mirrored])
                if best is None or abs(ncc) > abs(best[0]):
                    best = (ncc, i, edge, mirrored)
        if best is not None:
            coarse.append(best)
    coarse.sort(key=lambda c: -abs(c[0]))
    found = []
    for _, i, edge, mirrored in coarse[:_FINE_FILMS]:
        film = films[i]
        thumb = film.thumbnail / 255.0
        image = variants[mirrored]
        factor = max(thumb.shape) / _COARSE_EDGE
        best = None
        for step in _FINE_STEPS:
            tpl = _resized(image, edge * factor * (1.0 + step))
            if tpl.shape[0] > thumb.shape[0] or tpl.shape[1] > thumb.shape[1]:
                continue
            ncc, row, col = _best_match(thumb, tpl)
            if best is None or abs(ncc) > abs(best[0]):
                best = (ncc, row, col, tpl.shape)
        if best is None or abs(best[0]) < MIN_TEMPLATE_NCC:
            continue
        ncc, row, col, tshape = best
        # leak px -> template px (scale g) -> thumbnail px (offset) -> film px (scale k),
        # on pixel centres: X = (col + (x + 0.5) g) k - 0.5
        gy, gx = tshape[0] / leak_shape[0], tshape[1] / leak_shape[1]
        ky, kx = film.shape[0] / thumb.shape[0], film.shape[1] / thumb.shape[1]
        matrix = np.array([[gx * kx, 0.0, (col + 0.5 * gx) * kx - 0.5],
                           [0.0, gy * ky, (row + 0.5 * gy) * ky - 0.5],
                           [0.0, 0.0, 1.0]])
        found.append((i, Alignment(matrix, mirrored, bool(ncc < 0), 0, 0, abs(float(ncc)))))
    found.sort(key=lambda item: -item[1].template_ncc)
    if found:  # chest films resemble each other: keep only those about as good as the best
        floor = found[0][1].template_ncc - TEMPLATE_MARGIN
        found = [item for item in found if item[1].template_ncc >= floor]
    return found[:top]


def _template_edges(leak_shape: tuple[int, int], thumb_shape: tuple[int, int]) -> list[float]:
    """Long edges (px) of the leak templates tried on a coarse thumbnail: from a shortest
    side of ``_MIN_TEMPLATE`` px up to the largest that fits, in steps of ``_TEMPLATE_STEP``."""
    aspect = max(leak_shape) / min(leak_shape)
    smallest = _MIN_TEMPLATE * aspect
    # the template must fit: its rows and columns at most the thumbnail's
    fit = min(thumb_shape[0] / leak_shape[0], thumb_shape[1] / leak_shape[1]) * max(leak_shape)
    if fit < smallest:
        return []
    n = int(math.floor(math.log(fit / smallest) / math.log(_TEMPLATE_STEP))) + 1
    return [smallest * _TEMPLATE_STEP ** k for k in range(n)]


def _best_match(image: np.ndarray, template: np.ndarray) -> tuple[float, int, int]:
    """(ncc, row, column) of the normalised cross-correlation of largest magnitude of
    ``template`` placed inside ``image`` (top-left corner); ncc < 0: an inverted match."""
    if template.std() == 0 or template.shape[0] > image.shape[0] \
            or template.shape[1] > image.shape[1]:
        return 0.0, 0, 0
    ncc = match_template(image, template)
    k = int(np.argmax(np.abs(ncc)))
    row, col = divmod(k, ncc.shape[1])
    return float(ncc[row, col]), row, col


class _Index:
    """Every film's descriptors at one smoothing level, stacked, to vote for the films a leak
    may show before fitting homographies to a few of them.

    A leak keypoint votes for every film holding a descriptor within ``VOTE_HAMMING`` bits of
    its own (unrelated ORB descriptors differ in about 128 of 256 bits); the films with the
    most votes are fitted. There is no ratio test across films: the same film stored twice
    (two transfer syntaxes of one image) must get the votes of both.
    """

    SHORTLIST = 3  # films fitted per leak variant
    MIN_VOTES = 4
    VOTE_HAMMING = 48
    VOTERS = 500  # leak keypoints that vote (ORB's strongest first)
    _CHUNK = 64

    def __init__(self, films: list[FilmFeatures], level: int):
        sets = [(i, f.sets[level]) for i, f in enumerate(films)
                if level < len(f.sets) and len(f.sets[level].descriptors)]
        self.films = np.array([i for i, _ in sets], dtype=int)
        sizes = [len(ks.descriptors) for _, ks in sets]
        self.starts = np.r_[0, np.cumsum(sizes)[:-1]].astype(int) if sets else np.zeros(0, int)
        self.words = _words(np.concatenate([ks.descriptors for _, ks in sets])) \
            if sets else np.zeros((0, 4), np.uint64)
        self.n_films = len(films)

    def shortlist(self, leak: KeypointSet) -> list[int]:
        """Indices of the films to fit: at most ``SHORTLIST``, each with ``MIN_VOTES``."""
        if self.n_films <= self.SHORTLIST:
            return list(range(self.n_films))
        if len(self.films) == 0 or len(leak.descriptors) == 0:
            return []
        words = _words(leak.descriptors[: self.VOTERS])
        votes = np.zeros(len(self.films), int)
        for start in range(0, len(words), self._CHUNK):
            block = words[start:start + self._CHUNK]
            dist = np.zeros((len(block), len(self.words)), np.uint8)
            for w in range(4):
                dist += np.bitwise_count(block[:, w, None] ^ self.words[None, :, w])
            nearest_in_film = np.minimum.reduceat(dist, self.starts, axis=1)
            votes += (nearest_in_film <= self.VOTE_HAMMING).sum(axis=0)
        order = np.argsort(-votes, kind="stable")[: self.SHORTLIST]
        return [int(self.films[i]) for i in order if votes[i] >= self.MIN_VOTES]


def _words(descriptors: np.ndarray) -> np.ndarray:
    """(n, 32) packed uint8 descriptors as (n, 4) uint64 words."""
    return np.ascontiguousarray(descriptors, dtype=np.uint8).view(np.uint64).reshape(-1, 4)


def warp_into(leak: np.ndarray, leak_to_target: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resample a leak into a target frame.

    Parameters
    ----------
    leak : (rows, columns) array
    leak_to_target : (3, 3) array
        Homography from leak px to target px ((x, y) = (column, row)).
    shape : (rows, columns)
        Target frame.

    Returns
    -------
    (rows, columns) float64
        Bilinear samples of the leak (low-pass filtered first where the leak is larger than
        the target, against aliasing); NaN where the target is outside the leak.
    """
    leak = np.asarray(leak, dtype=np.float64)
    scale = linear_scale(leak_to_target)  # target px per leak px
    if scale < 1.0:
        leak = ndimage.gaussian_filter(leak, sigma=0.5 * (1.0 / scale - 1.0), mode="nearest")
    inverse = ProjectiveTransform(matrix=np.linalg.inv(leak_to_target))
    return warp(leak, inverse, output_shape=shape, order=1, mode="constant", cval=np.nan,
                preserve_range=True)


def _shift(reference: np.ndarray, moving: np.ndarray) -> tuple[float, float]:
    """(d_row, d_col) that moves ``moving`` onto ``reference``: the peak of their FFT
    cross-correlation (both windowed, mean removed), to a fraction of a px by fitting a
    parabola through the peak and its neighbours on each axis."""
    window = np.outer(np.hanning(reference.shape[0]), np.hanning(reference.shape[1]))
    fr = np.fft.rfft2((reference - reference.mean()) * window)
    fm = np.fft.rfft2((moving - moving.mean()) * window)
    corr = np.fft.irfft2(fr * np.conj(fm), s=reference.shape)
    peak = np.unravel_index(int(np.argmax(corr)), corr.shape)
    shift = []
    for axis, n in enumerate(corr.shape):
        at = list(peak)
        c0 = corr[tuple(at)]
        at[axis] = (peak[axis] - 1) % n
        cm = corr[tuple(at)]
        at[axis] = (peak[axis] + 1) % n
        cp = corr[tuple(at)]
        denom = cm - 2 * c0 + cp
        frac = 0.5 * (cm - cp) / denom if denom < 0 else 0.0
        s = peak[axis] + float(np.clip(frac, -0.5, 0.5))
        shift.append(s - n if s > n / 2 else s)
    return shift[0], shift[1]


def polish(image: np.ndarray, reference: np.ndarray, matrix: np.ndarray, *,
           inverted: bool = False) -> np.ndarray:
    """Make a template match's scale and place precise on the full-size reference.

    :func:`locate` works on thumbnails: its scale can be a few per cent off and its place a
    few px, too much for :func:`refine` on a leak that covers only a few of its patches.
    Here the leak is matched again, by normalised cross-correlation
    (``skimage.feature.match_template``), against the reference itself, at scales within
    10 % of the estimate (1 % steps, then 0.2 % steps around the best), each searched over
    a window around the estimated place.

    Parameters
    ----------
    image : (rows, columns) array
        The leak (already mirrored if the match was), any grey scale.
    reference : (rows, columns) float array
        The film, e.g. its default display on the working grid.
    matrix : (3, 3) array
        Scale-and-translation estimate from ``image`` px to ``reference`` px on (x, y),
        as :func:`locate` gives it (composed with any change of frame).
    inverted : bool
        The leak's grey levels are inverted with respect to the reference.

    Returns
    -------
    (3, 3) float64
        The polished scale-and-translation matrix (``matrix`` itself when no scale fits).
    """
    image01 = _normalised(np.asarray(image, dtype=np.float64))
    if inverted:
        image01 = 1.0 - image01
    reference = np.asarray(reference, dtype=np.float64)
    rows, cols = image01.shape
    ax, ay = float(matrix[0, 0]), float(matrix[1, 1])
    # the leak's centre stays where the estimate puts it while the scale varies
    centre = matrix @ [(cols - 1) / 2.0, (rows - 1) / 2.0, 1.0]
    cx, cy = centre[0] / centre[2], centre[1] / centre[2]

    def match(factor: float):
        shape = (max(2, round(rows * ay * factor)), max(2, round(cols * ax * factor)))
        if min(shape) < 16:
            return None
        tpl = resize(image01, shape, anti_aliasing=factor * max(ax, ay) < 1.0)
        gy, gx = shape[0] / rows, shape[1] / cols
        top = cy - ((rows - 1) / 2.0 + 0.5) * gy + 0.5
        left = cx - ((cols - 1) / 2.0 + 0.5) * gx + 0.5
        margin = 12 + 0.1 * max(shape)
        r0, c0 = max(0, int(top - margin)), max(0, int(left - margin))
        r1 = min(reference.shape[0], int(top + shape[0] + margin) + 1)
        c1 = min(reference.shape[1], int(left + shape[1] + margin) + 1)
        region = reference[r0:r1, c0:c1]
        if region.shape[0] < shape[0] or region.shape[1] < shape[1] or tpl.std() == 0:
            return None
        ncc = match_template(region, tpl)
        k = int(np.argmax(ncc))
        r, c = divmod(k, ncc.shape[1])
        return float(ncc[r, c]), gx, gy, r0 + r, c0 + c

    best = None
    for factors in (1.0 + np.linspace(-0.1, 0.1, 21), None):
        if factors is None:  # finer, around the best so far
            if best is None:
                return np.asarray(matrix, dtype=np.float64)
            factors = best[0] * (1.0 + np.linspace(-0.01, 0.01, 11))
        for factor in factors:
            found = match(float(factor))
            if found is not None and (best is None or found[0] > best[1][0]):
                best = (float(factor), found)
    _, (_, gx, gy, row, col) = best
    return np.array([[gx, 0.0, col + 0.5 * gx - 0.5],
                     [0.0, gy, row + 0.5 * gy - 0.5],
                     [0.0, 0.0, 1.0]])


def refine(aligned: np.ndarray, reference: np.ndarray, *, patch: int = 128) -> np.ndarray:
    """Affine correction that brings ``aligned`` onto ``reference``, from local shifts.

    Parameters
    ----------
    aligned : (rows, columns) float array
        The leak in the reference's frame and grey scale (after an intensity fit); NaN
        outside the leak.
    reference : (rows, columns) float array
        The original in the same frame.
    patch : int
        Side (px) of the square patches whose shifts are measured (cross-correlation of
        gradient magnitudes, sub-pixel by a parabola fit).

    Returns
    -------
    (3, 3) float64
        Homogeneous affine matrix acting on (x, y) of the frame: compose it after the
        leak-to-frame homography. The identity when fewer than one patch is usable; a pure
        translation with fewer than 4 patches; shifts over ``patch / 4`` px are discarded.
    """
    valid = np.isfinite(aligned)
    a = ndimage.gaussian_gradient_magnitude(np.where(valid, aligned, 0.0), 1.0)
    r = ndimage.gaussian_gradient_magnitude(np.asarray(reference, dtype=np.float64), 1.0)
    inner = ndimage.binary_erosion(valid, iterations=3)
    rows, cols = valid.shape
    src, shifts = [], []
    for top in range(0, rows - patch + 1, patch):
        for left in range(0, cols - patch + 1, patch):
            window = (slice(top, top + patch), slice(left, left + patch))
            if inner[window].mean() < 0.95 or r[window].std() == 0:
                continue
            shift = _shift(r[window], a[window])
            if np.hypot(*shift) <= patch / 4:
                src.append((left + patch / 2, top + patch / 2))
                shifts.append((shift[1], shift[0]))  # (dx, dy)
    correction = np.eye(3)
    if not src:
        return correction
    src, shifts = np.asarray(src), np.asarray(shifts)
    if len(src) < 4:
        correction[:2, 2] = np.median(shifts, axis=0)
        return correction
    design = np.c_[src, np.ones(len(src))]
    keep = np.ones(len(src), bool)
    for _ in range(2):  # least squares, then again without the patches it fits worst
        coef, *_ = np.linalg.lstsq(design[keep], shifts[keep], rcond=None)
        error = np.hypot(*(design @ coef - shifts).T)
        keep = error <= max(1.0, 2.5 * float(np.median(error)))
        if keep.sum() < 4:
            break
    correction[:2, :] += coef.T
    return correction
