"""Resizing, crops, rotations and mirroring.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from ._checks import _as_image, _choice, _number


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pillow antialiased bicubic resize of a float image to ``size`` = (rows, columns)."""
    im = Image.fromarray(image.astype(np.float32), mode="F")
    return np.asarray(im.resize((size[1], size[0]), Image.BICUBIC), dtype=np.float64)


def scale(image: np.ndarray, rng: np.random.Generator | None = None, *,
          factor: float = 0.5) -> np.ndarray:
    """Resize by ``factor`` with Pillow's bicubic filter (antialiased when shrinking).

    Parameters
    ----------
    image : (rows, columns) array
        Any grey values (not clipped; bicubic may overshoot slightly at edges).
    rng : numpy.random.Generator, optional
        Ignored.
    factor : float, (0, 16]
        Linear scale factor; each side becomes ``max(1, round(side * factor))`` px.

    Returns
    -------
    (round(rows * factor), round(columns * factor)) float64 array

    Raises
    ------
    ValueError
        ``factor`` outside (0, 16].
    """
    img = _as_image(image)
    _number("factor", factor, 0, 16, lo_open=True)
    rows, cols = img.shape
    return _resize(img, (max(1, round(rows * factor)), max(1, round(cols * factor))))


def _long_edge_size(shape: tuple[int, int], pixels: int) -> tuple[int, int]:
    rows, cols = shape
    if rows >= cols:
        return pixels, max(1, round(cols * pixels / rows))
    return max(1, round(rows * pixels / cols)), pixels


def long_edge(image: np.ndarray, rng: np.random.Generator | None = None, *,
              pixels: int = 1280) -> np.ndarray:
    """Resize (Pillow bicubic, aspect kept) so that the long edge is exactly ``pixels``.

    Shrinks or enlarges; :func:`messenger` only ever shrinks.

    Parameters
    ----------
    image : (rows, columns) array
        Any grey values.
    rng : numpy.random.Generator, optional
        Ignored.
    pixels : int, 1..20000
        Long edge in px after resizing; the short edge is rounded to keep the aspect.

    Returns
    -------
    float64 array
        Long edge exactly ``pixels``.

    Raises
    ------
    ValueError
        ``pixels`` outside 1..20000.
    """
    img = _as_image(image)
    _number("pixels", pixels, 1, 20000, integer=True)
    return _resize(img, _long_edge_size(img.shape, pixels))


def crop_top(image: np.ndarray, rng: np.random.Generator | None = None, *,
             fraction: float = 0.25) -> np.ndarray:
    """Cut off the top band (e.g. the part with the patient label).

    Parameters
    ----------
    image : (rows, columns) array
        Any grey values.
    rng : numpy.random.Generator, optional
        Ignored.
    fraction : float, [0, 1)
        Fraction of the rows removed from the top; ``round(rows * fraction)`` rows go,
        so ``1 - fraction`` of the area stays.

    Returns
    -------
    (rows - round(rows * fraction), columns) float64 array

    Raises
    ------
    ValueError
        ``fraction`` outside [0, 1) or leaving no row.
    """
    img = _as_image(image)
    _number("fraction", fraction, 0, 1, hi_open=True)
    cut = round(img.shape[0] * fraction)
    if cut >= img.shape[0]:
        raise ValueError(f"fraction {fraction} leaves no row of {img.shape[0]}")
    return img[cut:].copy()


def crop_side(image: np.ndarray, rng: np.random.Generator | None = None, *,
              fraction: float = 0.25, side: str = "left") -> np.ndarray:
    """Cut off a band on one side (left or right, as displayed).

    Parameters
    ----------
    image : (rows, columns) array
        Any grey values.
    rng : numpy.random.Generator, optional
        Ignored.
    fraction : float, [0, 1)
        Fraction of the columns removed; ``1 - fraction`` of the area stays.
    side : {"left", "right"}
        Which side is cut.

    Returns
    -------
    (rows, columns - round(columns * fraction)) float64 array

    Raises
    ------
    ValueError
        ``fraction`` outside [0, 1) or leaving no column, or unknown ``side``.
    """
    img = _as_image(image)
    _number("fraction", fraction, 0, 1, hi_open=True)
    _choice("side", side, ("left", "right"))
    cut = round(img.shape[1] * fraction)
    if cut >= img.shape[1]:
        raise ValueError(f"fraction {fraction} leaves no column of {img.shape[1]}")
    return (img[:, cut:] if side == "left" else img[:, :img.shape[1] - cut]).copy()


def crop_centre(image: np.ndarray, rng: np.random.Generator | None = None, *,
                area: float = 0.36) -> np.ndarray:
    """Keep a centred window holding ``area`` of the pixels, with the film's aspect.

    Parameters
    ----------
    image : (rows, columns) array
        Any grey values.
    rng : numpy.random.Generator, optional
        Ignored.
    area : float, (0, 1]
        Fraction of the area kept (0.36 keeps 60 % of each side; 0.25 keeps half of each).

    Returns
    -------
    (round(rows * sqrt(area)), round(columns * sqrt(area))) float64 array
        Centred (an odd remainder goes to the bottom/right margin).

    Raises
    ------
    ValueError
        ``area`` outside (0, 1].
    """
    img = _as_image(image)
    _number("area", area, 0, 1, lo_open=True)
    side = math.sqrt(area)
    rows, cols = img.shape
    h, w = max(1, round(rows * side)), max(1, round(cols * side))
    top, left = (rows - h) // 2, (cols - w) // 2
    return img[top:top + h, left:left + w].copy()


def rotate(image: np.ndarray, rng: np.random.Generator | None = None, *,
           angle: float = 3.0, expand: bool = False) -> np.ndarray:
    """Rotate about the image centre by ``angle`` degrees, counter-clockwise as displayed.

    Pillow bicubic rotation; corners that come from outside the film are black (0).

    Parameters
    ----------
    image : (rows, columns) array
        Any grey values (not clipped; bicubic may overshoot slightly).
    rng : numpy.random.Generator, optional
        Ignored.
    angle : float, [-360, 360]
        Degrees, positive = counter-clockwise on screen (rows grow downwards).
    expand : bool
        False: same shape as the input, the rotated corners are cropped (what a phone
        "straighten" or a rotated screenshot keeps). True: the canvas grows to hold the
        whole rotated film.

    Returns
    -------
    float64 array
        Same shape as ``image`` unless ``expand``.

    Raises
    ------
    ValueError
        ``angle`` outside [-360, 360].
    """
    img = _as_image(image)
    _number("angle", angle, -360, 360)
    _choice("expand", expand, (True, False))
    im = Image.fromarray(img.astype(np.float32), mode="F")
    out = im.rotate(float(angle), resample=Image.BICUBIC, expand=bool(expand), fillcolor=0.0)
    return np.asarray(out, dtype=np.float64)


def rot90(image: np.ndarray, rng: np.random.Generator | None = None, *, k: int = 1) -> np.ndarray:
    """Rotate by ``k`` quarter turns counter-clockwise (lossless, exact).

    Parameters
    ----------
    image : (rows, columns) array
        Any grey values.
    rng : numpy.random.Generator, optional
        Ignored.
    k : int, -3..3
        Number of 90-degree counter-clockwise turns.

    Returns
    -------
    float64 array
        (columns, rows) for odd ``k``, else (rows, columns); a new array.

    Raises
    ------
    ValueError
        ``k`` not an integer in -3..3.
    """
    img = _as_image(image)
    _number("k", k, -3, 3, integer=True)
    return np.ascontiguousarray(np.rot90(img, int(k)))


def mirror(image: np.ndarray, rng: np.random.Generator | None = None, *, axis: int = 1) -> np.ndarray:
    """Mirror the film (lossless, exact).

    Parameters
    ----------
    image : (rows, columns) array
        Any grey values.
    rng : numpy.random.Generator, optional
        Ignored.
    axis : {0, 1}
        1 flips left-right (columns reversed), 0 flips upside-down (rows reversed).

    Returns
    -------
    (rows, columns) float64 array
        A new array.

    Raises
    ------
    ValueError
        ``axis`` not 0 or 1.
    """
    img = _as_image(image)
    _choice("axis", axis, (0, 1))
    return np.ascontiguousarray(np.flip(img, axis=axis))
