"""A pydicom decoding plugin around imagecodecs, for the JPEG syntaxes no other MIT-compatible
decoder reads.

pydicom 3 decodes compressed *Pixel Data* through plugins (PS3.5 Section 8.2 and Annex A.4
define the encapsulated transfer syntaxes). The plugins installed with leaktrace cover most
of them: pylibjpeg-openjpeg (JPEG 2000 and HTJ2K), pyjpegls (JPEG-LS), pylibjpeg-rle and
pydicom itself (RLE), GDCM (JPEG baseline and lossless) and Pillow (8-bit JPEG). None of
them reads **12-bit lossy JPEG** (JPEG Extended, Process 2 and 4, 1.2.840.10008.1.2.4.51),
a common PACS storage format for CR/DX films: GDCM's wheel is built without 12-bit
support, Pillow reads 8-bit JPEG only, and the libjpeg-based pylibjpeg-libjpeg is GPL-3.

imagecodecs (BSD-3-Clause; https://github.com/cgohlke/imagecodecs) bundles libjpeg-turbo 3,
which decodes 8- and 12-bit DCT JPEG and 2-16-bit lossless JPEG (ITU-T T.81 processes 1, 2,
4 and 14), and CharLS for JPEG-LS (ITU-T T.87). This module registers it as one more
pydicom plugin, named ``"imagecodecs"``, for the JPEG and JPEG-LS syntaxes. It is added
after the plugins pydicom knows, so existing decodes are unchanged; :func:`preferred_plugin`
names it first where it is the only one that can work.

This module is not meant to be used directly: :mod:`watermark.dicomio` calls
:func:`register` on import. The plugin protocol (``DECODER_DEPENDENCIES``,
``is_available``, a frame function) is pydicom's: see pydicom's guide "Writing a decoding
plugin" (pydicom 3.0).
"""

from __future__ import annotations

from collections.abc import Callable

from pydicom import uid
from pydicom.pixels import get_decoder

try:
    import imagecodecs
except ImportError:  # pragma: no cover - imagecodecs is a core dependency
    imagecodecs = None

PLUGIN = "imagecodecs"

_REQUIREMENT = ("imagecodecs>=2024.1.1",)

# transfer syntax -> name of the imagecodecs function that decodes one frame of it
_FUNCTIONS: dict[uid.UID, str] = {
    uid.JPEGBaseline8Bit: "jpeg8_decode",
    uid.JPEGExtended12Bit: "jpeg8_decode",
    uid.JPEGLossless: "jpeg8_decode",
    uid.JPEGLosslessSV1: "jpeg8_decode",
    uid.JPEGLSLossless: "jpegls_decode",
    uid.JPEGLSNearLossless: "jpegls_decode",
}

DECODER_DEPENDENCIES: dict[uid.UID, tuple[str, ...]] = {ts: _REQUIREMENT for ts in _FUNCTIONS}


def is_available(transfer_syntax: str) -> bool:
    """``True`` if imagecodecs is installed and has a working codec for `transfer_syntax`.

    Part of pydicom's plugin protocol.
    """
    function = _function(uid.UID(transfer_syntax))
    return function is not None


def _function(transfer_syntax: uid.UID) -> Callable | None:
    name = _FUNCTIONS.get(transfer_syntax)
    if imagecodecs is None or name is None:
        return None
    codec = getattr(imagecodecs, name.removesuffix("_decode").upper(), None)
    if codec is None or not getattr(codec, "available", False):
        return None
    return getattr(imagecodecs, name)


def _decode_frame(src: bytes, runner) -> bytes:
    """Decode one encapsulated frame; part of pydicom's plugin protocol.

    Parameters
    ----------
    src : bytes
        One frame's JPEG or JPEG-LS codestream.
    runner : pydicom.pixels.decoders.base.DecodeRunner
        pydicom's description of the frame. Its ``bits_allocated``, ``planar_configuration``
        and ``photometric_interpretation`` options are set to what the codec returned.

    Returns
    -------
    bytes
        The frame's samples, native byte order, colour-by-pixel: 1 byte per sample for a
        codestream of at most 8 bits, 2 bytes otherwise.

    Raises
    ------
    ValueError
        If imagecodecs has no codec for the syntax, or the codestream does not end with its
        EOI marker (a truncated frame, which libjpeg-turbo would fill in silently).
    imagecodecs.DelayedImportError, RuntimeError
        From the codec, for a corrupt or unsupported codestream.
    """
    function = _function(runner.transfer_syntax)
    if function is None:
        raise ValueError(f"imagecodecs cannot decode '{runner.transfer_syntax.name}'")
    _check_complete(src)
    arr = function(src)
    if arr.dtype.itemsize not in (1, 2):
        raise ValueError(f"imagecodecs returned {arr.dtype} samples")
    runner.set_option("bits_allocated", 8 * arr.dtype.itemsize)
    if arr.ndim == 3:
        runner.set_option("planar_configuration", 0)
        # libjpeg-turbo converts YCbCr to RGB for a 3-component DCT codestream
        if runner.transfer_syntax in (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit) and str(
            runner.photometric_interpretation
        ).startswith("YBR"):
            runner.set_option("photometric_interpretation", "RGB")
    return arr.tobytes()


def _check_complete(src: bytes) -> None:
    """Refuse a codestream cut short: JPEG (ITU-T T.81 B.2.1) and JPEG-LS (T.87 C.1) end with
    the EOI marker FF D9. PS3.5 A.4 lets a fragment carry one trailing 00 byte of padding.

    libjpeg-turbo, like every libjpeg, only warns on a premature end and returns the rows it
    has with the rest filled in; a film half grey must not be marked and exported as if whole.
    """
    end = bytes(src[-3:]).rstrip(b"\x00")
    if not end.endswith(b"\xff\xd9"):
        raise ValueError("the codestream ends without its EOI marker (FF D9): truncated")


def register() -> None:
    """Add the ``"imagecodecs"`` plugin to pydicom's decoders, once per process.

    Appended after the plugins pydicom ships, so that a syntax they already decode keeps its
    decoder (the one-grey-level differences between JPEG decoders stay where they were).
    """
    for transfer_syntax in _FUNCTIONS:
        try:
            get_decoder(transfer_syntax).add_plugin(PLUGIN, (__name__, "_decode_frame"))
        except ValueError:  # registered already
            continue


def preferred_plugin(transfer_syntax: uid.UID, bits_stored: int) -> str:
    """The plugin to ask first for `transfer_syntax`, or ``""`` for pydicom's own order.

    Parameters
    ----------
    transfer_syntax : pydicom.uid.UID
        (0002,0010) of the file.
    bits_stored : int
        (0028,0101) of the file.

    Returns
    -------
    str
        ``"imagecodecs"`` for JPEG Extended with more than 8 bits stored (the only installed
        decoder that reads it) when imagecodecs is available; ``""`` otherwise.
    """
    if transfer_syntax == uid.JPEGExtended12Bit and bits_stored > 8 and is_available(
        transfer_syntax
    ):
        return PLUGIN
    return ""


def decoder_for(transfer_syntax: uid.UID, bits_stored: int) -> str:
    """The plugin that decodes `transfer_syntax` first in this process, for reports and docs.

    Returns
    -------
    str
        A pydicom plugin label (``"gdcm"``, ``"pylibjpeg"``, ``"imagecodecs"``...),
        ``"pydicom"`` for native and deflated syntaxes, ``""`` if none is available.
    """
    if not uid.UID(transfer_syntax).is_encapsulated:
        return "pydicom"
    preferred = preferred_plugin(transfer_syntax, bits_stored)
    if preferred:
        return preferred
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError:
        return ""
    # pydicom tries the available plugins in the order they were added; its public
    # ``available_plugins`` is sorted by name, so the order is read from the mapping itself
    plugins = list(getattr(decoder, "_available", None) or decoder.available_plugins)
    return plugins[0] if plugins else ""
