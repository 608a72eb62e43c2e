"""Reference bilinear filler, following BVLC `include/caffe/filler.hpp` ``BilinearFiller``.

Two versions exist. BVLC master (since commit 888597e6, 2017-10, "Fixed bilinear filler") centres the kernel at
``c = (K - 1) / (2f)``; Caffe 1.0 and older (and forks cut before late 2017) used
``c = (2f - 1 - f % 2) / (2f)``. Both use ``f = ceil(K / 2)`` and agree whenever ``K`` and ``f`` have the same
parity (K = 4, 5, 16, 64, ...) but not otherwise (K = 3, 6, 63, ...), where the legacy kernel is off-centre.
"""

from __future__ import annotations

import math

import numpy as np


def bilinear_filler(shape: tuple[int, int, int, int], *, legacy: bool = False) -> np.ndarray:
    """Weights Caffe's ``bilinear`` filler writes into a (C_out, C_in, K, K) blob (identical for every pair).

    ``f = ceil(K / 2)``; ``c = (K - 1) / (2f)`` (BVLC master) or ``(2f - 1 - f % 2) / (2f)`` with ``legacy``;
    ``w[o, i, y, x] = (1 - |x/f - c|) * (1 - |y/f - c|)``. Caffe requires a 4-D blob with a square kernel.
    """
    if len(shape) != 4:
        raise ValueError(f"bilinear filler needs a 4-D blob shape, got {shape}")
    c_out, c_in, height, width = (int(s) for s in shape)
    if height != width:
        raise ValueError(f"bilinear filler needs a square kernel, got {height}x{width}")
    f = math.ceil(width / 2.0)
    centre = (2 * f - 1 - f % 2) / (2.0 * f) if legacy else (width - 1) / (2.0 * f)
    taps = np.array([1.0 - abs(t / f - centre) for t in range(width)], dtype=np.float64)
    kernel = np.outer(taps, taps)  # rows are y, columns are x
    return np.broadcast_to(kernel, (c_out, c_in, height, width)).copy()
