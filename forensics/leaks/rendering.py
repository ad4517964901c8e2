"""What a viewer or an export does to the grey levels: 8- and 16-bit export, window/level and
VOI LUTs (DICOM PS3.3 C.11.2), inversion, and tone curves and filters.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage

from ._checks import _as_image, PEAK_8, PEAK_16, _choice, _need_rng, _number


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Round and clip to uint8 (an 8-bit export).

    Parameters
    ----------
    image : (rows, columns) array
        Display values, nominally 0..255.

    Returns
    -------
    (rows, columns) uint8 array
        ``clip(round(image), 0, 255)``.
    """
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def identity(image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """The control leak: a float64 copy of ``image``, unchanged.

    Parameters
    ----------
    image : (rows, columns) array
        Any grey image.
    rng : numpy.random.Generator, optional
        Ignored.

    Returns
    -------
    (rows, columns) float64 array
        A copy of ``image``.
    """
    return _as_image(image).copy()


def quantize_8bit(image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """8-bit export of a display image (what a viewer's PNG export or a screenshot holds).

    PNG is lossless, so the round trip is exactly the rounding and clipping of
    :func:`to_uint8`; no file is written.

    Parameters
    ----------
    image : (rows, columns) array
        Display values, 0..255.
    rng : numpy.random.Generator, optional
        Ignored.

    Returns
    -------
    (rows, columns) float64 array
        Integer values in 0..255.
    """
    return to_uint8(_as_image(image)).astype(np.float64)


def export16(image: np.ndarray, rng: np.random.Generator | None = None, *,
             in_peak: float | None = PEAK_8) -> np.ndarray:
    """16-bit PNG export (a viewer's "export raw / 16-bit" button), read back.

    The values are scaled so that ``in_peak`` becomes 65535, rounded, written to a 16-bit
    grey PNG with Pillow and decoded again. With ``in_peak=None`` the values are written as
    they are (raw stored values, e.g. 0..4095 of a 12-bit film), only rounded and clipped.

    Parameters
    ----------
    image : (rows, columns) array
        Display values on 0..``in_peak`` (or stored values with ``in_peak=None``).
    rng : numpy.random.Generator, optional
        Ignored.
    in_peak : float or None, default 255
        Input value mapped to 65535; must be > 0. ``None`` keeps the values.

    Returns
    -------
    (rows, columns) float64 array
        Integer values on the **0..65535 scale**. This is a terminal step: leaks after it
        that assume 0..255 would clip. :func:`output_peak` reports the scale of a pipeline.

    Raises
    ------
    ValueError
        ``in_peak`` not positive.
    """
    img = _as_image(image)
    if in_peak is not None:
        _number("in_peak", in_peak, 0, np.inf, lo_open=True, hi_open=True)
        img = img * (PEAK_16 / in_peak)
    values = np.clip(np.round(img), 0, PEAK_16).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, "PNG")
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im, dtype=np.float64)


_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def window(image: np.ndarray, rng: np.random.Generator | None = None, *,
           center: float | str, width: float, function: str = "LINEAR",
           bits: int = 8) -> np.ndarray:
    """Viewer rendering with a window: the DICOM VOI window formulas on an array.

    Works on whatever the array holds: stored or modality values of a film, or a display
    image that a viewer re-windows. ``center`` and ``width`` are in the units of ``image``.

    Parameters
    ----------
    image : (rows, columns) array
        Values to window (any range).
    rng : numpy.random.Generator, optional
        Ignored.
    center : float or "median"
        (0028,1050) *Window Center*, in input units; ``"median"`` uses the image median
        (a viewer's auto-window on the anatomy).
    width : float
        (0028,1051) *Window Width*, in input units: >= 1 for LINEAR, > 0 otherwise.
    function : {"LINEAR", "LINEAR_EXACT", "SIGMOID"}
        (0028,1056) *VOI LUT Function*.
    bits : {8, 16}
        Output depth: the result spans 0..255 or 0..65535.

    Returns
    -------
    (rows, columns) float64 array
        Continuous display values in 0..2**bits - 1 (follow with ``png8`` or ``export16``
        for the integers a file would hold).

    Raises
    ------
    ValueError
        Unknown ``function``, ``bits`` not 8/16, ``width`` below its minimum, non-finite
        ``center``.

    Notes
    -----
    With ``y_min = 0`` and ``y_max = 2**bits - 1``:

    * LINEAR: ``x <= c - 0.5 - (w - 1) / 2`` gives ``y_min``; ``x > c - 0.5 + (w - 1) / 2``
      gives ``y_max``; otherwise ``((x - (c - 0.5)) / (w - 1) + 0.5) * (y_max - y_min) + y_min``.
    * LINEAR_EXACT: ``x <= c - w / 2`` gives ``y_min``; ``x > c + w / 2`` gives ``y_max``;
      otherwise ``((x - c) / w + 0.5) * (y_max - y_min) + y_min``.
    * SIGMOID: ``(y_max - y_min) / (1 + exp(-4 (x - c) / w)) + y_min``.

    ``center=128, width=256`` (LINEAR) is the identity on 0..255 display values.

    References
    ----------
    .. [1] DICOM PS3.3, C.11.2.1.2.1 "General Requirements for Window Center and Window
       Width" (LINEAR) and C.11.2.1.3.1 "VOI LUT Function" (LINEAR_EXACT, SIGMOID).
       https://dicom.nema.org/medical/dicom/current/output/chtml/part03/sect_C.11.2.html
    """
    x = _as_image(image)
    _choice("function", function, _VOI_FUNCTIONS)
    _choice("bits", bits, (8, 16))
    if isinstance(center, str):
        _choice("center", center, ("median",))
        c = float(np.median(x))
    else:
        c = float(_number("center", center, -np.inf, np.inf, lo_open=True, hi_open=True))
    if function == "LINEAR":
        w = float(_number("width", width, 1, np.inf, hi_open=True))
    else:
        w = float(_number("width", width, 0, np.inf, lo_open=True, hi_open=True))
    y_max = float(2 ** bits - 1)
    if function == "LINEAR":
        if w == 1:  # a threshold: the formula's division by (w - 1) never runs
            return np.where(x > c - 0.5, y_max, 0.0)
        y = ((x - (c - 0.5)) / (w - 1) + 0.5) * y_max
        y = np.where(x <= c - 0.5 - (w - 1) / 2, 0.0, y)
        return np.where(x > c - 0.5 + (w - 1) / 2, y_max, y)
    if function == "LINEAR_EXACT":
        y = ((x - c) / w + 0.5) * y_max
        y = np.where(x <= c - w / 2, 0.0, y)
        return np.where(x > c + w / 2, y_max, y)
    with np.errstate(over="ignore"):  # exp overflow far below the centre gives 0, as it should
        return y_max / (1.0 + np.exp(-4.0 * (x - c) / w))


def voi_lut(image: np.ndarray, rng: np.random.Generator | None = None, *,
            lut: np.ndarray, first_mapped: int, lut_bits: int | None = None,
            bits: int = 8) -> np.ndarray:
    """Viewer rendering through a VOI LUT Sequence item (a look-up table instead of a window).

    Parameters
    ----------
    image : (rows, columns) array
        Stored (or modality) values; they are rounded to integers before the look-up.
    rng : numpy.random.Generator, optional
        Ignored.
    lut : (n,) array of non-negative integers
        (0028,3006) *LUT Data*: entry ``i`` is the output for input ``first_mapped + i``.
    first_mapped : int
        Second value of (0028,3002) *LUT Descriptor*: the first input value mapped.
    lut_bits : int, optional
        Third value of the *LUT Descriptor*, bits per LUT entry (8..16). If omitted: 8 when
        every entry is below 256, else 16 (the two values the standard uses).
    bits : {8, 16}
        Output depth: the LUT output range 0..2**lut_bits - 1 is stretched onto
        0..2**bits - 1.

    Returns
    -------
    (rows, columns) float64 array
        Display values in 0..2**bits - 1.

    Raises
    ------
    ValueError
        Empty or non-1-D ``lut``, entries outside 0..2**lut_bits - 1, bad ``lut_bits``,
        ``bits`` or ``first_mapped``.

    Notes
    -----
    Inputs below ``first_mapped`` take the first entry, inputs above the last mapped value
    take the last entry.

    References
    ----------
    .. [1] DICOM PS3.3, C.11.2.1.1 "VOI LUT Sequence Attributes" and C.11.1.1.1 "LUT
       Descriptor". https://dicom.nema.org/medical/dicom/current/output/chtml/part03/sect_C.11.2.html
    """
    x = _as_image(image)
    table = np.asarray(lut)
    if table.ndim != 1 or table.size == 0:
        raise ValueError(f"lut must be a non-empty 1-D array, got shape {table.shape}")
    if not np.issubdtype(table.dtype, np.number) or np.any(table < 0) \
            or np.any(table != np.round(table)):
        raise ValueError("lut entries must be non-negative integers")
    _number("first_mapped", first_mapped, -2 ** 31, 2 ** 31, integer=True)
    _choice("bits", bits, (8, 16))
    if lut_bits is None:
        lut_bits = 8 if table.max() < 256 else 16
    _number("lut_bits", lut_bits, 8, 16, integer=True)
    if table.max() > 2 ** lut_bits - 1:
        raise ValueError(f"lut entries must be in 0..{2 ** lut_bits - 1} for lut_bits="
                         f"{lut_bits}, got maximum {table.max()}")
    index = np.clip(np.round(x) - first_mapped, 0, table.size - 1).astype(np.intp)
    out = table.astype(np.float64)[index]
    return out * ((2 ** bits - 1) / (2 ** lut_bits - 1))


def invert(image: np.ndarray, rng: np.random.Generator | None = None, *,
           peak: float = PEAK_8) -> np.ndarray:
    """Inverted display (``peak - image``), as a viewer's invert button or MONOCHROME1.

    Parameters
    ----------
    image : (rows, columns) array
        Display values on 0..``peak``.
    rng : numpy.random.Generator, optional
        Ignored.
    peak : float, default 255
        White level.

    Returns
    -------
    (rows, columns) float64 array
        ``peak - image``.
    """
    return _number("peak", peak, 0, np.inf, lo_open=True, hi_open=True) - _as_image(image)


def gamma(image: np.ndarray, rng: np.random.Generator | None = None, *,
          value: float = 0.7) -> np.ndarray:
    """Gamma curve ``255 * (image / 255) ** value`` (values < 1 brighten the mid-tones).

    Parameters
    ----------
    image : (rows, columns) array
        Display values; clipped to 0..255 first.
    rng : numpy.random.Generator, optional
        Ignored.
    value : float, (0, 10]
        Exponent.

    Returns
    -------
    (rows, columns) float64 array
        Continuous values in 0..255.

    Raises
    ------
    ValueError
        ``value`` outside (0, 10].
    """
    img = _as_image(image)
    _number("value", value, 0, 10, lo_open=True)
    return 255.0 * (np.clip(img, 0, 255) / 255.0) ** value


def brightness(image: np.ndarray, rng: np.random.Generator | None = None, *,
               offset: float = 20.0) -> np.ndarray:
    """Brightness change: add ``offset`` grey levels, clipped to 0..255.

    Parameters
    ----------
    image : (rows, columns) array
        Display values, 0..255.
    rng : numpy.random.Generator, optional
        Ignored.
    offset : float, [-255, 255]
        Grey levels added (negative darkens).

    Returns
    -------
    (rows, columns) float64 array
        Values in 0..255.

    Raises
    ------
    ValueError
        ``offset`` outside [-255, 255].
    """
    img = _as_image(image)
    _number("offset", offset, -255, 255)
    return np.clip(img + offset, 0, 255)


def contrast(image: np.ndarray, rng: np.random.Generator | None = None, *,
             factor: float = 1.3) -> np.ndarray:
    """Contrast change about the image's mean grey, clipped to 0..255.

    ``mean + factor * (image - mean)``: the same pivot as Pillow's
    ``ImageEnhance.Contrast``, which photo editors resemble.

    Parameters
    ----------
    image : (rows, columns) array
        Display values, 0..255.
    rng : numpy.random.Generator, optional
        Ignored.
    factor : float, [0, 10]
        1 leaves the image unchanged, < 1 flattens, > 1 steepens.

    Returns
    -------
    (rows, columns) float64 array
        Values in 0..255.

    Raises
    ------
    ValueError
        ``factor`` outside [0, 10].
    """
    img = _as_image(image)
    _number("factor", factor, 0, 10)
    mean = img.mean()
    return np.clip(mean + factor * (img - mean), 0, 255)


def blur(image: np.ndarray, rng: np.random.Generator | None = None, *,
         sigma: float = 1.0) -> np.ndarray:
    """Gaussian blur (SciPy ``gaussian_filter``, edges extended by the nearest pixel).

    Parameters
    ----------
    image : (rows, columns) array
        Any grey values.
    rng : numpy.random.Generator, optional
        Ignored.
    sigma : float, [0, 50]
        Standard deviation in px.

    Returns
    -------
    (rows, columns) float64 array

    Raises
    ------
    ValueError
        ``sigma`` outside [0, 50].
    """
    img = _as_image(image)
    _number("sigma", sigma, 0, 50)
    return ndimage.gaussian_filter(img, sigma, mode="nearest")


def noise(image: np.ndarray, rng: np.random.Generator | None = None, *,
          sigma: float = 2.0) -> np.ndarray:
    """Additive white Gaussian noise, clipped to 0..255.

    Parameters
    ----------
    image : (rows, columns) array
        Display values, 0..255.
    rng : numpy.random.Generator
        Required; draws the noise.
    sigma : float, [0, 255]
        Standard deviation in grey levels.

    Returns
    -------
    (rows, columns) float64 array
        Values in 0..255.

    Raises
    ------
    ValueError
        ``sigma`` outside [0, 255] or no Generator.
    """
    img = _as_image(image)
    _number("sigma", sigma, 0, 255)
    gen = _need_rng(rng, "noise")
    return np.clip(img + gen.normal(0.0, sigma, img.shape), 0, 255)


def sharpen(image: np.ndarray, rng: np.random.Generator | None = None, *,
            amount: float = 1.0, radius: float = 1.0) -> np.ndarray:
    """Unsharp mask: ``image + amount * (image - gaussian(image, radius))``, clipped to 0..255.

    Parameters
    ----------
    image : (rows, columns) array
        Display values, 0..255.
    rng : numpy.random.Generator, optional
        Ignored.
    amount : float, [0, 10]
        Gain of the detail added back.
    radius : float, (0, 20]
        Gaussian standard deviation in px.

    Returns
    -------
    (rows, columns) float64 array
        Values in 0..255.

    Raises
    ------
    ValueError
        ``amount`` or ``radius`` outside the stated ranges.

    References
    ----------
    .. [1] R. C. Gonzalez and R. E. Woods, *Digital Image Processing*, 4th ed., Pearson,
       2018, section 3.6 "Sharpening (highpass) spatial filters" (unsharp masking).
    """
    img = _as_image(image)
    _number("amount", amount, 0, 10)
    _number("radius", radius, 0, 20, lo_open=True)
    detail = img - ndimage.gaussian_filter(img, radius, mode="nearest")
    return np.clip(img + amount * detail, 0, 255)
