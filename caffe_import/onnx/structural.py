"""Layers that move values: Split, Silence, Concat, Slice, Eltwise, Crop, Flatten, Reshape, ArgMax (sizes derived
from the input are computed from `Shape` at run time)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper
from torch import nn

from caffe_import.errors import CaffeImportError
from caffe_import.graph import Layer
from caffe_import.onnx.builder import Builder
from caffe_import.onnx.registry import emits

INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min


@emits("Split")
def _split(b: Builder, layer: Layer, m: nn.Module) -> None:
    (x,) = b.inputs(layer)
    for y in b.outputs(layer):
        b.op("Identity", x, out=y)


@emits("Silence")
def _silence(b: Builder, layer: Layer, m: nn.Module) -> None:
    """Consumes its bottoms and produces nothing."""


@emits("Concat")
def _concat(b: Builder, layer: Layer, m: nn.Module) -> None:
    xs, (y,) = b.inputs(layer), b.outputs(layer)
    if len(xs) == 1:
        b.op("Identity", xs[0], out=y)
    else:
        b.op("Concat", *xs, out=y, axis=int(m.axis))


@emits("Slice")
def _slice(b: Builder, layer: Layer, m: nn.Module) -> None:
    """slice_point -> one Slice per top (the last runs to the end); no points -> an equal Split."""
    (x,), ys = b.inputs(layer), b.outputs(layer)
    if len(ys) == 1:
        b.op("Identity", x, out=ys[0])
        return
    if m.points:
        bounds = (0,) + tuple(m.points) + (INT64_MAX,)
        axes = b.ints([m.axis], "axes")
        for y, start, end in zip(ys, bounds[:-1], bounds[1:]):
            b.op("Slice", x, b.ints([start], "start"), b.ints([end], "end"), axes, out=y)
        return
    attrs = {"num_outputs": len(ys)} if b.opset >= 18 else {}
    b.graph.node.append(helper.make_node("Split", [x], ys, name=b.fresh("Split"), axis=int(m.axis), **attrs))


@emits("Eltwise")
def _eltwise(b: Builder, layer: Layer, m: nn.Module) -> None:
    """SUM with coefficients (Mul by each non-1 coeff, then Sum), PROD (Mul chain), MAX (Max)."""
    xs, (y,) = b.inputs(layer), b.outputs(layer)
    if m.operation == "SUM":
        coeff = m.coeff or (1.0,) * len(xs)
        terms = [x if c == 1 else b.op("Mul", x, b.const(c, hint="coeff")) for x, c in zip(xs, coeff)]
        b.op("Sum", *terms, out=y)
    elif m.operation == "PROD":
        acc = xs[0]
        for i, x in enumerate(xs[1:], start=1):
            acc = b.op("Mul", acc, x, out=y if i == len(xs) - 1 else None)
    elif m.operation == "MAX":
        b.op("Max", *xs, out=y)
    else:
        raise CaffeImportError(f"{layer.where()}: Eltwise operation {m.operation} cannot be exported.")


@emits("Crop")
def _crop(b: Builder, layer: Layer, m: nn.Module) -> None:
    """Slice dims axis.. of x from their offsets to offset + Shape(reference), computed at run time."""
    (x, ref), (y,) = b.inputs(layer), b.outputs(layer)
    rank = len(layer.in_shapes[0])
    count = rank - m.axis
    offsets = list(m.offsets) * count if len(m.offsets) == 1 else (list(m.offsets) or [0] * count)
    starts = b.ints(offsets, "offsets")
    ends = b.op("Add", b.dims(ref, m.axis, rank), starts)
    b.op("Slice", x, starts, ends, b.ints(range(m.axis, rank), "axes"), out=y)


@emits("Flatten")
def _flatten(b: Builder, layer: Layer, m: nn.Module) -> None:
    """Merge dims axis..end_axis: ONNX Flatten when that is (N, rest), else Reshape to a run-time shape."""
    (x,), (y,) = b.inputs(layer), b.outputs(layer)
    rank = len(layer.in_shapes[0])
    if m.axis == 1 and m.end_axis == rank - 1:
        b.op("Flatten", x, out=y, axis=1)
        return
    parts = [b.dims(x, 0, m.axis)] if m.axis > 0 else []
    parts.append(b.ints([-1], "minus_one"))
    if m.end_axis + 1 < rank:
        parts.append(b.dims(x, m.end_axis + 1, rank))
    shape = parts[0] if len(parts) == 1 else b.op("Concat", *parts, axis=0)
    b.op("Reshape", x, shape, out=y)


@emits("Reshape")
def _reshape(b: Builder, layer: Layer, m: nn.Module) -> None:
    """Caffe's dims axis..axis+num_axes replaced by `shape` (0 copies the bottom dim, -1 is inferred)."""
    (x,), (y,) = b.inputs(layer), b.outputs(layer)
    rank = len(layer.in_shapes[0])
    start = m.axis if m.axis >= 0 else rank + m.axis + 1
    end = rank if m.num_axes == -1 else start + m.num_axes
    if start == 0 and end == rank:
        # ONNX Reshape's 0 (allowzero=0) copies the input dim at the same index, which is Caffe's 0 here.
        b.op("Reshape", x, b.ints(m.shape, "shape"), out=y)
        return
    parts = [b.dims(x, 0, start)] if start > 0 else []
    for i, d in enumerate(m.shape):
        parts.append(b.dims(x, start + i, start + i + 1) if d == 0 else b.ints([d], "dim"))
    if end < rank:
        parts.append(b.dims(x, end, rank))
    shape = parts[0] if len(parts) == 1 else b.op("Concat", *parts, axis=0)
    b.op("Reshape", x, shape, out=y)


@emits("ArgMax")
def _argmax(b: Builder, layer: Layer, m: nn.Module) -> None:
    """TopK on the input reversed along the axis (ties then rank the larger index first, as Caffe's sort of
    (value, index) pairs with std::greater does); indices are returned as floats."""
    (x,), (y,) = b.inputs(layer), b.outputs(layer)
    rank = len(layer.in_shapes[0])
    axis = m.axis
    src = x if axis is not None else b.op("Reshape", x, b.ints([0, -1], "rows"))
    axis = 1 if axis is None else axis
    flipped = b.op("Slice", src, b.ints([-1], "start"), b.ints([INT64_MIN], "end"), b.ints([axis], "axes"),
                   b.ints([-1], "steps"))
    values, idx = b.op("TopK", flipped, b.ints([m.top_k], "k"), n_out=2, axis=axis, largest=1, sorted=1)
    last = b.op("Sub", b.dims(src, axis, axis + 1), b.ints([1], "one"))
    index = b.op("Cast", b.op("Sub", last, idx), to=TensorProto.FLOAT)
    if m.axis is not None:
        b.op("Identity", values if m.out_max_val else index, out=y)
        return
    row_axis = b.ints([1], "axes")
    out = b.op("Unsqueeze", index, row_axis)
    if m.out_max_val:
        out = b.op("Concat", out, b.op("Unsqueeze", values, row_axis), axis=1)
    extra = max(rank, 3) - 3
    if extra:
        b.op("Unsqueeze", out, b.ints(range(3, 3 + extra), "axes"), out=y)
    else:
        b.op("Identity", out, out=y)
