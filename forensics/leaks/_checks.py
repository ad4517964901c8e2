"""Argument checks shared by the leak simulations, and the display scales.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np



PEAK_8 = 255.0


"""Peak of the 8-bit display scale (white)."""


PEAK_16 = 65535.0


"""Peak of the 16-bit scale used by :func:`export16` and ``bits=16`` rendering."""


def _as_image(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as a 2-D float64 array (no copy when it already is one).

    Callers must treat the result as read-only: it may be the caller's own array.
    """
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"image must be a non-empty 2-D (rows, columns) grey array, "
                         f"got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("image contains NaN or infinite values")
    return arr


def _number(name: str, value, lo: float, hi: float, *, lo_open: bool = False,
            hi_open: bool = False, integer: bool = False) -> float:
    """Check that ``value`` is a real (or integer) number in the stated interval."""
    kind = numbers.Integral if integer else numbers.Real
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    allowed = f"{'an integer' if integer else 'a number'} in {left}{lo:g}, {hi:g}{right}"
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    ok_lo = value > lo if lo_open else value >= lo
    ok_hi = value < hi if hi_open else value <= hi
    if not (ok_lo and ok_hi and math.isfinite(value)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def _choice(name: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _need_rng(rng, who: str) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"{who} is random and needs an explicit numpy.random.Generator "
                         f"(e.g. numpy.random.default_rng(seed)), got {rng!r}")
    return rng
