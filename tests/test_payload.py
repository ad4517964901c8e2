"""Payload coding: round trip, error correction, CRC rejection, keying."""

import numpy as np
import pytest

from watermark import payload
from watermark.keys import SiteKey

KEY = SiteKey(bytes(range(32)))
OTHER = SiteKey(bytes(range(1, 33)))


@pytest.mark.parametrize("number", [0, 1, 7, 4242, 2**31, payload.MAX_RECIPIENT])
def test_round_trip(number):
    c = payload.encode(number, KEY)
    assert c.shape == (payload.N_BITS,) and c.dtype == np.int8
    assert set(np.unique(c)) <= {-1, 1}
    assert payload.decode(c.astype(float), KEY) == number


def test_same_input_same_codeword_and_key_matters():
    assert np.array_equal(payload.encode(99, KEY), payload.encode(99, KEY))
    assert not np.array_equal(payload.encode(99, KEY), payload.encode(99, OTHER))


def test_corrects_13_byte_errors_and_26_erasures():
    c = payload.encode(123456, KEY).astype(float)
    broken = c.copy()
    for byte in range(0, 26, 2):  # 13 bytes wholly wrong, confidently
        broken[8 * byte: 8 * byte + 8] *= -1
    assert payload.decode(broken, KEY) == 123456
    erased = c.copy()
    for byte in range(26):  # 26 bytes wrong but with low confidence -> erasures
        erased[8 * byte: 8 * byte + 8] *= -0.01
    assert payload.decode(erased, KEY) == 123456


def test_noise_and_random_input():
    rng = np.random.default_rng(1)
    c = payload.encode(77, KEY).astype(float)
    hits = sum(payload.decode(c + rng.normal(0, 0.5, c.size), KEY) == 77 for _ in range(100))
    assert hits >= 95
    # pure noise must essentially never pass RS + CRC
    false = sum(payload.decode(rng.normal(0, 1, c.size), KEY) is not None for _ in range(2000))
    assert false == 0


def test_other_key_does_not_decode():
    c = payload.encode(4242, KEY).astype(float)
    assert payload.decode(c, OTHER) is None


def test_codewords_of_recipients_are_nearly_orthogonal():
    table = payload.codeword_table(range(1, 301), KEY).astype(float)
    gram = table @ table.T / payload.N_BITS
    np.fill_diagonal(gram, 0)
    # independent random +-1 words of 256 bits: |rho| rarely above 0.3 among 45,000 pairs
    assert np.abs(gram).max() < 0.33
    assert abs(gram.mean()) < 0.01


def test_out_of_range():
    with pytest.raises(ValueError, match="recipient number"):
        payload.encode(2**32, KEY)
    with pytest.raises(ValueError, match="recipient number"):
        payload.encode(-1, KEY)
