"""Reference fully connected layer, following BVLC `src/caffe/layers/inner_product_layer.cpp`."""

from __future__ import annotations

import math

import numpy as np

from ._common import as_f64


def inner_product(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *, axis: int = 1, transpose: bool = False
) -> np.ndarray:
    """Caffe ``InnerProduct`` forward.

    The dims from ``axis`` on are flattened in C order (NCHW -> C*H*W = K), giving ``X`` (M, K) with ``M`` the
    product of the leading dims. ``w`` is (N, K), or (K, N) when ``transpose``; ``y = X @ W^T + b``
    (``X @ W + b`` when transposed), reshaped to ``x.shape[:axis] + (N,)``.
    """
    x, w = as_f64(x), as_f64(w)
    axis = axis + x.ndim if axis < 0 else axis
    if not 0 <= axis < x.ndim:
        raise ValueError(f"axis {axis} out of range for input of rank {x.ndim}")
    lead = x.shape[:axis]
    k = math.prod(x.shape[axis:])
    matrix = x.reshape(math.prod(lead), k)
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D, got {w.shape}")
    weight = w if transpose else w.T  # (K, N) either way
    if weight.shape[0] != k:
        raise ValueError(f"weight {w.shape} (transpose={transpose}) does not match K={k} flattened from {x.shape}")
    y = matrix @ weight
    if b is not None:
        y = y + as_f64(b).reshape(1, -1)
    return y.reshape(lead + (weight.shape[1],))
