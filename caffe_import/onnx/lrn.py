"""LRN -> ONNX LRN (ACROSS_CHANNELS) or its WITHIN_CHANNEL formula in AveragePool / Pow (`lrn_layer.cpp`)."""

from __future__ import annotations

from torch import nn

from caffe_import.errors import CaffeImportError
from caffe_import.graph import Layer
from caffe_import.onnx.builder import Builder
from caffe_import.onnx.registry import emits


@emits("LRN")
def _lrn(b: Builder, layer: Layer, m: nn.Module) -> None:
    """ACROSS_CHANNELS -> ONNX LRN (same formula, bias = Caffe k). WITHIN_CHANNEL ->
    x * (1 + alpha * AveragePool(x^2, size, stride 1, pad (size-1)/2, count_include_pad))^-beta (k unused)."""
    (x,), (y,) = b.inputs(layer), b.outputs(layer)
    if isinstance(m, nn.LocalResponseNorm):
        b.op("LRN", x, out=y, size=int(m.size), alpha=float(m.alpha), beta=float(m.beta), bias=float(m.k))
        return
    if not all(hasattr(m, a) for a in ("size", "alpha", "beta")):
        raise CaffeImportError(f"{layer.where()}: unexpected converted module {type(m).__name__} for ONNX export.")
    p = (m.size - 1) // 2
    mean_sq = b.op("AveragePool", b.op("Mul", x, x), kernel_shape=[m.size, m.size], strides=[1, 1],
                   pads=[p, p, p, p], count_include_pad=1)
    base = b.op("Add", b.op("Mul", mean_sq, b.const(m.alpha, hint="alpha")), b.const(1.0, hint="one"))
    b.op("Mul", x, b.op("Pow", base, b.const(-m.beta, hint="neg_beta")), out=y)
