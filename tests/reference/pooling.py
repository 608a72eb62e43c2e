"""Reference MAX/AVE pooling, following BVLC `src/caffe/layers/pooling_layer.cpp` (Reshape and Forward_cpu).

Caffe's pooling differs from PyTorch/ONNX in three places that these oracles pin down:
the output size (ceil by default, and a last window starting in the padding is dropped only when some pad is
non-zero), the MAX window end computed from the *unclipped* start, and the AVE divisor that counts padding but not
the ceil overhang.
"""

from __future__ import annotations

import math

import numpy as np

from ._common import NEG_FLT_MAX, as_f64, pair

_METHODS = ("MAX", "AVE")
_ROUND_MODES = ("CEIL", "FLOOR")


def pooling_output_shape(
    height: int,
    width: int,
    *,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pad: tuple[int, int],
    round_mode: str = "CEIL",
) -> tuple[int, int]:
    """Caffe's pooled ``(H_out, W_out)`` (``PoolingLayer::Reshape``).

    ``out = ceil|floor(float(size + 2*pad - kernel) / stride) + 1``; then, only if ``pad_h || pad_w`` is non-zero,
    each dimension separately loses its last window when ``(out - 1) * stride >= size + pad`` (that window would start
    in the padding). With no padding at all nothing is dropped, so e.g. H=4, k=1, s=2 gives 3 outputs, the last one
    over an empty window.
    """
    if round_mode not in _ROUND_MODES:
        raise ValueError(f"round_mode must be one of {_ROUND_MODES}, got {round_mode!r}")
    rounder = math.ceil if round_mode == "CEIL" else math.floor
    sizes = (height, width)
    outs = []
    for size, k, s, p in zip(sizes, kernel, stride, pad, strict=True):
        # Caffe divides in float32 before rounding; exact for the integer sizes met in practice, kept for fidelity.
        quotient = np.float32(size + 2 * p - k) / np.float32(s)
        outs.append(int(rounder(float(quotient))) + 1)
    if pad[0] or pad[1]:
        for i, (size, s, p) in enumerate(zip(sizes, stride, pad, strict=True)):
            if (outs[i] - 1) * s >= size + p:
                outs[i] -= 1
    if outs[0] < 0 or outs[1] < 0:
        raise ValueError(f"negative pooled size {tuple(outs)} for input {sizes}, kernel {kernel}, pad {pad}")
    return outs[0], outs[1]


def pooling(
    x: np.ndarray,
    *,
    kernel: tuple[int, int] | int | None = None,
    stride: tuple[int, int] | int = (1, 1),
    pad: tuple[int, int] | int = (0, 0),
    method: str = "MAX",
    round_mode: str = "CEIL",
    global_pooling: bool = False,
) -> np.ndarray:
    """Caffe ``Pooling`` forward on an NCHW array, in float64.

    Shapes: ``x`` (N, C, H, W) -> (N, C, H_out, W_out) with ``pooling_output_shape``.

    For output ``(ph, pw)`` (rows shown; columns are the same with ``w``):

    * MAX: ``hstart = ph*s - p``; ``hend = min(hstart + k, H)`` (from the unclipped start); ``hstart = max(hstart,
      0)``; ``y = max(-FLT_MAX, x[hstart:hend, wstart:wend])``. An empty window (possible when k < s and pad = 0)
      yields ``-FLT_MAX`` = -3.4028234663852886e+38. NaN inputs never win (Caffe compares with ``>``).
    * AVE: ``hstart = ph*s - p``; ``hend = min(hstart + k, H + p)``; ``pool_size = (hend - hstart)*(wend - wstart)``
      *before* clipping to ``[0, H)``; ``y = sum(x[clipped window]) / pool_size``. For the degenerate empty windows
      the same formula gives ``0 / pool_size``: ``nan`` when ``pool_size == 0`` and ``-0.0`` when it is negative
      (window starting past ``H + p``), reproduced as is.
    * ``global_pooling``: kernel = (H, W); Caffe requires pad 0 and stride 1.

    Raises ``ValueError`` where Caffe CHECK-fails: ``pad >= kernel`` with non-zero pad, global pooling with pad or
    stride, non-positive kernel/stride, a non-4-D input, or an unknown method (STOCHASTIC has no deterministic
    forward to reproduce).
    """
    x = as_f64(x)
    if x.ndim != 4:
        raise ValueError(f"pooling expects (N, C, H, W) input, got shape {x.shape}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    n, c, height, width = x.shape
    stride_hw, pad_hw = pair(stride, "stride"), pair(pad, "pad")
    if global_pooling:
        if pad_hw != (0, 0) or stride_hw != (1, 1):
            raise ValueError(f"global pooling requires pad 0 and stride 1, got pad {pad_hw}, stride {stride_hw}")
        kernel_hw = (height, width)
    else:
        if kernel is None:
            raise ValueError("kernel is required unless global_pooling is set")
        kernel_hw = pair(kernel, "kernel")
    if min(kernel_hw) <= 0 or min(stride_hw) <= 0 or min(pad_hw) < 0:
        raise ValueError(f"kernel and stride must be positive and pad non-negative: {kernel_hw}, {stride_hw}, {pad_hw}")
    if (pad_hw[0] or pad_hw[1]) and (pad_hw[0] >= kernel_hw[0] or pad_hw[1] >= kernel_hw[1]):
        raise ValueError(f"Caffe requires pad < kernel, got pad {pad_hw} with kernel {kernel_hw}")

    out_h, out_w = pooling_output_shape(
        height, width, kernel=kernel_hw, stride=stride_hw, pad=pad_hw, round_mode=round_mode
    )
    (kh, kw), (sh, sw), (p_h, p_w) = kernel_hw, stride_hw, pad_hw
    y = np.empty((n, c, out_h, out_w), dtype=np.float64)
    for ph in range(out_h):
        for pw in range(out_w):
            hstart, wstart = ph * sh - p_h, pw * sw - p_w
            if method == "MAX":
                hend, wend = min(hstart + kh, height), min(wstart + kw, width)
                hstart, wstart = max(hstart, 0), max(wstart, 0)
                window = x[:, :, hstart : max(hend, hstart), wstart : max(wend, wstart)].reshape(n, c, -1)
                # NaN never passes Caffe's `>` test; -inf loses against the -FLT_MAX initial value as in Caffe.
                window = np.where(np.isnan(window), -np.inf, window)
                y[:, :, ph, pw] = np.max(window, axis=2, initial=NEG_FLT_MAX)
            else:
                hend, wend = min(hstart + kh, height + p_h), min(wstart + kw, width + p_w)
                pool_size = (hend - hstart) * (wend - wstart)
                hstart, wstart = max(hstart, 0), max(wstart, 0)
                hend, wend = min(hend, height), min(wend, width)
                window = x[:, :, hstart : max(hend, hstart), wstart : max(wend, wstart)]
                total = window.sum(axis=(2, 3))
                with np.errstate(divide="ignore", invalid="ignore"):
                    y[:, :, ph, pw] = total / np.float64(pool_size)
    return y
