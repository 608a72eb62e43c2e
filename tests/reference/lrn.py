"""Reference local response normalisation, following BVLC `src/caffe/layers/lrn_layer.cpp`.

ACROSS_CHANNELS follows ``CrossChannelForward_cpu``; WITHIN_CHANNEL follows the internal layer chain that
``LRNLayer::LayerSetUp`` builds (split -> Power -> AVE Pooling -> Power -> Eltwise PROD), here composed from the
sibling reference kernels so that its padding/divisor behaviour is exactly the pooling oracle's.
"""

from __future__ import annotations

import numpy as np

from ._common import as_f64
from .elementwise import eltwise, power
from .pooling import pooling


def _check_size(size: int) -> None:
    if size <= 0 or size % 2 != 1:
        raise ValueError(f"Caffe LRN only supports odd positive local_size, got {size}")


def lrn_across(x: np.ndarray, *, size: int, alpha: float, beta: float, k: float = 1.0) -> np.ndarray:
    """Caffe LRN, ACROSS_CHANNELS, on (N, C, ...) input.

    ``scale[c] = k + alpha/size * sum_{c' = c-(size-1)/2}^{c+(size-1)/2} x[c']**2`` (channels outside ``[0, C)``
    contribute nothing), ``y = x * scale**(-beta)``. ``size`` must be odd (Caffe CHECK).
    """
    _check_size(size)
    x = as_f64(x)
    half = (size - 1) // 2
    channels = x.shape[1]
    squares = x * x
    scale = np.empty_like(x)
    for c in range(channels):
        lo, hi = max(c - half, 0), min(c + half + 1, channels)
        scale[:, c] = k + alpha / size * squares[:, lo:hi].sum(axis=1)
    return x * scale ** (-beta)


def lrn_within(x: np.ndarray, *, size: int, alpha: float, beta: float, k: float = 1.0) -> np.ndarray:
    """Caffe LRN, WITHIN_CHANNEL, on (N, C, H, W) input.

    ``y = x * (1 + alpha * avg)**(-beta)`` with ``avg = AVE-pool(x**2, kernel=size, stride=1, pad=(size-1)/2)``,
    whose divisor is ``size*size`` everywhere (the padded extent always fits the window at stride 1).
    ``k`` is accepted because the proto carries it, and ignored: Caffe hard-codes the shift of the second Power
    layer to 1.
    """
    del k  # Caffe's WITHIN_CHANNEL chain never reads lrn_param.k.
    _check_size(size)
    x = as_f64(x)
    half = (size - 1) // 2
    squared = power(x, power=2.0)
    averaged = pooling(squared, kernel=(size, size), stride=(1, 1), pad=(half, half), method="AVE")
    factor = power(averaged, power=-beta, scale=alpha, shift=1.0)
    return eltwise([x, factor], operation="PROD")
