"""Tests of the leak-simulation registry (forensics/leaks/) on real chest films.

Films come from the shared data folder resolved by ``tests/conftest.py`` (``data_dir``:
``$LEAKTRACE_TEST_DATA`` or ``<repo>/../shared/data/cxr``): two 8-bit display films from
``png/`` (a square NIH ChestX-ray14 PNG and a landscape Kermany JPEG) and, for the DICOM-side
leaks, 8-bit and 10-bit DICOM films from ``dicom/``. Films are read, never copied.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from conftest import require_tools
from forensics import leaks
from forensics.leaks import LEAKS, PIPELINES, STRETCH

PNG_FILMS = ("nih_cxr14/00000003_000.png", "kermany_pediatric/BACTERIA-134339-0001.jpeg")
LEGACY = ("identity", "png8", "jpeg", "webp", "scale", "long_edge", "invert", "gamma")


def _read_only(arr: np.ndarray) -> np.ndarray:
    arr = np.array(arr, dtype=np.float64)
    arr.setflags(write=False)  # an in-place write by a leak raises instead of passing silently
    return arr


@pytest.fixture(scope="module")
def png_dir(data_dir: Path) -> Path:
    folder = data_dir / "png"
    if not folder.is_dir():
        pytest.skip(f"display films not found: {folder} does not exist")
    return folder


@pytest.fixture(scope="module", params=PNG_FILMS, ids=lambda name: name.split("/")[-1])
def film(request, png_dir: Path) -> np.ndarray:
    """A real 8-bit display film as a read-only float64 (rows, columns) array."""
    with Image.open(png_dir / request.param) as im:
        return _read_only(np.asarray(im.convert("L")))


@pytest.fixture(scope="module")
def nih(png_dir: Path) -> np.ndarray:
    with Image.open(png_dir / PNG_FILMS[0]) as im:
        return _read_only(np.asarray(im.convert("L")))


@pytest.fixture(scope="module")
def landscape(png_dir: Path) -> np.ndarray:
    with Image.open(png_dir / PNG_FILMS[1]) as im:
        arr = _read_only(np.asarray(im.convert("L")))
    assert arr.shape[0] < arr.shape[1]  # not square: aspect handling shows
    return arr


def _read_dicom(path: Path):
    import pydicom
    from pydicom.uid import ImplicitVRLittleEndian

    ds = pydicom.dcmread(path, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:  # the Fuji film has no File Meta (PROVENANCE.md)
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


@pytest.fixture(scope="module")
def fuji10(dicom_films):
    """(dataset, stored values) of the 10-bit, 440 px Fuji CR film."""
    ds = _read_dicom(dicom_films["fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm"])
    return ds, _read_only(ds.pixel_array)


def _needs_tools(name: str) -> None:
    if "dcmtk" in name:
        require_tools("dcmcjpeg")


def _check_leak_output(out: np.ndarray, again: np.ndarray, before: np.ndarray,
                       after: np.ndarray) -> None:
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.ndim == 2
    assert out.size > 0 and np.all(np.isfinite(out))
    np.testing.assert_array_equal(after, before)  # the input is unchanged
    np.testing.assert_array_equal(again, out)     # same seed, same result


# ----------------------------------------------------------------------------- every entry runs


@pytest.mark.parametrize("name", list(LEAKS))
def test_registry_entry_runs(name, film):
    _needs_tools(name)
    before = film.copy()
    out = leaks.apply(film, [(name, {})], np.random.default_rng(7))
    again = leaks.apply(film, [(name, {})], np.random.default_rng(7))
    _check_leak_output(out, again, before, film)
    # apply hands the read-only float64 film to the function itself: a write would have raised
    assert not np.shares_memory(out, film)


@pytest.mark.parametrize("name", list(PIPELINES))
def test_pipeline_runs(name, nih):
    _needs_tools(name)
    before = nih.copy()
    out = leaks.apply(nih, PIPELINES[name], np.random.default_rng(11))
    again = leaks.apply(nih, PIPELINES[name], np.random.default_rng(11))
    _check_leak_output(out, again, before, nih)
    assert 0 <= out.min() and out.max() <= leaks.output_peak(PIPELINES[name])


def test_random_leaks_depend_on_seed(nih):
    for name in ("noise_s2", "screen_photo_0.5"):
        a = leaks.apply(nih, [(name, {})], np.random.default_rng(1))
        b = leaks.apply(nih, [(name, {})], np.random.default_rng(2))
        assert not np.array_equal(a, b), name


# ----------------------------------------------------------------------------- names and params


def _numbers(text: str) -> set[float]:
    """Numbers written in a name, ignoring digits that are not parameters ("j2k", "to1" of a
    ratio, "1up"/"2up" layouts, which are string parameters)."""
    text = re.sub(r"j2k|to1(?!\d)|\dup(?![a-z])", "", text)
    return {float(t) for t in re.findall(r"\d+(?:\.\d+)?", text)}


def _param_numbers(params: dict) -> set[float]:
    out: set[float] = set()
    for value in params.values():
        if isinstance(value, np.ndarray):
            out.add(float(len(value)))  # a LUT is named by its number of entries
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out |= {abs(float(value)), round(abs(float(value)) * 100, 6)}  # fractions read as %
    return out


def _pipeline_numbers(steps) -> set[float]:
    out: set[float] = set()
    for name, overrides in steps:
        func, params = LEAKS[name]
        out |= _param_numbers({**params, **overrides}) | _numbers(name)
    return out


def test_legacy_names_are_kept():
    for name in LEGACY:
        assert name in LEAKS
    assert LEAKS["png8"][0] is leaks.quantize_8bit
    for name in ("jpeg", "webp", "scale", "long_edge", "invert", "gamma"):
        assert LEAKS[name][0] is getattr(leaks, name)


@pytest.mark.parametrize("name", list(LEAKS))
def test_name_agrees_with_parameters(name):
    func, params = LEAKS[name]
    signature = inspect.signature(func)
    signature.bind(None, None, **params)  # every parameter exists
    if name in LEGACY:
        # a short name runs the function's own defaults
        defaults = {k: p.default for k, p in signature.parameters.items()
                    if p.default is not inspect.Parameter.empty}
        assert all(defaults[k] == v for k, v in params.items()), name
        return
    assert name == leaks.leak_name(func, params)
    # independent of leak_name: each number in the name is a parameter value (or its %)
    assert _numbers(name.removeprefix(func.__name__)) <= _param_numbers(params), name


@pytest.mark.parametrize("name, func, key, value", [
    ("jpeg_q30", leaks.jpeg, "quality", 30),
    ("jpeg_q90", leaks.jpeg, "quality", 90),
    ("long_edge_800px", leaks.long_edge, "pixels", 800),
    ("scale_x0.6", leaks.scale, "factor", 0.6),
    ("messenger_jpeg_1280px_q70", leaks.messenger, "quality", 70),
    ("messenger_jpeg_1280px_q70", leaks.messenger, "long_edge", 1280),
    ("messenger_webp_1280px_q75", leaks.messenger, "fmt", "webp"),
    ("crop_top_cut25pct", leaks.crop_top, "fraction", 0.25),
    ("crop_centre_keep36pct", leaks.crop_centre, "area", 0.36),
    ("crop_centre_keep10pct", leaks.crop_centre, "area", 0.1),
    ("rotate_3deg", leaks.rotate, "angle", 3),
    ("rotate_10deg", leaks.rotate, "angle", 10),
    ("mirror_lr", leaks.mirror, "axis", 1),
    ("window_linear_cmedian_w102", leaks.window, "width", 102),
    ("window_sigmoid_cmedian_w128", leaks.window, "function", "SIGMOID"),
    ("contrast_x1.3", leaks.contrast, "factor", 1.3),
    ("dicom_jpeg_q80", leaks.dicom_jpeg, "quality", 80),
    ("dicom_j2k_20to1", leaks.dicom_j2k, "ratio", 20),
    ("dicom_dcmtk_jpeg_q80", leaks.dicom_dcmtk_jpeg, "quality", 80),
    ("screen_photo_0.5", leaks.screen_photo, "strength", 0.5),
])
def test_hand_checked_names(name, func, key, value):
    assert LEAKS[name][0] is func
    assert LEAKS[name][1][key] == value


def test_leak_name_refuses_unnamed_parameters():
    with pytest.raises(ValueError, match="no naming rule"):
        leaks.leak_name(leaks.jpeg, {"optimize": True})


@pytest.mark.parametrize("name", list(PIPELINES))
def test_pipeline_name_agrees_with_steps(name):
    steps = PIPELINES[name]
    for step, overrides in steps:
        assert step in LEAKS, (name, step)
        inspect.signature(LEAKS[step][0]).bind(None, None, **{**LEAKS[step][1], **overrides})
    assert _numbers(name) <= _pipeline_numbers(steps), name


def test_pipelines_cover_the_benchmark():
    assert STRETCH <= set(PIPELINES)
    assert len(PIPELINES) - len(STRETCH) == 19
    steps = {name: [s for s, _ in PIPELINES[name]] for name in PIPELINES}
    assert steps["screenshot_ui_messenger_1280px_jpeg_q70"] == ["screenshot_1up",
                                                                "messenger_jpeg_1280px_q70"]
    assert leaks.output_peak(PIPELINES["export16_png"]) == 65535.0
    assert leaks.output_peak(PIPELINES["viewer_png8"]) == 255.0


def test_apply_unknown_name():
    with pytest.raises(KeyError, match="unknown leak 'jpeg_40'"):
        leaks.apply(np.zeros((8, 8)), [("jpeg_40", {})])


# ----------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize("name, kept", [
    ("crop_centre_keep50pct", 0.50), ("crop_centre_keep36pct", 0.36),
    ("crop_centre_keep25pct", 0.25), ("crop_centre_keep10pct", 0.10),
    ("crop_top_cut25pct", 0.75), ("crop_top_cut10pct", 0.90),
    ("crop_side_left_cut25pct", 0.75), ("crop_side_right_cut25pct", 0.75),
])
def test_crop_keeps_stated_area(name, kept, film):
    out = leaks.apply(film, [(name, {})])
    assert abs(out.size / film.size - kept) <= 0.02


def test_crops_are_centred_or_on_the_stated_side(landscape):
    rows, cols = landscape.shape
    centre = leaks.crop_centre(landscape, area=0.25)
    h, w = centre.shape
    top, left = (rows - h) // 2, (cols - w) // 2
    np.testing.assert_array_equal(centre, landscape[top:top + h, left:left + w])
    np.testing.assert_array_equal(leaks.crop_top(landscape, fraction=0.25),
                                  landscape[round(rows * 0.25):])
    np.testing.assert_array_equal(leaks.crop_side(landscape, fraction=0.25, side="right"),
                                  landscape[:, :cols - round(cols * 0.25)])


def test_rot90_four_times_is_identity(landscape):
    out = leaks.apply(landscape, [("rot90_k1", {})] * 4)
    np.testing.assert_array_equal(out, landscape)
    np.testing.assert_array_equal(leaks.rot90(landscape, k=1), np.rot90(landscape))
    np.testing.assert_array_equal(leaks.apply(landscape, [("mirror_lr", {})] * 2), landscape)
    np.testing.assert_array_equal(leaks.mirror(landscape, axis=1), landscape[:, ::-1])


def test_rotate_keeps_shape_and_fills_black(nih):
    out = leaks.rotate(nih, angle=10)
    assert out.shape == nih.shape
    assert abs(out[0, 0]) < 1e-6 and abs(out[-1, -1]) < 1e-6  # corners come from outside
    assert leaks.rotate(nih, angle=3, expand=True).shape[0] > nih.shape[0]
    np.testing.assert_allclose(leaks.rotate(nih, angle=0), nih, atol=1e-3)
    # both count angles counter-clockwise on screen
    np.testing.assert_allclose(leaks.rotate(nih, angle=90), leaks.rot90(nih, k=1), atol=1e-3)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return peak_signal_noise_ratio(a, b, data_range=255)


def test_jpeg_quality_orders_distortion(film):
    p30 = _psnr(film, leaks.apply(film, [("jpeg_q30", {})]))
    p90 = _psnr(film, leaks.apply(film, [("jpeg_q90", {})]))
    assert p30 < p90 - 3
    m40 = _psnr(film, leaks.messenger(film, long_edge=4096, quality=40))
    m85 = _psnr(film, leaks.messenger(film, long_edge=4096, quality=85))
    assert m40 < m85


@pytest.mark.parametrize("pixels", [1600, 1280, 1024, 800, 512, 256])
def test_long_edge_is_exact(pixels, film):
    out = leaks.long_edge(film, pixels=pixels)
    assert max(out.shape) == pixels
    rows, cols = film.shape
    assert abs(out.shape[0] / out.shape[1] - rows / cols) < 0.01
    sent = leaks.messenger(film, long_edge=pixels, quality=70)
    assert max(sent.shape) == min(pixels, max(film.shape))  # messengers never enlarge


def _expected_film(film: np.ndarray, h: int, w: int) -> np.ndarray:
    im = Image.fromarray(film.astype(np.float32), mode="F").resize((w, h), Image.BICUBIC)
    return np.clip(np.round(np.asarray(im, dtype=np.float64)), 0, 255)


def test_screenshot_places_the_scaled_film_in_its_box(film):
    shot = leaks.screenshot(film)
    assert shot.shape == (1080, 1920) and shot.dtype == np.float64
    top, left, h, w = leaks.film_box(film.shape, "1up", (1080, 1920), 40)
    assert abs(h / w - film.shape[0] / film.shape[1]) < 0.01
    assert 0 <= top and top + h <= 1080 and 0 <= left and left + w <= 1920
    box = shot[top:top + h, left:left + w]
    same = np.abs(box - _expected_film(film, h, w)) <= 1
    assert same.mean() > 0.99  # all but overlay text
    # black pane just outside the box, grey UI bars with text at top and bottom
    mid = slice(top + h // 4, top + 3 * h // 4)
    assert np.all(shot[mid, left - 8:left] == 0) and np.all(shot[mid, left + w:left + w + 8] == 0)
    assert np.median(shot[:20]) > 20 and shot[:28].max() > 150
    assert np.median(shot[-20:]) > 20 and shot[-26:].max() > 150


def test_screenshot_2up_and_without_ui(landscape):
    shot = leaks.screenshot(landscape, layout="2up")
    boxes = [leaks.film_box(landscape.shape, "2up", (1080, 1920), 40, cell=c) for c in (0, 1)]
    (t0, l0, h0, w0), (t1, l1, h1, w1) = boxes
    assert l0 + w0 <= l1 and (h0, w0) == (h1, w1)
    expected = _expected_film(landscape, h0, w0)
    assert (np.abs(shot[t0:t0 + h0, l0:l0 + w0] - expected) <= 1).mean() > 0.99
    assert (np.abs(shot[t1:t1 + h1, l1:l1 + w1] - expected[:, ::-1]) <= 1).mean() > 0.98
    bare = leaks.screenshot(landscape, ui=False, margin=0)
    top, left, h, w = leaks.film_box(landscape.shape, "1up", (1080, 1920), 0, ui=False)
    assert (top, h) == (0, 1080)
    outside = bare.copy()
    outside[top:top + h, left:left + w] = 0
    assert not outside.any()  # nothing but the film on the screen
    other = np.full((300, 200), 128.0)
    with_other = leaks.screenshot(landscape, layout="2up", other=other)
    t, l, h, w = leaks.film_box(other.shape, "2up", (1080, 1920), 40, cell=1)
    assert np.all(with_other[t + 10:t + h - 10, l + 10:l + w - 10] == 128)


def test_window_matches_pydicom(nih):
    from pydicom.dataset import Dataset
    from pydicom.pixels.processing import apply_windowing

    ds = Dataset()
    ds.BitsStored, ds.PixelRepresentation, ds.PhotometricInterpretation = 8, 0, "MONOCHROME2"
    values = nih.astype(np.uint8)
    for function, center, width in [("LINEAR", 90, 102), ("LINEAR_EXACT", 90.5, 102),
                                    ("SIGMOID", 120, 128), ("LINEAR", 128, 2)]:
        ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, function
        ours = leaks.window(nih, center=center, width=width, function=function)
        np.testing.assert_allclose(ours, apply_windowing(values, ds), atol=1e-9)
    np.testing.assert_allclose(leaks.window(nih, center=128, width=256), nih, atol=1e-9)
    wide = leaks.window(nih, center=128, width=256, bits=16)
    np.testing.assert_allclose(wide, nih * 257, atol=1e-6)
    narrow = leaks.apply(nih, [("window_linear_cmedian_w102", {})])
    assert abs(np.mean(narrow) - 127.5) < 40 and (narrow == 0).mean() > 0.05


def test_voi_lut_matches_pydicom(nih):
    from pydicom.dataset import Dataset
    from pydicom.pixels.processing import apply_voi

    func, params = LEAKS["voi_lut_256_from0_8bit"]
    ds = Dataset()
    ds.BitsStored, ds.PixelRepresentation = 8, 0
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.LUTData = [int(v) for v in params["lut"]]
    ds.VOILUTSequence = [item]
    ours = func(nih, None, **params)
    np.testing.assert_array_equal(ours, apply_voi(nih.astype(np.uint8), ds))
    lut = np.arange(100, 200, dtype=np.uint16) * 300  # 16-bit entries, mapped from 100
    out = leaks.voi_lut(nih, lut=lut, first_mapped=100)
    assert out[nih < 100].max() == float(lut[0]) * 255 / 65535
    assert out[nih >= 199].min() == float(lut[-1]) * 255 / 65535


def test_export16_is_exact(nih):
    out = leaks.export16(nih)
    np.testing.assert_array_equal(out, nih * 257)
    raw = leaks.export16(nih * 16, in_peak=None)
    np.testing.assert_array_equal(raw, nih * 16)


def test_dcmtk_12bit_jpeg_on_stored_values(dicom_films):
    """DCMTK's dcmcjpeg +ee codes the 12-bit Canon film as JPEG Extended 12-bit and the
    15-bit Philips film rescaled to 12 bits; both come back in their own range, lossy but
    close (RMS measured: 7.7 of 4095 and 53 of 32767 at quality 80)."""
    require_tools("dcmcjpeg")
    from watermark.dicomio import read_film

    for name, rms_max in [("canon_dx_mono1_12bit_j2klossless_966_fixed.dcm", 12.0),
                          ("philips_cr_mono1_15bit_RG1_UNCR.dcm", 80.0)]:
        values = read_film(dicom_films[name]).pixels.astype(np.float64)
        out = leaks.dicom_dcmtk_jpeg(values, quality=80)
        assert out.shape == values.shape and np.all(out == np.round(out))
        assert out.min() == values.min() and out.max() == values.max()
        rms = float(np.sqrt(np.mean((out - values) ** 2)))
        assert 0 < rms < rms_max, (name, rms)
        assert rms > float(np.sqrt(np.mean((leaks.dicom_dcmtk_jpeg(values, quality=95)
                                            - values) ** 2)))


def test_dicom_side_on_stored_values(fuji10):
    _, values = fuji10
    before = values.copy()
    for func, kwargs in [(leaks.dicom_jpeg, {"quality": 80}), (leaks.dicom_j2k, {"ratio": 20})]:
        out = func(values, None, bits_stored=10, **kwargs)
        assert out.dtype == np.float64 and out.shape == values.shape
        assert 0 <= out.min() and out.max() <= 1023 and np.all(out == np.round(out))
        err = np.abs(out - values).mean()
        assert 0 < err < 8, (func.__name__, err)  # lossy, but a 10-bit film still
    np.testing.assert_array_equal(values, before)
    mild = np.abs(leaks.dicom_j2k(values, ratio=10) - values).mean()
    hard = np.abs(leaks.dicom_j2k(values, ratio=40) - values).mean()
    assert mild < hard


def test_write_lossy_dicom_j2k_ratio_and_flags(dicom_films, tmp_path):
    import pydicom

    src = _read_dicom(dicom_films["nih_cxr14_dx_8bit_1024px_nccid.dcm"])
    uid, pixels = src.SOPInstanceUID, bytes(src.PixelData)
    leaks.write_lossy_dicom(src, tmp_path / "j2k.dcm", method="j2k", ratio=20)
    assert src.SOPInstanceUID == uid and bytes(src.PixelData) == pixels  # source untouched
    out = pydicom.dcmread(tmp_path / "j2k.dcm")
    assert out.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000
    assert out.SOPInstanceUID != uid and out.LossyImageCompression == "01"
    assert out.LossyImageCompressionMethod == "ISO_15444_1"
    assert 18 <= float(out.LossyImageCompressionRatio) <= 22  # 8-bit: ratio of Bits Stored
    err = np.abs(out.pixel_array.astype(float) - src.pixel_array).mean()
    assert 0 < err < 5
    leaks.write_lossy_dicom(src, tmp_path / "jpeg.dcm", method="jpeg", quality=80)
    jp = pydicom.dcmread(tmp_path / "jpeg.dcm")
    assert jp.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    assert jp.LossyImageCompressionMethod == "ISO_10918_1"
    assert np.abs(jp.pixel_array.astype(float) - src.pixel_array).mean() < 5


def test_write_lossy_dicom_refuses_jpeg_for_16_bit(fuji10, tmp_path):
    ds, _ = fuji10
    with pytest.raises(ValueError, match="Bits Allocated is 16"):
        leaks.write_lossy_dicom(ds, tmp_path / "x.dcm", method="jpeg")


# ----------------------------------------------------------------------------- invalid params

IMG = np.full((64, 48), 100.0)
RNG = np.random.default_rng(0)


@pytest.mark.parametrize("func, kwargs, match", [
    (leaks.jpeg, {"quality": 0}, r"quality must be an integer in \[1, 100\]"),
    (leaks.jpeg, {"quality": 101}, "quality"),
    (leaks.jpeg, {"quality": 75.5}, "quality"),
    (leaks.webp, {"quality": 101}, r"\[0, 100\]"),
    (leaks.scale, {"factor": 0}, r"factor must be a number in \(0, 16\]"),
    (leaks.long_edge, {"pixels": 0}, "pixels"),
    (leaks.messenger, {"fmt": "png"}, "fmt must be one of 'jpeg', 'webp'"),
    (leaks.messenger, {"long_edge": 8}, "long_edge"),
    (leaks.window, {"center": 100, "width": 0.5}, r"width must be a number in \[1, inf\)"),
    (leaks.window, {"center": 100, "width": 0, "function": "SIGMOID"}, "width"),
    (leaks.window, {"center": 100, "width": 50, "function": "GAMMA"}, "LINEAR"),
    (leaks.window, {"center": "mean", "width": 50}, "'median'"),
    (leaks.window, {"center": 100, "width": 50, "bits": 12}, "bits must be one of 8, 16"),
    (leaks.voi_lut, {"lut": np.array([]), "first_mapped": 0}, "non-empty"),
    (leaks.voi_lut, {"lut": np.array([0, 300]), "first_mapped": 0, "lut_bits": 8}, "0..255"),
    (leaks.export16, {"in_peak": 0}, "in_peak"),
    (leaks.crop_top, {"fraction": 1.0}, r"\[0, 1\)"),
    (leaks.crop_side, {"side": "top"}, "'left', 'right'"),
    (leaks.crop_centre, {"area": 0}, r"\(0, 1\]"),
    (leaks.crop_centre, {"area": 1.5}, "area"),
    (leaks.rotate, {"angle": 400}, r"\[-360, 360\]"),
    (leaks.rot90, {"k": 1.5}, "integer"),
    (leaks.mirror, {"axis": 2}, "axis must be one of 0, 1"),
    (leaks.gamma, {"value": 0}, "value"),
    (leaks.brightness, {"offset": 300}, r"\[-255, 255\]"),
    (leaks.contrast, {"factor": -1}, r"\[0, 10\]"),
    (leaks.blur, {"sigma": -1}, "sigma"),
    (leaks.noise, {"sigma": -1}, "sigma"),
    (leaks.sharpen, {"amount": -1}, "amount"),
    (leaks.sharpen, {"radius": 0}, "radius"),
    (leaks.screen_photo, {"strength": 2}, r"strength must be a number in \[0, 1\]"),
    (leaks.screenshot, {"layout": "3up"}, "'1up', '2up'"),
    (leaks.screenshot, {"margin": -1}, "margin"),
    (leaks.screenshot, {"margin": 600}, "at least 16 x 16"),
    (leaks.screenshot, {"other": IMG}, "only used with layout='2up'"),
    (leaks.dicom_jpeg, {"quality": 0}, "quality"),
    (leaks.dicom_j2k, {"ratio": 1}, r"ratio must be a number in \(1, 1000\]"),
    (leaks.dicom_j2k, {"bits_stored": 17}, "bits_stored"),
    (leaks.dicom_j2k, {"bits_stored": 6}, r"stored values must be in 0..63"),
])
def test_invalid_parameters_raise(func, kwargs, match):
    with pytest.raises(ValueError, match=match):
        func(IMG, RNG, **kwargs)


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match="2-D"):
        leaks.jpeg(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="Generator"):
        leaks.noise(IMG, None)
    with pytest.raises(ValueError, match="Pixel Representation 0"):
        leaks.dicom_j2k(IMG - 200)
    with pytest.raises(ValueError, match="method must be one of 'j2k', 'jpeg'"):
        leaks.write_lossy_dicom(None, "unused.dcm", method="png")
