"""Read chest films from DICOM files and write their marked copies as DERIVED instances.

This module is the only place where leaktrace touches DICOM files. :func:`read_film` turns a
file into a :class:`Film`: the stored pixel values as a (Rows, Columns) array plus the few
facts the rest of leaktrace needs (bit depth, signedness, photometric interpretation, transfer
syntax, whether the source was ever compressed lossily). :func:`write_derived` writes a marked
copy of a film as a new SOP Instance that says what it is (DERIVED, with a reference to its
source) and never changes the file it came from.

All pixel decoding and encoding is left to pydicom and its plugins (pylibjpeg, pyjpegls,
GDCM, and imagecodecs for 12-bit lossy JPEG through :mod:`watermark.decoders`); this module
has no codec of its own.

References
----------
* DICOM PS3.3, Section C.7.6.1 "General Image Module" and C.7.6.3 "Image Pixel Module".
* DICOM PS3.3, Section C.12.4 "General Reference Module" (Derivation Description, Source
  Image Sequence).
* DICOM PS3.5, Section 8 "Encoding of Pixel, Overlay and Waveform Data" and Annex A
  "Transfer Syntax Specifications".
* DICOM PS3.10, Section 7.1 "DICOM File Meta Information".
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.pixels import compress, get_decoder, get_encoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from . import decoders
from ._files import atomic_write
from .errors import InvalidInputError, LeaktraceError, UnsupportedImageError
from .formats import HEAD_BYTES, image_format

decoders.register()  # imagecodecs for 12-bit lossy JPEG, after pydicom's own plugins

__all__ = ["Film", "DerivedRecord", "EncodedDerived", "read_film", "write_derived", "encode_derived",
           "write_encoded", "sha256_file"]

# Transfer syntaxes whose encoding can only be lossless (PS3.5 Annex A and Section 10).
# Every other transfer syntax is treated as possibly lossy: JPEG baseline/extended (.4.50,
# .4.51), JPEG 2000 (.4.91), JPEG-LS near-lossless (.4.81), HTJ2K (.4.203), JPEG XL, video...
_LOSSLESS_SYNTAXES = frozenset(
    UID(uid)
    for uid in (
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
        RLELossless,
        "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Process 14
        JPEGLosslessSV1,  # JPEG Lossless, Process 14, Selection Value 1 (.4.70)
        JPEGLSLossless,  # .4.80
        JPEG2000Lossless,  # .4.90
        JPEG2000MCLossless,  # .4.92
        "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
        "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
        "1.2.840.10008.1.2.4.110",  # JPEG XL Lossless
    )
)

# Syntaxes written as they were read (native encodings pydicom writes itself).
_KEPT_NATIVE_SYNTAXES = frozenset(
    {ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}
)

# Lossless encapsulated syntaxes that may be re-encoded in place when pydicom has an encoder.
_REENCODABLE_SYNTAXES = frozenset({RLELossless, JPEGLSLossless, JPEG2000Lossless})

# Defined Terms of (0028,2114) Lossy Image Compression Method, PS3.3 C.7.6.1.1.5.1.
_LOSSY_METHOD_BY_SYNTAX = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",
    "1.2.840.10008.1.2.4.93": "ISO_15444_1",
    "1.2.840.10008.1.2.4.203": "ISO_15444_15",
}

# Purpose of Reference for the Source Image Sequence item (CID 7202, DCM 121322).
_PURPOSE_CODE = ("121322", "DCM", "Source image for image processing operation")

_MAX_ST_LENGTH = 1024  # VR ST, PS3.5 Table 6.2-1


@dataclass(frozen=True)
class Film:
    """One grayscale film as read from a DICOM file.

    Attributes
    ----------
    path : pathlib.Path
        The file the film was read from.
    dataset : pydicom.dataset.Dataset
        The parsed dataset. It still holds (7FE0,0010) *Pixel Data* as read, which
        :func:`write_derived` uses to keep the unused high bits of native files. Its
        ``file_meta`` always has a (0002,0010) *Transfer Syntax UID* (set from the
        encoding pydicom detected when the file had none). Treat it as read-only.
    pixels : numpy.ndarray
        (Rows, Columns) array of stored values, read-only. dtype ``uint8``/``uint16`` for
        unsigned data and ``int8``/``int16`` for signed data, as pydicom returns it. Bits above
        (0028,0101) *Bits Stored* are masked off (unsigned) or replaced by the sign extension
        (signed), so every value lies in :attr:`value_range`. No modality or VOI
        transformation is applied (see :mod:`watermark.display` for that).
    bits_stored : int
        (0028,0101) *Bits Stored*, 8 to 16.
    signed : bool
        ``True`` if (0028,0103) *Pixel Representation* is 1 (two's complement).
    photometric : str
        (0028,0004) *Photometric Interpretation*: ``"MONOCHROME1"`` (minimum value shown
        white) or ``"MONOCHROME2"`` (minimum value shown black).
    transfer_syntax : pydicom.uid.UID
        The transfer syntax the pixel data was read in. *Implicit VR Little Endian* (or the
        encoding pydicom detected) when the file has no File Meta Information.
    lossy : bool
        ``True`` if the pixel values have been through lossy compression: the transfer syntax
        is not a lossless-only one (JPEG baseline/extended .4.50/.4.51, JPEG 2000 .4.91,
        JPEG-LS near-lossless .4.81, HTJ2K .4.203, ...), or (0028,2110) *Lossy Image
        Compression* is ``"01"``. Syntaxes that may be lossy are counted as lossy.

    Notes
    -----
    For lossy JPEG sources the decoded values may differ by one grey level between decoder
    plugins (GDCM, Pillow, imagecodecs); pydicom tries GDCM first, and 12-bit JPEG Extended
    is decoded by imagecodecs (:mod:`watermark.decoders`), the only one that reads it.
    """

    path: Path
    dataset: Dataset
    pixels: np.ndarray
    bits_stored: int
    signed: bool
    photometric: str
    transfer_syntax: UID
    lossy: bool

    @property
    def value_range(self) -> tuple[int, int]:
        """(min, max) stored value allowed by *Bits Stored* and *Pixel Representation*.

        ``(0, 2**bits_stored - 1)`` for unsigned data,
        ``(-2**(bits_stored - 1), 2**(bits_stored - 1) - 1)`` for signed data.
        """
        if self.signed:
            return -(1 << (self.bits_stored - 1)), (1 << (self.bits_stored - 1)) - 1
        return 0, (1 << self.bits_stored) - 1


@dataclass(frozen=True)
class DerivedRecord:
    """What :func:`write_derived` wrote.

    Attributes
    ----------
    path : pathlib.Path
        The file written.
    sop_instance_uid : str
        (0008,0018) *SOP Instance UID* of the new instance.
    transfer_syntax : pydicom.uid.UID
        (0002,0010) *Transfer Syntax UID* the file was written in.
    sha256 : str
        SHA-256 of the written file's bytes, 64 lowercase hex digits.
    """

    path: Path
    sop_instance_uid: str
    transfer_syntax: UID
    sha256: str


def read_film(path: str | os.PathLike) -> Film:
    """Read a single-frame grayscale DICOM film.

    The file is parsed with ``pydicom.dcmread(path, force=True)`` so that old files without
    the 128-byte preamble and File Meta Information (ACR-NEMA style) are accepted; their
    transfer syntax is taken from the encoding pydicom detected.

    Parameters
    ----------
    path : str or os.PathLike
        The DICOM file.

    Returns
    -------
    Film
        The stored values and the facts about them; see :class:`Film`.

    Raises
    ------
    InvalidInputError
        The file is missing or unreadable, is not DICOM, holds no (7FE0,0010) *Pixel Data*
        (e.g. a structured report), lacks a required Image Pixel element, is truncated, or its
        pixel data cannot be decoded (corrupt compressed data).
    UnsupportedImageError
        The image is readable but not one leaktrace handles: (0028,0002) *Samples per Pixel*
        other than 1, (0028,0004) *Photometric Interpretation* other than MONOCHROME1/2,
        (0028,0008) *Number of Frames* above 1, (0028,0100) *Bits Allocated* other than 8 or
        16, (0028,0101) *Bits Stored* outside 8..16, (0028,0102) *High Bit* other than
        Bits Stored - 1, float pixel data, or a transfer syntax with no installed pydicom
        decoder (the message lists what to install).

    Notes
    -----
    Bits above *Bits Stored* are not part of the pixel value (PS3.5 Section 8.1.1); they are
    masked off, or replaced by the sign extension for signed data, even when the file has
    other data there (old files kept overlay planes in them).

    References
    ----------
    * DICOM PS3.3, Section C.7.6.3 "Image Pixel Module" and C.7.6.3.1.2 "Photometric
      Interpretation".
    * DICOM PS3.5, Section 8.1.1 "Pixel Data Encoding of Related Data Elements" and Section
      10.1 (Implicit VR Little Endian is the default transfer syntax).
    * DICOM PS3.10, Section 7.1 "DICOM File Meta Information".
    """
    path = Path(path)
    ds = _parse(path)
    transfer_syntax = _transfer_syntax(ds)

    samples = _required_int(ds, path, "SamplesPerPixel", "(0028,0002)")
    if samples != 1:
        raise UnsupportedImageError(
            f"{path}: (0028,0002) Samples per Pixel is {samples}; only grayscale images "
            "with 1 sample per pixel are supported (no RGB/YBR colour images)"
        )
    photometric = str(_required(ds, path, "PhotometricInterpretation", "(0028,0004)"))
    photometric = photometric.strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedImageError(
            f"{path}: (0028,0004) Photometric Interpretation is '{photometric}'; only "
            "MONOCHROME1 and MONOCHROME2 are supported"
        )
    _check_single_frame(ds, path)
    bits_stored, signed = _check_bit_depth(ds, path)
    rows = _required_int(ds, path, "Rows", "(0028,0010)")
    columns = _required_int(ds, path, "Columns", "(0028,0011)")
    if rows < 1 or columns < 1:
        raise InvalidInputError(
            f"{path}: image size (0028,0010) Rows x (0028,0011) Columns is {rows} x {columns}; "
            "both must be at least 1"
        )

    pixels = _decode(ds, path, transfer_syntax, bits_stored)
    if pixels.shape != (rows, columns):
        raise InvalidInputError(
            f"{path}: decoded pixel data has shape {pixels.shape}, but (0028,0010) Rows and "
            f"(0028,0011) Columns give ({rows}, {columns})"
        )
    pixels = _clean_unused_bits(pixels, bits_stored, signed)
    pixels.setflags(write=False)

    flag = str(ds.get("LossyImageCompression", "") or "").strip()
    lossy = transfer_syntax not in _LOSSLESS_SYNTAXES or flag == "01"
    return Film(
        path=path,
        dataset=ds,
        pixels=pixels,
        bits_stored=bits_stored,
        signed=signed,
        photometric=photometric,
        transfer_syntax=transfer_syntax,
        lossy=lossy,
    )


def write_derived(
    film: Film,
    marked: np.ndarray,
    out_path: str | os.PathLike,
    *,
    description: str,
) -> DerivedRecord:
    """Write a marked copy of `film` as a new DERIVED DICOM instance, atomically.

    Every attribute of the source is kept except those listed below. The source file is
    never opened for writing.

    **Pixel values.** `marked` is rounded to the nearest integer (half to even) and
    *clipped* to :attr:`Film.value_range`, never wrapped. (0028,0010) *Rows*, (0028,0011)
    *Columns*, (0028,0100) *Bits Allocated*, (0028,0101) *Bits Stored*, (0028,0102) *High Bit*,
    (0028,0103) *Pixel Representation* and (0028,0004) *Photometric Interpretation* are
    unchanged. In an uncompressed (native) output the bits above *Bits Stored* of each stored
    word are copied from the source file's raw words, so overlay planes that old files keep
    there survive; only the low *Bits Stored* bits carry the new value. (Signed sources whose
    high bits are the plain sign extension get the sign extension of the new value.)
    Encapsulated (compressed) outputs cannot hold such bits.

    **Transfer syntax** of the output, (0002,0010):

    * Implicit VR Little Endian, Explicit VR Little Endian and Deflated Explicit VR Little
      Endian are kept. Explicit VR Big Endian (retired) becomes Explicit VR Little Endian,
      with OW/OL/OF/OD/OV values byte-swapped.
    * RLE Lossless, JPEG-LS Lossless and JPEG 2000 Lossless are re-encoded in the same syntax
      when pydicom has an available encoder for it. The encoded frame is decoded again and
      compared with the clipped values; if they differ in any pixel, or encoding fails, a
      warning is issued and Explicit VR Little Endian is written instead.
    * Every other syntax (lossless ones pydicom cannot encode, e.g. JPEG Lossless .4.70;
      and every lossy one: JPEG baseline, JPEG 2000 .4.91, JPEG-LS near-lossless ...) is
      written as Explicit VR Little Endian, so marking never adds a lossy step.

    **Elements added or changed**:

    * (0008,0018) *SOP Instance UID* and (0002,0003) *Media Storage SOP Instance UID*: a new
      UID from :func:`pydicom.uid.generate_uid`.
    * (0008,0008) *Image Type*: value 1 set to ``DERIVED`` (a single space-separated
      ACR-NEMA style value such as ``"ORIGINAL PRIMARY"`` is split first); set to
      ``["DERIVED", "SECONDARY"]`` if absent or empty.
    * (0008,2111) *Derivation Description*: set to `description` (replaces any old value).
    * (0008,2112) *Source Image Sequence*: one item appended (the sequence is created if
      absent) with (0008,1150) *Referenced SOP Class UID* and (0008,1155) *Referenced SOP
      Instance UID* of the source and (0040,A170) *Purpose of Reference Code Sequence*
      (DCM 121322, "Source image for image processing operation").
    * (0028,0106) *Smallest Image Pixel Value* and (0028,0107) *Largest Image Pixel Value*:
      updated to the new values, only if present.
    * (0028,2110) *Lossy Image Compression*: set to ``"01"`` if the source is lossy
      (:attr:`Film.lossy`); otherwise left as it was. (0028,2112) *Lossy Image Compression
      Ratio* and (0028,2114) *Lossy Image Compression Method* are kept; the method is added
      when absent and the source transfer syntax names it (e.g. ``ISO_15444_1``).
    * (7FE0,0010) *Pixel Data*; (7FE0,0001)/(7FE0,0002) extended offset tables are removed
      or rewritten with it.
    * File Meta Information (PS3.10 Section 7.1) is rebuilt: (0002,0002) *Media Storage SOP
      Class UID* from (0008,0016), (0002,0003), (0002,0010), and pydicom's (0002,0012)
      *Implementation Class UID* and (0002,0013) *Implementation Version Name*.
    * Group Length elements (gggg,0000) outside group 0002 (retired, PS3.5 Section 7.2) are
      removed, since their values would no longer be right.

    **Atomic write.** The file is first written to a temporary file in the destination
    folder, flushed and fsync-ed, then moved over `out_path` with :func:`os.replace`. On any
    error the temporary file is removed and `out_path` is left as it was.

    Parameters
    ----------
    film : Film
        The source film, from :func:`read_film`.
    marked : numpy.ndarray
        (Rows, Columns) array of new stored values, same shape as ``film.pixels``, any integer
        or float dtype (finite values only).
    out_path : str or os.PathLike
        Destination file. Its folder must exist; an existing file is replaced. It must not be
        the source film.
    description : str
        Text for (0008,2111) *Derivation Description* (VR ST), 1 to 1024 characters.

    Returns
    -------
    DerivedRecord
        Path, new SOP Instance UID, transfer syntax and SHA-256 of the written file.

    Raises
    ------
    ValueError
        `marked` has the wrong shape, a non-numeric dtype or non-finite values, or
        `description` is empty or longer than 1024 characters.
    InvalidInputError
        The output folder does not exist, `out_path` is a folder or the source film itself,
        or the source lacks (0008,0016) *SOP Class UID* / (0008,0018) *SOP Instance UID*.
    LeaktraceError
        The dataset cannot be encoded or the file cannot be written (the message says why).

    Warns
    -----
    UserWarning
        A lossless re-encode did not give back the same values; Explicit VR Little Endian was
        written instead.

    References
    ----------
    * DICOM PS3.3, Section C.7.6.1.1.2 "Image Type", C.7.6.1.1.5 "Lossy Image Compression",
      C.12.1 "SOP Common Module", C.12.4 "General Reference Module".
    * DICOM PS3.5, Section 8.1.1 (unused high bits), Annex A.4 (encapsulated pixel data).

    Examples
    --------
    >>> film = read_film("chest.dcm")                           # doctest: +SKIP
    >>> rec = write_derived(film, film.pixels, "out/chest_marked.dcm",
    ...                     description="leaktrace recipient mark")  # doctest: +SKIP
    >>> rec.transfer_syntax.name                                  # doctest: +SKIP
    'JPEG 2000 Image Compression (Lossless Only)'
    """
    out_path = Path(out_path)
    return write_encoded(_encode(film, marked, out_path, description), out_path)


@dataclass(frozen=True)
class EncodedDerived:
    """A derived copy encoded by :func:`encode_derived`, not yet written.

    Attributes
    ----------
    data : bytes
        The whole DICOM file (PS3.10 format).
    sop_instance_uid : str
        (0008,0018) *SOP Instance UID* of the new instance.
    transfer_syntax : pydicom.uid.UID
        (0002,0010) *Transfer Syntax UID* of ``data``.
    """

    data: bytes
    sop_instance_uid: str
    transfer_syntax: UID


def encode_derived(film: Film, marked: np.ndarray, out_path: str | os.PathLike, *,
                   description: str) -> EncodedDerived:
    """The first half of :func:`write_derived`: build and encode the derived copy in memory.

    Everything :func:`write_derived` documents happens here except the write itself, so that
    the (possibly slow) encoding can run in another process and the file be written later
    with :func:`write_encoded`. Parameters and errors as for :func:`write_derived`;
    ``out_path`` is checked (its folder exists, it is not the source) and named in messages,
    but nothing is written.
    """
    return _encode(film, marked, Path(out_path), description)


def _encode(film: Film, marked: np.ndarray, out_path: Path, description: str) -> EncodedDerived:
    """:func:`encode_derived`; warnings name the line that called the public function."""
    values = _quantise(film, marked)
    _check_description(description)
    _check_destination(film, out_path)

    # pydicom warns about odd values of the source (e.g. over-long strings) when it converts
    # them; pass those warnings on with the file name
    with _warnings_about(film.path, stacklevel=5, dataset=film.dataset):
        ds, new_uid = _derived_dataset(film, values, description)
    transfer_syntax = _set_pixel_data(ds, film, values)
    del values  # the pixel data now holds its own copy
    try:
        buffer = io.BytesIO()
        with _warnings_about(film.path, stacklevel=5, dataset=ds):
            pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    except Exception as exc:
        raise LeaktraceError(
            f"{film.path}: the derived copy for {out_path} cannot be encoded as DICOM: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return EncodedDerived(buffer.getvalue(), new_uid, transfer_syntax)


def write_encoded(encoded: EncodedDerived, out_path: str | os.PathLike) -> DerivedRecord:
    """The second half of :func:`write_derived`: write an encoded copy atomically.

    The bytes go to a temporary file in the destination folder, are flushed and fsync-ed,
    then moved over ``out_path`` with :func:`os.replace`.

    Raises
    ------
    LeaktraceError
        The file cannot be written; ``out_path`` is then left as it was.
    """
    out_path = Path(out_path)
    try:
        _atomic_write(out_path, encoded.data)
    except OSError as exc:
        raise LeaktraceError(f"{out_path}: cannot write the derived copy: {exc}") from exc
    return DerivedRecord(
        path=out_path,
        sop_instance_uid=encoded.sop_instance_uid,
        transfer_syntax=encoded.transfer_syntax,
        sha256=hashlib.sha256(encoded.data).hexdigest(),
    )


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, as 64 lowercase hex digits.

    Raises
    ------
    InvalidInputError
        The file is missing or cannot be read.
    """
    path = Path(path)
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot be read to hash it: {exc}") from exc
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# reading helpers


def _parse(path: Path) -> Dataset:
    """Parse `path` with pydicom, turning every failure into an :class:`InvalidInputError`."""
    if not path.exists():
        raise InvalidInputError(f"{path}: file not found")
    if path.is_dir():
        raise InvalidInputError(f"{path}: is a folder, not a DICOM file")
    if path.stat().st_size == 0:
        raise InvalidInputError(f"{path}: empty file (0 bytes), not a DICOM file")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, force=True)
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot be read: {exc}") from exc
    except Exception as exc:  # pydicom raises many kinds of errors on garbage input
        raise InvalidInputError(
            f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})"
        ) from exc

    notes = [str(w.message) for w in caught]
    if "PixelData" not in ds:
        raise _no_pixel_data_error(path, ds, notes)
    for w in caught:  # pass pydicom's remarks on, saying which file they concern
        warnings.warn(f"{path}: {w.message}", w.category, stacklevel=3)
    return ds


@contextlib.contextmanager
def _warnings_about(path: Path, stacklevel: int = 4, dataset: Dataset | None = None):
    """Re-issue warnings raised inside the block with `path` in front of the message, and
    the element(s) of ``dataset`` a value warning of pydicom's is about (pydicom does not
    name them)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        with warnings.catch_warnings():  # walking the dataset converts raw values again,
            warnings.simplefilter("ignore")  # which repeats the warning without the file
            where = _elements_meant(str(w.message), dataset) if dataset is not None else ""
        warnings.warn(f"{path}: {where}{w.message}", w.category, stacklevel=stacklevel)


_VALUE_LENGTH = re.compile(r"The value length \((\d+)\) exceeds the maximum length of \d+ "
                           r"allowed for VR (\w\w)")


def _elements_meant(message: str, ds: Dataset) -> str:
    """"(0008,0050) Accession Number: " for pydicom's over-long-value warning, found by the
    VR and length it gives; "" when it is another warning or no element matches."""
    m = _VALUE_LENGTH.search(message)
    if m is None:
        return ""
    length, vr = int(m.group(1)), m.group(2)
    found: list[str] = []

    def walk(d: Dataset) -> None:
        for elem in d:
            if elem.VR == "SQ":
                for item in elem.value or ():
                    walk(item)
            elif elem.VR == vr and isinstance(elem.value, str) and len(elem.value) == length:
                found.append(f"{elem.tag} {elem.name}")

    walk(ds)
    return ", ".join(found) + ": " if found else ""


def _no_pixel_data_error(path: Path, ds: Dataset, notes: list[str]) -> LeaktraceError:
    """Build the error for a parsed file without (7FE0,0010) Pixel Data."""
    float_elements = (("FloatPixelData", "(7FE0,0008)"), ("DoubleFloatPixelData", "(7FE0,0009)"))
    for keyword, tag in float_elements:
        if keyword in ds:
            return UnsupportedImageError(
                f"{path}: has {tag} {keyword} (floating point pixels); only integer "
                "(7FE0,0010) Pixel Data is supported"
            )
    pydicom_says = "; ".join(notes)
    if any("end of file" in n.lower() or "expected" in n.lower() for n in notes):
        return InvalidInputError(
            f"{path}: no (7FE0,0010) Pixel Data could be read; the file looks truncated "
            f"(pydicom: {pydicom_says})"
        )
    if "Rows" in ds or "BitsAllocated" in ds:
        return InvalidInputError(
            f"{path}: has Image Pixel elements ((0028,0010) Rows, (0028,0100) Bits Allocated) "
            "but no (7FE0,0010) Pixel Data; the file looks truncated"
        )
    sop_class = ds.get("SOPClassUID")
    if sop_class:
        sop_class = UID(str(sop_class))
        if "Image Storage" in sop_class.name:
            return InvalidInputError(
                f"{path}: SOP Class '{sop_class.name}' ({sop_class}) is an image class but the "
                "file has no (7FE0,0010) Pixel Data; the file looks truncated"
            )
        return InvalidInputError(
            f"{path}: DICOM file of SOP Class '{sop_class.name}' ({sop_class}) has no "
            "(7FE0,0010) Pixel Data; only image files can be read"
        )
    head = _head(path)
    kind = image_format(head)
    if kind is not None:
        return InvalidInputError(
            f"{path}: is a {kind} image, not DICOM: give the DICOM film it was made from (a "
            "leaked image is traced with 'leaktrace trace', not marked)")
    prefix = "has no 'DICM' prefix at byte 128 and " if head[128:132] != b"DICM" else ""
    extra = f" (pydicom: {pydicom_says})" if notes else ""
    return InvalidInputError(
        f"{path}: not a DICOM image: it {prefix}holds no (7FE0,0010) Pixel Data element{extra}"
    )


def _head(path: Path) -> bytes:
    """The first :data:`~watermark.formats.HEAD_BYTES` of the file (b"" if unreadable)."""
    try:
        with path.open("rb") as fh:
            return fh.read(HEAD_BYTES)
    except OSError:
        return b""


def _transfer_syntax(ds: Dataset) -> UID:
    """Return (0002,0010), setting it from the detected encoding when the file has none."""
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is None:
        file_meta = ds.file_meta = FileMetaDataset()
    uid = file_meta.get("TransferSyntaxUID")
    if uid:
        return UID(str(uid))
    implicit, little = ds.original_encoding
    if implicit is False and little is True:
        uid = ExplicitVRLittleEndian
    elif implicit is False and little is False:
        uid = ExplicitVRBigEndian
    else:  # implicit, or undetermined: PS3.5 Section 10.1 default
        uid = ImplicitVRLittleEndian
    file_meta.TransferSyntaxUID = uid
    return UID(uid)


def _required(ds: Dataset, path: Path, keyword: str, tag: str) -> object:
    """Value of a required element, or an InvalidInputError naming it."""
    value = ds.get(keyword)
    if value is None or value == "":
        raise InvalidInputError(f"{path}: required element {tag} {keyword} is missing or empty")
    return value


def _required_int(ds: Dataset, path: Path, keyword: str, tag: str) -> int:
    """Integer value of a required element (IS/US), or an InvalidInputError naming it."""
    value = _required(ds, path, keyword, tag)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"{path}: {tag} {keyword} is {value!r}; an integer is required"
        ) from None


def _check_single_frame(ds: Dataset, path: Path) -> None:
    """Refuse multi-frame images; (0028,0008) Number of Frames may be absent or 1."""
    if "NumberOfFrames" not in ds:
        return
    raw = ds.NumberOfFrames
    try:
        frames = int(raw) if raw not in (None, "") else 1
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"{path}: (0028,0008) Number of Frames is {raw!r}; an integer is required"
        ) from None
    if frames == 0:
        warnings.warn(
            f"{path}: (0028,0008) Number of Frames is 0; assuming a single frame",
            UserWarning,
            stacklevel=3,
        )
    elif frames != 1:
        raise UnsupportedImageError(
            f"{path}: (0028,0008) Number of Frames is {frames}; only single-frame images "
            "are supported"
        )


def _check_bit_depth(ds: Dataset, path: Path) -> tuple[int, bool]:
    """Check Bits Stored/Allocated, High Bit, Pixel Representation; return (bits, signed)."""
    stored = _required_int(ds, path, "BitsStored", "(0028,0101)")
    if not 8 <= stored <= 16:
        raise UnsupportedImageError(
            f"{path}: (0028,0101) Bits Stored is {stored}; only 8 to 16 bits are supported"
        )
    allocated = _required_int(ds, path, "BitsAllocated", "(0028,0100)")
    if allocated not in (8, 16) or stored > allocated:
        raise UnsupportedImageError(
            f"{path}: (0028,0100) Bits Allocated is {allocated} with (0028,0101) Bits Stored "
            f"{stored}; Bits Allocated must be 8 or 16 and at least Bits Stored"
        )
    if "HighBit" in ds and ds.HighBit not in (None, ""):
        high_bit = int(ds.HighBit)
        if high_bit != stored - 1:
            raise UnsupportedImageError(
                f"{path}: (0028,0102) High Bit is {high_bit}; only High Bit = Bits Stored - 1 "
                f"= {stored - 1} is supported"
            )
    representation = _required_int(ds, path, "PixelRepresentation", "(0028,0103)")
    if representation not in (0, 1):
        raise InvalidInputError(
            f"{path}: (0028,0103) Pixel Representation is {representation}; allowed values "
            "are 0 (unsigned) and 1 (two's complement)"
        )
    return stored, representation == 1


def _decode(ds: Dataset, path: Path, transfer_syntax: UID, bits_stored: int) -> np.ndarray:
    """Decode the single frame with pydicom; errors name the file, the syntax and what to do."""
    what = f"(0002,0010) Transfer Syntax UID {transfer_syntax} ('{transfer_syntax.name}')"
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError:
        raise UnsupportedImageError(
            f"{path}: {what} is not one pydicom can decode; convert the file to an "
            "uncompressed or lossless syntax first (for example with DCMTK's dcmdjpeg or "
            "GDCM's gdcmconv --raw)"
        ) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin registered"
        raise UnsupportedImageError(
            f"{path}: cannot decode {what}: no decoder for it is installed; install "
            f"one of: {missing}"
        )
    plugin = decoders.preferred_plugin(transfer_syntax, bits_stored)
    try:
        arr, _ = decoder.as_array(ds, decoding_plugin=plugin)
    except Exception as exc:  # codecs raise RuntimeError, ValueError, OSError, ...
        raise InvalidInputError(
            f"{path}: pixel data cannot be decoded as '{transfer_syntax.name}' "
            f"({transfer_syntax}, {bits_stored} bits stored); the file is truncated or "
            f"corrupt ({_first_failure(exc)})"
        ) from exc
    return arr


def _first_failure(exc: Exception) -> str:
    """One line of a decoder failure. pydicom joins every plugin's message into one text; the
    imagecodecs plugin's (it checks the codestream's end) is the most telling when present,
    GDCM's is often an internal error ("'NoneType' object has no attribute 'encode'")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Unable to decode"):
        lines = lines[1:]
    ours = [line for line in lines if line.startswith(f"{decoders.PLUGIN}:")]
    return (ours or lines or [type(exc).__name__])[0]


def _clean_unused_bits(arr: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Mask (unsigned) or sign-extend (signed) the bits above `bits_stored`; new array."""
    arr = arr.astype(arr.dtype.newbyteorder("="), copy=True)
    width = arr.dtype.itemsize * 8
    if bits_stored >= width:
        return arr
    if signed:
        shift = width - bits_stored
        np.left_shift(arr, shift, out=arr)
        np.right_shift(arr, shift, out=arr)  # arithmetic shift on a signed dtype
    else:
        np.bitwise_and(arr, arr.dtype.type((1 << bits_stored) - 1), out=arr)
    return arr


# --------------------------------------------------------------------------------------------
# writing helpers


def _quantise(film: Film, marked: np.ndarray) -> np.ndarray:
    """Round and clip `marked` into the film's value range; return it in the film's dtype."""
    marked = np.asarray(marked)
    if marked.shape != film.pixels.shape:
        raise ValueError(
            f"marked has shape {marked.shape}; expected {film.pixels.shape} "
            f"(Rows, Columns of {film.path})"
        )
    low, high = film.value_range
    if marked.dtype == np.bool_:
        marked = marked.astype(np.int64)
    if np.issubdtype(marked.dtype, np.unsignedinteger):
        clipped = np.minimum(marked, np.uint64(high)).astype(np.int64)
        clipped = np.maximum(clipped, low)
    elif np.issubdtype(marked.dtype, np.signedinteger):
        clipped = np.clip(marked.astype(np.int64), low, high)
    elif np.issubdtype(marked.dtype, np.floating):
        # in blocks of rows: no image-sized float temporaries
        out = np.empty(marked.shape, dtype=film.pixels.dtype)
        for i in range(0, marked.shape[0], 256):
            block = np.rint(marked[i:i + 256].astype(np.float64))
            if not np.all(np.isfinite(block)):
                raise ValueError("marked holds NaN or infinite values; all values must be finite")
            out[i:i + 256] = np.clip(block, low, high, out=block)
        return out
    else:
        raise ValueError(
            f"marked has dtype {marked.dtype}; an integer or floating point dtype is required"
        )
    return clipped.astype(film.pixels.dtype)


def _check_description(description: str) -> None:
    """Check the text for (0008,2111) Derivation Description (VR ST)."""
    if not isinstance(description, str) or not description.strip():
        raise ValueError("description must be a non-empty string")
    if len(description) > _MAX_ST_LENGTH:
        raise ValueError(
            f"description has {len(description)} characters; (0008,2111) Derivation "
            f"Description (VR ST) allows at most {_MAX_ST_LENGTH}"
        )


def _check_destination(film: Film, out_path: Path) -> None:
    """The output folder must exist and the output must not be the source film."""
    folder = out_path.parent
    if not folder.is_dir():
        raise InvalidInputError(f"{out_path}: output folder {folder} does not exist")
    if out_path.is_dir():
        raise InvalidInputError(f"{out_path}: is a folder; a file name is required")
    same = out_path.resolve() == film.path.resolve()
    if not same and out_path.exists() and film.path.exists():
        same = os.path.samefile(out_path, film.path)
    if same:
        raise InvalidInputError(
            f"{out_path}: is the source film {film.path}; refusing to overwrite the input"
        )


def _derived_dataset(film: Film, values: np.ndarray, description: str) -> tuple[Dataset, str]:
    """Deep copy of the source dataset with the DERIVED attributes set (no pixel data yet)."""
    ds = copy.deepcopy(film.dataset)
    source_class = ds.get("SOPClassUID")
    source_instance = ds.get("SOPInstanceUID")
    if not source_class or not source_instance:
        raise InvalidInputError(
            f"{film.path}: (0008,0016) SOP Class UID or (0008,0018) SOP Instance UID is "
            "missing; the derived copy could not reference its source"
        )
    if film.transfer_syntax == ExplicitVRBigEndian:
        _swap_other_words(ds)
    _drop_group_lengths(ds)

    new_uid = generate_uid()
    ds.SOPInstanceUID = new_uid
    ds.ImageType = _derived_image_type(ds.get("ImageType"))
    ds.DerivationDescription = description

    item = Dataset()
    item.ReferencedSOPClassUID = source_class
    item.ReferencedSOPInstanceUID = source_instance
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = _PURPOSE_CODE
    item.PurposeOfReferenceCodeSequence = [code]
    if ds.get("SourceImageSequence"):
        ds.SourceImageSequence.append(item)
    else:
        ds.SourceImageSequence = [item]

    for keyword, value in (
        ("SmallestImagePixelValue", values.min()),
        ("LargestImagePixelValue", values.max()),
    ):
        if keyword in ds:
            ds[keyword].value = int(value)

    if film.lossy:
        ds.LossyImageCompression = "01"
        method = _LOSSY_METHOD_BY_SYNTAX.get(str(film.transfer_syntax))
        if method and not ds.get("LossyImageCompressionMethod"):
            ds.LossyImageCompressionMethod = method

    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            del ds[keyword]

    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = source_class
    file_meta.MediaStorageSOPInstanceUID = new_uid
    file_meta.TransferSyntaxUID = film.transfer_syntax  # replaced by _set_pixel_data
    ds.file_meta = file_meta
    return ds, new_uid


def _derived_image_type(value: object) -> list[str]:
    """(0008,0008) Image Type with value 1 set to DERIVED (PS3.3 C.7.6.1.1.2)."""
    if value is None or value == "":
        return ["DERIVED", "SECONDARY"]
    if isinstance(value, (list, tuple, MultiValue)):
        values = [str(v) for v in value]
    else:
        values = [str(value)]
    if len(values) == 1 and " " in values[0].strip():
        values = values[0].split()  # ACR-NEMA style "ORIGINAL PRIMARY" in one value
    if not any(v.strip() for v in values):
        return ["DERIVED", "SECONDARY"]
    values[0] = "DERIVED"
    return values


def _drop_group_lengths(ds: Dataset) -> None:
    """Remove retired (gggg,0000) Group Length elements, recursively (PS3.5 Section 7.2)."""
    for tag in [t for t in ds.keys() if t.element == 0 and t.group != 0x0002]:
        del ds[tag]
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _drop_group_lengths(item)


def _swap_other_words(ds: Dataset) -> None:
    """Byte-swap OW/OL/OF/OD/OV values read from a big endian file, recursively.

    pydicom converts numeric VRs such as US when the encoding changes, but leaves "other"
    byte strings as they were read. (7FE0,0010) Pixel Data is rewritten separately.
    """
    widths = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _swap_other_words(item)
        elif elem.VR in widths and elem.tag != 0x7FE00010 and isinstance(elem.value, bytes):
            width = widths[elem.VR]
            usable = len(elem.value) - len(elem.value) % width
            words = np.frombuffer(elem.value[:usable], dtype=f">u{width}")
            elem.value = words.astype(f"<u{width}").tobytes() + elem.value[usable:]


def _output_syntax(film: Film) -> UID:
    """The transfer syntax write_derived aims for, before the lossless check."""
    source = film.transfer_syntax
    if source in _KEPT_NATIVE_SYNTAXES:
        return source
    if source in _REENCODABLE_SYNTAXES and get_encoder(source).is_available:
        return source
    return ExplicitVRLittleEndian


def _set_pixel_data(ds: Dataset, film: Film, values: np.ndarray) -> UID:
    """Store `values` in `ds` in the output transfer syntax; return that syntax."""
    target = _output_syntax(film)
    if target.is_encapsulated:
        problem = _encode_lossless(ds, target, values)
        if problem is None:
            return target
        warnings.warn(
            f"{film.path}: re-encoding as '{target.name}' was not lossless ({problem}); "
            "writing Explicit VR Little Endian instead",
            UserWarning,
            stacklevel=4,
        )
        target = ExplicitVRLittleEndian

    words = _native_words(film, values)
    data = words.astype(words.dtype.newbyteorder("<"), copy=False).tobytes()
    if len(data) % 2:
        data += b"\x00"  # PS3.5 Section 7.1: values have even length
    # a buffered value (io.BytesIO shares `data`, no copy) is streamed into the file by
    # pydicom; a bytes value would first be copied into a buffer of its own
    ds.PixelData = io.BytesIO(data)
    elem = ds["PixelData"]
    elem.VR = "OW" if values.dtype.itemsize == 2 else "OB"
    elem.is_undefined_length = False
    ds.file_meta.TransferSyntaxUID = target
    return target


# Encoder plugins in order of preference. GDCM (installed for decoding JPEG lossless) is never
# used to encode: its RLE encoder aborts the whole process on some odd image sizes.
_ENCODER_PREFERENCE = ("pylibjpeg", "pyjpegls", "pydicom")


def _encode_lossless(ds: Dataset, target: UID, values: np.ndarray) -> str | None:
    """Encode `values` into `ds` as `target`; None if the decoded result matches exactly."""
    available = get_encoder(target).available_plugins
    plugin = next((p for p in _ENCODER_PREFERENCE if p in available), None)
    if plugin is None:
        return f"no encoder other than GDCM for {target.name}"
    try:
        compress(ds, target, arr=values, generate_instance_uid=False, encoding_plugin=plugin)
        decoded, _ = get_decoder(target).as_array(ds)
    except Exception as exc:  # any encoder/decoder failure means: fall back to native
        return f"{type(exc).__name__}: {exc}"
    signed = values.dtype.kind == "i"
    decoded = _clean_unused_bits(decoded, int(ds.BitsStored), signed)
    if decoded.shape != values.shape:
        return f"decoded shape {decoded.shape} differs from {values.shape}"
    differ = int(np.count_nonzero(decoded.astype(np.int64) != values.astype(np.int64)))
    if differ:
        return f"{differ} pixels differ after decoding"
    return None


def _native_words(film: Film, values: np.ndarray) -> np.ndarray:
    """Stored words for a native output: new low bits, the source's raw high bits."""
    unsigned = np.dtype(f"u{values.dtype.itemsize}")
    new = values.view(unsigned)
    if film.bits_stored == unsigned.itemsize * 8:
        return new
    raw = _raw_source_words(film, unsigned)
    if raw is None:
        return new
    if film.signed and np.array_equal(raw, film.pixels.view(unsigned)):
        return new  # the source used plain sign extension: keep doing so
    mask = unsigned.type((1 << film.bits_stored) - 1)
    return (raw & ~mask) | (new & mask)


def _raw_source_words(film: Film, unsigned: np.dtype) -> np.ndarray | None:
    """The source's stored words with unused bits intact, or None (encapsulated source)."""
    if film.transfer_syntax.is_encapsulated or "PixelData" not in film.dataset:
        return None
    try:
        raw, _ = get_decoder(film.transfer_syntax).as_array(
            film.dataset, correct_unused_bits=False, raw=True
        )
    except Exception as exc:
        warnings.warn(
            f"{film.path}: cannot re-read the raw stored words ({exc}); bits above (0028,0101) "
            "Bits Stored are written as zero/sign extension",
            UserWarning,
            stacklevel=4,
        )
        return None
    if raw.shape != film.pixels.shape or raw.dtype.itemsize != unsigned.itemsize:
        return None
    return raw.astype(raw.dtype.newbyteorder("="), copy=False).view(unsigned)


def _atomic_write(out_path: Path, data: bytes) -> None:
    """Write an output file atomically with ordinary permissions (0666 less the umask)."""
    atomic_write(out_path, data, mode=0o666 & ~_umask())


def _umask() -> int:
    """The process umask (mkstemp creates files 0600; outputs get ordinary permissions)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
