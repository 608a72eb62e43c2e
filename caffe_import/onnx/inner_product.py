"""InnerProduct -> Gemm, or Reshape + MatMul + Add for `axis` != 1 (`inner_product_layer.cpp`)."""

from __future__ import annotations

from torch import nn

from caffe_import.graph import Layer
from caffe_import.onnx.builder import Builder
from caffe_import.onnx.registry import emits


@emits("InnerProduct")
def _inner_product(b: Builder, layer: Layer, m: nn.Module) -> None:
    """Gemm on Flatten(axis 1); other axes: Reshape to (d0..d_{axis-1}, K) and MatMul + Add."""
    (x,), (y,) = b.inputs(layer), b.outputs(layer)
    rank = len(layer.in_shapes[0])
    weight = b.weight(m, "weight")
    bias = [b.weight(m, "bias")] if m.bias is not None else []
    if m.axis == 1:
        flat = x if rank == 2 else b.op("Flatten", x, axis=1)
        b.op("Gemm", flat, weight, *bias, out=y, transB=0 if m.transpose else 1)
        return
    flat = b.op("Reshape", x, b.ints([0] * m.axis + [-1], "shape"))
    w = weight if m.transpose else b.op("Transpose", weight, perm=[1, 0])
    if bias:
        b.op("Add", b.op("MatMul", flat, w), bias[0], out=y)
    else:
        b.op("MatMul", flat, w, out=y)
