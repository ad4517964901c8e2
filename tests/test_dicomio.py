"""Tests for watermark.dicomio: reading the shared films, writing DERIVED copies, errors.

Real films come from the shared folder (see conftest.py); edge cases the shared set lacks
(signed data, high bits, odd sizes, big endian, RLE/JPEG-LS sources, broken files) are built
here as small synthetic files in pytest's tmp_path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import compress, get_decoder, get_encoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from conftest import DICOM_FILMS, film_params
from watermark import dicomio
from watermark.dicomio import DerivedRecord, Film, read_film, sha256_file, write_derived
from watermark.errors import InvalidInputError, LeaktraceError, UnsupportedImageError

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
DESCRIPTION = "leaktrace test copy"


# --------------------------------------------------------------------------------------------
# reference data for the shared films (values from PROVENANCE.md and from reading the files)


@dataclass(frozen=True)
class Ref:
    """What one shared film must read as, and the syntax write_derived must give it."""

    shape: tuple[int, int]  # (Rows, Columns)
    dtype: str
    bits_stored: int
    photometric: str
    syntax: str  # as read
    lossy: bool
    written: str  # transfer syntax write_derived produces
    values: dict = field(default_factory=dict)  # {(row, col): stored value}
    tolerance: int = 0  # decoder-dependent films (JPEG baseline): +-1


REFERENCE = {
    "canon_dx_mono1_12bit_j2klossless_966_fixed.dcm": Ref(
        (2128, 2000), "uint16", 12, "MONOCHROME1", JPEG2000Lossless, False, JPEG2000Lossless,
        {(0, 0): 1973, (1064, 1000): 880, (709, 1333): 1404, (2127, 1999): 4095},
    ),
    "fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm": Ref(
        (440, 440), "uint16", 10, "MONOCHROME1", ImplicitVRLittleEndian, False,
        ImplicitVRLittleEndian,
        {(0, 0): 0, (220, 220): 285, (146, 293): 689, (439, 439): 0},
    ),
    "nih_cxr14_dx_8bit_1024px_nccid.dcm": Ref(
        (1024, 1024), "uint8", 8, "MONOCHROME2", ImplicitVRLittleEndian, False,
        ImplicitVRLittleEndian,
        {(0, 0): 199, (512, 512): 229, (341, 682): 81, (1023, 1023): 15},
    ),
    "philips_cr_mono1_15bit_RG1_J2KI.dcm": Ref(
        (1955, 1841), "uint16", 15, "MONOCHROME1", "1.2.840.10008.1.2.4.91", True,
        ExplicitVRLittleEndian,
        {(0, 0): 18876, (977, 920): 3342, (651, 1227): 16738, (1954, 1840): 2856},
    ),
    "philips_cr_mono1_15bit_RG1_JLSN.dcm": Ref(
        (1955, 1841), "uint16", 15, "MONOCHROME1", "1.2.840.10008.1.2.4.81", True,
        ExplicitVRLittleEndian,
        {(0, 0): 18891, (977, 920): 3442, (651, 1227): 16713, (1954, 1840): 2906},
    ),
    "philips_cr_mono1_15bit_RG1_UNCR.dcm": Ref(
        (1955, 1841), "uint16", 15, "MONOCHROME1", ExplicitVRLittleEndian, False,
        ExplicitVRLittleEndian,
        {(0, 0): 18889, (977, 920): 3441, (651, 1227): 16709, (1954, 1840): 2908},
    ),
    "siim_acr_cr_jpegbaseline_8bit_1024px.dcm": Ref(
        (1024, 1024), "uint8", 8, "MONOCHROME2", "1.2.840.10008.1.2.4.50", True,
        ExplicitVRLittleEndian,
        {(0, 0): 0, (512, 512): 208, (341, 682): 67, (1023, 1023): 0},
        tolerance=1,
    ),
    "veterinary_canine_thorax_dx_mono1_8bit.dcm": Ref(
        (169, 211), "uint8", 8, "MONOCHROME1", ExplicitVRLittleEndian, False,
        ExplicitVRLittleEndian,
        {(0, 0): 211, (84, 105): 175, (56, 140): 167, (168, 210): 249},
    ),
}

# Elements write_derived is documented to change; every other one must be kept.
CHANGED = {
    "SOPInstanceUID", "ImageType", "DerivationDescription", "SourceImageSequence",
    "LossyImageCompression", "LossyImageCompressionMethod", "PixelData",
    "SmallestImagePixelValue", "LargestImagePixelValue",
}


def test_reference_covers_every_shared_film():
    assert sorted(REFERENCE) == sorted(DICOM_FILMS)


# --------------------------------------------------------------------------------------------
# helpers


def assert_dcmtk_parses(path: Path) -> None:
    """dcmdump must parse the file without errors (skipped when DCMTK is not installed)."""
    if shutil.which("dcmdump") is None:
        return
    result = subprocess.run(["dcmdump", "-q", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "E:" not in result.stderr and "F:" not in result.stderr, result.stderr


def mark_pattern(film: Film) -> np.ndarray:
    """A deterministic +-3 checkerboard on the stored values (int64, may leave the range)."""
    rows, cols = film.pixels.shape
    checker = ((np.arange(rows)[:, None] // 8 + np.arange(cols)[None, :] // 8) % 2) * 6 - 3
    return film.pixels.astype(np.int64) + checker


def clip_to(film: Film, values: np.ndarray) -> np.ndarray:
    low, high = film.value_range
    return np.clip(values, low, high)


def make_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    bits_stored: int,
    signed: bool = False,
    syntax: str = ExplicitVRLittleEndian,
    raw_words: np.ndarray | None = None,
    **elements,
) -> Path:
    """Write a small single-frame grayscale DICOM file; `elements` override/add keywords."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "OT"
    ds.PatientID = "SYNTHETIC"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    syntax = UID(syntax)
    ds.file_meta.TransferSyntaxUID = syntax
    if syntax.is_encapsulated:
        compress(ds, syntax, arr=pixels, generate_instance_uid=False,
                 encoding_plugin="pydicom" if syntax == RLELossless else "")
    else:
        words = pixels if raw_words is None else raw_words
        order = ">" if syntax == ExplicitVRBigEndian else "<"
        data = words.astype(words.dtype.newbyteorder(order)).tobytes()
        ds.PixelData = data + b"\x00" * (len(data) % 2)
        ds["PixelData"].VR = "OW" if ds.BitsAllocated == 16 else "OB"
    if syntax == ExplicitVRBigEndian:
        pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=False, enforce_file_format=True)
    else:
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def raw_words(path: Path) -> np.ndarray:
    """Stored words of a native file with the unused high bits left in."""
    ds = pydicom.dcmread(path)
    arr, _ = get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds, correct_unused_bits=False)
    return arr


# --------------------------------------------------------------------------------------------
# reading the shared films


@pytest.mark.parametrize("name", film_params())
def test_read_shared_film(name, load_film, dicom_films):
    ref = REFERENCE[name]
    film = load_film(name)
    assert film.path == dicom_films[name]
    assert film.pixels.shape == ref.shape
    assert film.pixels.dtype == np.dtype(ref.dtype)
    assert film.bits_stored == ref.bits_stored
    assert film.signed is False
    assert film.photometric == ref.photometric
    assert film.transfer_syntax == ref.syntax
    assert film.lossy is ref.lossy
    assert film.value_range == (0, 2**ref.bits_stored - 1)
    assert not film.pixels.flags.writeable
    assert film.pixels.min() >= 0 and film.pixels.max() <= film.value_range[1]
    for (row, col), expected in ref.values.items():
        assert abs(int(film.pixels[row, col]) - expected) <= ref.tolerance, (row, col)


def test_fuji_without_file_meta_reads_as_implicit_little_endian(dicom_films, load_film):
    path = dicom_films["fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm"]
    assert path.read_bytes()[128:132] != b"DICM"  # ACR-NEMA style: no preamble, no meta
    assert "TransferSyntaxUID" not in pydicom.dcmread(path, force=True).file_meta
    film = load_film(path.name)
    assert film.transfer_syntax == ImplicitVRLittleEndian
    assert film.dataset.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian


def test_rg1_trio_min_max_and_codec_error_bounds(load_film):
    """PROVENANCE.md: UNCR 874/26479, J2KI 803/26512; JLSN read as 871/26481."""
    uncr = load_film("philips_cr_mono1_15bit_RG1_UNCR.dcm").pixels
    j2ki = load_film("philips_cr_mono1_15bit_RG1_J2KI.dcm").pixels
    jlsn = load_film("philips_cr_mono1_15bit_RG1_JLSN.dcm").pixels
    assert (int(uncr.min()), int(uncr.max())) == (874, 26479)
    assert (int(j2ki.min()), int(j2ki.max())) == (803, 26512)
    assert (int(jlsn.min()), int(jlsn.max())) == (871, 26481)
    # JPEG-LS near-lossless bounds the error by NEAR, which is 4 in this file's SOS header
    assert np.abs(jlsn.astype(np.int32) - uncr).max() <= 4
    # lossy JPEG 2000 10:1: same exposure, small mean error
    assert np.abs(j2ki.astype(np.int32) - uncr).mean() < 100


# --------------------------------------------------------------------------------------------
# writing DERIVED copies of the shared films


# the canon film's (0008,0050) Accession Number is a 56-character hash in an SH (max 16)
@pytest.mark.filterwarnings("ignore:.*exceeds the maximum length of 16 allowed for VR SH")
@pytest.mark.parametrize("name", film_params())
def test_write_derived_round_trip(name, load_film, dicom_films, tmp_path):
    ref = REFERENCE[name]
    film = load_film(name)
    source = film.dataset
    input_hash = sha256_file(dicom_films[name])
    out = tmp_path / "derived.dcm"

    record = write_derived(film, film.pixels, out, description=DESCRIPTION)

    assert sha256_file(dicom_films[name]) == input_hash  # input untouched
    assert isinstance(record, DerivedRecord)
    assert record.path == out
    assert record.sha256 == sha256_file(out)
    assert record.transfer_syntax == ref.written
    assert out.read_bytes()[128:132] == b"DICM"
    assert_dcmtk_parses(out)

    back = read_film(out)
    np.testing.assert_array_equal(back.pixels, film.pixels)
    assert back.pixels.dtype == film.pixels.dtype
    assert (back.bits_stored, back.signed, back.photometric) == (
        film.bits_stored, film.signed, film.photometric,
    )
    assert back.lossy is film.lossy

    ds = back.dataset
    assert ds.file_meta.TransferSyntaxUID == ref.written
    assert ds.SOPInstanceUID == record.sop_instance_uid != source.SOPInstanceUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == record.sop_instance_uid
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == source.SOPClassUID
    assert ds.ImageType[0] == "DERIVED"
    assert ds.DerivationDescription == DESCRIPTION
    reference = ds.SourceImageSequence[-1]
    assert reference.ReferencedSOPClassUID == source.SOPClassUID
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert len(ds.SourceImageSequence) == len(source.get("SourceImageSequence", [])) + 1
    if film.lossy:
        assert ds.LossyImageCompression == "01"
    for keyword in (
        "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
        "PhotometricInterpretation", "SamplesPerPixel",
    ):
        assert ds[keyword].value == source[keyword].value, keyword

    # every other attribute is kept with its value (group lengths are dropped on purpose)
    for elem in source:
        if elem.keyword in CHANGED or elem.tag.element == 0:
            continue
        assert elem.tag in ds, elem
        assert ds[elem.tag].value == elem.value, elem


@pytest.mark.parametrize("name", film_params())
def test_written_file_holds_the_marked_pixels(name, load_film, tmp_path):
    """After any re-encoding (J2K lossless canon) or lossless rewrite (lossy sources)."""
    film = load_film(name)
    marked = mark_pattern(film)
    out = tmp_path / "marked.dcm"
    write_derived(film, marked, out, description=DESCRIPTION)
    back = read_film(out)
    np.testing.assert_array_equal(back.pixels, clip_to(film, marked))
    assert not np.array_equal(back.pixels, film.pixels)


def test_clipping_not_wrapping(load_film, tmp_path):
    canon = load_film("canon_dx_mono1_12bit_j2klossless_966_fixed.dcm")  # 12 bits stored
    write_derived(canon, canon.pixels.astype(np.int64) + 5000, tmp_path / "up.dcm",
                  description=DESCRIPTION)
    up = read_film(tmp_path / "up.dcm").pixels
    assert up.min() == up.max() == 4095

    fuji = load_film("fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm")  # 10 bits stored
    write_derived(fuji, fuji.pixels.astype(np.float32) - 5000.0, tmp_path / "down.dcm",
                  description=DESCRIPTION)
    assert not read_film(tmp_path / "down.dcm").pixels.any()


def test_float_values_are_rounded(load_film, tmp_path):
    vet = load_film("veterinary_canine_thorax_dx_mono1_8bit.dcm")
    marked = vet.pixels.astype(np.float64)
    marked[0, :4] = [10.4, 10.6, 11.5, 12.5]  # round half to even
    write_derived(vet, marked, tmp_path / "r.dcm", description=DESCRIPTION)
    assert read_film(tmp_path / "r.dcm").pixels[0, :4].tolist() == [10, 11, 12, 12]


def test_lossy_flags_kept_and_completed(load_film, tmp_path):
    expected = {
        "philips_cr_mono1_15bit_RG1_J2KI.dcm": ("10", "ISO_15444_1"),
        "philips_cr_mono1_15bit_RG1_JLSN.dcm": ("2", "ISO_14495_1"),
        "siim_acr_cr_jpegbaseline_8bit_1024px.dcm": (None, "ISO_10918_1"),
    }
    for name, (ratio, method) in expected.items():
        film = load_film(name)
        out = tmp_path / name
        assert write_derived(film, film.pixels, out, description=DESCRIPTION).transfer_syntax \
            == ExplicitVRLittleEndian
        ds = pydicom.dcmread(out)
        assert ds.LossyImageCompression == "01"
        assert ds.get("LossyImageCompressionRatio") == ratio
        assert ds.LossyImageCompressionMethod == method

    canon = load_film("canon_dx_mono1_12bit_j2klossless_966_fixed.dcm")
    write_derived(canon, canon.pixels, tmp_path / "canon.dcm", description=DESCRIPTION)
    assert pydicom.dcmread(tmp_path / "canon.dcm").LossyImageCompression == "00"


def test_existing_source_image_sequence_is_appended_to(load_film, tmp_path):
    canon = load_film("canon_dx_mono1_12bit_j2klossless_966_fixed.dcm")
    original = canon.dataset.SourceImageSequence[0]
    write_derived(canon, canon.pixels, tmp_path / "c.dcm", description=DESCRIPTION)
    items = pydicom.dcmread(tmp_path / "c.dcm").SourceImageSequence
    assert len(items) == 2
    assert items[0].ReferencedSOPInstanceUID == original.ReferencedSOPInstanceUID
    assert items[1].ReferencedSOPInstanceUID == canon.dataset.SOPInstanceUID
    assert items[1].PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    assert len(canon.dataset.SourceImageSequence) == 1  # the source dataset is not modified


def test_image_type_for_acr_nema_and_missing_values(load_film, tmp_path):
    fuji = load_film("fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm")
    assert fuji.dataset.ImageType == "ORIGINAL PRIMARY"  # one space-separated value
    write_derived(fuji, fuji.pixels, tmp_path / "f.dcm", description=DESCRIPTION)
    ds = pydicom.dcmread(tmp_path / "f.dcm")
    assert list(ds.ImageType) == ["DERIVED", "PRIMARY"]
    assert all(tag.element != 0 for tag in ds.keys())  # stale group lengths are gone
    assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian

    nih = load_film("nih_cxr14_dx_8bit_1024px_nccid.dcm")
    assert "ImageType" not in nih.dataset
    write_derived(nih, nih.pixels, tmp_path / "n.dcm", description=DESCRIPTION)
    assert list(pydicom.dcmread(tmp_path / "n.dcm").ImageType) == ["DERIVED", "SECONDARY"]


# --------------------------------------------------------------------------------------------
# synthetic edge cases: high bits, signed data, odd sizes, other transfer syntaxes


def test_unused_high_bits_masked_on_read_and_kept_on_write(tmp_path):
    rng = np.random.default_rng(7)
    values = rng.integers(0, 4096, size=(33, 21), dtype=np.uint16)
    overlay = (rng.integers(0, 16, size=values.shape, dtype=np.uint16) << 12)
    src = make_dicom(
        tmp_path / "hb.dcm", values, bits_stored=12, raw_words=values | overlay,
        SmallestImagePixelValue=int(values.min()), LargestImagePixelValue=int(values.max()),
    )
    film = read_film(src)
    np.testing.assert_array_equal(film.pixels, values)  # top 4 bits masked off
    assert film.pixels.max() <= 4095

    marked = values.astype(np.int64) + 7
    write_derived(film, marked, tmp_path / "out.dcm", description=DESCRIPTION)
    expected = np.clip(marked, 0, 4095).astype(np.uint16)
    np.testing.assert_array_equal(read_film(tmp_path / "out.dcm").pixels, expected)
    np.testing.assert_array_equal(raw_words(tmp_path / "out.dcm"), expected | overlay)
    ds = pydicom.dcmread(tmp_path / "out.dcm")
    assert (ds.SmallestImagePixelValue, ds.LargestImagePixelValue) == (
        int(expected.min()), int(expected.max()),
    )
    assert_dcmtk_parses(tmp_path / "out.dcm")


def test_signed_12_bit_sign_extension(tmp_path):
    values = np.array([[-2048, -1, 0, 1, 2047, -700]], dtype=np.int16).repeat(3, axis=0)
    # stored without sign extension: the high 4 bits are zero
    unextended = values.view(np.uint16) & 0x0FFF
    film = read_film(make_dicom(tmp_path / "s.dcm", values, bits_stored=12, signed=True,
                                raw_words=unextended))
    assert film.signed and film.pixels.dtype == np.int16
    assert film.value_range == (-2048, 2047)
    np.testing.assert_array_equal(film.pixels, values)

    marked = values.astype(np.int64) * 2  # clips at both ends
    write_derived(film, marked, tmp_path / "out.dcm", description=DESCRIPTION)
    expected = np.clip(marked, -2048, 2047).astype(np.int16)
    np.testing.assert_array_equal(read_film(tmp_path / "out.dcm").pixels, expected)
    # the source's convention (zero high bits) is kept
    assert not (raw_words(tmp_path / "out.dcm").view(np.uint16) & 0xF000).any()

    # a sign-extended source gets sign-extended words
    extended = read_film(make_dicom(tmp_path / "e.dcm", values, bits_stored=12, signed=True))
    write_derived(extended, marked, tmp_path / "out2.dcm", description=DESCRIPTION)
    np.testing.assert_array_equal(raw_words(tmp_path / "out2.dcm"), expected)


ODD_CASES = [
    pytest.param(ExplicitVRLittleEndian, 16, id="explicit-16bit"),
    pytest.param(ImplicitVRLittleEndian, 16, id="implicit-16bit"),
    pytest.param(DeflatedExplicitVRLittleEndian, 16, id="deflated-16bit"),
    pytest.param(RLELossless, 16, id="rle-16bit"),
    pytest.param(JPEGLSLossless, 16, id="jpegls-lossless-16bit"),
    pytest.param(JPEG2000Lossless, 16, id="j2k-lossless-16bit"),
    pytest.param(ExplicitVRLittleEndian, 8, id="explicit-8bit"),
    pytest.param(RLELossless, 8, id="rle-8bit"),
]


@pytest.mark.parametrize(("syntax", "bits_allocated"), ODD_CASES)
def test_odd_size_513_x_767_keeps_layout_and_syntax(syntax, bits_allocated, tmp_path):
    rng = np.random.default_rng(513)
    if bits_allocated == 16:
        values = rng.integers(0, 2**15, size=(513, 767), dtype=np.uint16)
        bits = 15
    else:
        values = rng.integers(0, 256, size=(513, 767), dtype=np.uint8)
        bits = 8
    film = read_film(make_dicom(tmp_path / "src.dcm", values, bits_stored=bits, syntax=syntax))
    assert film.pixels.shape == (513, 767)
    marked = film.pixels.astype(np.int64) + rng.integers(-3, 4, size=values.shape)

    record = write_derived(film, marked, tmp_path / "out.dcm", description=DESCRIPTION)

    expected_syntax = syntax
    if UID(syntax).is_encapsulated and not get_encoder(syntax).is_available:
        expected_syntax = ExplicitVRLittleEndian
    assert record.transfer_syntax == expected_syntax
    back = read_film(tmp_path / "out.dcm")
    np.testing.assert_array_equal(back.pixels, clip_to(film, marked))
    assert back.pixels.dtype == values.dtype
    ds = back.dataset
    assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (
        513, 767, bits_allocated, bits, bits - 1,
    )
    assert_dcmtk_parses(tmp_path / "out.dcm")


def test_big_endian_source_becomes_explicit_little_endian(tmp_path):
    values = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 30
    overlay_bits = np.arange(8, dtype=np.uint16)
    src = make_dicom(tmp_path / "be.dcm", values, bits_stored=12, syntax=ExplicitVRBigEndian)
    ds = pydicom.dcmread(src)
    ds.add_new(0x60003000, "OW", overlay_bits.astype(">u2").tobytes())  # an "other word" value
    pydicom.dcmwrite(src, ds, implicit_vr=False, little_endian=False, enforce_file_format=True)

    film = read_film(src)
    assert film.transfer_syntax == ExplicitVRBigEndian
    np.testing.assert_array_equal(film.pixels, values)
    record = write_derived(film, film.pixels, tmp_path / "le.dcm", description=DESCRIPTION)
    assert record.transfer_syntax == ExplicitVRLittleEndian
    back = pydicom.dcmread(tmp_path / "le.dcm")
    np.testing.assert_array_equal(back.pixel_array, values)
    np.testing.assert_array_equal(np.frombuffer(back[0x60003000].value, "<u2"), overlay_bits)


def test_fallback_to_explicit_little_endian_when_reencode_is_not_lossless(tmp_path, monkeypatch):
    values = np.arange(40 * 30, dtype=np.uint16).reshape(40, 30)
    film = read_film(make_dicom(tmp_path / "rle.dcm", values, bits_stored=12, syntax=RLELossless))
    real_compress = dicomio.compress

    def off_by_one(ds, uid, arr=None, **kwargs):  # an encoder that silently changes values
        return real_compress(ds, uid, arr=arr + 1, **kwargs)

    monkeypatch.setattr(dicomio, "compress", off_by_one)
    with pytest.warns(UserWarning, match="not lossless"):
        record = write_derived(film, film.pixels, tmp_path / "out.dcm", description=DESCRIPTION)
    assert record.transfer_syntax == ExplicitVRLittleEndian
    np.testing.assert_array_equal(read_film(tmp_path / "out.dcm").pixels, values)


# --------------------------------------------------------------------------------------------
# write_derived: destination and argument checks, atomicity


@pytest.fixture()
def small_film(tmp_path) -> Film:
    values = np.arange(20 * 16, dtype=np.uint16).reshape(20, 16)
    return read_film(make_dicom(tmp_path / "small.dcm", values, bits_stored=12))


def test_output_folder_must_exist(small_film, tmp_path):
    target = tmp_path / "no_such_folder" / "out.dcm"
    with pytest.raises(InvalidInputError, match="no_such_folder.*does not exist"):
        write_derived(small_film, small_film.pixels, target, description=DESCRIPTION)
    assert not target.parent.exists()


def test_refuses_to_overwrite_the_source(small_film):
    before = sha256_file(small_film.path)
    with pytest.raises(InvalidInputError, match="refusing to overwrite"):
        write_derived(small_film, small_film.pixels, small_film.path, description=DESCRIPTION)
    assert sha256_file(small_film.path) == before


@pytest.mark.parametrize(
    ("marked", "match"),
    [
        (np.zeros((3, 3)), "shape"),
        (np.full((20, 16), np.nan), "finite"),
        (np.full((20, 16), "a"), "dtype"),
    ],
    ids=["shape", "nan", "strings"],
)
def test_bad_marked_arrays(small_film, tmp_path, marked, match):
    with pytest.raises(ValueError, match=match):
        write_derived(small_film, marked, tmp_path / "o.dcm", description=DESCRIPTION)


def test_description_limits(small_film, tmp_path):
    with pytest.raises(ValueError, match="1024"):
        write_derived(small_film, small_film.pixels, tmp_path / "o.dcm", description="x" * 1025)
    with pytest.raises(ValueError, match="non-empty"):
        write_derived(small_film, small_film.pixels, tmp_path / "o.dcm", description=" ")


def test_failed_write_leaves_no_temp_file_and_keeps_old_output(small_film, tmp_path,
                                                               monkeypatch):
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "film.dcm"
    target.write_bytes(b"previous export")

    def broken_replace(src, dst):
        raise OSError("simulated disk failure")

    monkeypatch.setattr(dicomio.os, "replace", broken_replace)
    with pytest.raises(LeaktraceError, match="simulated disk failure"):
        write_derived(small_film, small_film.pixels, target, description=DESCRIPTION)
    assert sorted(p.name for p in folder.iterdir()) == ["film.dcm"]
    assert target.read_bytes() == b"previous export"


def test_output_permissions_follow_umask(small_film, tmp_path):
    if os.name != "posix":
        pytest.skip("POSIX permissions only")
    out = tmp_path / "perm.dcm"
    write_derived(small_film, small_film.pixels, out, description=DESCRIPTION)
    assert out.stat().st_mode & 0o044  # readable by others as with a plain open(), not 0600


# --------------------------------------------------------------------------------------------
# read_film errors: right class, file name and facts in the message


def test_missing_file(tmp_path):
    path = tmp_path / "absent.dcm"
    with pytest.raises(InvalidInputError, match=r"absent\.dcm: file not found"):
        read_film(path)


@pytest.mark.parametrize("fmt, name", [("PNG", "picture.dcm"), ("JPEG", "film.png"),
                                       ("WEBP", "shot.dcm"), ("TIFF", "scan")])
def test_an_image_given_as_a_film_is_named_by_its_format(tmp_path, fmt, name):
    from PIL import Image

    path = tmp_path / name
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path, format=fmt)
    with pytest.raises(InvalidInputError) as caught:
        read_film(path)
    assert str(caught.value).startswith(f"{path}: is a {fmt} image, not DICOM")


def test_a_value_warning_is_given_once_with_the_file_and_element(dicom_films, tmp_path):
    """The Canon film's (0008,0050) Accession Number is 56 characters in an SH (max 16):
    naming the element walked the dataset again, which repeated pydicom's warning bare."""
    name = "canon_dx_mono1_12bit_j2klossless_966_fixed.dcm"
    film = read_film(dicom_films[name])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_derived(film, film.pixels, tmp_path / "derived.dcm", description=DESCRIPTION)
    said = [str(w.message) for w in caught if "exceeds the maximum length" in str(w.message)]
    assert said == [f"{dicom_films[name]}: (0008,0050) Accession Number: The value length (56) "
                    "exceeds the maximum length of 16 allowed for VR SH."], said


def test_text_renamed_dcm(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("this is a text file\nwith two lines\n")
    with pytest.raises(InvalidInputError, match=r"notes\.dcm: not a"):
        read_film(path)


def test_dicom_without_pixels(tmp_path):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "SR"
    path = tmp_path / "report.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    with pytest.raises(InvalidInputError, match=r"report\.dcm: .*Basic Text SR.*\(7FE0,0010\)"):
        read_film(path)


@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL"])
def test_colour_image(tmp_path, photometric):
    path = tmp_path / "colour.dcm"
    make_dicom(path, np.zeros((4, 5, 3), np.uint8), bits_stored=8, SamplesPerPixel=3,
               PhotometricInterpretation=photometric, PlanarConfiguration=0)
    with pytest.raises(UnsupportedImageError,
                       match=r"colour\.dcm: \(0028,0002\) Samples per Pixel is 3"):
        read_film(path)


def test_palette_colour_image(tmp_path):
    path = tmp_path / "palette.dcm"
    make_dicom(path, np.zeros((4, 5), np.uint8), bits_stored=8,
               PhotometricInterpretation="PALETTE COLOR")
    with pytest.raises(UnsupportedImageError, match=r"palette\.dcm: \(0028,0004\).*PALETTE COLOR"):
        read_film(path)


def test_multiframe(tmp_path):
    path = tmp_path / "cine.dcm"
    make_dicom(path, np.zeros((2 * 4, 5), np.uint16), bits_stored=12, Rows=4, NumberOfFrames=2)
    with pytest.raises(UnsupportedImageError,
                       match=r"cine\.dcm: \(0028,0008\) Number of Frames is 2"):
        read_film(path)


def test_bits_stored_20(tmp_path):
    path = tmp_path / "deep.dcm"
    make_dicom(path, np.zeros((4, 5), np.uint32), bits_stored=20)
    with pytest.raises(UnsupportedImageError,
                       match=r"deep\.dcm: \(0028,0101\) Bits Stored is 20; only 8 to 16"):
        read_film(path)


def test_high_bit_not_bits_stored_minus_one(tmp_path):
    path = tmp_path / "msb.dcm"
    make_dicom(path, np.zeros((4, 5), np.uint16), bits_stored=12, HighBit=15)
    with pytest.raises(UnsupportedImageError, match=r"msb\.dcm: \(0028,0102\) High Bit is 15"):
        read_film(path)


@pytest.mark.parametrize(
    ("name", "keep"),
    [
        pytest.param("philips_cr_mono1_15bit_RG1_UNCR.dcm", 0.5, id="native-in-pixel-data"),
        pytest.param("canon_dx_mono1_12bit_j2klossless_966_fixed.dcm", 0.5, id="j2k-fragment"),
        pytest.param("philips_cr_mono1_15bit_RG1_UNCR.dcm", 1000, id="in-header"),
    ],
)
def test_truncated_file(name, keep, dicom_films, tmp_path):
    data = dicom_films[name].read_bytes()
    path = tmp_path / f"cut_{name}"
    path.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(InvalidInputError, match=rf"cut_{name}: .*truncated"):
        read_film(path)


def test_corrupt_compressed_pixel_data(tmp_path):
    values = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32)
    path = make_dicom(tmp_path / "broken.dcm", values, bits_stored=12, syntax=JPEG2000Lossless)
    data = bytearray(path.read_bytes())
    start = data.find(b"\xff\x4f\xff\x51")  # J2K codestream: SOC then SIZ marker
    assert start > 0
    data[start : start + 64] = b"\x00" * 64
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidInputError, match=r"broken\.dcm: pixel data cannot be decoded"):
        read_film(path)


def test_missing_codec_passes_install_hint(tmp_path, monkeypatch):
    values = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32)
    path = make_dicom(tmp_path / "j2k.dcm", values, bits_stored=12, syntax=JPEG2000Lossless)
    decoder = get_decoder(JPEG2000Lossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg", "pylibjpeg-openjpeg")})
    with pytest.raises(UnsupportedImageError,
                       match=r"j2k\.dcm: cannot decode .*pylibjpeg-openjpeg"):
        read_film(path)


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(InvalidInputError, match="is a folder"):
        read_film(tmp_path)


def test_sha256_file(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc")
    assert sha256_file(path) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    with pytest.raises(InvalidInputError, match="missing.bin"):
        sha256_file(tmp_path / "missing.bin")


def test_syntax_without_any_decoder_says_what_to_do(tmp_path):
    """JPEG 2000 Part 2 multi-component (1.2.840.10008.1.2.4.92) has no decoder in pydicom
    3.0: one line naming the file and the syntax and how to convert it, no plugin internals."""
    import pydicom

    values = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32)
    path = make_dicom(tmp_path / "jxl.dcm", values, bits_stored=12, syntax=JPEG2000Lossless)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.92"
    ds.save_as(path)
    with pytest.raises(UnsupportedImageError) as info:
        read_film(path)
    message = str(info.value)
    assert message.startswith(f"{path}: (0002,0010) Transfer Syntax UID 1.2.840.10008.1.2.4.92")
    assert "convert the file" in message and "dcmdjpeg" in message and "\n" not in message


def test_a_value_warning_names_the_element_it_is_about(dicom_films, tmp_path):
    """The Canon film's (0008,0050) Accession Number holds 56 characters (SH allows 16):
    pydicom's warning does not say which element; ours names it, with the file."""
    name = "canon_dx_mono1_12bit_j2klossless_966_fixed.dcm"
    film = read_film(dicom_films[name])  # (pydicom checks the value when it is first used)
    with pytest.warns(UserWarning, match=r"canon.*: \(0008,0050\) Accession Number: The value "
                                         r"length \(56\) exceeds"):
        write_derived(film, film.pixels.astype(float), tmp_path / "out.dcm",
                      description="test copy")
    assert len(film.dataset.AccessionNumber) == 56
