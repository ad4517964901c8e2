"""Read a leaked image, whatever its format, into grey values ready for detection.

Accepted: PNG, JPEG, WebP, TIFF, BMP, GIF (first frame) in 8 or 16 bit, grey or colour (with
or without alpha), read with Pillow; and DICOM, read with :func:`watermark.dicomio.read_film`
and rendered with its default window (:func:`watermark.display.render`), as a viewer would show
it. Colour is converted to luma with the ITU-R BT.601 weights (0.299, 0.587, 0.114). EXIF
orientation (phone photos) is applied.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .dicomio import read_film, sha256_file
from .display import render
from .errors import InvalidInputError, LeaktraceError

__all__ = ["LeakImage", "read_leak"]

# A 10000 x 10000 leak is allowed (Pillow's default bomb limit is ~89 Mpx); beyond 4x that
# the file is refused rather than exhausting memory.
MAX_PIXELS = 4 * 10000 * 10000


@dataclass(frozen=True)
class LeakImage:
    """A leaked image as read.

    Attributes
    ----------
    path : Path
    gray : (rows, columns) float64 array
        Grey values (0..255 for 8-bit and DICOM renders, 0..65535 for 16-bit files).
    format : str
        ``"DICOM"`` or Pillow's format name (``"PNG"``, ``"JPEG"``, ...).
    mode : str
        Pillow's mode (``"L"``, ``"RGB"``, ``"I;16"``...) or the DICOM photometric interpretation.
    sha256 : str
        Hex SHA-256 of the file's bytes.
    """

    path: Path
    gray: np.ndarray
    format: str
    mode: str
    sha256: str


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in {".dcm", ".dicom"}:
        return True
    with open(path, "rb") as fh:
        head = fh.read(132)
    return head[128:132] == b"DICM"


def read_leak(path: str | os.PathLike) -> LeakImage:
    """Read a leaked image file.

    Returns
    -------
    LeakImage

    Raises
    ------
    InvalidInputError
        Missing, unreadable, truncated, empty, too large, or not an image format listed above.
    UnsupportedImageError
        A DICOM object leaktrace cannot render (see :func:`watermark.dicomio.read_film`).
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file")
    try:
        if _is_dicom(path):
            try:
                film = read_film(path)
            except LeaktraceError:
                raise
            return LeakImage(path, render(film), "DICOM", film.photometric, sha256_file(path))
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS
            with Image.open(path) as im:
                fmt, mode = im.format or "?", im.mode
                im.seek(0)
                im = ImageOps.exif_transpose(im)
                gray = _to_gray(im)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInputError(f"{path}: not an image leaktrace can read "
                                f"(PNG, JPEG, WebP, TIFF, BMP or DICOM): {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidInputError(f"{path}: cannot read the image ({exc})") from None
    if gray.size == 0:
        raise InvalidInputError(f"{path}: the image has no pixels")
    return LeakImage(path, gray, fmt, mode, sha256_file(path))


def _to_gray(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return np.asarray(im, dtype=np.float64)
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.float64)
    if mode in ("LA", "La"):
        return np.asarray(im.getchannel("L"), dtype=np.float64)
    rgb = np.asarray(im.convert("RGB"), dtype=np.float64)
    return rgb @ np.array([0.299, 0.587, 0.114])
