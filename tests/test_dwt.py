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
from watermark.display import display_gain, render
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
    rms = np.sqrt(np.mean(residual**2))
    assert 0 < rms <= dwt.NOISE_RATIO * dwt.noise_rms(image) * (1 + 1e-6)


def test_noise_rms_reads_white_noise_and_ignores_smooth_anatomy():
    rng = np.random.default_rng(3)
    ramp = np.add.outer(np.linspace(0, 200, 600), np.linspace(0, 50, 500))
    assert dwt.noise_rms(ramp) < 1e-3
    assert dwt.noise_rms(ramp + rng.normal(0, 3.0, ramp.shape)) == pytest.approx(3.0, rel=0.05)
    # a collimated half (constant) does not pull the estimate down
    half = ramp + rng.normal(0, 3.0, ramp.shape)
    half[:, :250] = 17.0
    assert dwt.noise_rms(half) == pytest.approx(3.0, rel=0.05)


def test_strength_scales_the_mark_and_rounding_is_planned_for(film_png):
    codeword = payload.encode(7, KEY)
    full = dwt.mark_residual(film_png, codeword, KEY)
    half = dwt.mark_residual(film_png, codeword, KEY, strength=0.5)
    np.testing.assert_allclose(half, 0.5 * full, rtol=1e-12, atol=1e-12)
    # an 8-bit host keeps only the rounded mark: its strength is chosen for what survives
    rounded = np.rint(dwt.mark_residual(film_png, codeword, KEY, quantum=1.0))
    rms = np.sqrt(np.mean(rounded**2))
    assert np.count_nonzero(rounded) > 0.05 * rounded.size
    assert rms <= max(dwt.NOISE_RATIO * dwt.noise_rms(film_png), dwt.QUANTUM_RATIO) + 1e-9
    with pytest.raises(ValueError, match="strength"):
        dwt.mark_residual(film_png, codeword, KEY, strength=-1.0)


def test_no_mark_at_the_borders_nor_on_white(film_png):
    image = film_png.copy()
    image[100:180, 600:760] = 255.0  # a burned-in white label
    residual = dwt.mark_residual(image, payload.encode(7, KEY), KEY)
    edge = int(np.floor(dwt._BORDER_ZERO * image.shape[0]))
    assert not np.any(residual[:edge]) and not np.any(residual[-edge:])
    assert not np.any(residual[:, :edge]) and not np.any(residual[:, -edge:])
    assert not np.any(residual[100:180, 600:760])
    body = residual[200:800, 200:800]
    white = image >= 250
    assert np.sqrt(np.mean(residual[white] ** 2)) <= np.sqrt(np.mean(body**2))


def test_capacity_decides_strength(data_dir):
    """A large film reaches the detection target with a mark far below its noise; a small one
    needs all the noise-relative amplitude it may have."""
    from forensics.export import mark_film
    ratios = {}
    for name in ("canon_dx_mono1_12bit_j2klossless_966_fixed.dcm", "fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm"):
        film = read_film(data_dir / "dicom" / name)
        mark = mark_film(film, 3, KEY) - film.pixels
        display = render(film)
        gain = abs(display_gain(film))
        ratios[name] = np.sqrt(np.mean(mark**2)) * gain / dwt.noise_rms(display)
    assert ratios["canon_dx_mono1_12bit_j2klossless_966_fixed.dcm"] < 0.8 * dwt.NOISE_RATIO
    assert ratios["fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm"] > 0.9 * dwt.NOISE_RATIO


def test_same_key_and_payload_give_the_same_mark(film_png):
    a = dwt.mark_residual(film_png, payload.encode(7, KEY), KEY)
    b = dwt.mark_residual(film_png.copy(), payload.encode(7, KEY), KEY)
    c = dwt.mark_residual(film_png, payload.encode(8, KEY), KEY)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_the_strength_model_is_public_only_the_tiles_are_keyed(film_png):
    """mark_residual is residual_from_tiles with the keyed tiles (what benchmarks/attacks.py
    drives with an adversary's estimate): the same mark, and the opposite tiles give the
    opposite mark at the same strength."""
    c = payload.encode(7, KEY)
    layout = dwt._layout(KEY)
    tiles = {lv: layout.signs[lv] * c[layout.bits[lv]] for lv in dwt.LEVELS}
    mark = dwt.mark_residual(film_png, c, KEY)
    assert np.array_equal(dwt.residual_from_tiles(film_png, tiles), mark)
    opposite = dwt.residual_from_tiles(film_png, {lv: -t for lv, t in tiles.items()})
    assert np.allclose(opposite, -mark) and np.std(mark) > 0.3
    with pytest.raises(ValueError, match=r"tiles\[2\] must have shape \(3, 32, 32\)"):
        dwt.residual_from_tiles(film_png, {2: tiles[2][:, :16], 3: tiles[3]})


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
    """The embed path's float32 computation changes the mark by rounding-level amounts only."""
    codeword = payload.encode(7, KEY)
    double = dwt.mark_residual(film_png, codeword, KEY)
    single = dwt.mark_residual(film_png.astype(np.float32), codeword, KEY, dtype=np.float32)
    assert single.dtype == np.float32 and single.shape == double.shape
    # float32 moves the strength model's block medians and caps at rounding level only
    rms = np.sqrt(np.mean(double**2))
    assert np.sqrt(np.mean((single - double) ** 2)) < 2e-3 * rms


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
