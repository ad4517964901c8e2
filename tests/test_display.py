"""Tests for watermark.display: rendering as a viewer does, and the display gain.

The reference viewer is DCMTK: ``dcm2pnm`` (native files), ``dcmj2pnm`` (JPEG) and
``dcml2pnm`` (JPEG-LS). DCMTK has no JPEG 2000 decoder, so JPEG 2000 films are decoded by
pydicom into a native temporary copy first. Those comparisons are skipped when DCMTK is not
installed (CI installs it with ``apt-get install dcmtk``).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import decompress
from pydicom.uid import JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

from conftest import film_params
from watermark.display import display_gain, render, to_uint8
from watermark.errors import UnsupportedImageError

VET = "veterinary_canine_thorax_dx_mono1_8bit.dcm"
NIH = "nih_cxr14_dx_8bit_1024px_nccid.dcm"
UNCR = "philips_cr_mono1_15bit_RG1_UNCR.dcm"
CANON = "canon_dx_mono1_12bit_j2klossless_966_fixed.dcm"


# --------------------------------------------------------------------------------------------
# helpers


def read_pgm(path: Path) -> np.ndarray:
    """Read an 8-bit binary PGM (P5) as written by dcm2pnm."""
    data = path.read_bytes()
    fields: list[bytes] = []
    pos = 0
    while len(fields) < 4:  # magic, width, height, maxval; '#' starts a comment line
        while data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":
            pos = data.index(b"\n", pos)
            continue
        end = pos
        while not data[end : end + 1].isspace():
            end += 1
        fields.append(data[pos:end])
        pos = end
    assert fields[0] == b"P5" and fields[3] == b"255", fields
    width, height = int(fields[1]), int(fields[2])
    return np.frombuffer(data[pos + 1 : pos + 1 + width * height], np.uint8).reshape(height, width)


def dcmtk_render(path: Path, film, tmp_path: Path) -> np.ndarray:
    """DCMTK's 8-bit rendering: first window in the file (+Wi 1), else min-max (+Wm)."""
    syntax = film.transfer_syntax
    if syntax in JPEGTransferSyntaxes:
        tool = "dcmj2pnm"
    elif syntax in JPEGLSTransferSyntaxes:
        tool = "dcml2pnm"
    else:
        tool = "dcm2pnm"
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} (DCMTK) is not installed")
    if syntax.is_encapsulated and tool == "dcm2pnm":  # JPEG 2000: no decoder in DCMTK
        ds = pydicom.dcmread(path)
        decompress(ds)
        path = tmp_path / "native.dcm"
        ds.save_as(path)
    voi = ["+Wi", "1"] if "WindowCenter" in film.dataset else ["+Wm"]
    out = tmp_path / "dcmtk.pgm"
    subprocess.run([tool, "-q", *voi, "--write-raw-pnm", str(path), str(out)], check=True)
    return read_pgm(out)


def with_elements(film, **elements) -> Dataset:
    """A copy of a (small) film's dataset with some elements changed (None deletes)."""
    ds = copy.deepcopy(film.dataset)
    for keyword, value in elements.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def linear(x, centre, width):
    """PS3.3 C.11.2.1.2.1 LINEAR window on 0..1."""
    return np.clip((np.asarray(x, float) - (centre - 0.5)) / (width - 1) + 0.5, 0, 1)


def synthetic(values: np.ndarray, bits_stored: int, **elements) -> Dataset:
    """A MONOCHROME2 dataset holding only what render() needs."""
    ds = Dataset()
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


# --------------------------------------------------------------------------------------------
# agreement with DCMTK on the shared films


@pytest.mark.parametrize("name", film_params())
def test_render_matches_dcmtk(name, load_film, dicom_films, tmp_path):
    film = load_film(name)
    expected = dcmtk_render(dicom_films[name], film, tmp_path).astype(np.float64)
    shown = render(film)
    assert expected.shape == shown.shape
    diff = np.abs(to_uint8(shown) - expected)
    assert diff.mean() <= 1.0
    assert diff.max() <= 2
    # DCMTK truncates where to_uint8 rounds: floor(render) is (nearly) its exact output; the
    # remainder is JPEG baseline decoding (DCMTK's IJG vs pylibjpeg) differing by one level
    assert np.abs(np.floor(shown + 1e-6) - expected).mean() < 0.1


@pytest.mark.parametrize("name", film_params())
def test_render_returns_unrounded_float_display_values(name, load_film):
    film = load_film(name)
    shown = render(film)
    assert shown.dtype == np.float64
    assert shown.shape == film.pixels.shape
    assert shown.min() >= 0.0 and shown.max() <= 255.0
    assert shown.max() - shown.min() > 100  # a real radiograph uses the display range


def test_fifteen_bit_film_is_not_rounded(load_film):
    shown = render(load_film(UNCR))
    assert np.any(shown != np.round(shown))


# --------------------------------------------------------------------------------------------
# presentation: MONOCHROME1 and Presentation LUT Shape


@pytest.mark.parametrize("name", film_params([VET, CANON]))
def test_monochrome1_with_inverse_is_inverted_once(name, load_film):
    film = load_film(name)
    assert film.photometric == "MONOCHROME1"
    assert film.dataset.PresentationLUTShape == "INVERSE"
    plain = render(film, invert=False)
    np.testing.assert_allclose(render(film), 255.0 - plain)
    assert display_gain(film) == -display_gain(film, invert=False) < 0


def test_monochrome1_without_shape_is_inverted(load_film):
    vet = load_film(VET)
    ds = with_elements(vet, PresentationLUTShape=None)
    np.testing.assert_allclose(render(ds, vet.pixels), render(vet))


def test_monochrome2_with_inverse_is_inverted(load_film):
    nih = load_film(NIH)
    ds = with_elements(nih, PresentationLUTShape="INVERSE")
    np.testing.assert_allclose(render(ds, nih.pixels), 255.0 - render(nih))


def test_monochrome1_with_identity_follows_dcmtk(load_film):
    vet = load_film(VET)
    ds = with_elements(vet, PresentationLUTShape="IDENTITY")
    with pytest.warns(UserWarning, match=r"\(2050,0020\) Presentation LUT Shape IDENTITY"):
        shown = render(ds, vet.pixels)
    np.testing.assert_allclose(shown, render(vet, invert=False))


def test_unknown_presentation_lut_shape(load_film):
    vet = load_film(VET)
    ds = with_elements(vet, PresentationLUTShape="LIN OD")
    ds.filename = "vet_lin_od.dcm"
    with pytest.raises(UnsupportedImageError,
                       match=r"vet_lin_od\.dcm: \(2050,0020\) Presentation LUT Shape is 'LIN OD'"):
        render(ds, vet.pixels)


# --------------------------------------------------------------------------------------------
# VOI: windows, functions, VOI LUT, no VOI


def test_window_override_linear(load_film):
    film = load_film(UNCR)
    centre, width = 12000.0, 8000.0
    expected = 255.0 * (1.0 - linear(film.pixels, centre, width))  # MONOCHROME1
    np.testing.assert_allclose(render(film, window=(centre, width)), expected, atol=1e-9)


def test_function_overrides(load_film):
    vet = load_film(VET)
    x = vet.pixels.astype(np.float64)
    exact = np.clip((x - 100.0) / 80.0 + 0.5, 0, 1)
    np.testing.assert_allclose(
        render(vet, window=(100, 80), function="linear_exact", invert=False), 255 * exact,
        atol=1e-9,
    )
    sigmoid = 1.0 / (1.0 + np.exp(-4.0 * (x - 100.0) / 80.0))
    np.testing.assert_allclose(
        render(vet, window=(100, 80), function="SIGMOID", invert=False), 255 * sigmoid,
        atol=1e-9,
    )


def test_file_voi_lut_function_is_used(load_film):
    vet = load_film(VET)
    ds = with_elements(vet, VOILUTFunction="SIGMOID")
    x = vet.pixels.astype(np.float64)
    expected = 255.0 * (1.0 - 1.0 / (1.0 + np.exp(-4.0 * (x - 128.0) / 256.0)))
    np.testing.assert_allclose(render(ds, vet.pixels), expected, atol=1e-9)
    assert display_gain(ds) == pytest.approx(-255.0 / 256.0)


def test_voi_lut_sequence_preferred_unless_disabled():
    values = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    lut = np.round(np.sqrt(np.arange(4096) / 4095.0) * 65535).astype(np.uint16)
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 16])  # LUT Descriptor
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    ds = synthetic(values, 12, VOILUTSequence=[item], WindowCenter=2048, WindowWidth=4096)

    np.testing.assert_allclose(render(ds, values), lut[values] / 65535.0 * 255.0)
    np.testing.assert_allclose(render(ds, values, use_voi_lut=False),
                               255.0 * linear(values, 2048, 4096))
    # mean slope of the LUT: full output range over 4095 input steps
    assert display_gain(ds) == pytest.approx(255.0 / 4095.0)


def test_rescale_slope_and_intercept():
    values = np.arange(0, 4096, 4, dtype=np.uint16).reshape(32, 32)
    ds = synthetic(values, 12, RescaleSlope=2, RescaleIntercept=-1024, RescaleType="HU",
                   WindowCenter=40, WindowWidth=400)
    modality = 2.0 * values - 1024.0
    np.testing.assert_allclose(render(ds, values), 255.0 * linear(modality, 40, 400))
    assert display_gain(ds) == pytest.approx(2.0 * 255.0 / 399.0)


def test_no_window_stretches_the_films_own_range(load_film):
    nih = load_film(NIH)
    assert "WindowCenter" not in nih.dataset and "VOILUTSequence" not in nih.dataset
    assert (int(nih.pixels.min()), int(nih.pixels.max())) == (0, 252)
    shown = render(nih)
    assert shown.min() == 0.0 and shown.max() == 255.0
    np.testing.assert_allclose(shown, nih.pixels * (255.0 / 252.0))
    # a marked copy is rendered with the original's mapping, not re-stretched
    brighter = nih.pixels.astype(np.float64) + 10.0
    np.testing.assert_allclose(render(nih, brighter), np.minimum(brighter * 255.0 / 252.0, 255.0))
    assert display_gain(nih) == pytest.approx(255.0 / 252.0)


def test_render_a_dataset_decodes_its_pixels(load_film, dicom_films):
    ds = pydicom.dcmread(dicom_films[VET])
    np.testing.assert_allclose(render(ds), render(load_film(VET)))


# --------------------------------------------------------------------------------------------
# display gain


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param(VET, -255.0 / 255.0, id=VET),  # WC/WW 128/256, MONOCHROME1 + INVERSE
        pytest.param(CANON, -255.0 / 4095.0, id=CANON),  # 2048/4096
        pytest.param(UNCR, -255.0 / 29999.0, id=UNCR),  # 15000/30000
        pytest.param(NIH, 255.0 / 252.0, id=NIH),  # no window: range 0..252
    ],
)
def test_display_gain_of_the_default_rendering(name, expected, load_film):
    assert display_gain(load_film(name)) == pytest.approx(expected)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_display_gain_is_the_slope_at_the_centre(function, load_film):
    vet = load_film(VET)
    centre, width = 120.0, 60.0
    gain = display_gain(vet, window=(centre, width), function=function)
    step = 0.25
    probe = np.full(vet.pixels.shape, centre - step / 2)
    low = render(vet, probe, window=(centre, width), function=function)[0, 0]
    high = render(vet, probe + step, window=(centre, width), function=function)[0, 0]
    assert gain < 0  # MONOCHROME1: brighter stored value, darker display
    assert (high - low) / step == pytest.approx(gain, rel=0.01)


# --------------------------------------------------------------------------------------------
# to_uint8 and argument errors


def test_to_uint8_rounds_and_clips():
    out = to_uint8(np.array([-3.0, 0.4, 0.5, 1.5, 127.49, 254.6, 300.0]))
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 0, 0, 2, 127, 255, 255]


def test_bad_arguments(load_film):
    vet = load_film(VET)
    with pytest.raises(ValueError, match="LINEAR, LINEAR_EXACT, SIGMOID"):
        render(vet, function="GAMMA")
    with pytest.raises(ValueError, match="at least 1"):
        render(vet, window=(100, 0.5))
    with pytest.raises(ValueError, match="above 0"):
        display_gain(vet, window=(100, 0), function="SIGMOID")
    with pytest.raises(ValueError, match="shape"):
        render(vet, np.zeros((3, 3)))


def test_bad_window_in_file_names_file_and_element(load_film):
    vet = load_film(VET)
    ds = with_elements(vet, WindowWidth=0)
    ds.filename = "zero_width.dcm"
    with pytest.raises(UnsupportedImageError,
                       match=r"zero_width\.dcm: \(0028,1051\) Window Width is 0"):
        render(ds, vet.pixels)


@pytest.mark.parametrize("name", [UNCR, NIH])
def test_float32_render_is_the_float64_render_rounded(name, load_film):
    film = load_film(name)
    double = render(film)
    single = render(film, dtype=np.float32)
    assert single.dtype == np.float32
    assert np.array_equal(single, double.astype(np.float32))
    marked = film.pixels.astype(np.float64) + 0.25  # not an integer: no table lookup
    assert np.array_equal(render(film, pixels=marked, dtype=np.float32),
                          render(film, pixels=marked).astype(np.float32))
