"""Pooling -> MaxPool / AveragePool / GlobalMaxPool / GlobalAveragePool with Caffe's output size
(`pooling_layer.cpp`: ceil rounding, a last window starting in the padding dropped)."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from caffe_import.errors import CaffeImportError
from caffe_import.graph import Layer
from caffe_import.layers.pooling import caffe_pool_output_size
from caffe_import.onnx.builder import Builder, pair
from caffe_import.onnx.registry import emits

FLT_MAX = float(np.finfo(np.float32).max)


def _pool_settings(layer: Layer, m: nn.Module) -> tuple[str, tuple[int, int], tuple[int, int], tuple[int, int], str]:
    """(method, kernel, stride, pad, round_mode) as the converter resolved them."""
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        method = "MAX" if isinstance(m, nn.MaxPool2d) else "AVE"
        if isinstance(m, nn.MaxPool2d) and pair(m.dilation) != (1, 1):
            raise CaffeImportError(f"{layer.where()}: dilated pooling has no Caffe equivalent.")
        stride = pair(m.stride if m.stride is not None else m.kernel_size)
        return method, pair(m.kernel_size), stride, pair(m.padding), "CEIL" if m.ceil_mode else "FLOOR"
    if hasattr(m, "method") and hasattr(m, "round_mode"):  # CaffePool2d
        return m.method, tuple(m.kernel), tuple(m.stride), tuple(m.pad), m.round_mode
    raise CaffeImportError(f"{layer.where()}: unexpected converted module {type(m).__name__} for ONNX export.")


@emits("Pooling")
def _pooling(b: Builder, layer: Layer, m: nn.Module) -> None:
    """MaxPool / AveragePool(count_include_pad=1) with ceil_mode per round_mode and symmetric pads.

    onnxruntime's ceil-mode output size drops a last window that starts at or past `size + pad`, which is Caffe's
    clip rule for padded layers, and its AVE divisor counts padding but not the ceil overhang, as Caffe does; this
    holds for pad > kernel/2 too. They differ only when a MAX layer has no padding and kernel < stride: Caffe keeps
    a last window lying wholly past the input (output -FLT_MAX). There the input is padded with -FLT_MAX to
    Caffe's implied extent `(out - 1)*stride + kernel` (out from `caffe_pool_output_size`; computed from Shape at
    run time when the spatial size is symbolic) and pooled with floor rounding. (AVE in that geometry is refused by
    the converter when the window is empty, and matches natively otherwise.)
    """
    (x,), (y,) = b.inputs(layer), b.outputs(layer)
    if isinstance(m, (nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)):
        if pair(m.output_size) != (1, 1):
            raise CaffeImportError(f"{layer.where()}: adaptive pooling to {m.output_size} is not global pooling.")
        b.op("GlobalMaxPool" if isinstance(m, nn.AdaptiveMaxPool2d) else "GlobalAveragePool", x, out=y)
        return
    method, kernel, stride, pad, round_mode = _pool_settings(layer, m)
    degenerate = round_mode == "CEIL" and pad == (0, 0) and (kernel[0] < stride[0] or kernel[1] < stride[1])
    if method == "MAX" and degenerate:
        if b.static_spatial:
            size = tuple(layer.in_shapes[0][2:])
            out = caffe_pool_output_size(size, kernel, stride, (0, 0), "CEIL")
            after = b.ints([(o - 1) * s + k - n for o, s, k, n in zip(out, stride, kernel, size)], "pad_after")
        else:
            # The same rule at run time: out - 1 = ceil((n - k) / s) (no clip without padding), so
            # after = (out - 1)*s + k - n, in int64 ops on Shape(x).
            n = b.dims(x, 2, 4)
            k, s = b.ints(kernel, "kernel"), b.ints(stride, "stride")
            steps = b.op("Div", b.op("Add", b.op("Sub", n, k), b.ints([stride[0] - 1, stride[1] - 1], "s_1")), s)
            after = b.op("Sub", b.op("Add", b.op("Mul", steps, s), k), n)
        pads = b.op("Concat", b.ints([0] * 6, "zeros"), after, axis=0)
        padded = b.op("Pad", x, pads, b.const(-FLT_MAX, hint="lowest"), mode="constant")
        b.op("MaxPool", padded, out=y, kernel_shape=list(kernel), strides=list(stride))
        return
    attrs: dict[str, Any] = dict(kernel_shape=list(kernel), strides=list(stride),
                                 pads=[pad[0], pad[1], pad[0], pad[1]], ceil_mode=int(round_mode == "CEIL"))
    if method == "MAX":
        b.op("MaxPool", x, out=y, **attrs)
    else:
        b.op("AveragePool", x, out=y, count_include_pad=1, **attrs)
