"""Convolution and Deconvolution, as BVLC `src/caffe/layers/base_conv_layer.cpp`, `conv_layer.cpp` and
`deconv_layer.cpp` define them.

Caffe's blobs already have PyTorch's layouts: Convolution (C_out, C_in/group, kh, kw) = `nn.Conv2d.weight`;
Deconvolution reverses the roles, (C_in, C_out/group, kh, kw) = `nn.ConvTranspose2d.weight`. Output sizes agree too:
`(size + 2p - (d(k-1)+1)) // s + 1` and `s(size-1) + d(k-1) + 1 - 2p` (output_padding 0). A layer with several
bottoms applies the same weights to each (Caffe requires as many tops, all bottoms of one shape). `engine` only
picks an implementation of the same formula and is not read.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from caffe_import.errors import CaffeImportError
from caffe_import.graph import Layer
from caffe_import.layers.registry import register
from caffe_import.proto import caffe_pb2

Pair = tuple[int, int]


def _spatial(
    p: caffe_pb2.ConvolutionParameter, name: str, hw: str | None, default: int | None, layer: Layer
) -> Pair:
    """Repeated field `name` (one value, or one per dim) or its `hw`_h/`hw`_w pair, as BaseConvolutionLayer reads it.

    Like Caffe, an unset member of the `_h`/`_w` pair reads as 0 (refused later for kernel and stride).
    """
    values: Sequence[int] = getattr(p, name)
    if hw is not None and (p.HasField(f"{hw}_h") or p.HasField(f"{hw}_w")):
        if len(values):
            raise CaffeImportError(f"{layer.where()}: convolution_param sets both {name} and {hw}_h/{hw}_w; Caffe "
                                   "accepts one or the other.")
        return getattr(p, f"{hw}_h"), getattr(p, f"{hw}_w")
    if len(values) == 0:
        if default is None:
            raise CaffeImportError(f"{layer.where()}: convolution_param needs kernel_size (or kernel_h and kernel_w).")
        return default, default
    if len(values) in (1, 2):
        return values[0], values[-1]
    raise CaffeImportError(f"{layer.where()}: convolution_param.{name} has {len(values)} values for 2 spatial dims "
                           "(N-D convolution is not supported).")


class _MultiConv2d(nn.Conv2d):
    """Conv2d applied to each of several bottoms with one set of weights (Caffe's multi-bottom convolution)."""

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        forward_one = super().forward
        return tuple(forward_one(x) for x in xs)


class _MultiConvTranspose2d(nn.ConvTranspose2d):
    """ConvTranspose2d applied to each of several bottoms with one set of weights."""

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        forward_one = super().forward
        return tuple(forward_one(x) for x in xs)


def _convert(layer: Layer, transposed: bool) -> nn.Module:
    p = layer.param.convolution_param
    where = layer.where()
    if p.axis != 1:
        raise CaffeImportError(f"{where}: convolution_param.axis = {p.axis} is not supported (only the default 1, "
                               "channels in dim 1 of an NCHW blob).")
    if p.force_nd_im2col:
        raise CaffeImportError(f"{where}: convolution_param.force_nd_im2col = true is not supported (N-D im2col).")
    if not layer.bottoms or len(layer.bottoms) != len(layer.tops):
        raise CaffeImportError(f"{where}: needs as many tops as bottoms, got {len(layer.bottoms)} bottoms and "
                               f"{len(layer.tops)} tops.")
    shape = layer.in_shapes[0]
    if len(shape) != 4:
        raise CaffeImportError(f"{where}: only 2-D convolution on 4-D (N, C, H, W) bottoms is supported, got a bottom "
                               f"of shape {shape} (N-D convolution is not).")
    if any(tuple(s) != tuple(shape) for s in layer.in_shapes):
        raise CaffeImportError(f"{where}: all bottoms must have one shape (Caffe CHECK), got {list(layer.in_shapes)}.")
    kernel = _spatial(p, "kernel_size", "kernel", None, layer)
    stride, pad = _spatial(p, "stride", "stride", 1, layer), _spatial(p, "pad", "pad", 0, layer)
    dilation = _spatial(p, "dilation", None, 1, layer)
    if min(kernel) <= 0 or min(stride) <= 0 or min(dilation) <= 0:
        raise CaffeImportError(f"{where}: kernel {kernel}, stride {stride} and dilation {dilation} must be positive.")
    channels, group, num_output = shape[1], p.group, p.num_output
    if num_output <= 0 or group <= 0 or channels % group or num_output % group:
        raise CaffeImportError(f"{where}: num_output {num_output} and input channels {channels} must be positive "
                               f"multiples of group {group}.")
    single = len(layer.bottoms) == 1
    cls = (nn.ConvTranspose2d if single else _MultiConvTranspose2d) if transposed else \
        (nn.Conv2d if single else _MultiConv2d)
    conv = cls(channels, num_output, kernel, stride=stride, padding=pad, dilation=dilation, groups=group,
               bias=p.bias_term)
    conv.caffe_blobs = ("weight", "bias") if p.bias_term else ("weight",)
    conv.caffe_fillers = (p.weight_filler, p.bias_filler)
    return conv


@register("Convolution")
def convolution(layer: Layer) -> nn.Module:
    return _convert(layer, transposed=False)


@register("Deconvolution")
def deconvolution(layer: Layer) -> nn.Module:
    return _convert(layer, transposed=True)
