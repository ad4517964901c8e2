"""Lossy re-encoding: JPEG and WebP of the display (Pillow), and the DICOM side (JPEG, JPEG 2000,
DCMTK's 12-bit JPEG) on stored values, as arrays or as files.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ._checks import _as_image, _choice, _number
from .rendering import to_uint8

if TYPE_CHECKING:  # pragma: no cover
    from os import PathLike

    from pydicom.dataset import Dataset


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
    forensics.external.dicomtools.ToolMissingError
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

    from ..external import dicomtools

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
