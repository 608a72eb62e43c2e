"""Layers that move, combine or re-view blobs: Concat, Slice, Split, Eltwise, Crop, Flatten, Reshape, Silence, ArgMax.

Reproduces BVLC `src/caffe/layers/{concat,slice,split,eltwise,crop,flatten,reshape,silence,argmax}_layer.cpp`.
Every size that depends on the input (crop windows, slice remainders, inferred reshape dims) is computed from the
runtime shapes in `forward`, so a fully convolutional net runs at any input size, as Caffe's `Reshape` allows.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from caffe_import.errors import CaffeImportError
from caffe_import.graph import Layer
from caffe_import.layers.normalization import canonical_axis
from caffe_import.layers.registry import register
from caffe_import.proto import caffe_pb2


def _legacy_axis(layer: Layer, param, axis_field: str, legacy_field: str, rank: int) -> int:
    """`axis` (may be negative) or the deprecated non-negative `*_dim` spelling; Caffe refuses both at once."""
    name = type(param).DESCRIPTOR.name
    if param.HasField(axis_field) and param.HasField(legacy_field):
        raise CaffeImportError(f"{layer.where()}: {name} sets both {axis_field} and the deprecated {legacy_field}; "
                               "Caffe refuses that ('Either axis or ... should be specified; not both').")
    if param.HasField(legacy_field):
        value = getattr(param, legacy_field)
        if value >= rank:
            raise CaffeImportError(f"{layer.where()}: {legacy_field} = {value} is out of range for a {rank}-D bottom.")
        return value
    return canonical_axis(layer, getattr(param, axis_field), rank, axis_field)


class CaffeConcat(nn.Module):
    """Caffe Concat: the bottoms joined along `axis`; all other dims must agree."""

    caffe_blobs = ()

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return xs[0] if len(xs) == 1 else torch.cat(xs, dim=self.axis)

    def extra_repr(self) -> str:
        return f"axis={self.axis}"


@register("Concat")
def concat(layer: Layer) -> nn.Module:
    return CaffeConcat(_legacy_axis(layer, layer.param.concat_param, "axis", "concat_dim", len(layer.in_shapes[0])))


class CaffeSlice(nn.Module):
    """Caffe Slice: cut `axis` at `points` (strictly increasing; tops = points + 1) or, without points, into
    `n_tops` equal parts (the axis must divide evenly). Returns one tensor per top."""

    caffe_blobs = ()

    def __init__(self, axis: int, points: tuple[int, ...], n_tops: int, where: str) -> None:
        super().__init__()
        self.axis, self.points, self.n_tops, self.where = axis, points, n_tops, where

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        size = x.shape[self.axis]
        if self.points:
            if self.points[-1] > size:
                raise CaffeImportError(f"{self.where}: slice_point {self.points[-1]} is past the end of axis "
                                       f"{self.axis} of size {size}.")
            bounds = (0,) + self.points + (size,)
            sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        else:
            if size % self.n_tops:
                raise CaffeImportError(f"{self.where}: {self.n_tops} tops do not evenly divide axis {self.axis} of "
                                       f"size {size} (give slice_point to cut unevenly).")
            sizes = [size // self.n_tops] * self.n_tops
        if self.n_tops == 1:
            return x
        return tuple(torch.split(x, sizes, dim=self.axis))

    def extra_repr(self) -> str:
        return f"axis={self.axis}, points={list(self.points)}, tops={self.n_tops}"


@register("Slice")
def slice_(layer: Layer) -> nn.Module:
    p = layer.param.slice_param
    axis = _legacy_axis(layer, p, "axis", "slice_dim", len(layer.in_shapes[0]))
    points = tuple(int(v) for v in p.slice_point)
    n_tops = len(layer.tops)
    if points:
        if len(points) != n_tops - 1:
            raise CaffeImportError(f"{layer.where()}: {len(points)} slice_point values need {len(points) + 1} tops, "
                                   f"but the layer has {n_tops}.")
        if any(b <= a for a, b in zip((0,) + points[:-1], points)):
            raise CaffeImportError(f"{layer.where()}: slice_point {list(points)} must be strictly increasing and "
                                   "positive.")
    return CaffeSlice(axis, points, n_tops, layer.where())


class CaffeSplit(nn.Module):
    """Caffe Split: every top is the bottom (Caffe shares the data; nothing here writes in place)."""

    caffe_blobs = ()

    def __init__(self, n_tops: int) -> None:
        super().__init__()
        self.n_tops = n_tops

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return x if self.n_tops == 1 else (x,) * self.n_tops


@register("Split")
def split(layer: Layer) -> nn.Module:
    return CaffeSplit(len(layer.tops))


class CaffeEltwise(nn.Module):
    """Caffe Eltwise over N same-shaped bottoms.

    SUM: y = sum_i coeff_i * x_i (coeff default 1); PROD: y = x_0 * x_1 * ...; MAX: y = x_0 if x_0 > x_1 else x_1,
    then y = x_i if x_i > y else y (Caffe's comparison order, which fixes how NaN propagates).
    """

    caffe_blobs = ()

    def __init__(self, operation: str, coeff: tuple[float, ...], where: str) -> None:
        super().__init__()
        self.operation, self.coeff, self.where = operation, coeff, where

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        for i, x in enumerate(xs[1:], start=1):
            if x.shape != xs[0].shape:
                raise CaffeImportError(f"{self.where}: bottom {i} has shape {tuple(x.shape)} but bottom 0 has "
                                       f"{tuple(xs[0].shape)}; Eltwise does not broadcast.")
        if self.operation == "SUM":
            coeff = self.coeff or (1.0,) * len(xs)
            y = xs[0] if coeff[0] == 1 else xs[0] * coeff[0]
            for c, x in zip(coeff[1:], xs[1:]):
                y = y + x if c == 1 else y + x * c
            return y
        if self.operation == "PROD":
            y = xs[0]
            for x in xs[1:]:
                y = y * x
            return y
        y = torch.where(xs[0] > xs[1], xs[0], xs[1])
        for x in xs[2:]:
            y = torch.where(x > y, x, y)
        return y

    def extra_repr(self) -> str:
        return f"operation={self.operation}" + (f", coeff={list(self.coeff)}" if self.coeff else "")


@register("Eltwise")
def eltwise(layer: Layer) -> nn.Module:
    p = layer.param.eltwise_param
    operation = caffe_pb2.EltwiseParameter.EltwiseOp.Name(p.operation)
    coeff = tuple(float(c) for c in p.coeff)
    if len(layer.bottoms) < 2:
        raise CaffeImportError(f"{layer.where()}: Eltwise needs at least 2 bottoms, got {len(layer.bottoms)}.")
    if coeff and len(coeff) != len(layer.bottoms):
        raise CaffeImportError(f"{layer.where()}: Eltwise takes one coefficient per bottom blob: {len(coeff)} coeff "
                               f"for {len(layer.bottoms)} bottoms.")
    if coeff and operation != "SUM":
        # Caffe refuses coeff with PROD and silently ignores it with MAX; we refuse both rather than drop a field.
        raise CaffeImportError(f"{layer.where()}: Eltwise only takes coefficients for summation (operation = "
                               f"{operation}, coeff = {list(coeff)}).")
    return CaffeEltwise(operation, coeff, layer.where())


class CaffeCrop(nn.Module):
    """Caffe Crop: dims < `axis` are kept; each dim i >= axis becomes ref.shape[i], starting at its offset.

    Offsets: none -> 0; one -> the same for every cropped dim; otherwise one per cropped dim. The window must fit:
    x.shape[i] - offset_i >= ref.shape[i]. Sizes come from the reference at run time, so FCN crops follow the input.
    """

    caffe_blobs = ()

    def __init__(self, axis: int, offsets: tuple[int, ...], where: str) -> None:
        super().__init__()
        self.axis, self.offsets, self.where = axis, offsets, where

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        if ref.dim() != x.dim():
            raise CaffeImportError(f"{self.where}: the reference blob {tuple(ref.shape)} must have the rank of the "
                                   f"data {tuple(x.shape)}.")
        index: list[slice] = [slice(None)] * self.axis
        for i in range(self.axis, x.dim()):
            offset = 0 if not self.offsets else self.offsets[0 if len(self.offsets) == 1 else i - self.axis]
            if x.shape[i] - offset < ref.shape[i]:
                raise CaffeImportError(
                    f"{self.where}: the crop of dim {i} does not fit: data size {x.shape[i]}, offset {offset}, "
                    f"crop size {ref.shape[i]} (data {tuple(x.shape)}, reference {tuple(ref.shape)})."
                )
            index.append(slice(offset, offset + ref.shape[i]))
        return x[tuple(index)]

    def extra_repr(self) -> str:
        return f"axis={self.axis}, offsets={list(self.offsets)}"


@register("Crop")
def crop(layer: Layer) -> nn.Module:
    p = layer.param.crop_param
    if len(layer.bottoms) != 2:
        raise CaffeImportError(f"{layer.where()}: Crop needs 2 bottoms (data, reference), got {len(layer.bottoms)}.")
    rank = len(layer.in_shapes[0])
    axis = canonical_axis(layer, p.axis, rank, "crop_param.axis")
    offsets = tuple(int(v) for v in p.offset)
    if len(offsets) > 1 and len(offsets) != rank - axis:
        raise CaffeImportError(f"{layer.where()}: {len(offsets)} offsets given, but axis {axis} of a {rank}-D bottom "
                               f"crops {rank - axis} dims; give one offset, or one per cropped dim.")
    return CaffeCrop(axis, offsets, layer.where())


class CaffeFlatten(nn.Module):
    """Caffe Flatten: dims axis..end_axis (inclusive, negative from the end) merged into one."""

    caffe_blobs = ()

    def __init__(self, axis: int, end_axis: int) -> None:
        super().__init__()
        self.axis, self.end_axis = axis, end_axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, self.axis, self.end_axis)

    def extra_repr(self) -> str:
        return f"axis={self.axis}, end_axis={self.end_axis}"


@register("Flatten")
def flatten(layer: Layer) -> nn.Module:
    p = layer.param.flatten_param
    rank = len(layer.in_shapes[0])
    start = canonical_axis(layer, p.axis, rank, "flatten_param.axis")
    end = canonical_axis(layer, p.end_axis, rank, "flatten_param.end_axis")
    if end < start:
        raise CaffeImportError(f"{layer.where()}: flatten_param.end_axis ({p.end_axis}) comes before axis ({p.axis}).")
    return CaffeFlatten(start, end)


class CaffeReshape(nn.Module):
    """Caffe Reshape: dims axis .. axis + num_axes (-1: to the end) are replaced by `shape`, where 0 copies the
    bottom dim at that position and one -1 is inferred from the element count."""

    caffe_blobs = ()

    def __init__(self, shape: tuple[int, ...], axis: int, num_axes: int, where: str) -> None:
        super().__init__()
        self.shape, self.axis, self.num_axes, self.where = shape, axis, num_axes, where

    def output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        rank = len(in_shape)
        start = self.axis if self.axis >= 0 else rank + self.axis + 1
        end = rank if self.num_axes == -1 else start + self.num_axes
        if not 0 <= start <= rank or end > rank:
            raise CaffeImportError(f"{self.where}: reshape_param axis {self.axis} / num_axes {self.num_axes} are out "
                                   f"of range for a {rank}-D bottom {in_shape}.")
        new = list(self.shape)
        for i, d in enumerate(self.shape):
            if d == 0:
                if start + i >= rank:
                    raise CaffeImportError(f"{self.where}: shape dim {i} is 0 (copy), but the bottom {in_shape} has "
                                           f"no axis {start + i} to copy.")
                new[i] = in_shape[start + i]
        out = list(in_shape[:start]) + new + list(in_shape[end:])
        count = math.prod(in_shape)
        if -1 in new:
            known = math.prod(d for d in out if d != -1)
            if known == 0 or count % known:
                raise CaffeImportError(f"{self.where}: the bottom count {count} ({in_shape}) is not divisible by the "
                                       f"product {known} of the specified dims {tuple(out)}.")
            out[out.index(-1)] = count // known
        if math.prod(out) != count:
            raise CaffeImportError(f"{self.where}: reshape {in_shape} -> {tuple(out)} changes the element count.")
        return tuple(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.output_shape(tuple(x.shape)))

    def extra_repr(self) -> str:
        return f"shape={list(self.shape)}, axis={self.axis}, num_axes={self.num_axes}"


@register("Reshape")
def reshape(layer: Layer) -> nn.Module:
    p = layer.param.reshape_param
    shape = tuple(int(d) for d in p.shape.dim)
    if shape.count(-1) > 1:
        raise CaffeImportError(f"{layer.where()}: reshape_param.shape {list(shape)} has more than one -1.")
    if any(d < -1 for d in shape):
        raise CaffeImportError(f"{layer.where()}: reshape_param.shape {list(shape)} has a negative dim other than -1.")
    if p.num_axes < -1:
        raise CaffeImportError(f"{layer.where()}: reshape_param.num_axes = {p.num_axes}; it must be >= 0 or -1.")
    return CaffeReshape(shape, p.axis, p.num_axes, layer.where())


class CaffeSilence(nn.Module):
    """Caffe Silence: consumes its bottoms and produces nothing (keeps them from being net outputs)."""

    caffe_blobs = ()

    def forward(self, *xs: torch.Tensor) -> tuple[()]:
        return ()


@register("Silence")
def silence(layer: Layer) -> nn.Module:
    if layer.tops:
        raise CaffeImportError(f"{layer.where()}: Silence has no tops, but the layer declares {list(layer.tops)}.")
    return CaffeSilence()


class CaffeArgMax(nn.Module):
    """Caffe ArgMax: the `top_k` largest entries, as float indices (or values with `out_max_val`).

    With `axis`: along that axis, output shape = bottom shape with shape[axis] = top_k, holding indices or (with
    out_max_val) values. Without: over each sample's flattened data, output (N, 1, top_k) padded with 1s to the
    bottom's rank (at least 3); with out_max_val it is (N, 2, top_k): indices then values. Ties rank the larger
    index first (Caffe sorts (value, index) pairs with std::greater). Indices of half-precision input are float32.
    """

    caffe_blobs = ()

    def __init__(self, top_k: int, out_max_val: bool, axis: int | None) -> None:
        super().__init__()
        self.top_k, self.out_max_val, self.axis = top_k, out_max_val, axis

    def _top(self, x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        size = x.shape[dim]
        values, index = torch.sort(x.flip(dim), dim=dim, descending=True, stable=True)
        keep = torch.arange(self.top_k, device=x.device)
        # Indices are float like Caffe's blobs, but never half precision: float16/bfloat16 cannot count past 2048/256.
        index_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        return values.index_select(dim, keep), (size - 1 - index.index_select(dim, keep)).to(index_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.axis is not None:
            values, index = self._top(x, self.axis)
            return values if self.out_max_val else index
        values, index = self._top(x.reshape(x.shape[0], -1), 1)
        out = torch.stack([index, values.to(index.dtype)], dim=1) if self.out_max_val else index.unsqueeze(1)
        return out.reshape(out.shape + (1,) * (max(x.dim(), 3) - 3))

    def extra_repr(self) -> str:
        return f"top_k={self.top_k}, out_max_val={self.out_max_val}, axis={self.axis}"


@register("ArgMax")
def argmax(layer: Layer) -> nn.Module:
    p = layer.param.argmax_param
    shape = layer.in_shapes[0]
    axis = canonical_axis(layer, p.axis, len(shape), "argmax_param.axis") if p.HasField("axis") else None
    available = shape[axis] if axis is not None else math.prod(shape[1:])
    if not 1 <= p.top_k <= available:
        raise CaffeImportError(f"{layer.where()}: argmax_param.top_k = {p.top_k} must lie in [1, {available}].")
    return CaffeArgMax(p.top_k, p.out_max_val, axis)
