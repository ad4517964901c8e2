"""Finding a film in a leak by its grey levels (the template search), on real films.

Keypoints fail on a small crop of a smooth part of a film (the Canon DX's mediastinum, 10 %
of the area); :func:`forensics.register.locate` must find it by normalised
cross-correlation against the thumbnails kept at export, and say where it lies.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from forensics import leaks
from forensics.register import (FilmFeatures, film_features, linear_scale, locate,
                                THUMBNAIL_EDGE)
from watermark.dicomio import read_film
from watermark.display import render

SMOOTH = "canon_dx_mono1_12bit_j2klossless_966_fixed.dcm"
OTHERS = ["nih_cxr14_dx_8bit_1024px_nccid.dcm", "philips_cr_mono1_15bit_RG1_UNCR.dcm",
          "fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm"]


@pytest.fixture(scope="module")
def displays(dicom_films):
    return {name: render(read_film(dicom_films[name])) for name in [SMOOTH, *OTHERS]}


@pytest.fixture(scope="module")
def features(displays):
    return [film_features(displays[name]) for name in [*OTHERS, SMOOTH]]


def _crop_origin(shape, area):
    """(row, column) of the top-left corner of leaks.crop_centre's window."""
    side = math.sqrt(area)
    rows, cols = round(shape[0] * side), round(shape[1] * side)
    return (shape[0] - rows) // 2, (shape[1] - cols) // 2


def test_the_thumbnail_is_kept_and_survives_serialisation(features):
    feats = features[-1]
    assert feats.thumbnail.dtype == np.uint8 and max(feats.thumbnail.shape) == THUMBNAIL_EDGE
    back = FilmFeatures.from_bytes(feats.to_bytes())
    np.testing.assert_array_equal(back.thumbnail, feats.thumbnail)
    # features kept by leaktrace 0.2.0 had none: they still load
    old = dataclasses.replace(feats, thumbnail=None)
    assert FilmFeatures.from_bytes(old.to_bytes()).thumbnail is None


@pytest.mark.parametrize("mirrored,inverted", [(False, False), (True, True)])
def test_a_small_smooth_crop_is_located_on_its_film(displays, features, mirrored, inverted):
    film = displays[SMOOTH]
    leak = leaks.apply(film, leaks.PIPELINES["crop_centre_keep10pct"])
    if mirrored:
        leak = leak[:, ::-1]
    if inverted:
        leak = 255.0 - leak
    found = locate(leak, features)
    assert found, "the crop was not found"
    index, alignment = found[0]
    assert index == len(features) - 1  # the Canon film, not one of the three others
    assert alignment.template_ncc > 0.95
    assert (alignment.mirrored, alignment.inverted) == (mirrored, inverted)
    # the leak's corners land where the crop was taken, to within a few film px
    m = alignment.leak_to_film(leak.shape)
    top, left = _crop_origin(film.shape, 0.10)
    for x, y in [(0, 0), (leak.shape[1] - 1, leak.shape[0] - 1)]:
        fx, fy, w = m @ [x, y, 1.0]
        column = left + (leak.shape[1] - 1 - x if mirrored else x)
        assert abs(fx / w - column) < 12 and abs(fy / w - (top + y)) < 12
    assert abs(linear_scale(m) - 1.0) < 0.03


def test_a_scaled_crop_is_located_at_its_scale(displays, features):
    film = displays[SMOOTH]
    crop = leaks.crop_centre(film, area=0.10)
    leak = leaks.scale(crop, factor=0.6)
    found = locate(leak, features)
    assert found and found[0][0] == len(features) - 1
    expected = crop.shape[0] / leak.shape[0]
    assert abs(linear_scale(found[0][1].matrix) / expected - 1.0) < 0.04


def test_films_without_thumbnail_and_unrelated_images_give_nothing(displays, features):
    leak = leaks.apply(displays[SMOOTH], leaks.PIPELINES["crop_centre_keep10pct"])
    stripped = [dataclasses.replace(f, thumbnail=None) for f in features]
    assert locate(leak, stripped) == []
    noise = np.random.default_rng(0).normal(128, 40, (300, 280))
    assert locate(noise, features) == []


def test_polish_makes_a_thumbnail_match_precise(displays, features):
    # a 6.6 % crop of the NIH film's mediastinum: the thumbnails give its scale to a few per
    # cent, too coarse for the informed test; polish recovers it on the full-size film
    from forensics.register import polish

    film = displays[OTHERS[0]]
    top, left, side = 460, 409, 263
    leak = film[top:top + side, left:left + side]
    found = locate(leak, features)
    assert found and found[0][0] == 0
    rough = found[0][1].matrix
    fine = polish(leak, film, rough)
    assert abs(fine[0, 0] - 1.0) < 0.005 and abs(fine[1, 1] - 1.0) < 0.005
    assert abs(fine[0, 2] - left) < 1.5 and abs(fine[1, 2] - top) < 1.5
    # and it never makes a match worse than the estimate it started from
    assert abs(fine[0, 2] - left) <= abs(rough[0, 2] - left) + 0.5
