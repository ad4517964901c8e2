"""Which image format a file holds, from its leading bytes (its signature), whatever its name.

Used to read a leak by content (a PNG saved as ``.dcm``) and to say what a file given as a
DICOM film really is.
"""

from __future__ import annotations

__all__ = ["HEAD_BYTES", "image_format"]

#: Bytes to read from the start of a file for :func:`image_format` and the DICM check.
HEAD_BYTES = 132

#: Leading bytes of the image formats Pillow reads for leaks, with Pillow's format names.
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"),
               (b"GIF89a", "GIF"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"))


def image_format(head: bytes) -> str | None:
    """The image format whose signature ``head`` starts with, or None.

    Parameters
    ----------
    head : bytes
        The first bytes of a file (12 are enough; :data:`HEAD_BYTES` is what callers read).

    Returns
    -------
    str or None
        ``"PNG"``, ``"JPEG"``, ``"GIF"``, ``"TIFF"``, ``"BMP"`` or ``"WEBP"`` (Pillow's format
        names); None for anything else, DICOM included.
    """
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return next((name for signature, name in _SIGNATURES if head.startswith(signature)), None)
