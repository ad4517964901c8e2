"""The p-value bound holds for symmetric, heavy-tailed and structured soft bits."""

import numpy as np
import pytest

from watermark import stats


@pytest.mark.parametrize("dist", ["normal", "cauchy", "sparse"])
def test_bound_is_conservative(dist):
    rng = np.random.default_rng(5)
    n, trials = 256, 20000
    if dist == "normal":
        y = rng.normal(size=(trials, n))
    elif dist == "cauchy":
        y = rng.standard_cauchy(size=(trials, n))
    else:  # a few large values, many zeros: the worst case for a Gaussian approximation
        y = rng.normal(size=(trials, n)) * (rng.random((trials, n)) < 0.05)
    c = np.where(rng.random(n) < 0.5, 1, -1)
    z = np.array([stats.normalised_correlation(row, c) for row in y])
    p = stats.p_value_bound(z)
    for level in (0.1, 0.01, 0.001):
        assert np.mean(p <= level) <= level


def test_union_and_threshold():
    assert stats.union_p_value(0.0, 10) == 1.0
    z = stats.z_threshold(1000, 1e-6)
    assert stats.union_p_value(z, 1000) == pytest.approx(1e-6)
    assert stats.union_p_value(40.0, 6) > 0  # log-space: no underflow to zero
    with pytest.raises(ValueError):
        stats.union_p_value(1.0, 0)


def test_zero_soft_bits():
    assert stats.normalised_correlation(np.zeros(128), np.ones(128)) == 0
