"""Every transfer syntax a PACS writes, made by other projects' encoders (issue 19).

Three shared films of 8, 12 and 15 bits stored are re-encoded with DCMTK (dcmcjpeg,
dcmcjpls, dcmcrle, dcmconv), GDCM (gdcmconv) and OpenJPH (HTJ2K), the recipes of
:data:`forensics.external.dicomtools.ENCODINGS`. Each encoding must be read (exactly, when the codec
is lossless), embedded into a DICOM object that dciodvfy finds no new error in, written in
the syntax the docs promise, and traced as a leak both as written and re-encoded by the
same tool.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import uid

from conftest import require_tools
from forensics.external import dicomtools
from forensics.export import export_film
from forensics.ledger import Ledger
from forensics.trace import detect_leak
from watermark.dicomio import read_film
from watermark.keys import SiteKey

KEY = SiteKey(bytes(range(32)))
CANON = "canon_dx_mono1_12bit_j2klossless_966_fixed.dcm"  # 12 bits, MONOCHROME1
NIH = "nih_cxr14_dx_8bit_1024px_nccid.dcm"  # 8 bits, MONOCHROME2, implicit VR
PHILIPS = "philips_cr_mono1_15bit_RG1_UNCR.dcm"  # 15 bits, MONOCHROME1

CASES = (
    [(CANON, name) for name in dicomtools.ENCODINGS]
    + [(NIH, name) for name in ("dcmtk_jpeg_baseline", "dcmtk_jpeg_extended_q80",
                                "dcmtk_jpeg_lossless_sv1", "dcmtk_jpegls_near2", "gdcm_jpeg",
                                "openjph_htj2k")]
    + [(PHILIPS, name) for name in ("dcmtk_jpeg_extended_q80", "dcmtk_jpeg_lossless",
                                    "dcmtk_jpegls_lossless", "dcmtk_rle", "gdcm_j2k",
                                    "dcmtk_big_endian")]
)

# Output syntax per source syntax: lossless re-encodable ones are kept (RLE, JPEG-LS lossless,
# JPEG 2000 lossless) and native little-endian ones; every other is written Explicit VR LE.
KEPT = {uid.RLELossless, uid.JPEGLSLossless, uid.JPEG2000Lossless,
        uid.DeflatedExplicitVRLittleEndian}


def _tools(encoding: str) -> list[str]:
    argv = dicomtools.ENCODINGS[encoding].argv
    return [argv[0]] if argv else []


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("syntaxes")


@pytest.fixture(scope="module")
def ledger(workdir):
    with Ledger(workdir / "ledger.sqlite") as book:
        yield book


@pytest.mark.parametrize("film, encoding", CASES, ids=[f"{f[:6]}-{e}" for f, e in CASES])
def test_encoding_is_read_embedded_and_traced(film, encoding, dicom_films, workdir, ledger):
    require_tools(*_tools(encoding), "dciodvfy")
    recipe = dicomtools.ENCODINGS[encoding]
    source = read_film(dicom_films[film])
    encoded = dicomtools.reencode(dicom_films[film], workdir / f"{film}.{encoding}.dcm",
                                  encoding)

    if encoding.endswith("_fragments"):  # one frame split over many items (PS3.5 A.4)
        import pydicom
        from pydicom.encaps import generate_fragments

        assert sum(1 for _ in generate_fragments(pydicom.dcmread(encoded).PixelData)) > 10

    # read: the syntax the tool wrote, the values it coded
    got = read_film(encoded)
    assert got.transfer_syntax == recipe.transfer_syntax
    assert got.pixels.shape == source.pixels.shape
    if got.bits_stored == source.bits_stored:
        error = got.pixels.astype(np.int64) - source.pixels.astype(np.int64)
        if recipe.lossless:
            assert not np.any(error)
        else:
            assert got.lossy
            span = float(np.ptp(source.pixels))
            assert 0 < np.sqrt(np.mean(error.astype(float) ** 2)) < 0.01 * span
    else:  # DCMTK rescales what its JPEG codec cannot hold
        assert got.bits_stored == recipe.max_bits < source.bits_stored

    # embed: a valid object, in the promised syntax
    recipient = f"{film[:6]} via {encoding}"
    out = workdir / f"{film}.{encoding}.marked.dcm"
    export_film(encoded, out, recipient=recipient, ledger=ledger, key=KEY)
    marked = read_film(out)
    expected = got.transfer_syntax if got.transfer_syntax in KEPT else uid.ExplicitVRLittleEndian
    assert marked.transfer_syntax == expected
    assert marked.lossy == got.lossy
    new_errors = dicomtools.dciodvfy_errors(out) - dicomtools.dciodvfy_errors(encoded)
    assert not new_errors, new_errors

    # leak: the marked file as it is, and re-encoded by the same tool
    again = dicomtools.reencode(out, workdir / f"{film}.{encoding}.leak.dcm", encoding)
    for leak in (out, again):
        report = detect_leak(leak, ledger=ledger, key=KEY)
        assert report.decision == "traced" and report.recipient == recipient, (leak, report)
        assert report.detection.p_value < 1e-9


def test_unknown_encoding_and_missing_tool(tmp_path, dicom_films, monkeypatch):
    with pytest.raises(KeyError, match="known: dcmtk_jpeg_baseline"):
        dicomtools.reencode(dicom_films[NIH], tmp_path / "x.dcm", "dcmtk_jpeg2000")
    monkeypatch.setenv("PATH", str(tmp_path))  # no tool on PATH
    assert "dcmcjpeg" in dicomtools.missing_tools()
    with pytest.raises(dicomtools.ToolMissingError, match="apt install dcmtk"):
        dicomtools.reencode(dicom_films[NIH], tmp_path / "x.dcm", "dcmtk_rle")
    assert not (tmp_path / "x.dcm").exists()
    with pytest.raises(dicomtools.ToolMissingError, match="apt install dicom3tools"):
        dicomtools.dciodvfy_errors(dicom_films[NIH])


def test_12_bit_jpeg_is_decoded_by_imagecodecs(dicom_films, tmp_path):
    """The one syntax that needed a new decoder: GDCM and Pillow refuse 12-bit JPEG
    Extended, imagecodecs (libjpeg-turbo 3) reads it, and the error of a truncated file names
    the file, the syntax and the bit depth, without pydicom's list of plugin failures.
    (A truncated codestream is not an error to libjpeg-turbo: it fills the rest, with a
    warning, as every libjpeg does.)"""
    require_tools("dcmcjpeg")
    from pydicom.pixels import get_decoder

    from watermark import decoders
    from watermark.errors import InvalidInputError

    encoded = dicomtools.reencode(dicom_films[CANON], tmp_path / "ee.dcm",
                                  "dcmtk_jpeg_extended_q80")
    assert "imagecodecs" in get_decoder(uid.JPEGExtended12Bit).available_plugins
    assert decoders.decoder_for(uid.JPEGExtended12Bit, 12) == "imagecodecs"
    assert decoders.decoder_for(uid.JPEGExtended12Bit, 8) != "imagecodecs"  # as before
    film = read_film(encoded)
    assert film.bits_stored == 12 and film.pixels.dtype == np.uint16
    assert film.pixels.max() <= 4095

    import pydicom
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(encoded)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    sof1 = b"\xff\xc1\x00\x0b\x0c"  # SOF1 marker, length 11, precision 12
    assert sof1 in frame
    ds.PixelData = encapsulate([frame.replace(sof1, sof1[:-1] + b"\x07", 1)])  # precision 7
    broken = tmp_path / "broken.dcm"
    ds.save_as(broken)
    with pytest.raises(InvalidInputError) as info:
        read_film(broken)
    message = str(info.value)
    assert str(broken) in message and "JPEG Extended" in message and "12 bits" in message
    assert "\n" not in message and "all available plugins" not in message


@pytest.mark.parametrize("encoding", ["dcmtk_jpeg_extended_q80", "dcmtk_jpeg_lossless",
                                      "dcmtk_jpegls_lossless", "dcmtk_jpeg_baseline"])
def test_a_codestream_cut_short_is_refused_not_filled_in(encoding, dicom_films, tmp_path):
    """Half a frame, the DICOM lengths kept consistent: libjpeg-turbo would return the rows it
    has and fill the rest (a film half grey, marked and exported with exit 0, as a new user
    found); the missing EOI marker makes it "truncated or corrupt", and embed writes nothing."""
    require_tools(*_tools(encoding))
    import pydicom
    from pydicom.encaps import encapsulate, generate_frames

    from watermark.errors import InvalidInputError

    encoded = dicomtools.reencode(dicom_films[CANON], tmp_path / "whole.dcm", encoding)
    ds = pydicom.dcmread(encoded)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    half = tmp_path / "half.dcm"
    ds.save_as(half)
    with pytest.raises(InvalidInputError, match=r"half\.dcm: .*truncated or corrupt .*EOI"):
        read_film(half)
    with Ledger(tmp_path / "l.sqlite") as book:
        with pytest.raises(InvalidInputError):
            export_film(half, tmp_path / "out.dcm", recipient="Dr X", ledger=book, key=KEY)
        assert book.exports() == [] and book.recipients() == {}
    assert not (tmp_path / "out.dcm").exists()
    assert read_film(encoded).pixels.shape == (2128, 2000)  # the whole stream still reads


def test_dciodvfy_comparison_sees_a_new_error(dicom_films, tmp_path):
    """The validity check above compares dciodvfy's errors: a value broken on purpose in a
    copy (a Patient's Birth Date that is not a date) is a new error."""
    require_tools("dciodvfy")
    import pydicom

    ds = pydicom.dcmread(dicom_films[NIH])
    good = tmp_path / "good.dcm"
    ds.save_as(good)
    ds.PatientBirthDate = "yesterday"
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    new = dicomtools.dciodvfy_errors(bad) - dicomtools.dciodvfy_errors(good)
    assert any("Birth Date" in line for line in new), new
