"""Screenshots of a viewer (the film drawn inside a UI) and messenger re-encoding.
"""

from __future__ import annotations


import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ._checks import _as_image, _choice, _number
from .codecs import _codec, _colour_jpeg
from .geometry import _long_edge_size, _resize
from .rendering import to_uint8


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
