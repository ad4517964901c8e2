"""The mark itself: shapes, flat regions, determinism, and films that break naive versions."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import write_dicom
from forensics import leaks
from forensics.export import export_film
from forensics.ledger import Ledger
from forensics.trace import detect_leak
from watermark import dwt, payload
from watermark.dicomio import read_film
from watermark.display import render
from watermark.keys import SiteKey

KEY = SiteKey(bytes(range(32)))


@pytest.fixture(scope="module")
def film_png(data_dir):
    path = sorted((data_dir / "png" / "nih_cxr14").glob("*.png"))[0]
    return np.asarray(Image.open(path).convert("L"), dtype=np.float64)


@pytest.mark.parametrize("shape", [(513, 767), (2021, 1745), (64, 64)])
def test_odd_sizes_keep_their_shape(film_png, shape):
    image = np.asarray(Image.fromarray(film_png.astype(np.uint8)).resize(shape[::-1]), dtype=np.float64)
    residual = dwt.mark_residual(image, payload.encode(7, KEY), KEY)
    assert residual.shape == shape and residual.dtype == np.float64
    assert np.sqrt(np.mean(residual**2)) == pytest.approx(dwt.default_rms(shape), rel=1e-6)


def test_same_key_and_payload_give_the_same_mark(film_png):
    a = dwt.mark_residual(film_png, payload.encode(7, KEY), KEY)
    b = dwt.mark_residual(film_png.copy(), payload.encode(7, KEY), KEY)
    c = dwt.mark_residual(film_png, payload.encode(8, KEY), KEY)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("value", [0.0, 255.0, 128.0])
def test_flat_images_carry_no_mark(value):
    flat = np.full((300, 400), value)
    assert not np.any(dwt.mark_residual(flat, payload.encode(7, KEY), KEY))


def test_too_small_to_embed():
    with pytest.raises(ValueError, match="at least 64 px"):
        dwt.mark_residual(np.zeros((32, 32)), payload.encode(7, KEY), KEY)


def test_film_with_40_percent_flat_border(film_png, tmp_path):
    """A film 40 % of whose area is a flat 0-valued collimation border: the border stays
    untouched, the anatomy carries the mark, and a JPEG of the render is traced."""
    rows, cols = 1024, 1024
    canvas = np.zeros((rows, cols), dtype=np.uint16)
    inner = int(round(1024 * np.sqrt(0.6)))  # 60 % of the area is film
    top = (rows - inner) // 2
    small = np.asarray(Image.fromarray(film_png.astype(np.uint8)).resize((inner, inner)), dtype=np.uint16)
    canvas[top:top + inner, top:top + inner] = small * 16 + 100  # 12-bit film
    src = write_dicom(tmp_path / "border.dcm", canvas, bits_stored=12, window=(2048, 4096))
    with Ledger(tmp_path / "l.sqlite") as book:
        rec = export_film(src, tmp_path / "out.dcm", recipient="4242", ledger=book, key=KEY)
        marked = read_film(rec.output_path).pixels.astype(int)
        border = canvas == 0
        border[top - 8:top + inner + 8, top - 8:top + inner + 8] = False  # away from the edge
        assert np.array_equal(marked[border], canvas[border].astype(int))
        assert np.count_nonzero(marked != canvas) > 0.2 * inner * inner
        leak = tmp_path / "leak.jpg"
        leaks.save_image(leaks.quantize_8bit(render(read_film(rec.output_path))), leak, quality=75)
        report = detect_leak(leak, ledger=book, key=KEY)
    assert report.recipient == "4242" and report.detection.p_value <= 1e-6


@pytest.mark.parametrize("source, target", [
    ((2048, 2048), (1024, 1024)), ((1024, 1024), (2048, 2048)), ((1955, 1841), (1024, 964)),
    ((1080, 1920), (576, 1024)), ((3, 7), (40, 2)), ((1, 5), (4, 1)), ((257, 64), (100, 300)),
])
def test_resample_is_skimage_resize(source, target):
    """The banded-matrix resampling gives skimage's antialiased linear resize."""
    from skimage.transform import resize

    image = np.random.default_rng(3).random(source) * 255
    expected = resize(image, target, order=1, mode="reflect", preserve_range=True,
                      anti_aliasing=target[0] < source[0] or target[1] < source[1])
    got = dwt.resample(image, target)
    assert got.dtype == np.float64 and got.shape == target
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    single = dwt._resample(image.astype(np.float32), target, np.float32)
    assert single.dtype == np.float32
    np.testing.assert_allclose(single, expected, rtol=0, atol=1e-3)


def test_float32_mark_is_the_float64_mark(film_png):
    """The embed path's float32 computation changes the mark by float32 rounding only."""
    codeword = payload.encode(7, KEY)
    double = dwt.mark_residual(film_png, codeword, KEY)
    single = dwt.mark_residual(film_png.astype(np.float32), codeword, KEY, dtype=np.float32)
    assert single.dtype == np.float32 and single.shape == double.shape
    assert np.abs(single - double).max() < 1e-4 * np.abs(double).max()


@pytest.mark.parametrize("source", [(1080, 1920), (1955, 1841), (720, 1280), (324, 324)])
def test_working_grid_of_an_8bit_leak_is_that_of_its_float64_copy(source):
    """The grid is resampled band by band from the leak's own dtype: a uint8 or float32 leak
    (exact grey values) gives bit for bit the grid of its float64 copy, and never an alias of
    the leak."""
    leak = np.random.default_rng(4).integers(0, 256, source).astype(np.uint8)
    for edge in dwt.WORKING_EDGES:
        double = dwt._working_grid(leak.astype(np.float64), edge)
        assert np.array_equal(dwt._working_grid(leak, edge), double)
        assert np.array_equal(dwt._working_grid(leak.astype(np.float32), edge), double)
    square = leak[:256, :256].astype(np.float64)
    assert not np.shares_memory(dwt._working_grid(square, 256), square)
