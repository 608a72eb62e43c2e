"""Reference element-wise layers: BVLC `src/caffe/layers/eltwise_layer.cpp` and `src/caffe/layers/power_layer.cpp`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._common import as_f64

_OPERATIONS = ("SUM", "PROD", "MAX")


def eltwise(xs: Sequence[np.ndarray], *, operation: str = "SUM", coeff: Sequence[float] | None = None) -> np.ndarray:
    """Caffe ``Eltwise`` forward (``EltwiseLayer::Forward_cpu``) over two or more same-shaped bottoms.

    * SUM: ``y = sum_i coeff[i] * x_i`` (coeff defaults to all ones; one coefficient per bottom).
    * PROD: ``y = x_0 * x_1 * ...``; Caffe refuses coefficients here.
    * MAX: ``y = x_0 if x_0 > x_1 else x_1``, then ``y = x_i if x_i > y else y`` for later bottoms, which fixes how
      NaN propagates. Caffe accepts coefficients with MAX and ignores them; so does this oracle.
    """
    if operation not in _OPERATIONS:
        raise ValueError(f"operation must be one of {_OPERATIONS}, got {operation!r}")
    arrays = [as_f64(x) for x in xs]
    if len(arrays) < 2:
        raise ValueError(f"Caffe Eltwise needs at least 2 bottoms, got {len(arrays)}")
    for i, a in enumerate(arrays[1:], start=1):
        if a.shape != arrays[0].shape:
            raise ValueError(f"bottom {i} has shape {a.shape}, bottom 0 has {arrays[0].shape}")
    if coeff is not None and len(coeff) not in (0, len(arrays)):
        raise ValueError(f"Eltwise takes one coefficient per bottom: {len(coeff)} for {len(arrays)} bottoms")
    if operation == "PROD" and coeff:
        raise ValueError("Caffe Eltwise only takes coefficients for summation")

    if operation == "SUM":
        weights = list(coeff) if coeff else [1.0] * len(arrays)
        y = np.zeros_like(arrays[0])
        for w, a in zip(weights, arrays, strict=True):
            y = y + float(w) * a
        return y
    if operation == "PROD":
        y = arrays[0] * arrays[1]
        for a in arrays[2:]:
            y = y * a
        return y
    y = np.where(arrays[0] > arrays[1], arrays[0], arrays[1])
    for a in arrays[2:]:
        y = np.where(a > y, a, y)
    return y


def power(x: np.ndarray, *, power: float = 1.0, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """Caffe ``Power`` forward: ``y = (shift + scale * x) ** power``.

    Like ``PowerLayer::Forward_cpu``, when ``power * scale == 0`` the input is ignored and every output is
    ``1`` (power 0) or ``shift ** power`` (scale 0), even for non-finite inputs. Negative bases with fractional
    powers give NaN, as C ``pow`` does.
    """
    x = as_f64(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        if power * scale == 0:
            value = 1.0 if power == 0 else float(np.float64(shift) ** power)
            return np.full_like(x, value)
        return (shift + scale * x) ** power
