"""Leak simulations: what happens to a film between the viewer and social media.

Each simulation is a small function ``f(image, rng, **params) -> image``. ``image`` is a grey
(rows, columns) array; display-domain images are on a 0..255 scale (what a viewer shows), and
the DICOM-side functions take stored values (0 .. 2**BitsStored - 1). Every function returns a
new float64 array holding the values the decoded file would contain (codec outputs are integer
valued) and never modifies its input. ``rng`` is an explicit :class:`numpy.random.Generator`;
the random leaks (:func:`noise`, :func:`screen_photo`) require it, the others accept and ignore
it, so every run is reproducible from one seed. Arrays are indexed (row, column); geometry that
uses (x, y) says so.

Codecs are other people's: Pillow (libjpeg-turbo, libwebp, libpng) for JPEG, WebP and PNG, and
pydicom's encoder plugin (pylibjpeg-openjpeg) for JPEG 2000. Resampling is Pillow's, warping is
scikit-image's and filtering is SciPy's. No codec is written here.

Groups of leaks
---------------
viewer / VOI
    :func:`window` (LINEAR, LINEAR_EXACT, SIGMOID), :func:`voi_lut`, :func:`invert`,
    :func:`quantize_8bit` (8-bit PNG), :func:`export16` (16-bit PNG).
screenshot
    :func:`screenshot` with :func:`film_box` telling where the film was drawn.
messenger
    :func:`messenger`, :func:`jpeg`, :func:`webp`, :func:`scale`, :func:`long_edge`.
crops and geometry
    :func:`crop_top`, :func:`crop_side`, :func:`crop_centre`, :func:`rotate`, :func:`rot90`,
    :func:`mirror`.
tone and filters
    :func:`gamma`, :func:`brightness`, :func:`contrast`, :func:`blur`, :func:`noise`,
    :func:`sharpen`.
camera
    :func:`screen_photo`.
DICOM side
    :func:`dicom_jpeg`, :func:`dicom_j2k`, :func:`dicom_dcmtk_jpeg` (arrays) and
    :func:`write_lossy_dicom` (files).

Registry and pipelines
----------------------
:data:`LEAKS` maps a name to ``(function, parameters)``. Apart from the eight original short
names (``identity``, ``png8``, ``jpeg``, ``webp``, ``scale``, ``long_edge``, ``invert``,
``gamma``, which run the function's defaults), every name is built from its parameters by
:func:`leak_name` (``jpeg_q30`` runs quality 30, ``crop_centre_keep36pct`` keeps 36 % of the
area), so a name cannot disagree with what it runs. A pipeline is a list of
``(leak name, parameter overrides)`` run by :func:`apply`; :data:`PIPELINES` holds the named
pipelines of the benchmark and :data:`STRETCH` marks the harder ones. Adding a leak is one
function plus one registry line; tests and benchmarks iterate the registry.
"""

from __future__ import annotations

import copy
import io
import math
import numbers
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

if TYPE_CHECKING:  # pragma: no cover
    from os import PathLike

    from pydicom.dataset import Dataset

__all__ = [
    "LEAKS", "PIPELINES", "STRETCH", "PEAK_8", "PEAK_16",
    "apply", "leak_name", "output_peak", "save_image",
    "to_uint8", "identity", "quantize_8bit", "export16", "window", "voi_lut", "invert",
    "film_box", "screenshot",
    "jpeg", "webp", "scale", "long_edge", "messenger",
    "crop_top", "crop_side", "crop_centre", "rotate", "rot90", "mirror",
    "gamma", "brightness", "contrast", "blur", "noise", "sharpen",
    "screen_photo",
    "dicom_jpeg", "dicom_j2k", "dicom_dcmtk_jpeg", "write_lossy_dicom",
]

PEAK_8 = 255.0
"""Peak of the 8-bit display scale (white)."""
PEAK_16 = 65535.0
"""Peak of the 16-bit scale used by :func:`export16` and ``bits=16`` rendering."""


# --------------------------------------------------------------------------- checks


def _as_image(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as a 2-D float64 array (no copy when it already is one).

    Callers must treat the result as read-only: it may be the caller's own array.
    """
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"image must be a non-empty 2-D (rows, columns) grey array, "
                         f"got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("image contains NaN or infinite values")
    return arr


def _number(name: str, value, lo: float, hi: float, *, lo_open: bool = False,
            hi_open: bool = False, integer: bool = False) -> float:
    """Check that ``value`` is a real (or integer) number in the stated interval."""
    kind = numbers.Integral if integer else numbers.Real
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    allowed = f"{'an integer' if integer else 'a number'} in {left}{lo:g}, {hi:g}{right}"
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    ok_lo = value > lo if lo_open else value >= lo
    ok_hi = value < hi if hi_open else value <= hi
    if not (ok_lo and ok_hi and math.isfinite(value)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def _choice(name: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _need_rng(rng, who: str) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"{who} is random and needs an explicit numpy.random.Generator "
                         f"(e.g. numpy.random.default_rng(seed)), got {rng!r}")
    return rng


# --------------------------------------------------------------------------- 8-bit / 16-bit export


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


# --------------------------------------------------------------------------- viewer / VOI

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


# --------------------------------------------------------------------------- screenshot

_BANNER_PX = 28   # top bar: patient-like banner
_TOOLBAR_PX = 36  # second bar: tool buttons
_STATUS_PX = 26   # bottom bar: W/L readout
_UI_GREY = 48     # bar colour
_TEXT_GREY = 210  # text colour
_BANNER_TEXT = "DOE^JANE   ID 00412377   F 1968-03-02   CHEST PA   2024-05-14 09:41   ACC 7731902"
_TOOLBAR_TEXT = "File   View   Zoom   Pan   W/L   Invert   Rotate   Measure   Annotate   Export"


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def film_box(image_shape: tuple[int, ...], layout: str = "1up",
             screen: tuple[int, int] = (1080, 1920), margin: int = 40, *, ui: bool = True,
             cell: int = 0) -> tuple[int, int, int, int]:
    """Where :func:`screenshot` draws a film: ``(top, left, height, width)`` in screen pixels.

    The screen (rows, columns) loses, with ``ui``, a banner and a toolbar at the top and a
    status bar at the bottom (28 + 36 and 26 px); the rest is the black viewer pane. The pane
    is inset by ``margin`` on every side; ``"2up"`` splits it into two equal cells, ``margin``
    apart. The film is scaled, aspect kept, to fit its cell (up or down, like a viewer's "fit
    to window") and centred in it.

    Parameters
    ----------
    image_shape : tuple
        (rows, columns) of the film.
    layout : {"1up", "2up"}
        One film, or two side by side.
    screen : (int, int)
        Screen size (rows, columns) in px.
    margin : int
        Black gap in px around the films and between the cells.
    ui : bool
        Whether the UI bars take space.
    cell : int
        0 (the film, left cell) or 1 (the other film in ``"2up"``, right cell).

    Returns
    -------
    (int, int, int, int)
        ``(top, left, height, width)`` of the scaled film: rows ``top:top+height`` and
        columns ``left:left+width`` of the screenshot hold it.

    Raises
    ------
    ValueError
        Unknown ``layout``, ``cell`` not valid for it, bad ``screen``/``margin``, or a cell
        smaller than 16 px.
    """
    _choice("layout", layout, ("1up", "2up"))
    cells = 1 if layout == "1up" else 2
    _choice("cell", cell, tuple(range(cells)))
    if len(screen) != 2:
        raise ValueError(f"screen must be (rows, columns), got {screen!r}")
    s_rows = _number("screen rows", screen[0], 64, 20000, integer=True)
    s_cols = _number("screen columns", screen[1], 64, 20000, integer=True)
    _number("margin", margin, 0, 10000, integer=True)
    rows, cols = int(image_shape[0]), int(image_shape[1])
    if rows < 1 or cols < 1:
        raise ValueError(f"image_shape must be positive (rows, columns), got {image_shape!r}")
    top_bar = _BANNER_PX + _TOOLBAR_PX if ui else 0
    inner_top = top_bar + margin
    inner_h = s_rows - top_bar - (_STATUS_PX if ui else 0) - 2 * margin
    cell_w = (s_cols - 2 * margin - (cells - 1) * margin) // cells
    if inner_h < 16 or cell_w < 16:
        raise ValueError(f"screen {screen!r} with margin {margin} leaves a {inner_h} x {cell_w} "
                         f"px cell; at least 16 x 16 is needed")
    cell_left = margin + cell * (cell_w + margin)
    factor = min(inner_h / rows, cell_w / cols)
    height = min(inner_h, max(1, round(rows * factor)))
    width = min(cell_w, max(1, round(cols * factor)))
    return (inner_top + (inner_h - height) // 2, cell_left + (cell_w - width) // 2, height, width)


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pillow antialiased bicubic resize of a float image to ``size`` = (rows, columns)."""
    im = Image.fromarray(image.astype(np.float32), mode="F")
    return np.asarray(im.resize((size[1], size[0]), Image.BICUBIC), dtype=np.float64)


def screenshot(image: np.ndarray, rng: np.random.Generator | None = None, *,
               layout: str = "1up", screen: tuple[int, int] = (1080, 1920), margin: int = 40,
               ui: bool = True, other: np.ndarray | None = None) -> np.ndarray:
    """Screenshot of a viewer showing the film: the whole screen as an 8-bit grey image.

    The film is resized (Pillow bicubic, antialiased when shrinking) into the box given by
    :func:`film_box` on a black viewer pane. With ``ui``, dark grey bars carry a
    patient-like banner, a toolbar and a window/level readout, and text overlays sit in the
    pane corners (Pillow's default font); overlays are drawn last, so they cover the film
    wherever they overlap it. ``"2up"`` shows ``other`` (or, if None, a left-right mirrored
    copy of the film, as in a comparison layout) in the right cell.

    Parameters
    ----------
    image : (rows, columns) array
        Display values, 0..255.
    rng : numpy.random.Generator, optional
        Ignored (the screen content is deterministic).
    layout : {"1up", "2up"}
        One film or two side by side.
    screen : (int, int)
        Screen size (rows, columns) in px; default full HD.
    margin : int
        Black gap in px around the films.
    ui : bool
        Draw the UI bars and text.
    other : (rows2, columns2) array, optional
        Second film for ``"2up"`` (display values 0..255; any size).

    Returns
    -------
    (screen rows, screen columns) float64 array
        Integer values 0..255: the 8-bit screen buffer.

    Raises
    ------
    ValueError
        Bad ``layout``, ``screen``, ``margin`` or ``other``, see :func:`film_box`.
    """
    img = _as_image(image)
    _choice("ui", ui, (True, False))
    films = [img]
    if layout == "2up":
        films.append(np.fliplr(img) if other is None else _as_image(other))
    elif other is not None:
        raise ValueError("other is only used with layout='2up'")
    boxes = [film_box(f.shape, layout, screen, margin, ui=ui, cell=i) for i, f in enumerate(films)]
    canvas = np.zeros(tuple(screen), dtype=np.float64)
    for f, (top, left, h, w) in zip(films, boxes):
        canvas[top:top + h, left:left + w] = _resize(f, (h, w))
    shot = Image.fromarray(to_uint8(canvas))
    if ui:
        rows, cols = screen
        draw = ImageDraw.Draw(shot)
        font = _font(14)
        small = _font(12)
        draw.rectangle([0, 0, cols - 1, _BANNER_PX - 1], fill=_UI_GREY)
        draw.rectangle([0, _BANNER_PX, cols - 1, _BANNER_PX + _TOOLBAR_PX - 1], fill=_UI_GREY + 14)
        draw.rectangle([0, rows - _STATUS_PX, cols - 1, rows - 1], fill=_UI_GREY)
        draw.text((10, 6), _BANNER_TEXT, fill=_TEXT_GREY, font=font)
        draw.text((10, _BANNER_PX + 10), _TOOLBAR_TEXT, fill=_TEXT_GREY, font=font)
        top, left, h, w = boxes[0]
        zoom = 100.0 * h / img.shape[0]
        draw.text((10, rows - _STATUS_PX + 6),
                  f"WL: 128  WW: 256   Zoom: {zoom:.0f}%   Im: 1/{len(films)}   Se: 1",
                  fill=_TEXT_GREY, font=font)
        pane_top = _BANNER_PX + _TOOLBAR_PX
        draw.text((8, pane_top + 6), f"DOE^JANE\nCHEST PA\nIm 1/{len(films)}", fill=_TEXT_GREY, font=small)
        draw.text((cols - 150, rows - _STATUS_PX - 40), f"W 256 L 128\nZoom {zoom:.0f}%",
                  fill=_TEXT_GREY, font=small)
    return np.asarray(shot, dtype=np.float64)


# --------------------------------------------------------------------------- codecs and resizing


def _codec(image: np.ndarray, fmt: str, **save) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buf, fmt, **save)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("L"), dtype=np.float64)


def _colour_jpeg(grey8: Image.Image, quality: int) -> np.ndarray:
    """Grey 8-bit image sent as RGB JPEG with 4:2:0 chroma, read back as luma."""
    buf = io.BytesIO()
    grey8.convert("RGB").save(buf, "JPEG", quality=quality, subsampling=2)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("L"), dtype=np.float64)


def jpeg(image: np.ndarray, rng: np.random.Generator | None = None, *, quality: int = 75,
         colour: bool = False) -> np.ndarray:
    """JPEG round trip (Pillow / libjpeg-turbo, baseline, standard tables scaled by quality).

    Parameters
    ----------
    image : (rows, columns) array
        Display values, 0..255 (rounded and clipped to 8 bits first).
    rng : numpy.random.Generator, optional
        Ignored.
    quality : int, 1..100
        libjpeg quality factor.
    colour : bool
        False: a one-component grey JPEG. True: sent as RGB with 4:2:0 chroma subsampling,
        as messengers do, and read back as luma (ITU-R 601 weights, Pillow ``convert("L")``).

    Returns
    -------
    (rows, columns) float64 array
        Decoded integer values 0..255.

    Raises
    ------
    ValueError
        ``quality`` outside 1..100.
    """
    img = _as_image(image)
    _number("quality", quality, 1, 100, integer=True)
    if colour:
        return _colour_jpeg(Image.fromarray(to_uint8(img)), quality)
    return _codec(img, "JPEG", quality=quality)


def webp(image: np.ndarray, rng: np.random.Generator | None = None, *,
         quality: int = 75) -> np.ndarray:
    """Lossy WebP round trip at ``quality`` (Pillow / libwebp; YUV 4:2:0 internally).

    Parameters
    ----------
    image : (rows, columns) array
        Display values, 0..255 (rounded and clipped to 8 bits first).
    rng : numpy.random.Generator, optional
        Ignored.
    quality : int, 0..100
        libwebp quality.

    Returns
    -------
    (rows, columns) float64 array
        Decoded integer values 0..255.

    Raises
    ------
    ValueError
        ``quality`` outside 0..100.
    """
    img = _as_image(image)
    _number("quality", quality, 0, 100, integer=True)
    return _codec(img, "WEBP", quality=quality)


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


def messenger(image: np.ndarray, rng: np.random.Generator | None = None, *,
              long_edge: int = 1280, quality: int = 70, fmt: str = "jpeg") -> np.ndarray:
    """A messenger re-sending a picture: shrink to a long edge, then recompress.

    The 8-bit picture is shrunk (never enlarged) with Pillow's antialiased bicubic filter so
    that its long edge is at most ``long_edge`` px, then sent either as a colour JPEG with
    4:2:0 chroma subsampling (read back as luma) or as lossy WebP. Typical services use long
    edges of 1600, 1280, 1024, 800 or 512 px and JPEG qualities of 40..85.

    Parameters
    ----------
    image : (rows, columns) array
        Display values, 0..255 (rounded to 8 bits first, as the sent file is).
    rng : numpy.random.Generator, optional
        Ignored.
    long_edge : int, 16..20000
        Maximum long edge in px.
    quality : int, 1..100
        JPEG (libjpeg) or WebP (libwebp) quality.
    fmt : {"jpeg", "webp"}
        Output format.

    Returns
    -------
    float64 array
        Decoded integer values 0..255, long edge ``min(long_edge, max(rows, columns))``.

    Raises
    ------
    ValueError
        Parameters outside the stated ranges.
    """
    img = _as_image(image)
    _number("long_edge", long_edge, 16, 20000, integer=True)
    _number("quality", quality, 1, 100, integer=True)
    _choice("fmt", fmt, ("jpeg", "webp"))
    pic = Image.fromarray(to_uint8(img))
    if max(img.shape) > long_edge:
        rows, cols = _long_edge_size(img.shape, long_edge)
        pic = pic.resize((cols, rows), Image.BICUBIC)
    if fmt == "jpeg":
        return _colour_jpeg(pic, quality)
    return _codec(np.asarray(pic), "WEBP", quality=quality)


# --------------------------------------------------------------------------- crops and geometry


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


# --------------------------------------------------------------------------- tone and filters


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


# --------------------------------------------------------------------------- screen photo


def _projective(src: np.ndarray, dst: np.ndarray):
    """A ProjectiveTransform mapping (N, 2) (x, y) points ``src`` onto ``dst``."""
    from skimage.transform import ProjectiveTransform

    if hasattr(ProjectiveTransform, "from_estimate"):  # scikit-image >= 0.26
        tform = ProjectiveTransform.from_estimate(src, dst)
        if not isinstance(tform, ProjectiveTransform):
            raise RuntimeError(f"perspective estimation failed: {tform}")
        return tform
    tform = ProjectiveTransform()
    if not tform.estimate(src, dst):
        raise RuntimeError("perspective estimation failed")
    return tform


def screen_photo(image: np.ndarray, rng: np.random.Generator | None = None, *,
                 strength: float = 0.5) -> np.ndarray:
    """A phone photo of the screen showing the film (camera capture of a display).

    Steps, in the order light takes them:

    1. **Screen tone**: a random gamma (``1 +- 0.25 * strength``) and a raised black level
       (up to ``20 * strength`` grey levels; a lit screen is never black in a photo).
    2. **Perspective**: each corner moves independently by up to ``5 % * strength`` of the
       image size (skimage ``ProjectiveTransform`` + bilinear ``warp``); the uncovered border
       is the dark bezel (grey 10). The output keeps the input's shape.
    3. **Optics**: Gaussian blur with ``sigma = 0.3 + 1.2 * strength`` px.
    4. **Moire**: the screen's pixel grid, with a pitch slightly larger than the sensor's
       (0.94..0.985 sensor px per screen px) and slightly rotated (+-2 degrees), is sampled
       at the sensor's pixel centres; aliasing folds it to the low-frequency beat pattern
       (period about 15..65 px) seen on screen photos. Two orthogonal gratings (the grid's rows
       and columns) modulate the image multiplicatively by ``+- 4 % * strength``.
    5. **Exposure**: a random gain of ``1 +- 0.15 * strength``.
    6. **Sensor noise**: Poisson-Gaussian, standard deviation ``sqrt(a * y + b**2)`` with
       ``a = 0.3 * strength`` and ``b = 1.5 * strength`` grey levels.
    7. **Phone JPEG**: colour JPEG quality 85 with 4:2:0 chroma, read back as luma.

    Parameters
    ----------
    image : (rows, columns) array
        Display values, 0..255.
    rng : numpy.random.Generator
        Required; draws every random choice above.
    strength : float, [0, 1]
        0 leaves only the JPEG; 1 is a careless hand-held photo.

    Returns
    -------
    (rows, columns) float64 array
        Decoded integer values 0..255.

    Raises
    ------
    ValueError
        ``strength`` outside [0, 1] or no Generator.

    References
    ----------
    .. [1] I. Amidror, *The Theory of the Moire Phenomenon, Vol. I: Periodic Layers*, 2nd
       ed., Springer, 2009, doi:10.1007/978-1-84882-181-1 (beat of superposed gratings).
    .. [2] H. Fang, W. Zhang, H. Zhou, H. Cui and N. Yu, "Screen-Shooting Resilient
       Watermarking", IEEE Trans. Inf. Forensics Security 14(6):1403-1418, 2019,
       doi:10.1109/TIFS.2018.2878541 (lens, light-source and moire distortions).
    .. [3] A. Foi, M. Trimeche, V. Katkovnik and K. Egiazarian, "Practical
       Poissonian-Gaussian Noise Modeling and Fitting for Single-Image Raw-Data", IEEE Trans.
       Image Process. 17(10):1737-1754, 2008, doi:10.1109/TIP.2008.2001399.
    """
    from skimage.transform import warp

    img = _as_image(image)
    s = float(_number("strength", strength, 0, 1))
    gen = _need_rng(rng, "screen_photo")
    rows, cols = img.shape
    # 1. screen tone
    g = 1.0 + s * gen.uniform(-0.25, 0.25)
    black = s * gen.uniform(5.0, 20.0)
    y = black + (255.0 - black) * (np.clip(img, 0, 255) / 255.0) ** g
    # 2. perspective, in (x, y) = (column, row) coordinates
    corners = np.array([[0, 0], [cols - 1, 0], [cols - 1, rows - 1], [0, rows - 1]], float)
    jitter = gen.uniform(-1.0, 1.0, size=(4, 2)) * 0.05 * s * np.array([cols, rows])
    # warp wants the map from output to input coordinates: estimate it that way round
    tform = _projective(corners + jitter, corners)
    y = warp(y, tform, output_shape=img.shape, order=1, mode="constant", cval=10.0,
             preserve_range=True)
    # 3. optics
    y = ndimage.gaussian_filter(y, 0.3 + 1.2 * s, mode="nearest")
    # 4. moire: screen grid sampled by the sensor
    theta = np.deg2rad(gen.uniform(-2.0, 2.0))
    pitch = gen.uniform(0.94, 0.985, size=2)
    phase = gen.uniform(0.0, 2 * np.pi, size=2)
    r, c = np.mgrid[0:rows, 0:cols].astype(np.float64)
    u = c * np.cos(theta) + r * np.sin(theta)
    v = -c * np.sin(theta) + r * np.cos(theta)
    grid = 0.5 * (np.cos(2 * np.pi * u / pitch[0] + phase[0])
                  + np.cos(2 * np.pi * v / pitch[1] + phase[1]))
    y = y * (1.0 + 0.04 * s * grid)
    # 5. exposure
    y = y * (1.0 + s * gen.uniform(-0.15, 0.15))
    # 6. sensor noise (Poisson-Gaussian, Gaussian approximation)
    sd = np.sqrt(0.3 * s * np.clip(y, 0, None) + (1.5 * s) ** 2)
    y = y + sd * gen.standard_normal(y.shape)
    # 7. phone JPEG
    return _colour_jpeg(Image.fromarray(to_uint8(y)), 85)


# --------------------------------------------------------------------------- DICOM side


def _stored(image: np.ndarray, bits_stored: int | None) -> tuple[np.ndarray, int]:
    """Round to stored values, infer or check BitsStored, return (uint8/uint16 array, bits)."""
    img = np.round(_as_image(image))
    lo, hi = img.min(), img.max()
    if bits_stored is None:
        bits_stored = 8 if hi <= 255 else int(hi).bit_length()
    _number("bits_stored", bits_stored, 1, 16, integer=True)
    top = 2 ** bits_stored - 1
    if lo < 0 or hi > top:
        raise ValueError(f"stored values must be in 0..{top} for bits_stored={bits_stored} "
                         f"(unsigned, (0028,0103) Pixel Representation 0), got {lo:g}..{hi:g}")
    return img.astype(np.uint8 if bits_stored <= 8 else np.uint16), int(bits_stored)


def _jpeg8_bytes(values8: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(values8).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def dicom_jpeg(image: np.ndarray, rng: np.random.Generator | None = None, *,
               quality: int = 80, bits_stored: int | None = None) -> np.ndarray:
    """A PACS re-compressing the film's stored values as lossy JPEG (ISO 10918-1), decoded.

    8-bit data is a one-component JPEG Baseline (1.2.840.10008.1.2.4.50) round trip with
    Pillow. Deeper data would need JPEG Extended 12-bit (1.2.840.10008.1.2.4.51), which no
    available encoder writes: pydicom 3.0 has no JPEG encoder at all (its encoders cover
    RLE, JPEG-LS and JPEG 2000) and Pillow's libjpeg interface is 8-bit only. So >8-bit data
    is modelled as a PACS that down-converts to JPEG Baseline 8-bit: values are scaled to
    0..255, rounded, JPEG-coded, decoded and scaled back (rounded) to the stored range. The
    extra loss is the 8-bit requantisation, which such a PACS also causes.

    Parameters
    ----------
    image : (rows, columns) array
        Stored values, unsigned, 0..2**bits_stored - 1 (rounded to integers first). A display
        image (0..255) is treated as 8-bit stored values.
    rng : numpy.random.Generator, optional
        Ignored.
    quality : int, 1..100
        libjpeg quality factor.
    bits_stored : int, optional
        (0028,0101) *Bits Stored*, 1..16. Default: 8 if the maximum is <= 255, else the
        bit length of the maximum.

    Returns
    -------
    (rows, columns) float64 array
        Decoded integer stored values in 0..2**bits_stored - 1.

    Raises
    ------
    ValueError
        ``quality`` outside 1..100, bad ``bits_stored``, or values outside its range.

    References
    ----------
    .. [1] DICOM PS3.5, section 8.2.1 "JPEG Image Compression" and Table 8.2.1-1.
    """
    _number("quality", quality, 1, 100, integer=True)
    values, bits = _stored(image, bits_stored)
    if bits <= 8:
        top = 2 ** bits - 1
        decoded = _codec(values, "JPEG", quality=quality)
        return np.clip(decoded, 0, top)
    top = 2 ** bits - 1
    values8 = np.round(values * (255.0 / top)).astype(np.uint8)
    with Image.open(io.BytesIO(_jpeg8_bytes(values8, quality))) as im:
        decoded8 = np.asarray(im.convert("L"), dtype=np.float64)
    return np.round(decoded8 * (top / 255.0))


def _pixel_dataset(values: np.ndarray, bits: int) -> Dataset:
    """Minimal uncompressed MONOCHROME2 dataset around ``values`` for pydicom's encoders."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    return ds


def dicom_j2k(image: np.ndarray, rng: np.random.Generator | None = None, *,
              ratio: float = 20.0, bits_stored: int | None = None) -> np.ndarray:
    """A PACS re-compressing the stored values as lossy JPEG 2000 at ``ratio``:1, decoded.

    Encoded by pydicom's *JPEG 2000* (1.2.840.10008.1.2.4.91) encoder through its
    pylibjpeg-openjpeg plugin (``Dataset.compress(JPEG2000, arr, j2k_cr=[ratio])``: 9/7
    irreversible wavelet, one quality layer), then decoded by pydicom.

    Parameters
    ----------
    image : (rows, columns) array
        Stored values, unsigned, 0..2**bits_stored - 1 (rounded to integers first). A display
        image (0..255) is treated as 8-bit stored values.
    rng : numpy.random.Generator, optional
        Ignored.
    ratio : float, (1, 1000]
        Target compression ratio. OpenJPEG counts it against ``bits_stored`` bits per pixel,
        so 20:1 on 12-bit data stored in 16 bits is about 26.7:1 against the 16-bit
        allocation that (0028,2112) *Lossy Image Compression Ratio* usually quotes.
    bits_stored : int, optional
        (0028,0101) *Bits Stored*, 1..16; inferred as in :func:`dicom_jpeg`.

    Returns
    -------
    (rows, columns) float64 array
        Decoded integer stored values.

    Raises
    ------
    ValueError
        ``ratio`` outside (1, 1000], bad ``bits_stored``, or values outside its range.
    RuntimeError
        pydicom's JPEG 2000 encoder is unavailable (the message lists what to install:
        ``pylibjpeg`` and ``pylibjpeg-openjpeg``).

    References
    ----------
    .. [1] DICOM PS3.5, section 8.2.4 "JPEG 2000 Image Compression".
    """
    from pydicom.uid import JPEG2000

    _number("ratio", ratio, 1, 1000, lo_open=True)
    values, bits = _stored(image, bits_stored)
    ds = _pixel_dataset(values, bits)
    ds.compress(JPEG2000, values, j2k_cr=[float(ratio)], generate_instance_uid=False)
    return np.asarray(ds.pixel_array, dtype=np.float64)


def dicom_dcmtk_jpeg(image: np.ndarray, rng: np.random.Generator | None = None, *,
                     quality: int = 80, bits_stored: int | None = None) -> np.ndarray:
    """A PACS re-compressing the stored values with DCMTK as lossy 12-bit JPEG, decoded.

    The values are written as an uncompressed DICOM file, coded by DCMTK's
    ``dcmcjpeg +ee +q QUALITY`` (JPEG Extended, Process 2 and 4, 1.2.840.10008.1.2.4.51: the
    12-bit lossy JPEG PACS store CR/DX films in) and read back by
    :func:`watermark.dicomio.read_film`, as ``detect`` reads such a leak. Values of up to
    12 bits are coded as they are. Deeper values are rescaled by dcmcjpeg to 12 bits from
    their minimum and maximum (its default ``+sp``), as such a PACS does; the decoded values
    are mapped back to the input's minimum and maximum (rounded) so that the film's display
    applies to them.

    Parameters
    ----------
    image : (rows, columns) array
        Stored values, unsigned, 0..2**bits_stored - 1 (rounded to integers first). A display
        image (0..255) is treated as 8-bit stored values.
    rng : numpy.random.Generator, optional
        Ignored.
    quality : int, 1..100
        IJG quality factor (dcmcjpeg ``+q``).
    bits_stored : int, optional
        (0028,0101) *Bits Stored*, 1..16; inferred as in :func:`dicom_jpeg`.

    Returns
    -------
    (rows, columns) float64 array
        Decoded integer stored values in the input's range.

    Raises
    ------
    ValueError
        ``quality`` outside 1..100, bad ``bits_stored``, or values outside its range.
    forensics.dicomtools.ToolMissingError
        DCMTK is not installed (the message names the package).

    References
    ----------
    .. [1] DICOM PS3.5, section 8.2.1 "JPEG Image Compression" and Table 8.2.1-1.
    .. [2] DCMTK dcmcjpeg documentation, https://support.dcmtk.org/docs/dcmcjpeg.html
    """
    import tempfile
    from pathlib import Path

    from pydicom.uid import generate_uid

    from watermark.dicomio import read_film

    from . import dicomtools

    _number("quality", quality, 1, 100, integer=True)
    values, bits = _stored(image, bits_stored)
    ds = _pixel_dataset(values, bits)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.PixelData = values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes()
    with tempfile.TemporaryDirectory(prefix="leaktrace-dcmtk-") as work:
        native, coded = Path(work) / "in.dcm", Path(work) / "out.dcm"
        ds.save_as(native, enforce_file_format=True)
        dicomtools.reencode(native, coded, dicomtools.dcmtk_jpeg_extended(quality))
        film = read_film(coded)
    decoded = film.pixels.astype(np.float64)
    if film.bits_stored >= bits:
        return decoded
    lo, hi = float(values.min()), float(values.max())
    d_lo, d_hi = float(decoded.min()), float(decoded.max())
    if d_hi <= d_lo:
        return np.full(decoded.shape, lo)
    return np.round(lo + (decoded - d_lo) * ((hi - lo) / (d_hi - d_lo)))


def write_lossy_dicom(ds: Dataset, path: str | PathLike, *, method: str = "j2k",
                      ratio: float = 20.0, quality: int = 80) -> Dataset:
    """Write a lossy re-compressed copy of a grey single-sample DICOM dataset.

    ``ds`` itself is not changed: a deep copy is decoded (``pixel_array``; a compressed
    source needs its decoder plugin), re-encoded and written.

    * ``method="j2k"``: *JPEG 2000* (1.2.840.10008.1.2.4.91) via pydicom's
      ``Dataset.compress`` (pylibjpeg-openjpeg), ``ratio``:1 counted against Bits Stored.
      Any Bits Stored up to 16, signed or unsigned, any number of frames.
    * ``method="jpeg"``: *JPEG Baseline 8-bit* (1.2.840.10008.1.2.4.50), each frame coded by
      Pillow and encapsulated with ``pydicom.encaps.encapsulate``. Only for 8-bit
      (Bits Allocated 8) unsigned data; see :func:`dicom_jpeg` for why >8 bits is refused.

    Elements added or changed in the copy: (0002,0010) *Transfer Syntax UID*,
    (7FE0,0010) *Pixel Data* (encapsulated, OB, undefined length), a new (0008,0018)
    *SOP Instance UID* (and (0002,0003) *Media Storage SOP Instance UID*), as lossy output
    must have one; (0028,2110) *Lossy Image Compression* = "01"; (0028,2112) *Lossy Image
    Compression Ratio* and (0028,2114) *Lossy Image Compression Method* ("ISO_15444_1" or
    "ISO_10918_1") with the new step appended to earlier values (kept only when both
    elements list the same number of earlier steps, as they must); the first value of
    (0008,0008) *Image Type* becomes DERIVED if present; (0008,2111) *Derivation Description*
    gains a sentence.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        Source dataset with Samples per Pixel 1 and decodable pixel data.
    path : str or PathLike
        Output file; written in DICOM file format (preamble and file meta).
    method : {"j2k", "jpeg"}
        Codec.
    ratio : float, (1, 1000]
        JPEG 2000 target ratio (``method="j2k"``).
    quality : int, 1..100
        JPEG quality (``method="jpeg"``).

    Returns
    -------
    pydicom.dataset.Dataset
        The written copy.

    Raises
    ------
    ValueError
        Unknown ``method``, bad ``ratio``/``quality``, Samples per Pixel not 1, or JPEG asked
        for non-8-bit or signed data.

    References
    ----------
    .. [1] DICOM PS3.3, C.7.6.1.1.5 "Lossy Image Compression".

    Examples
    --------
    >>> from pydicom import dcmread
    >>> src = dcmread("film.dcm")
    >>> out = write_lossy_dicom(src, "film_j2k20.dcm", method="j2k", ratio=20)
    >>> out.LossyImageCompressionMethod
    'ISO_15444_1'
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000, JPEGBaseline8Bit, generate_uid
    from pydicom.valuerep import VR

    _choice("method", method, ("j2k", "jpeg"))
    if ds.get("SamplesPerPixel", 1) != 1:
        raise ValueError(f"only grey films are handled: (0028,0002) Samples per Pixel is "
                         f"{ds.SamplesPerPixel}, 1 is allowed")
    out = copy.deepcopy(ds)
    arr = out.pixel_array
    frames = int(out.get("NumberOfFrames", 1) or 1)
    raw_bytes = arr.size * out.BitsAllocated / 8
    if method == "j2k":
        _number("ratio", ratio, 1, 1000, lo_open=True)
        out.compress(JPEG2000, arr, j2k_cr=[float(ratio)])
        coded = _encapsulated_size(out.PixelData, frames)
        iso = "ISO_15444_1"
        what = f"JPEG 2000 irreversible, target {ratio:g}:1 of Bits Stored"
    else:
        _number("quality", quality, 1, 100, integer=True)
        if out.BitsAllocated != 8 or out.get("PixelRepresentation", 0) != 0:
            raise ValueError(f"JPEG Baseline needs unsigned 8-bit data: (0028,0100) Bits "
                             f"Allocated is {out.BitsAllocated}, (0028,0103) Pixel "
                             f"Representation is {out.get('PixelRepresentation', 0)}; use "
                             f"method='j2k' for deeper data")
        stack = arr.reshape((frames, *arr.shape[-2:]))
        encoded = [_jpeg8_bytes(np.ascontiguousarray(f), quality) for f in stack]
        out.PixelData = encapsulate(encoded)
        if not hasattr(out, "file_meta"):
            out.file_meta = FileMetaDataset()
        elem = out["PixelData"]
        elem.is_undefined_length = True
        elem.VR = VR.OB
        out.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        uid = generate_uid()
        out.SOPInstanceUID = uid
        out.file_meta.MediaStorageSOPInstanceUID = uid
        coded = sum(len(e) for e in encoded)
        iso = "ISO_10918_1"
        what = f"JPEG Baseline quality {quality}"
    actual = raw_bytes / coded
    was_lossy = out.get("LossyImageCompression") == "01"
    old_ratio = _as_list(out.get("LossyImageCompressionRatio")) if was_lossy else []
    old_method = _as_list(out.get("LossyImageCompressionMethod")) if was_lossy else []
    if len(old_ratio) != len(old_method):  # an earlier step is half-documented: start afresh
        old_ratio, old_method = [], []
    out.LossyImageCompression = "01"
    out.LossyImageCompressionRatio = [*old_ratio, f"{actual:.2f}"[:16]]
    out.LossyImageCompressionMethod = [*old_method, iso]
    if "ImageType" in out:
        out.ImageType = ["DERIVED", *_as_list(out.ImageType)[1:]]
    note = f"Lossy re-compression for leak simulation: {what} ({actual:.1f}:1 of Bits Allocated)"
    prior = out.get("DerivationDescription", "")
    out.DerivationDescription = (f"{prior}; {note}" if prior else note)[:1024]
    if "SOPClassUID" in out:
        out.file_meta.MediaStorageSOPClassUID = out.SOPClassUID
    out.save_as(path, enforce_file_format=True)
    return out


def _as_list(value) -> list:
    """An element value as a list: [] for None/empty, the items of a multi-value, or [value]."""
    if value is None or value == "":
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return [value]
    return list(value)


def _encapsulated_size(pixel_data: bytes, frames: int) -> int:
    from pydicom.encaps import generate_frames

    return sum(len(f) for f in generate_frames(pixel_data, number_of_frames=frames))


# --------------------------------------------------------------------------- registry

LeakFunction = Callable[..., np.ndarray]


def _pct(value: float) -> str:
    return f"{round(value * 100, 6):g}pct"


_NAME_PARTS: dict[str, Callable[[object], str]] = {
    # how each parameter is spelled in a leak name; a parameter missing here cannot be named
    "quality": lambda v: f"q{v}",
    "colour": lambda v: "colour" if v else "grey",
    "pixels": lambda v: f"{v}px",
    "long_edge": lambda v: f"{v}px",
    "fmt": str,
    "factor": lambda v: f"x{v:g}",
    "fraction": lambda v: f"cut{_pct(v)}",
    "side": str,
    "area": lambda v: f"keep{_pct(v)}",
    "angle": lambda v: f"{v:g}deg",
    "expand": lambda v: "expand" if v else "cropped",
    "k": lambda v: f"k{v}",
    "axis": lambda v: {0: "ud", 1: "lr"}[v],
    "value": lambda v: f"{v:g}",
    "offset": lambda v: f"{v:+g}",
    "sigma": lambda v: f"s{v:g}",
    "amount": lambda v: f"a{v:g}",
    "radius": lambda v: f"r{v:g}",
    "strength": lambda v: f"{v:g}",
    "function": lambda v: str(v).lower(),
    "center": lambda v: f"c{v}" if isinstance(v, str) else f"c{v:g}",
    "width": lambda v: f"w{v:g}",
    "bits": lambda v: f"{v}bit",
    "lut": lambda v: f"{len(v)}",
    "first_mapped": lambda v: f"from{v}",
    "lut_bits": lambda v: f"{v}bit",
    "in_peak": lambda v: "raw" if v is None else f"peak{v:g}",
    "layout": str,
    "ui": lambda v: "ui" if v else "noui",
    "margin": lambda v: f"m{v}",
    "ratio": lambda v: f"{v:g}to1",
    "bits_stored": lambda v: f"{v}bit",
}


def leak_name(func: LeakFunction, params: dict) -> str:
    """The registry name of ``func`` run with ``params``.

    The function's name followed by each parameter, in the order given, spelled by a fixed
    rule: ``jpeg_q30``, ``long_edge_800px``, ``crop_top_cut25pct`` (25 % of the rows cut),
    ``crop_centre_keep36pct`` (36 % of the area kept), ``rotate_3deg``, ``mirror_lr``,
    ``window_sigmoid_cmedian_w128``, ``dicom_j2k_20to1``.

    Parameters
    ----------
    func : callable
        A leak function.
    params : dict
        Its parameters (all of them that differ from the function's defaults should be
        given, so that the name says what runs).

    Returns
    -------
    str

    Raises
    ------
    ValueError
        A parameter without a naming rule.
    """
    parts = [func.__name__]
    for key, value in params.items():
        if key not in _NAME_PARTS:
            raise ValueError(f"parameter {key!r} of {func.__name__} has no naming rule; "
                             f"known: {', '.join(sorted(_NAME_PARTS))}")
        parts.append(_NAME_PARTS[key](value))
    return "_".join(parts)


def _entry(func: LeakFunction, **params) -> tuple[str, tuple[LeakFunction, dict]]:
    return leak_name(func, params), (func, params)


def _s_curve_lut() -> np.ndarray:
    """256-entry, 8-bit S-shaped VOI LUT (a vendor-style contrast curve), read-only."""
    x = np.arange(256, dtype=np.float64)
    s = 1.0 / (1.0 + np.exp(-4.0 * (x - 128.0) / 160.0))
    lut = np.round(255.0 * (s - s[0]) / (s[-1] - s[0])).astype(np.uint8)
    lut.setflags(write=False)
    return lut


_LEGACY: dict[str, tuple[LeakFunction, dict]] = {
    # the first registry's short names: each runs its function's defaults
    "identity": (identity, {}),
    "png8": (quantize_8bit, {}),
    "jpeg": (jpeg, {"quality": 75}),
    "webp": (webp, {"quality": 75}),
    "scale": (scale, {"factor": 0.5}),
    "long_edge": (long_edge, {"pixels": 1280}),
    "invert": (invert, {}),
    "gamma": (gamma, {"value": 0.7}),
}

LEAKS: dict[str, tuple[LeakFunction, dict]] = {
    **_LEGACY,
    **dict([
        # viewer rendering / VOI / export
        _entry(window, function="LINEAR", center="median", width=102),  # 40 % of 0..255
        _entry(window, function="SIGMOID", center="median", width=128),
        _entry(window, function="LINEAR_EXACT", center="median", width=320),  # a wide window
        _entry(window, function="LINEAR", center="median", width=102, bits=16),
        _entry(voi_lut, lut=_s_curve_lut(), first_mapped=0, lut_bits=8),
        _entry(export16),
        # screenshot
        _entry(screenshot, layout="1up"),
        _entry(screenshot, layout="1up", ui=False),
        _entry(screenshot, layout="2up"),
        # messenger
        _entry(messenger, fmt="jpeg", long_edge=1600, quality=85),
        _entry(messenger, fmt="jpeg", long_edge=1280, quality=70),
        _entry(messenger, fmt="jpeg", long_edge=1024, quality=60),
        _entry(messenger, fmt="jpeg", long_edge=800, quality=60),
        _entry(messenger, fmt="jpeg", long_edge=512, quality=80),
        _entry(messenger, fmt="jpeg", long_edge=512, quality=40),
        _entry(messenger, fmt="webp", long_edge=1280, quality=75),
        # plain codecs and resizing
        _entry(jpeg, quality=30),
        _entry(jpeg, quality=50),
        _entry(jpeg, quality=90),
        _entry(jpeg, quality=70, colour=True),
        _entry(webp, quality=50),
        _entry(scale, factor=0.6),
        _entry(long_edge, pixels=1600),
        _entry(long_edge, pixels=1024),
        _entry(long_edge, pixels=800),
        _entry(long_edge, pixels=512),
        _entry(long_edge, pixels=256),
        # crops
        _entry(crop_top, fraction=0.25),
        _entry(crop_top, fraction=0.1),
        _entry(crop_side, side="left", fraction=0.25),
        _entry(crop_side, side="right", fraction=0.25),
        _entry(crop_centre, area=0.5),
        _entry(crop_centre, area=0.36),
        _entry(crop_centre, area=0.25),
        _entry(crop_centre, area=0.1),
        # geometry
        _entry(rotate, angle=1),
        _entry(rotate, angle=3),
        _entry(rotate, angle=-3),
        _entry(rotate, angle=10),
        _entry(rotate, angle=3, expand=True),
        _entry(rot90, k=1),
        _entry(rot90, k=2),
        _entry(rot90, k=3),
        _entry(mirror, axis=1),
        _entry(mirror, axis=0),
        # tone
        _entry(gamma, value=1.4),
        _entry(brightness, offset=20),
        _entry(brightness, offset=-20),
        _entry(contrast, factor=1.3),
        _entry(contrast, factor=0.7),
        # filters
        _entry(blur, sigma=1),
        _entry(blur, sigma=2),
        _entry(noise, sigma=2),
        _entry(noise, sigma=5),
        _entry(sharpen, amount=1),
        # camera
        _entry(screen_photo, strength=0.5),
        _entry(screen_photo, strength=1),
        # DICOM side
        _entry(dicom_jpeg, quality=80),
        _entry(dicom_jpeg, quality=50),
        _entry(dicom_j2k, ratio=10),
        _entry(dicom_j2k, ratio=20),
        _entry(dicom_dcmtk_jpeg, quality=80),
    ]),
}
"""Leak name -> (function, parameters). See :func:`leak_name` for how names are built."""

Pipeline = list[tuple[str, dict]]

PIPELINES: dict[str, Pipeline] = {
    # viewer exports
    "viewer_png8": [("png8", {})],
    "viewer_jpeg_q75": [("jpeg", {"quality": 75})],
    "export16_png": [("export16", {})],
    "window_narrow": [("window_linear_cmedian_w102", {}), ("png8", {})],
    "window_sigmoid": [("window_sigmoid_cmedian_w128", {}), ("png8", {})],
    "inverted": [("invert", {}), ("png8", {})],
    # screenshots and messengers
    "screenshot_ui_messenger_1280px_jpeg_q70": [("screenshot_1up", {}),
                                                ("messenger_jpeg_1280px_q70", {})],
    "long_edge_800px_jpeg_q60": [("messenger_jpeg_800px_q60", {})],
    "long_edge_512px_jpeg_q80": [("messenger_jpeg_512px_q80", {})],
    "scale_60pct_webp_q75": [("scale_x0.6", {}), ("webp", {"quality": 75})],
    # crops and geometry (saved as PNG)
    "crop_centre_keep36pct": [("crop_centre_keep36pct", {}), ("png8", {})],
    "crop_top_cut25pct": [("crop_top_cut25pct", {}), ("png8", {})],
    "mirrored": [("mirror_lr", {}), ("png8", {})],
    "rotate_3deg": [("rotate_3deg", {}), ("png8", {})],
    # tone (saved as PNG)
    "gamma_0.7": [("gamma", {"value": 0.7}), ("png8", {})],
    "contrast_x1.3": [("contrast_x1.3", {}), ("png8", {})],
    # DICOM side
    "dicom_jpeg_q80": [("dicom_jpeg_q80", {})],
    "dicom_j2k_20to1": [("dicom_j2k_20to1", {})],
    "dicom_dcmtk_jpeg_q80": [("dicom_dcmtk_jpeg_q80", {})],
    # stretch goals
    "screen_photo": [("screen_photo_0.5", {})],
    "rotate_10deg": [("rotate_10deg", {}), ("png8", {})],
    "crop_centre_keep10pct": [("crop_centre_keep10pct", {}), ("png8", {})],
    "long_edge_256px": [("long_edge_256px", {}), ("png8", {})],
    "jpeg_q30": [("jpeg_q30", {})],
}
"""Named pipelines of the benchmark: name -> list of (leak name, parameter overrides)."""

STRETCH: frozenset[str] = frozenset(
    {"screen_photo", "rotate_10deg", "crop_centre_keep10pct", "long_edge_256px", "jpeg_q30"})
"""Names in :data:`PIPELINES` that are stretch goals (harder than the benchmark's target)."""


def _step(name: str, params: dict) -> tuple[LeakFunction, dict]:
    if name not in LEAKS:
        raise KeyError(f"unknown leak {name!r}; known: {', '.join(sorted(LEAKS))}")
    func, defaults = LEAKS[name]
    return func, {**defaults, **params}


def apply(image: np.ndarray, pipeline: Sequence[tuple[str, dict]],
          rng: np.random.Generator | None = None) -> np.ndarray:
    """Run ``pipeline``, a sequence of ``(leak name, parameter overrides)``, on ``image``.

    Parameters
    ----------
    image : (rows, columns) array
        Input (display values 0..255 for most leaks); not modified.
    pipeline : sequence of (str, dict)
        Steps; each dict overrides the registry parameters of its step.
    rng : numpy.random.Generator, optional
        Shared by all steps, in order. Default: ``numpy.random.default_rng(0)``.

    Returns
    -------
    float64 array
        The leaked image (a new array).

    Raises
    ------
    KeyError
        A name that is not in :data:`LEAKS` (the message lists the known names).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    out = _as_image(image)
    for name, params in pipeline:
        func, merged = _step(name, params)
        out = func(out, rng, **merged)
    return out if out is not image else out.copy()


def output_peak(pipeline: Sequence[tuple[str, dict]]) -> float:
    """White level of what ``pipeline`` returns: 65535.0 after ``export16`` or a ``bits=16``
    rendering, else 255.0.

    Raises
    ------
    KeyError
        A name that is not in :data:`LEAKS`.
    """
    peak = PEAK_8
    for name, params in pipeline:
        func, merged = _step(name, params)
        if func is export16:
            peak = PEAK_16
        elif func in (window, voi_lut):
            peak = PEAK_16 if merged.get("bits", 8) == 16 else PEAK_8
    return peak


def save_image(image: np.ndarray, path, *, quality: int | None = None, bits: int = 8) -> None:
    """Write a grey image; the format follows the suffix (JPEG/WebP use ``quality``).

    Parameters
    ----------
    image : (rows, columns) array
        0..255 values for ``bits=8``; 0..65535 for ``bits=16``.
    path : str or PathLike
        Output file; its suffix picks the format (Pillow).
    quality : int, optional
        JPEG/WebP quality.
    bits : {8, 16}
        16 writes a 16-bit grey image (PNG or TIFF only).

    Raises
    ------
    ValueError
        ``bits`` not 8 or 16.
    """
    _choice("bits", bits, (8, 16))
    extra = {"quality": quality} if quality is not None else {}
    if bits == 16:
        values = np.clip(np.round(_as_image(image)), 0, PEAK_16).astype(np.uint16)
        Image.fromarray(values).save(path, **extra)
        return
    Image.fromarray(to_uint8(image)).save(path, **extra)
