"""Shared helpers for the float64 reference kernels.

Caffe stores activations in float32; the oracles compute in float64 but reproduce the float32 *constants* Caffe uses
(``-FLT_MAX`` as the max-pooling identity) and, where Caffe's integer decisions depend on float32 arithmetic
(ROI corner rounding, bin edges), the float32 arithmetic itself.
"""

from __future__ import annotations

import math

import numpy as np

# C's FLT_MAX negated, as a float64 value: Caffe initialises MAX pooling / ROI pooling outputs with it.
NEG_FLT_MAX: float = float(np.finfo(np.float32).min)


def as_f64(x: object) -> np.ndarray:
    """Return ``x`` as a float64 ndarray (a copy only when needed)."""
    return np.asarray(x, dtype=np.float64)


def pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    """Normalise an ``int`` or ``(h, w)`` pair; Caffe's repeated spatial fields allow both spellings."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    items = tuple(int(v) for v in value)
    if len(items) != 2:
        raise ValueError(f"{name} must be an int or an (h, w) pair, got {value!r}")
    return items[0], items[1]


def c_round(value: float) -> int:
    """C ``round``: halves go away from zero (numpy/torch/ONNX round halves to even).

    ``value`` is a float32 result converted to float64; the addition of 0.5 is exact in float64 for such values, so
    there is no double rounding.
    """
    v = float(value)
    magnitude = math.floor(abs(v) + 0.5)
    return int(magnitude) if v >= 0 else -int(magnitude)
