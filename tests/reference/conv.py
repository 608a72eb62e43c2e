"""Reference 2-D convolution and deconvolution, following BVLC `src/caffe/layers/conv_layer.cpp`,
`src/caffe/layers/deconv_layer.cpp` and `src/caffe/layers/base_conv_layer.cpp` (weight layout, groups).

Written as direct loops over output (convolution) or input (deconvolution) pixels, with a tensor contraction over
the kernel window, so that they do not share code or conventions with an im2col/GEMM implementation.
"""

from __future__ import annotations

import numpy as np

from ._common import as_f64, pair


def _check_common(x: np.ndarray, w: np.ndarray, stride: tuple[int, int], dilation: tuple[int, int], group: int) -> None:
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"expected 4-D input and weight, got {x.shape} and {w.shape}")
    if min(stride) <= 0 or min(dilation) <= 0 or group <= 0:
        raise ValueError(f"stride, dilation and group must be positive: {stride}, {dilation}, {group}")


def convolution(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    stride: tuple[int, int] | int = (1, 1),
    pad: tuple[int, int] | int = (0, 0),
    dilation: tuple[int, int] | int = (1, 1),
    group: int = 1,
) -> np.ndarray:
    """Caffe ``Convolution`` forward (cross-correlation, zero padding).

    Shapes: ``x`` (N, C_in, H, W), ``w`` (C_out, C_in/group, kh, kw), ``b`` (C_out,) -> (N, C_out, H_out, W_out),
    ``H_out = (H + 2p - (d(kh-1) + 1)) // s + 1``.

    ``y[n, o, i, j] = b[o] + sum_{c, u, v} x_pad[n, g*C_in/group + c, i*s + d*u, j*s + d*v] * w[o, c, u, v]`` where
    ``g = o // (C_out/group)``. A kernel extent larger than the padded input is refused (Caffe's C integer division
    would silently round a negative size up to one output).
    """
    x, w = as_f64(x), as_f64(w)
    (sh, sw), (p_h, p_w), (dh, dw) = pair(stride, "stride"), pair(pad, "pad"), pair(dilation, "dilation")
    _check_common(x, w, (sh, sw), (dh, dw), group)
    n, c_in, height, width = x.shape
    c_out, c_per_group, kh, kw = w.shape
    if c_in % group or c_out % group or c_in // group != c_per_group:
        raise ValueError(f"weight {w.shape} does not fit {c_in} input channels with group {group}")
    ext_h, ext_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if ext_h > height + 2 * p_h or ext_w > width + 2 * p_w:
        raise ValueError(f"kernel extent ({ext_h}, {ext_w}) exceeds padded input ({height}, {width}) + 2*{(p_h, p_w)}")
    out_h = (height + 2 * p_h - ext_h) // sh + 1
    out_w = (width + 2 * p_w - ext_w) // sw + 1

    padded = np.zeros((n, c_in, height + 2 * p_h, width + 2 * p_w), dtype=np.float64)
    padded[:, :, p_h : p_h + height, p_w : p_w + width] = x
    out_per_group = c_out // group
    y = np.empty((n, c_out, out_h, out_w), dtype=np.float64)
    for g in range(group):
        x_g = padded[:, g * c_per_group : (g + 1) * c_per_group]
        w_g = w[g * out_per_group : (g + 1) * out_per_group]
        for i in range(out_h):
            for j in range(out_w):
                patch = x_g[:, :, i * sh : i * sh + ext_h : dh, j * sw : j * sw + ext_w : dw]
                y[:, g * out_per_group : (g + 1) * out_per_group, i, j] = np.tensordot(
                    patch, w_g, axes=([1, 2, 3], [1, 2, 3])
                )
    if b is not None:
        y += as_f64(b).reshape(1, c_out, 1, 1)
    return y


def deconvolution(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    stride: tuple[int, int] | int = (1, 1),
    pad: tuple[int, int] | int = (0, 0),
    dilation: tuple[int, int] | int = (1, 1),
    group: int = 1,
) -> np.ndarray:
    """Caffe ``Deconvolution`` forward (the backward-data pass of convolution).

    Shapes: ``x`` (N, C_in, H, W), ``w`` (C_in, C_out/group, kh, kw) (Caffe's reversed blob layout),
    ``b`` (C_out,) -> (N, C_out, H_out, W_out) with ``H_out = s*(H - 1) + d*(kh - 1) + 1 - 2p``.

    Scatter form: every input pixel ``x[n, c, i, j]`` adds ``x[n, c, i, j] * w[c, o, u, v]`` to output
    ``(n, g*C_out/group + o, s*i - p + d*u, s*j - p + d*v)`` (``g = c // (C_in/group)``); contributions landing
    outside ``[0, H_out) x [0, W_out)`` are dropped, as col2im drops them.
    """
    x, w = as_f64(x), as_f64(w)
    (sh, sw), (p_h, p_w), (dh, dw) = pair(stride, "stride"), pair(pad, "pad"), pair(dilation, "dilation")
    _check_common(x, w, (sh, sw), (dh, dw), group)
    n, c_in, height, width = x.shape
    if w.shape[0] != c_in or c_in % group:
        raise ValueError(f"deconvolution weight {w.shape} needs first dim {c_in} divisible by group {group}")
    out_per_group, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    c_out = out_per_group * group
    ext_h, ext_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    full_h, full_w = sh * (height - 1) + ext_h, sw * (width - 1) + ext_w
    out_h, out_w = full_h - 2 * p_h, full_w - 2 * p_w
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"deconvolution output size ({out_h}, {out_w}) is not positive")

    # Accumulate on the unpadded canvas (output coordinate + pad), then cut the pad away.
    canvas = np.zeros((n, c_out, full_h, full_w), dtype=np.float64)
    in_per_group = c_in // group
    for g in range(group):
        x_g = x[:, g * in_per_group : (g + 1) * in_per_group]
        w_g = w[g * in_per_group : (g + 1) * in_per_group]
        out_slice = slice(g * out_per_group, (g + 1) * out_per_group)
        for i in range(height):
            for j in range(width):
                contribution = np.tensordot(x_g[:, :, i, j], w_g, axes=([1], [0]))  # (N, C_out/g, kh, kw)
                canvas[:, out_slice, i * sh : i * sh + ext_h : dh, j * sw : j * sw + ext_w : dw] += contribution
    y = canvas[:, :, p_h : p_h + out_h, p_w : p_w + out_w].copy()
    if b is not None:
        y += as_f64(b).reshape(1, c_out, 1, 1)
    return y
