"""The registry of named leaks and pipelines, running them, and saving a leak as an image file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from ._checks import PEAK_8, PEAK_16, _as_image, _choice
from .codecs import dicom_dcmtk_jpeg, dicom_j2k, dicom_jpeg, jpeg, webp
from .geometry import crop_centre, crop_side, crop_top, long_edge, mirror, rot90, rotate, scale
from .photo import screen_photo
from .rendering import (blur, brightness, contrast, export16, gamma, identity, invert, noise,
                        quantize_8bit, sharpen, to_uint8, voi_lut, window)
from .screen import messenger, screenshot


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
