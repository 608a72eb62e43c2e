"""Reference normalisation layers: BVLC `src/caffe/layers/batch_norm_layer.cpp` (global statistics),
`src/caffe/layers/scale_layer.cpp` (with `bias_layer.cpp` for ``bias_term``) and `src/caffe/layers/mvn_layer.cpp`.
"""

from __future__ import annotations

import math

import numpy as np

from ._common import as_f64


def batch_norm(
    x: np.ndarray, *, mean_sum: np.ndarray, var_sum: np.ndarray, scale_factor: float, eps: float = 1e-5
) -> np.ndarray:
    """Caffe ``BatchNorm`` forward with ``use_global_stats`` (the TEST-phase default).

    The three blobs are stored raw: ``factor = 0 if scale_factor == 0 else 1 / scale_factor``,
    ``mean = mean_sum * factor``, ``var = var_sum * factor``, ``y = (x - mean) / sqrt(var + eps)`` per channel
    (axis 1; a 1-D input is one channel). No affine part: that is the following ``Scale`` layer.
    """
    x = as_f64(x)
    channels = 1 if x.ndim == 1 else x.shape[1]
    mean_sum, var_sum = as_f64(mean_sum).reshape(-1), as_f64(var_sum).reshape(-1)
    if mean_sum.shape != (channels,) or var_sum.shape != (channels,):
        raise ValueError(f"statistics {mean_sum.shape}, {var_sum.shape} do not match {channels} channels")
    factor = 0.0 if scale_factor == 0 else 1.0 / float(scale_factor)
    view = (channels,) + (1,) * (x.ndim - 2) if x.ndim > 1 else (1,)
    mean = (mean_sum * factor).reshape(view)
    var = (var_sum * factor).reshape(view)
    return (x - mean) / np.sqrt(var + eps)


def scale(x: np.ndarray, s: np.ndarray, *, bias: np.ndarray | None = None, axis: int = 1) -> np.ndarray:
    """Caffe ``Scale`` forward: ``y = x * s (+ bias)``, ``s`` broadcast along ``x.shape[axis:axis + s.ndim]``.

    ``s.shape`` must equal that slice of ``x.shape`` (``bias`` has the same shape as ``s``). A 0-d ``s`` scales
    everything (Caffe sets the axis to 0 for a scalar second bottom).
    """
    x, s = as_f64(x), as_f64(s)
    if s.ndim == 0:
        axis = 0
    axis = axis + x.ndim if axis < 0 else axis
    if not 0 <= axis <= x.ndim or x.shape[axis : axis + s.ndim] != s.shape:
        raise ValueError(f"scale of shape {s.shape} does not match input {x.shape} starting at axis {axis}")
    view = (1,) * axis + s.shape + (1,) * (x.ndim - axis - s.ndim)
    y = x * s.reshape(view)
    if bias is not None:
        bias = as_f64(bias)
        if bias.shape != s.shape:
            raise ValueError(f"bias shape {bias.shape} differs from scale shape {s.shape}")
        y = y + bias.reshape(view)
    return y


def mvn(
    x: np.ndarray, *, normalize_variance: bool = True, across_channels: bool = False, eps: float = 1e-9
) -> np.ndarray:
    """Caffe ``MVN`` forward on (N, C, ...) input.

    Statistics are taken per sample over (C, H, W) if ``across_channels`` else per (sample, channel) over (H, W):
    ``y = x - E[x]``; with ``normalize_variance``, ``y = (x - E[x]) / (sqrt(E[(x - E[x])**2]) + eps)`` -- eps is
    added to the standard deviation, not to the variance (the two-pass variance of BVLC since 2015-10).
    """
    x = as_f64(x)
    if x.ndim < 2:
        raise ValueError(f"mvn expects (N, C, ...) input, got shape {x.shape}")
    rows = x.shape[0] if across_channels else x.shape[0] * x.shape[1]
    flat = x.reshape(rows, math.prod(x.shape) // rows if rows else 0)
    centred = flat - flat.mean(axis=1, keepdims=True)
    if normalize_variance:
        std = np.sqrt((centred * centred).mean(axis=1, keepdims=True))
        centred = centred / (std + eps)
    return centred.reshape(x.shape)
