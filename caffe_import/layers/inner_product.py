"""InnerProduct, as BVLC `src/caffe/layers/inner_product_layer.cpp` defines it.

Caffe flattens every dim from `axis` on (C order, so NCHW -> C*H*W) into K and keeps the dims before it:
(d0, ..., d_{axis-1}, K) -> (d0, ..., d_{axis-1}, N). A 4-D bottom at axis 1 therefore gives (N_batch, N), not
(N_batch, N, 1, 1). `nn.Linear` cannot flatten from an axis nor store the (K, N) blob of `transpose: true`, hence
a small module; its parameters keep Caffe's blob shapes so caffemodels bind without reshaping.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from caffe_import.errors import CaffeImportError
from caffe_import.graph import Layer
from caffe_import.layers.registry import register


class CaffeInnerProduct(nn.Module):
    """y = flatten(x, axis) @ W^T + b, with W of shape (N, K), or y = flatten(x, axis) @ W + b with W (K, N) when
    `transpose` (Caffe's `transpose: true` storage). Shapes: x (..., K-dims) -> x.shape[:axis] + (N,)."""

    caffe_blobs: tuple[str, ...]

    def __init__(self, in_features: int, out_features: int, *, axis: int, transpose: bool, bias: bool) -> None:
        super().__init__()
        self.axis, self.transpose = axis, transpose
        shape = (in_features, out_features) if transpose else (out_features, in_features)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.caffe_blobs = ("weight", "bias") if bias else ("weight",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.t() if self.transpose else self.weight
        return F.linear(x.flatten(self.axis), weight, self.bias)

    def extra_repr(self) -> str:
        return f"weight={tuple(self.weight.shape)}, axis={self.axis}, transpose={self.transpose}, " \
               f"bias={self.bias is not None}"


@register("InnerProduct")
def inner_product(layer: Layer) -> nn.Module:
    p = layer.param.inner_product_param
    where = layer.where()
    if len(layer.bottoms) != 1 or len(layer.tops) != 1:
        raise CaffeImportError(f"{where}: InnerProduct takes one bottom and one top, got {len(layer.bottoms)} and "
                               f"{len(layer.tops)}.")
    shape = layer.in_shapes[0]
    if not -len(shape) <= p.axis < len(shape):
        raise CaffeImportError(f"{where}: inner_product_param.axis = {p.axis} is out of range for a bottom of shape "
                               f"{shape}.")
    axis = p.axis % len(shape)
    if p.num_output <= 0:
        raise CaffeImportError(f"{where}: inner_product_param.num_output must be positive, got {p.num_output}.")
    module = CaffeInnerProduct(math.prod(shape[axis:]), p.num_output, axis=axis, transpose=p.transpose,
                               bias=p.bias_term)
    module.caffe_fillers = (p.weight_filler, p.bias_filler)
    return module
