"""Payload coding: recipient number <-> the 128 coded bits that the mark carries.

Layout, from the recipient number to the bits that are embedded::

    recipient number (32 bits, big-endian)  +  CRC-16/CCITT of those 4 bytes (16 bits)
        -> 6-byte block
        -> keyed pseudo-random permutation (SiteKey.permute_block)       6 bytes
        -> Reed-Solomon over GF(2^8), 26 parity bytes (reedsolo)          32 bytes
        -> bits, most significant first                                  256 bits
        -> antipodal symbols: bit 0 -> +1, bit 1 -> -1                    (256,) int8

The keyed permutation makes the codewords of any two recipients look like independent
random sequences, so the mark of one recipient correlates with another recipient's codeword
no more than chance (this is what keeps an innocent recipient's p-value honest). The
Reed-Solomon code corrects up to 13 wrong bytes, or 26 erased ones, and lets a leak be decoded
to a recipient number without any list of recipients; the CRC rejects a decode that lands
on a wrong codeword. Reed & Solomon, J. SIAM 8(2), 1960, doi:10.1137/0108018.
"""

from __future__ import annotations

import binascii

import numpy as np
import reedsolo

from .keys import SiteKey

__all__ = ["N_BITS", "MAX_RECIPIENT", "encode", "codeword_table", "decode"]

N_PARITY = 26
N_BITS = 8 * (6 + N_PARITY)  # 256 coded bits
MAX_RECIPIENT = 2**32 - 1
_RS = reedsolo.RSCodec(N_PARITY)


def _block(number: int) -> bytes:
    if not 0 <= number <= MAX_RECIPIENT:
        raise ValueError(f"recipient number must be in 0..{MAX_RECIPIENT}, got {number}")
    body = number.to_bytes(4, "big")
    return body + binascii.crc_hqx(body, 0xFFFF).to_bytes(2, "big")


def encode(number: int, key: SiteKey) -> np.ndarray:
    """Codeword of one recipient.

    Parameters
    ----------
    number : int
        Recipient number, 0 .. 2**32 - 1.
    key : SiteKey

    Returns
    -------
    (256,) int8 array of +1/-1

    Raises
    ------
    ValueError
        ``number`` out of range.
    """
    coded = bytes(_RS.encode(key.permute_block(_block(number))))
    bits = np.unpackbits(np.frombuffer(coded, dtype=np.uint8))
    return (1 - 2 * bits.astype(np.int8)).astype(np.int8)


def codeword_table(numbers, key: SiteKey) -> np.ndarray:
    """Codewords of many recipients: (N, 256) int8 of +1/-1, rows in the order of ``numbers``."""
    numbers = list(numbers)
    if not numbers:
        return np.zeros((0, N_BITS), dtype=np.int8)
    return np.stack([encode(n, key) for n in numbers])


def decode(soft: np.ndarray, key: SiteKey) -> int | None:
    """Decode soft bits to a recipient number, or ``None`` when no codeword passes the CRC.

    Hard decisions are decoded first; then the least reliable bytes (smallest summed
    ``|soft|``) are declared erased, 8, 16 and 26 of them, and decoding is retried
    (errors-and-erasures decoding). The first result whose CRC checks is returned.

    Parameters
    ----------
    soft : (256,) float array
        Positive values vote for bit 0 (+1), negative for bit 1 (-1).
    key : SiteKey

    Returns
    -------
    int or None
        The recipient number. A ``None`` is the answer "no valid payload", never a guess.
        A number returned here is not yet evidence: the caller must test its codeword's
        correlation (see :mod:`watermark.stats`).
    """
    soft = np.asarray(soft, dtype=np.float64).reshape(N_BITS)
    hard = np.packbits((soft < 0).astype(np.uint8)).tobytes()
    reliability = np.abs(soft).reshape(-1, 8).sum(axis=1)
    order = [int(i) for i in np.argsort(reliability)]
    for n_erased in (0, 8, 16, N_PARITY):
        try:
            message = _RS.decode(bytearray(hard), erase_pos=order[:n_erased] or None)[0]
        except reedsolo.ReedSolomonError:
            continue
        block = key.permute_block(bytes(message), inverse=True)
        body, crc = block[:4], block[4:]
        if binascii.crc_hqx(body, 0xFFFF).to_bytes(2, "big") == crc:
            return int.from_bytes(body, "big")
    return None
