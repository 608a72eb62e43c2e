"""Softmax, BatchNorm, Scale, Bias and MVN (`softmax_layer.cpp`, `batch_norm_layer.cpp`, `scale_layer.cpp`,
`bias_layer.cpp`, `mvn_layer.cpp`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from caffe_import.graph import Layer
from caffe_import.onnx.builder import Builder
from caffe_import.onnx.registry import emits


@emits("Softmax")
def _softmax(b: Builder, layer: Layer, m: nn.Module) -> None:
    b.op("Softmax", b.inputs(layer)[0], out=b.outputs(layer)[0], axis=int(m.dim))


@emits("BatchNorm")
def _batch_norm(b: Builder, layer: Layer, m: nn.Module) -> None:
    """Global statistics: mean = mean_sum * f, var = var_sum * f with f = 0 if s == 0 else 1/s (float32, as the
    module computes them), then BatchNormalization with scale 1 and bias 0. Batch statistics (an explicit
    `use_global_stats: false`): ReduceMean over all axes but 1."""
    (x,), (y,) = b.inputs(layer), b.outputs(layer)
    rank = len(layer.in_shapes[0])
    if m.use_global_stats is False:
        axes = [0] + list(range(2, rank))
        centred = b.op("Sub", x, b.reduce_mean(x, axes))
        var = b.reduce_mean(b.op("Mul", centred, centred), axes)
        b.op("Div", centred, b.op("Sqrt", b.op("Add", var, b.const(m.eps, hint="eps"))), out=y)
        return
    blobs = [getattr(m, a).detach().to("cpu", torch.float32).numpy() for a in m.caffe_blobs]
    s = np.float32(blobs[2].reshape(-1)[0])
    factor = np.float32(0.0) if s == 0 else np.float32(1.0) / s
    mean, var = (blobs[0] * factor).astype(np.float32), (blobs[1] * factor).astype(np.float32)
    channels = mean.shape[0]
    b.op("BatchNormalization", x, b.const(np.ones(channels), hint="ones"), b.const(np.zeros(channels), hint="zeros"),
         b.derived("mean", mean), b.derived("var", var), out=y, epsilon=float(m.eps))


def _affine_view(rank: int, axis: int, blob_rank: int, blob_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The blob's shape padded with trailing 1s so that numpy broadcasting aligns it at `axis`."""
    return tuple(blob_shape) + (1,) * (rank - axis - blob_rank)


def _affine_operand(b: Builder, layer: Layer, m: nn.Module, attr: str, bottom: str | None, rank: int) -> str:
    """A learned blob (initializer) or a second bottom (Unsqueezed at run time), viewed for broadcasting."""
    if bottom is None:
        blob = getattr(m, attr)
        axis = 0 if blob.dim() == 0 else m.axis
        return b.weight(m, attr, _affine_view(rank, axis, blob.dim(), tuple(blob.shape)))
    blob_rank = len(layer.in_shapes[1])
    trailing = rank - m.axis - blob_rank if blob_rank else 0
    if trailing <= 0:
        return bottom
    return b.op("Unsqueeze", bottom, b.ints(range(blob_rank, blob_rank + trailing), "axes"))


@emits("Scale")
def _scale(b: Builder, layer: Layer, m: nn.Module) -> None:
    """y = x * s (+ bias), s broadcast along x.shape[axis : axis + s.dim()] (a scalar s uses axis 0)."""
    xs, (y,) = b.inputs(layer), b.outputs(layer)
    rank = len(layer.in_shapes[0])
    s = _affine_operand(b, layer, m, "weight", xs[1] if len(xs) > 1 else None, rank)
    if "bias" not in m.caffe_blobs:
        b.op("Mul", xs[0], s, out=y)
        return
    scalar = (m.weight.dim() == 0) if len(xs) == 1 else len(layer.in_shapes[1]) == 0
    bias_axis = 0 if scalar else m.axis
    bias = b.weight(m, "bias", _affine_view(rank, bias_axis, m.bias.dim(), tuple(m.bias.shape)))
    b.op("Add", b.op("Mul", xs[0], s), bias, out=y)


@emits("Bias")
def _bias(b: Builder, layer: Layer, m: nn.Module) -> None:
    xs, (y,) = b.inputs(layer), b.outputs(layer)
    rank = len(layer.in_shapes[0])
    b.op("Add", xs[0], _affine_operand(b, layer, m, "bias", xs[1] if len(xs) > 1 else None, rank), out=y)


@emits("MVN")
def _mvn(b: Builder, layer: Layer, m: nn.Module) -> None:
    """Per row (a sample, or a sample's channel): y = x - mean, then / (sqrt(E[y^2]) + eps) (eps on the std)."""
    (x,), (y,) = b.inputs(layer), b.outputs(layer)
    rank = len(layer.in_shapes[0])
    per_sample = m.across_channels or rank < 2
    rows = b.op("Reshape", x, b.ints([0, -1] if per_sample else [0, 0, -1], "rows"))
    axis = 1 if per_sample else 2
    centred = b.op("Sub", rows, b.reduce_mean(rows, [axis]))
    if m.normalize_variance:
        std = b.op("Sqrt", b.reduce_mean(b.op("Mul", centred, centred), [axis]))
        centred = b.op("Div", centred, b.op("Add", std, b.const(m.eps, hint="eps")))
    b.op("Reshape", centred, b.shape(x), out=y)
