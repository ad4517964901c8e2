"""Reading leaks: what is not a file, size limit, GIF, and DICOM leaks in colour or with
several frames (a viewer's secondary capture of a marked film) traced like any other."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from pydicom.pixels import convert_color_space

from conftest import write_dicom
from forensics import leaks
from forensics.export import export_film
from forensics.ledger import Ledger
from forensics.trace import detect_leak
from watermark import detect
from watermark.dicomio import read_film
from watermark.display import render
from watermark.errors import CapacityError, InvalidInputError
from watermark.imageio import MAX_PIXELS, read_leak
from watermark.keys import SiteKey

KEY = SiteKey(bytes(range(32)))
FUJI = "fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm"


def _png_header_only(path, width, height, colour_type=2):
    """A PNG whose IHDR claims width x height and that holds no pixel data at all."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_what_is_not_a_regular_file_is_named(tmp_path):
    with pytest.raises(InvalidInputError, match="missing.png: no such file"):
        read_leak(tmp_path / "missing.png")
    with pytest.raises(InvalidInputError, match=f"{tmp_path}: is a directory"):
        read_leak(tmp_path)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe")
        with pytest.raises(InvalidInputError, match="pipe: is not a regular file"):
            read_leak(tmp_path / "pipe")  # refused without opening it (that would block)


def test_size_limit(tmp_path):
    assert MAX_PIXELS == 120_000_000
    for w, h in ((20000, 20000), (11000, 11000)):
        path = _png_header_only(tmp_path / f"{w}.png", w, h)
        with pytest.raises(InvalidInputError, match=f"{w}.png: too large: leaktrace reads at most "
                                                    "120000000 pixels"):
            read_leak(path)
    huge = write_dicom(tmp_path / "huge.dcm", np.zeros((1, 1), np.uint8))
    import pydicom

    ds = pydicom.dcmread(huge)
    ds.Rows = ds.Columns = 11000  # header only: refused before any decoding
    ds.save_as(huge)
    with pytest.raises(InvalidInputError, match="huge.dcm: too large: 11000 x 11000 px"):
        read_leak(huge)
    big = tmp_path / "10000.png"
    Image.new("L", (10000, 10000), 7).save(big, compress_level=1)
    leak = read_leak(big)
    assert leak.gray.shape == (10000, 10000) and leak.gray[0, 0] == 7
    del leak


def test_colour_luma_and_gif(tmp_path):
    rgb = np.zeros((64, 80, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 200, 50
    Image.fromarray(rgb).save(tmp_path / "c.png")
    assert np.allclose(read_leak(tmp_path / "c.png").gray, 0.299 * 100 + 0.587 * 200 + 0.114 * 50)
    grey = np.tile(np.arange(80, dtype=np.uint8), (64, 1))
    Image.fromarray(grey).save(tmp_path / "g.gif")
    leak = read_leak(tmp_path / "g.gif")
    assert leak.format == "GIF" and np.allclose(leak.gray, grey)


@pytest.fixture(scope="module")
def marked_fuji(tmp_path_factory, dicom_films):
    folder = tmp_path_factory.mktemp("imageio")
    with Ledger(folder / "l.sqlite") as book:
        export_film(dicom_films[FUJI], folder / "marked.dcm", recipient="Dr. Ana", ledger=book,
                    key=KEY)
    return folder, leaks.to_uint8(render(read_film(folder / "marked.dcm")))


def _traced(folder, path):
    with Ledger(folder / "l.sqlite", create=False) as book:
        return detect_leak(path, ledger=book, key=KEY)


def test_rgb_and_ybr_dicom_leaks_are_traced(marked_fuji, tmp_path):
    folder, shown = marked_fuji
    rgb = np.repeat(shown[..., None], 3, axis=2)
    rgb_path = write_dicom(tmp_path / "sc_rgb.dcm", rgb, photometric="RGB")
    leak = read_leak(rgb_path)
    assert leak.format == "DICOM" and leak.mode == "RGB"
    assert np.allclose(leak.gray, shown, atol=1e-9)
    ybr_path = write_dicom(tmp_path / "sc_ybr.dcm", convert_color_space(rgb, "RGB", "YBR_FULL"),
                           photometric="YBR_FULL")
    assert np.abs(read_leak(ybr_path).gray - shown).max() <= 1.5  # 8-bit YBR round trip
    for path in (rgb_path, ybr_path):
        report = _traced(folder, path)
        assert report.recipient == "Dr. Ana", report.as_dict()


def test_multi_frame_dicom_leaks_use_the_first_frame(marked_fuji, tmp_path):
    folder, shown = marked_fuji
    noise = np.random.default_rng(1).integers(0, 256, shown.shape, dtype=np.uint8)
    grey = write_dicom(tmp_path / "mf.dcm", np.stack([shown, noise]), frames=2, window=(128, 256))
    leak = read_leak(grey)
    assert leak.gray.shape == shown.shape
    rgb = np.repeat(np.stack([shown, noise])[..., None], 3, axis=3)
    colour = write_dicom(tmp_path / "mf_rgb.dcm", rgb, photometric="RGB", frames=2)
    for path in (grey, colour):
        assert _traced(folder, path).recipient == "Dr. Ana"


def test_too_small_leak_error_names_the_file(marked_fuji, tmp_path):
    folder, shown = marked_fuji
    Image.fromarray(shown[:20, :20]).save(tmp_path / "tiny.png")
    with pytest.raises(CapacityError, match=r"tiny\.png: image of 20 x 20 px is too small"):
        _traced(folder, tmp_path / "tiny.png")


def test_grey_files_are_read_in_their_own_integers(tmp_path):
    """8- and 16-bit grey files come back as their own uint8 / uint16 values (1 or 2 bytes a
    pixel, native byte order), grey with alpha as its grey channel; colour as float64 luma."""
    rng = np.random.default_rng(2)
    grey8 = rng.integers(0, 256, (60, 80), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, (60, 80), dtype=np.uint16)
    Image.fromarray(grey8).save(tmp_path / "g8.png")
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    Image.fromarray(np.stack([grey8, grey8[::-1]], axis=-1), mode="LA").save(tmp_path / "la.png")
    for name, values in (("g8.png", grey8), ("g16.png", grey16), ("la.png", grey8)):
        gray = read_leak(tmp_path / name).gray
        assert gray.dtype == values.dtype and gray.dtype.isnative and np.array_equal(gray, values)
        assert gray.flags.writeable
    Image.fromarray(np.stack([grey8] * 3, axis=-1)).save(tmp_path / "c.png")
    assert read_leak(tmp_path / "c.png").gray.dtype == np.float64


def test_a_png_named_dcm_is_read_as_the_png_it_is(tmp_path):
    """The content decides, not the name: a screenshot saved as ``leak.dcm`` is an image."""
    grey = (np.arange(120 * 90, dtype=np.uint32) % 251).astype(np.uint8).reshape(120, 90)
    path = tmp_path / "leak.dcm"
    Image.fromarray(grey).save(path, format="PNG")
    leak = read_leak(path)
    assert leak.format == "PNG"
    assert np.array_equal(leak.gray, grey)


def test_detect_on_a_colour_array_says_it_wants_grey():
    """The array API is 2-D grey; an (h, w, 3) array gets that said, not "too small"."""
    rgb = np.zeros((300, 400, 3), np.uint8)
    with pytest.raises(InvalidInputError, match=r"2-D grey array.*\(300, 400, 3\).*luma"):
        detect(rgb, SiteKey(bytes(32)), [1])
