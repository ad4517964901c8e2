"""Read a leaked image, whatever its format, into grey values ready for detection.

Accepted: PNG, JPEG, WebP, TIFF, BMP, GIF (first frame) in 8 or 16 bit, grey or colour (with
or without alpha), read with Pillow; and DICOM. A grayscale single-frame DICOM film is read with
:func:`watermark.dicomio.read_film` and rendered with its default window
(:func:`watermark.display.render`), as a viewer would show it. A DICOM that ``read_film``
refuses for being colour or multi-frame (a viewer's RGB secondary capture of a film, a
cine/multi-frame export) is decoded with pydicom instead, first frame only: colour is turned
into RGB by pydicom (YBR_FULL / YBR_FULL_422 with its ``convert_color_space``, PALETTE COLOR
with its colour LUT), a grayscale frame is rendered with the file's window. Colour is converted
to luma with the ITU-R BT.601 weights (0.299, 0.587, 0.114). EXIF orientation (phone photos)
is applied.

Images above :data:`MAX_PIXELS` pixels are refused before they are decoded.
"""

from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.pixels import apply_color_lut, pixel_array

from .dicomio import read_film, sha256_file
from .display import render
from .errors import InvalidInputError, LeaktraceError, UnsupportedImageError
from .formats import HEAD_BYTES, image_format

__all__ = ["LeakImage", "read_leak", "MAX_PIXELS", "FORMATS"]

#: Largest leak read, in pixels: a 10000 x 10000 leak is allowed, a larger image is refused
#: before decoding rather than exhausting memory (detection reads it in float64 bands and
#: crops, and trace holds a float64 copy).
MAX_PIXELS = 120_000_000

#: The formats accepted, for messages.
FORMATS = "PNG, JPEG, WebP, TIFF, BMP, GIF or DICOM"

_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601
_COLOUR_PHOTOMETRICS = ("RGB", "YBR", "PALETTE")


@dataclass(frozen=True)
class LeakImage:
    """A leaked image as read.

    Attributes
    ----------
    path : Path
    gray : (rows, columns) uint8, uint16, float32 or float64 array
        Grey values (0..255 for 8-bit and DICOM renders, 0..65535 for 16-bit files): a grey
        file's own values (uint8 or uint16 for 8- or 16-bit files, float32 for float files),
        float64 for colour (luma), 32-bit integer files and DICOM. Do arithmetic on it in a
        float type (``np.asarray(gray, dtype=np.float64)``).
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
    """DICOM by content (the "DICM" prefix of PS3.10 section 7.1), an image by its own
    signature whatever its name (a PNG saved as ``.dcm``), else DICOM when so named (a file
    without the preamble, as some old ones are)."""
    with open(path, "rb") as fh:
        head = fh.read(HEAD_BYTES)
    if head[128:132] == b"DICM":
        return True
    if image_format(head) is not None:
        return False
    return path.suffix.lower() in {".dcm", ".dicom"}


def read_leak(path: str | os.PathLike) -> LeakImage:
    """Read a leaked image file.

    Returns
    -------
    LeakImage

    Raises
    ------
    InvalidInputError
        Missing, a folder or not a regular file, unreadable, truncated, empty, larger than
        :data:`MAX_PIXELS`, or not an image format listed above.
    UnsupportedImageError
        A DICOM object leaktrace cannot render (see :func:`watermark.dicomio.read_film`),
        other than a colour or multi-frame image.
    """
    path = Path(path)
    _check_regular_file(path)
    try:
        if _is_dicom(path):
            gray, mode = _read_dicom(path)
            fmt = "DICOM"
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                Image.MAX_IMAGE_PIXELS = MAX_PIXELS
                with Image.open(path) as im:
                    fmt, mode = im.format or "?", im.mode
                    im.seek(0)
                    im = ImageOps.exif_transpose(im)
                    gray = _to_gray(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInputError(f"{path}: too large: leaktrace reads at most {MAX_PIXELS} pixels "
                                f"(Pillow: {exc}); scale the leak down first") from None
    except UnidentifiedImageError as exc:
        raise InvalidInputError(f"{path}: not an image leaktrace can read ({FORMATS}): {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        if isinstance(exc, LeaktraceError):
            raise
        raise InvalidInputError(f"{path}: cannot read the image ({exc})") from None
    if gray.size == 0:
        raise InvalidInputError(f"{path}: the image has no pixels")
    return LeakImage(path, gray, fmt, mode, sha256_file(path))


def _check_regular_file(path: Path) -> None:
    """Refuse what is not a regular file, saying what it is (reading a FIFO would block)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InvalidInputError(f"{path}: is a directory; give the leaked image file")
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInputError(f"{path}: is not a regular file (a device, pipe or socket); "
                                "give the leaked image file")


def _check_size(path: Path, rows: int, columns: int) -> None:
    if rows * columns > MAX_PIXELS:
        raise InvalidInputError(f"{path}: too large: {columns} x {rows} px, leaktrace reads at "
                                f"most {MAX_PIXELS} pixels; scale the leak down first")


def _read_dicom(path: Path) -> tuple[np.ndarray, str]:
    """Grey values and photometric interpretation of a DICOM leak (see the module docstring)."""
    try:
        head = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        _check_size(path, int(head.get("Rows") or 0), int(head.get("Columns") or 0))
    except InvalidInputError:
        raise
    except Exception:  # unreadable header: read_film gives the detailed message
        head = None
    try:
        film = read_film(path)
    except UnsupportedImageError:
        if head is None or not _is_colour_or_multiframe(head):
            raise
        return _read_dicom_frame(path), str(head.get("PhotometricInterpretation", "")).strip()
    return render(film), film.photometric


def _is_colour_or_multiframe(ds: pydicom.Dataset) -> bool:
    try:
        samples = int(ds.get("SamplesPerPixel") or 1)
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        return False
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    return samples > 1 or photometric.startswith(_COLOUR_PHOTOMETRICS) or frames > 1


def _read_dicom_frame(path: Path) -> np.ndarray:
    """First frame of a colour or multi-frame DICOM, as luma or as the rendered grey frame."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's remarks on odd but readable files
            ds = pydicom.dcmread(path, force=True)
            photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
            # YBR_FULL and YBR_FULL_422 come back as RGB (pydicom's convert_color_space)
            frame = pixel_array(ds, index=0)
            if photometric == "PALETTE COLOR":
                frame = apply_color_lut(frame, ds)
    except Exception as exc:  # decoders raise many kinds on corrupt data
        raise InvalidInputError(f"{path}: the DICOM pixel data cannot be decoded "
                                f"({type(exc).__name__}: {exc})") from None
    if frame.ndim == 3 and frame.shape[-1] in (3, 4):
        return _luma(frame[..., :3])
    if frame.ndim != 2:
        raise InvalidInputError(f"{path}: decoded DICOM frame has shape {frame.shape}; "
                                "expected (rows, columns) or (rows, columns, 3)")
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        return render(ds, frame)  # the file's window, as a viewer shows the frame
    return frame.astype(np.float64)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an (rows, columns, 3) array, a band of rows at a time (bounded memory)."""
    out = np.empty(rgb.shape[:2], dtype=np.float64)
    step = max(1, (1 << 22) // max(rgb.shape[1], 1))
    for r in range(0, rgb.shape[0], step):
        out[r:r + step] = rgb[r:r + step].astype(np.float64) @ _LUMA
    return out


def _to_gray(im: Image.Image) -> np.ndarray:
    """Grey values of a decoded image: a grey file's own values (uint8, uint16 or float32, see
    :class:`LeakImage`), else float64."""
    mode = im.mode
    if mode in ("L", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.array(im)
        return values.astype(values.dtype.newbyteorder("="), copy=False)
    if mode == "I":  # 32-bit integers
        return np.asarray(im, dtype=np.float64)
    if mode == "1":
        return np.array(im.convert("L"))
    if mode in ("LA", "La"):
        return np.array(im.getchannel("L"))
    if mode != "RGB":
        im = im.convert("RGB")
    return _luma(np.asarray(im))
