"""Show stored pixel values as a DICOM viewer does: display grey levels on a 0..255 scale.

The grayscale pipeline of PS3.4 Annex N.2 is applied in this order:

1. **Modality LUT** (PS3.3 C.11.1): (0028,1053) *Rescale Slope* and (0028,1052) *Rescale
   Intercept*, or the (0028,3000) *Modality LUT Sequence*.
2. **VOI LUT** (PS3.3 C.11.2): a window (0028,1050) *Window Center* / (0028,1051) *Window
   Width* shaped by (0028,1056) *VOI LUT Function* (LINEAR, LINEAR_EXACT or SIGMOID), or the
   (0028,3010) *VOI LUT Sequence*. With neither, the range of the image itself (min..max of
   the modality output) is stretched over the display, as viewers do; so too when a LINEAR
   window lies wholly outside the image's values (every pixel would show black, or white),
   which viewers then show by its range or histogram.
3. **Presentation** (PS3.3 C.11.6 and C.8.11.1): the result is inverted when the image says
   so; see :func:`render`.

The transformations themselves come from :mod:`pydicom.pixels.processing`; this module only
chooses which one applies, rescales their output to 0..255 and decides the inversion.
:func:`display_gain` gives the slope of the same mapping, so that a strength given in display
grey levels can be turned into stored units.

References
----------
* DICOM PS3.3, Section C.11.1 "Modality LUT Module", C.11.2 "VOI LUT Module" (C.11.2.1.2
  "Window Center and Window Width", C.11.2.1.3 "VOI LUT Function"), C.11.6 "Softcopy
  Presentation LUT Module", C.8.11.1 "DX Image Module" ((2050,0020) Presentation LUT Shape).
* DICOM PS3.4, Annex N.2 "Grayscale Transformations".
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut, apply_voi, apply_windowing

from .dicomio import Film
from .errors import InvalidInputError, UnsupportedImageError

__all__ = ["render", "display_gain", "shows_range", "to_uint8"]

_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
_DISPLAY_MAX = 255.0
_WINDOW_SCALE = 65535.0  # output range handed to pydicom's windowing, rescaled afterwards


class _Source:
    """What a rendering needs from a Film or a Dataset.

    `pixels` are the values to render (None: the reference values); `reference` are the
    film's own values, whose range is used when there is no VOI. A bare dataset is decoded
    only when its values are needed.
    """

    def __init__(self, ds: Dataset, pixels, reference, photometric: str, name: str) -> None:
        self.ds = ds
        self.photometric = photometric
        self.name = name
        self._pixels = pixels
        self._reference = reference

    @property
    def reference(self) -> np.ndarray:
        if self._reference is None:
            try:
                self._reference = self.ds.pixel_array
            except Exception as exc:
                raise InvalidInputError(
                    f"{self.name}: the pixel data cannot be decoded: {exc}"
                ) from exc
        return self._reference

    @property
    def has_values(self) -> bool:
        """True when the film's own values are at hand (a Film, or pixels given)."""
        return self._reference is not None

    @property
    def pixels(self) -> np.ndarray:
        return self.reference if self._pixels is None else self._pixels


@dataclass(frozen=True)
class _Voi:
    """The VOI transformation chosen for a rendering."""

    kind: str  # "window", "lut" or "range"
    centre: float = 0.0
    width: float = 0.0
    function: str = "LINEAR"
    low: float = 0.0  # "range": modality output mapped to 0
    high: float = 0.0  # "range": modality output mapped to 1


def render(
    film_or_ds: Film | Dataset,
    pixels: np.ndarray | None = None,
    *,
    window: tuple[float, float] | None = None,
    function: str | None = None,
    use_voi_lut: bool = True,
    invert: bool | None = None,
    dtype: type | np.dtype = np.float64,
) -> np.ndarray:
    """Display values of a film as a viewer shows it, on a 0..255 scale.

    Parameters
    ----------
    film_or_ds : Film or pydicom.dataset.Dataset
        The film (from :func:`watermark.dicomio.read_film`) or a dataset holding the Modality
        LUT, VOI LUT and presentation elements. A dataset without `pixels` is decoded with
        ``ds.pixel_array``.
    pixels : numpy.ndarray, optional
        (Rows, Columns) stored values to render instead of the film's own, e.g. a marked
        copy; any integer or float dtype. The mapping (including the min..max range used when
        the file has no VOI) still comes from the film, so an original and its marked copy
        are rendered identically. With a bare dataset the range comes from `pixels`.
    window : tuple of float, optional
        (centre, width) in modality output units (after rescale), replacing the file's
        window and VOI LUT. Width must be >= 1 for LINEAR and > 0 otherwise.
    function : {"LINEAR", "LINEAR_EXACT", "SIGMOID"}, optional
        Replaces (0028,1056) *VOI LUT Function* (default: the file's, else LINEAR).
    use_voi_lut : bool, optional
        If ``True`` (default) a (0028,3010) *VOI LUT Sequence* is preferred over the window
        when the file has both; if ``False`` the sequence is ignored.
    invert : bool, optional
        Force (``True``) or suppress (``False``) the inversion; ``None`` (default) decides
        from the file as described in Notes.
    dtype : {numpy.float64, numpy.float32}, optional
        dtype of the result (default float64). The values are always computed in float64;
        float32 only rounds the result, to halve its memory (the marking path uses it).

    Returns
    -------
    numpy.ndarray
        (Rows, Columns) display values of `dtype` (float64 by default) in [0, 255], not
        rounded (see :func:`to_uint8`); 0 is black and 255 white.

    Raises
    ------
    ValueError
        `pixels` has the wrong shape, `window` is not (centre, width) with a valid width, or
        `function` is not one of the allowed values.
    UnsupportedImageError
        The file's own elements cannot be applied: a *Window Width* not allowed for its
        *VOI LUT Function*, an unknown *VOI LUT Function* or *Presentation LUT Shape*, a LUT
        bit depth pydicom does not support, or a (0028,0004) *Photometric Interpretation*
        other than MONOCHROME1/2. The message names the file and the element.
    InvalidInputError
        A bare dataset's pixel data is needed but cannot be decoded.

    Warns
    -----
    UserWarning
        (2050,0020) *Presentation LUT Shape* IDENTITY on a MONOCHROME1 image (a combination
        PS3.3 C.8.11.1 does not allow), or a (2050,0010) *Presentation LUT Sequence*, which
        is not applied.

    Notes
    -----
    Order of steps: modality LUT, then VOI, then presentation (PS3.4 N.2).

    VOI output is rescaled so that its full output range (0..2**n - 1 for a LUT with n bits
    per entry, per its (0028,3002) *LUT Descriptor*) maps to 0..255. LINEAR windowing follows
    PS3.3 C.11.2.1.2.1 (centre - 0.5, width - 1), as DCMTK's ``dcm2pnm +Wi 1`` does;
    ``dcm2pnm`` then truncates to 8 bits, so ``floor(render(...))`` equals its output up to
    floating point error, and :func:`to_uint8` (rounding) differs from it by 0.5 on average.

    Inversion (when `invert` is None) follows DCMTK: if (2050,0020) *Presentation LUT Shape*
    is present it decides (INVERSE: inverted; IDENTITY: not inverted). Otherwise a
    MONOCHROME1 image is inverted and a MONOCHROME2 image is not. A MONOCHROME1 image with
    INVERSE (the pairing DX For Presentation requires) is therefore inverted once, not twice.

    Without a window or VOI LUT the min..max of the modality output is stretched to 0..255;
    ``dcm2pnm +Wm`` does the same (its default with no window maps the whole Bits Stored
    range instead).

    Every step is a function of the stored value alone, so for 8- and 16-bit integer stored
    values the steps are applied once to every possible stored value (a table of 256 or
    65536 entries) and the image is rendered by looking its values up in that table: the
    result is identical to applying the steps to the image itself.

    References
    ----------
    * DICOM PS3.3, Section C.11.1, C.11.2.1.2, C.11.2.1.3, C.11.6 and C.8.11.1.
    * DICOM PS3.4, Annex N.2.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float64, np.float32):
        raise ValueError(f"dtype is {dtype}; float64 or float32 is required")
    source = _source(film_or_ds, pixels)
    stored = source.pixels
    table = _tabulable(stored)
    # with a table, every step runs on the 2**bits possible stored values (in the order of
    # their unsigned bit patterns), and the image is rendered by one lookup at the end
    values = _modality(source, _all_values(stored.dtype) if table else stored)
    voi = _choose_voi(source, window, function, use_voi_lut)
    fraction = _apply_voi(source, voi, values)
    if _inverts(source, invert):
        fraction = 1.0 - fraction
    display = fraction * _DISPLAY_MAX
    if table:
        return display.astype(dtype)[stored.view(f"u{stored.dtype.itemsize}")]
    return display.astype(dtype, copy=False)


def display_gain(
    film_or_ds: Film | Dataset,
    *,
    window: tuple[float, float] | None = None,
    function: str | None = None,
    use_voi_lut: bool = True,
    invert: bool | None = None,
) -> float:
    """Slope of the rendering at the window centre, in display levels per stored unit.

    d(display) / d(stored value) of :func:`render` with the same options, where display is
    on the 0..255 scale. Negative when the presentation inverts. Use it to turn a strength
    given in display grey levels into stored units: ``stored = grey / abs(gain)``.

    Parameters
    ----------
    film_or_ds : Film or pydicom.dataset.Dataset
        As for :func:`render`.
    window, function, use_voi_lut, invert
        As for :func:`render`.

    Returns
    -------
    float
        The slope: (modality slope) x (VOI slope at the centre) x 255, signed. For LINEAR it
        is 255 / (width - 1) per modality unit (``inf`` for width 1), for LINEAR_EXACT and
        SIGMOID 255 / width. A VOI LUT Sequence or Modality LUT Sequence is summarised by
        its mean slope (output range over input span). Without VOI it is
        255 / (max - min) of the modality output (0 for a constant image).

    Raises
    ------
    ValueError, UnsupportedImageError, InvalidInputError
        As for :func:`render` (a bare dataset is decoded only when it has no VOI).

    References
    ----------
    * DICOM PS3.3, Section C.11.1 and C.11.2.1.2 to C.11.2.1.3.
    """
    source = _source(film_or_ds, None)
    voi = _choose_voi(source, window, function, use_voi_lut)
    slope = _modality_slope(source) * _voi_slope(source, voi) * _DISPLAY_MAX
    return float(-slope if _inverts(source, invert) else slope)


def to_uint8(display: np.ndarray) -> np.ndarray:
    """Round display values to the nearest integer (half to even) and clip to uint8 0..255.

    Parameters
    ----------
    display : numpy.ndarray
        Display values, e.g. from :func:`render`.

    Returns
    -------
    numpy.ndarray
        uint8 array of the same shape.
    """
    return np.clip(np.rint(np.asarray(display, dtype=np.float64)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# helpers


def _source(film_or_ds: Film | Dataset, pixels: np.ndarray | None) -> _Source:
    """Collect dataset, values to render, reference values and photometric."""
    if isinstance(film_or_ds, Film):
        ds = film_or_ds.dataset
        reference = film_or_ds.pixels
        photometric = film_or_ds.photometric
        name = str(film_or_ds.path)
        shape = reference.shape
    elif isinstance(film_or_ds, Dataset):
        ds = film_or_ds
        name = str(getattr(ds, "filename", None) or "<dataset>")
        photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
        reference = None if pixels is None else np.asarray(pixels)
        shape = (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))
    else:
        raise TypeError(
            f"film_or_ds is a {type(film_or_ds).__name__}; a Film or a pydicom Dataset is required"
        )
    if pixels is not None:
        pixels = np.asarray(pixels)
        if pixels.shape != shape:
            raise ValueError(
                f"pixels has shape {pixels.shape}; expected {shape} (Rows, Columns of {name})"
            )
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedImageError(
            f"{name}: (0028,0004) Photometric Interpretation is '{photometric}'; only "
            "MONOCHROME1 and MONOCHROME2 can be rendered"
        )
    return _Source(ds, pixels, reference, photometric, name)


def _tabulable(stored: np.ndarray) -> bool:
    """True for 8- and 16-bit integer stored values, which render through a lookup table."""
    return stored.dtype.kind in "iu" and stored.dtype.itemsize <= 2 and stored.dtype.isnative


def _all_values(dtype: np.dtype) -> np.ndarray:
    """Every value of an 8- or 16-bit integer dtype, ordered by its unsigned bit pattern, so
    that ``table[values.view(unsigned)]`` looks up ``values`` in a table computed from them."""
    unsigned = np.dtype(f"u{dtype.itemsize}")
    return np.arange(1 << (8 * dtype.itemsize), dtype=unsigned).view(dtype)


def _modality_range(source: _Source) -> tuple[float, float]:
    """(min, max) of the modality output over the film's own (reference) values."""
    reference = source.reference
    if not _tabulable(reference) or reference.size == 0:
        values = _modality(source, reference)
        return float(values.min()), float(values.max())
    unsigned = np.dtype(f"u{reference.dtype.itemsize}")
    present = np.zeros(1 << (8 * unsigned.itemsize), dtype=bool)
    present[reference.view(unsigned)] = True  # which stored values occur
    values = _modality(source, _all_values(reference.dtype))[present]
    return float(values.min()), float(values.max())


def _modality(source: _Source, stored: np.ndarray) -> np.ndarray:
    """Modality LUT / rescale (PS3.3 C.11.1) as float64."""
    ds = source.ds
    if ds.get("ModalityLUTSequence"):
        stored = np.rint(stored).astype(np.int64) if stored.dtype.kind == "f" else stored
    try:
        out = apply_modality_lut(stored, ds)
    except Exception as exc:
        raise UnsupportedImageError(
            f"{source.name}: the Modality LUT ((0028,3000) Modality LUT Sequence or "
            f"(0028,1052)/(0028,1053) Rescale Intercept/Slope) cannot be applied: {exc}"
        ) from exc
    return np.asarray(out, dtype=np.float64)


def _modality_slope(source: _Source) -> float:
    """d(modality output)/d(stored value): rescale slope, or a LUT's mean slope."""
    ds = source.ds
    if ds.get("ModalityLUTSequence"):
        entries, first, _ = _lut_descriptor(source, ds.ModalityLUTSequence[0], "(0028,3000)")
        lut = _modality(source, np.arange(first, first + entries, dtype=np.int64))
        return float((lut[-1] - lut[0]) / max(entries - 1, 1))
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        return float(ds.RescaleSlope)
    return 1.0


def _lut_descriptor(source: _Source, item: Dataset, tag: str) -> tuple[int, int, int]:
    """(entries, first input value mapped, bits per entry) of a LUT item (PS3.3 C.11.1.1.1)."""
    try:
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
    except Exception as exc:
        raise UnsupportedImageError(
            f"{source.name}: {tag} item has an unusable (0028,3002) LUT Descriptor "
            f"{item.get('LUTDescriptor')!r}: {exc}"
        ) from exc
    return entries or 65536, first, bits


def _file_window(source: _Source) -> tuple[float, float] | None:
    """First (0028,1050) Window Center / (0028,1051) Window Width of the file, if any."""
    ds = source.ds
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre in (None, "") or width in (None, ""):
        return None
    first = [v[0] if isinstance(v, (list, tuple, MultiValue)) else v for v in (centre, width)]
    try:
        return float(first[0]), float(first[1])
    except (TypeError, ValueError):
        raise UnsupportedImageError(
            f"{source.name}: (0028,1050) Window Center {centre!r} / (0028,1051) Window Width "
            f"{width!r} are not numbers"
        ) from None


def _choose_voi(
    source: _Source, window: tuple[float, float] | None, function: str | None, use_voi_lut: bool
) -> _Voi:
    """Pick the VOI transformation: given window, VOI LUT Sequence, file window, or range."""
    if function is not None:
        function = str(function).strip().upper()
        if function not in _FUNCTIONS:
            raise ValueError(
                f"function is {function!r}; allowed values are {', '.join(_FUNCTIONS)}"
            )
    else:
        function = str(source.ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
        if function not in _FUNCTIONS:
            raise UnsupportedImageError(
                f"{source.name}: (0028,1056) VOI LUT Function is '{function}'; allowed values "
                f"are {', '.join(_FUNCTIONS)}"
            )

    if window is not None:
        try:
            centre, width = (float(v) for v in window)
        except (TypeError, ValueError):
            raise ValueError(f"window is {window!r}; expected (centre, width) numbers") from None
        problem = _window_problem(width, function)
        if problem:
            raise ValueError(f"window width {width}: {problem}")
        return _Voi("window", centre, width, function)

    if use_voi_lut and source.ds.get("VOILUTSequence"):
        return _Voi("lut")

    file_window = _file_window(source)
    if file_window is not None:
        centre, width = file_window
        problem = _window_problem(width, function)
        if problem:
            raise UnsupportedImageError(
                f"{source.name}: (0028,1051) Window Width is {width} with (0028,1056) VOI LUT "
                f"Function {function}: {problem}"
            )
        if not source.has_values:  # a bare dataset is not decoded to check its window
            return _Voi("window", centre, width, function)
        low, high = _modality_range(source)
        if not _window_misses(centre, width, function, low, high):
            return _Voi("window", centre, width, function)
        return _Voi("range", low=low, high=high)

    low, high = _modality_range(source)
    return _Voi("range", low=low, high=high)


def _window_misses(centre: float, width: float, function: str, low: float, high: float) -> bool:
    """True when a LINEAR or LINEAR_EXACT window shows every value in [low, high] as black or
    every one as white (PS3.3 C.11.2.1.2: LINEAR clips below c - 0.5 - (w - 1) / 2 and above
    c - 0.5 + (w - 1) / 2). A SIGMOID window never clips, and is kept."""
    if function == "SIGMOID":
        return False
    if function == "LINEAR":
        bottom, top = centre - 0.5 - (width - 1) / 2, centre - 0.5 + (width - 1) / 2
        return high <= bottom or low > top
    return high <= centre - width / 2 or low >= centre + width / 2


def shows_range(film_or_ds: Film | Dataset) -> bool:
    """True when :func:`render`'s default view stretches the film's own min..max over the
    display: the film has no VOI LUT Sequence and no window, or its LINEAR window lies wholly
    outside its values (see the module docstring; checked for a Film, not for a bare dataset,
    which is not decoded for it).

    Raises
    ------
    UnsupportedImageError, InvalidInputError
        As for :func:`render`.
    """
    return _choose_voi(_source(film_or_ds, None), None, None, True).kind == "range"


def _window_problem(width: float, function: str) -> str | None:
    """Why a window width is not allowed for `function` (PS3.3 C.11.2.1.2), or None."""
    if function == "LINEAR" and not width >= 1:
        return "LINEAR needs a width of at least 1"
    if function != "LINEAR" and not width > 0:
        return f"{function} needs a width above 0"
    return None


def _apply_voi(source: _Source, voi: _Voi, values: np.ndarray) -> np.ndarray:
    """Apply the chosen VOI to modality output `values`; result in [0, 1]."""
    if voi.kind == "window":
        proxy = Dataset()
        proxy.PhotometricInterpretation = "MONOCHROME2"
        proxy.BitsStored = 16
        proxy.PixelRepresentation = 0
        # FD rather than DS so that any float is accepted without DS formatting rules
        proxy.add_new(0x00281050, "FD", voi.centre)
        proxy.add_new(0x00281051, "FD", voi.width)
        proxy.VOILUTFunction = voi.function
        return apply_windowing(values, proxy) / _WINDOW_SCALE
    if voi.kind == "lut":
        item = source.ds.VOILUTSequence[0]
        _, _, bits = _lut_descriptor(source, item, "(0028,3010)")
        try:
            out = apply_voi(np.rint(values).astype(np.int64), source.ds)
        except Exception as exc:
            raise UnsupportedImageError(
                f"{source.name}: the (0028,3010) VOI LUT Sequence cannot be applied: {exc}"
            ) from exc
        return np.clip(out / float((1 << bits) - 1), 0.0, 1.0)
    if voi.high <= voi.low:
        return np.zeros_like(values)
    return np.clip((values - voi.low) / (voi.high - voi.low), 0.0, 1.0)


def _voi_slope(source: _Source, voi: _Voi) -> float:
    """d(VOI output on 0..1)/d(modality output) at the window centre."""
    if voi.kind == "window":
        if voi.function == "LINEAR":
            return float("inf") if voi.width == 1 else 1.0 / (voi.width - 1.0)
        return 1.0 / voi.width  # LINEAR_EXACT; SIGMOID: 4/w * 1/4 at the centre
    if voi.kind == "lut":
        entries, first, _ = _lut_descriptor(source, source.ds.VOILUTSequence[0], "(0028,3010)")
        lut = _apply_voi(source, voi, np.arange(first, first + entries, dtype=np.float64))
        return float((lut.max() - lut.min()) / max(entries - 1, 1))
    span = voi.high - voi.low
    return 1.0 / span if span > 0 else 0.0


def _inverts(source: _Source, invert: bool | None) -> bool:
    """Whether the presentation inverts (see render's Notes)."""
    if invert is not None:
        return bool(invert)
    ds = source.ds
    if "PresentationLUTSequence" in ds:
        warnings.warn(
            f"{source.name}: (2050,0010) Presentation LUT Sequence is not applied",
            UserWarning,
            stacklevel=3,
        )
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    if shape == "INVERSE":
        return True
    if shape == "IDENTITY":
        if source.photometric == "MONOCHROME1":
            warnings.warn(
                f"{source.name}: (2050,0020) Presentation LUT Shape IDENTITY on a MONOCHROME1 "
                "image (PS3.3 C.8.11.1 requires INVERSE); shown not inverted, as DCMTK does. "
                "Pass invert=True to override",
                UserWarning,
                stacklevel=3,
            )
        return False
    if shape:
        raise UnsupportedImageError(
            f"{source.name}: (2050,0020) Presentation LUT Shape is '{shape}'; allowed values "
            "are IDENTITY and INVERSE"
        )
    return source.photometric == "MONOCHROME1"
