"""The fidelity benchmark's measures (benchmarks/fidelity.py), and the mark against JPEG 2000
10:1 in narrow windows on a real film.

The full comparison over the shared films is the benchmark (``--check``); here the 440 px Fuji
CR film, quick to mark and to compress, stands for it, and the measures are checked on known
differences.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "fidelity.py"


@pytest.fixture(scope="module")
def fidelity(monkeypatch_module):
    monkeypatch_module.syspath_prepend(str(_PATH.parent))
    spec = importlib.util.spec_from_file_location("fidelity_benchmark", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_windowed_psnr_of_a_known_offset(fidelity):
    original = np.linspace(0, 1000, 10_000).reshape(100, 100)
    # a window 100 units wide maps 1 unit to 2.55 display levels: PSNR = 20 log10(255 / 2.55)
    psnr = fidelity.windowed_psnr(original, original + 1.0, centre=500.0, width=100.0)
    assert psnr == pytest.approx(40.0, abs=0.05)
    # only pixels inside the window count: an offset outside it changes nothing
    changed = original.copy()
    changed[original > 600] += 50
    assert fidelity.windowed_psnr(original, changed, centre=500.0, width=100.0) == math.inf


def test_j2k_round_trip_compresses_at_the_ratio_and_changes_the_film(fidelity, load_film):
    film = load_film("fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm")
    decoded, n_bytes = fidelity.j2k_round_trip(film.pixels, film.bits_stored)
    raw_bytes = film.pixels.size * film.bits_stored / 8
    assert 8.0 < raw_bytes / n_bytes < 12.0  # 10:1 of Bits Stored, within the codec's rate control
    assert decoded.shape == film.pixels.shape
    error = decoded - film.pixels
    assert 0 < np.mean(error**2) < 25  # lossy, but a few stored units at most


def test_the_mark_distorts_less_than_jpeg2000_10_to_1_in_narrow_windows(fidelity, dicom_films):
    row = fidelity.measure(dicom_films["fuji_cr_mono1_10bit_440px_CR-MONO1-10-chest.dcm"])
    assert row["checked"] and fidelity.failures(row) == []
    assert row["mse_ratio_mark_to_j2k"] < 0.5  # measured 0.22
    for name in fidelity.WINDOWS:
        assert row[f"psnr_{name}_mark"] > row[f"psnr_{name}_j2k"] + 3, name  # measured 5-7 dB
    assert row["edge_rms_ratio"] < 1.0  # no pile-up of the mark on the sharpest edges
