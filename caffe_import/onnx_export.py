"""Export a `CaffeNet` to ONNX straight from its Caffe graph, and check the export in onnxruntime against PyTorch.

One emitter per Caffe layer type writes ONNX nodes with `onnx.helper`; nothing goes through `torch.onnx`, which
decomposes LRN, fails on `roi_pool` with its dynamo path and renames every value. The emitters reproduce the same
BVLC / Fast R-CNN fork sources as the converters in `caffe_import/layers/` (`pooling_layer.cpp`, `lrn_layer.cpp`,
`roi_pooling_layer.cpp`, `crop_layer.cpp`, ...) and read the resolved settings from the converted modules, so
the export and the PyTorch net cannot disagree on how a prototxt field was read.

Names:
  * graph inputs and outputs are Caffe blob names; outputs are `net.output_names`;
  * every value is named after its Caffe blob. The last version of a blob has the plain name, as pycaffe's
    `net.blobs` shows it (after the in-place `relu4`, "conv4" is the rectified value); a version that a later
    in-place layer overwrites is "<blob>#<k>" with k its 0-based version ("conv4#0" is conv4 before relu4).
    Net inputs keep their plain name, so an input overwritten in place has its last version named "<blob>#<k>";
  * helper values of a layer are "<layer>/<what>", weights are initializers "<layer>.<blob attr>" (conv1.weight,
    conv1.bias; bn1.mean / bn1.var for BatchNorm's normalised statistics). Weight-shared layers (Caffe
    `param { name }`) share one initializer, named after the first layer that uses it.

Shapes: with `dynamic=True` dim 0 of every input is symbolic ("batch"; "num_rois" for an ROIPooling roi input),
and so are the spatial dims when no InnerProduct or Reshape consumes a value whose size follows them (fully
convolutional nets; Fast R-CNN, whose only InnerProducts follow ROIPooling). Every size a layer derives from its
input (Crop windows, explicit pooling pads) is computed from `Shape` at run time (pooling pads are folded to
constants when the spatial size is fixed).

Opsets: 17 by default; 13 is the minimum (Softmax flattens its input below 13, wrong for a per-pixel softmax);
nets with ROIPooling are limited to 13..21 because onnxruntime has no MaxRoiPool-22 kernel. ONNX shape inference
for padded ceil-mode pooling is wrong below opset 22 (onnx/onnx#5711), so no intermediate `value_info` is written
and output shapes come from the PyTorch net itself.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from caffe_import.errors import CaffeImportError
from caffe_import.graph import Layer
from caffe_import.layers.activations import _c_pow
from caffe_import.layers.pooling import caffe_pool_output_size
from caffe_import.net import CaffeNet

__all__ = ["OnnxCheck", "check_onnx", "default_feeds", "export_onnx", "onnx_exportable_types"]

DEFAULT_OPSET = 17
MIN_OPSET = 13               # Softmax-13 normalises along one axis; older versions flatten from `axis` on
MAX_ROI_POOL_OPSET = 21      # onnxruntime implements MaxRoiPool-1 only; MaxRoiPool-22 has no kernel
# Protobuf cannot serialise a message of 2 GiB or more; above this many weight bytes the weights go to a side file.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26
FLT_MAX = float(np.finfo(np.float32).max)
INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min

Dim = int | str


# -- registry -------------------------------------------------------------------------------------------------------
Emitter = Callable[["_Builder", Layer, nn.Module], None]
_EMITTERS: dict[str, Emitter] = {}


def emits(*types: str) -> Callable[[Emitter], Emitter]:
    """Register the ONNX emitter of one or more Caffe layer types; registering a type twice is an error."""

    def wrap(fn: Emitter) -> Emitter:
        for type_name in types:
            if type_name in _EMITTERS:
                raise RuntimeError(f"an ONNX emitter for Caffe layer type '{type_name}' is already registered")
            _EMITTERS[type_name] = fn
        return fn

    return wrap


def onnx_exportable_types() -> list[str]:
    return sorted(_EMITTERS)


def _emitter(layer: Layer) -> Emitter:
    if layer.type not in _EMITTERS:
        raise CaffeImportError(
            f"{layer.where()}: Caffe layer type '{layer.type}' has no ONNX emitter, so the net cannot be exported. "
            f"Exportable types: {', '.join(onnx_exportable_types())}. Prune the layer with outputs=[...] when loading, "
            "or register an emitter with caffe_import.onnx_export.emits."
        )
    return _EMITTERS[layer.type]


# -- graph builder --------------------------------------------------------------------------------------------------
class _Builder:
    """Collects nodes and initializers; hands out unique names for the layer being emitted."""

    def __init__(self, graph: onnx.GraphProto, opset: int, value_names: dict[str, str], static_spatial: bool) -> None:
        self.graph, self.opset, self.value_names = graph, opset, value_names
        self.static_spatial = static_spatial   # input height/width are fixed: sizes may be folded at export
        self.taken: set[str] = set(value_names.values())
        self.layer: Layer | None = None
        self._weights: dict[tuple[int, tuple[int, ...]], str] = {}
        self._consts: dict[tuple[str, tuple[int, ...], bytes], str] = {}
        self._shapes: dict[str, str] = {}

    # names
    def inputs(self, layer: Layer) -> list[str]:
        return [self.value_names[b] for b in layer.bottoms]

    def outputs(self, layer: Layer) -> list[str]:
        return [self.value_names[t] for t in layer.tops]

    def fresh(self, hint: str) -> str:
        base = f"{self.layer.name}/{hint}" if self.layer is not None else hint
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name

    # nodes
    def op(self, op_type: str, *inputs: str, out: str | None = None, n_out: int = 1, **attrs: Any) -> Any:
        """Append one node; returns its output name (or the list of names when n_out > 1)."""
        if out is not None:
            outputs = [out]
        else:
            outputs = [self.fresh(op_type.lower() if n_out == 1 else f"{op_type.lower()}{i}") for i in range(n_out)]
        name = self.fresh(f"{op_type}") if self.layer is not None else op_type
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.graph.node.append(helper.make_node(op_type, list(inputs), outputs, name=name, **attrs))
        return outputs[0] if n_out == 1 else outputs

    # tensors
    def _initializer(self, name: str, array: np.ndarray) -> str:
        # Filled in place: numpy_helper.from_array + make_graph + make_model would copy the weights three times.
        self.taken.add(name)
        tensor = self.graph.initializer.add()
        tensor.name, tensor.data_type = name, helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.dims.extend(array.shape)
        tensor.raw_data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        return name

    def weight(self, module: nn.Module, attr: str, shape: tuple[int, ...] | None = None) -> str:
        """A Caffe blob of `module` as initializer "<layer>.<attr>" (reshaped for broadcasting when `shape`)."""
        tensor = getattr(module, attr)
        shape = tuple(tensor.shape) if shape is None else tuple(shape)
        key = (id(tensor), shape)
        if key not in self._weights:
            array = tensor.detach().to("cpu", torch.float32).numpy().reshape(shape)
            name = f"{self.layer.name}.{attr}"
            if name in self.taken:
                name = self.fresh(attr)
            self._weights[key] = self._initializer(name, array)
        return self._weights[key]

    def derived(self, attr: str, array: np.ndarray) -> str:
        """An initializer computed from a layer's blobs, named "<layer>.<attr>"."""
        name = f"{self.layer.name}.{attr}"
        return self._initializer(name if name not in self.taken else self.fresh(attr), array)

    def const(self, value: Any, dtype: Any = np.float32, hint: str = "const") -> str:
        """A small constant initializer; identical constants are shared across layers."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            self._consts[key] = self._initializer(self.fresh(hint), array)
        return self._consts[key]

    def ints(self, values: Iterable[int], hint: str = "ints") -> str:
        return self.const(list(values), np.int64, hint)

    # shape arithmetic (all int64, evaluated at run time)
    def shape(self, x: str) -> str:
        if x not in self._shapes:
            self._shapes[x] = self.op("Shape", x)
        return self._shapes[x]

    def dims(self, x: str, start: int, end: int) -> str:
        """Shape(x)[start:end] as an int64 vector."""
        return self.op("Slice", self.shape(x), self.ints([start], "start"), self.ints([end], "end"))

    def reduce_mean(self, x: str, axes: list[int]) -> str:
        if self.opset >= 18:
            return self.op("ReduceMean", x, self.ints(axes, "axes"), keepdims=1)
        return self.op("ReduceMean", x, axes=axes, keepdims=1)


# -- emitters: convolution and inner product ------------------------------------------------------------------------
def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[-1]))


def _conv(b: _Builder, layer: Layer, m: nn.Module, op_type: str) -> None:
    if not isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        raise CaffeImportError(f"{layer.where()}: unexpected converted module {type(m).__name__} for ONNX export.")
    pad = _pair(m.padding)
    attrs = dict(kernel_shape=list(_pair(m.kernel_size)), strides=list(_pair(m.stride)),
                 dilations=list(_pair(m.dilation)), pads=[pad[0], pad[1], pad[0], pad[1]], group=m.groups)
    weights = [b.weight(m, "weight")] + ([b.weight(m, "bias")] if m.bias is not None else [])
    for x, y in zip(b.inputs(layer), b.outputs(layer)):
        b.op(op_type, x, *weights, out=y, **attrs)


@emits("Convolution")
def _convolution(b: _Builder, layer: Layer, m: nn.Module) -> None:
    _conv(b, layer, m, "Conv")


@emits("Deconvolution")
def _deconvolution(b: _Builder, layer: Layer, m: nn.Module) -> None:
    _conv(b, layer, m, "ConvTranspose")


@emits("InnerProduct")
def _inner_product(b: _Builder, layer: Layer, m: nn.Module) -> None:
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


# -- emitters: pooling, LRN, ROI pooling ----------------------------------------------------------------------------
def _pool_settings(layer: Layer, m: nn.Module) -> tuple[str, tuple[int, int], tuple[int, int], tuple[int, int], str]:
    """(method, kernel, stride, pad, round_mode) as the converter resolved them."""
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        method = "MAX" if isinstance(m, nn.MaxPool2d) else "AVE"
        if isinstance(m, nn.MaxPool2d) and _pair(m.dilation) != (1, 1):
            raise CaffeImportError(f"{layer.where()}: dilated pooling has no Caffe equivalent.")
        stride = _pair(m.stride if m.stride is not None else m.kernel_size)
        return method, _pair(m.kernel_size), stride, _pair(m.padding), "CEIL" if m.ceil_mode else "FLOOR"
    if hasattr(m, "method") and hasattr(m, "round_mode"):  # CaffePool2d
        return m.method, tuple(m.kernel), tuple(m.stride), tuple(m.pad), m.round_mode
    raise CaffeImportError(f"{layer.where()}: unexpected converted module {type(m).__name__} for ONNX export.")


@emits("Pooling")
def _pooling(b: _Builder, layer: Layer, m: nn.Module) -> None:
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
        if _pair(m.output_size) != (1, 1):
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


@emits("LRN")
def _lrn(b: _Builder, layer: Layer, m: nn.Module) -> None:
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


@emits("ROIPooling")
def _roi_pooling(b: _Builder, layer: Layer, m: nn.Module) -> None:
    """Fast R-CNN ROIPooling -> MaxRoiPool (bit-exact in onnxruntime: C rounding of corners, float32 scale)."""
    x, rois = b.inputs(layer)
    pooled_h, pooled_w = m.output_size
    b.op("MaxRoiPool", x, rois, out=b.outputs(layer)[0], pooled_shape=[int(pooled_h), int(pooled_w)],
         spatial_scale=float(np.float32(m.spatial_scale)))


# -- emitters: normalisation and affine -----------------------------------------------------------------------------
@emits("Softmax")
def _softmax(b: _Builder, layer: Layer, m: nn.Module) -> None:
    b.op("Softmax", b.inputs(layer)[0], out=b.outputs(layer)[0], axis=int(m.dim))


@emits("BatchNorm")
def _batch_norm(b: _Builder, layer: Layer, m: nn.Module) -> None:
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


def _affine_operand(b: _Builder, layer: Layer, m: nn.Module, attr: str, bottom: str | None, rank: int) -> str:
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
def _scale(b: _Builder, layer: Layer, m: nn.Module) -> None:
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
def _bias(b: _Builder, layer: Layer, m: nn.Module) -> None:
    xs, (y,) = b.inputs(layer), b.outputs(layer)
    rank = len(layer.in_shapes[0])
    b.op("Add", xs[0], _affine_operand(b, layer, m, "bias", xs[1] if len(xs) > 1 else None, rank), out=y)


@emits("MVN")
def _mvn(b: _Builder, layer: Layer, m: nn.Module) -> None:
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


# -- emitters: element-wise -----------------------------------------------------------------------------------------
def _unary(op_type: str) -> Emitter:
    def emit(b: _Builder, layer: Layer, m: nn.Module) -> None:
        b.op(op_type, b.inputs(layer)[0], out=b.outputs(layer)[0])

    return emit


emits("Sigmoid")(_unary("Sigmoid"))
emits("TanH")(_unary("Tanh"))
emits("AbsVal")(_unary("Abs"))
emits("BNLL")(_unary("Softplus"))  # log(1 + exp(x)); onnxruntime's kernel does not overflow for large x


@emits("ReLU")
def _relu(b: _Builder, layer: Layer, m: nn.Module) -> None:
    (x,), (y,) = b.inputs(layer), b.outputs(layer)
    if isinstance(m, nn.LeakyReLU):
        b.op("LeakyRelu", x, out=y, alpha=float(m.negative_slope))
    else:
        b.op("Relu", x, out=y)


@emits("PReLU")
def _prelu(b: _Builder, layer: Layer, m: nn.Module) -> None:
    (x,), (y,) = b.inputs(layer), b.outputs(layer)
    rank = len(layer.in_shapes[0])
    shape = (1,) if m.weight.dim() == 0 else (m.weight.shape[0],) + (1,) * (rank - 2)
    b.op("PRelu", x, b.weight(m, "weight", shape), out=y)


@emits("ELU")
def _elu(b: _Builder, layer: Layer, m: nn.Module) -> None:
    b.op("Elu", b.inputs(layer)[0], out=b.outputs(layer)[0], alpha=float(m.alpha))


@emits("Power")
def _power(b: _Builder, layer: Layer, m: nn.Module) -> None:
    """(shift + scale * x) ** power; a constant map when power * scale == 0, as `PowerLayer` does."""
    (x,), (y,) = b.inputs(layer), b.outputs(layer)
    if m.power * m.scale == 0:
        value = 1.0 if m.power == 0 else _c_pow(m.shift, m.power)
        b.op("ConstantOfShape", b.shape(x), out=y,
             value=numpy_helper.from_array(np.array([value], np.float32)))
        return
    steps = [("Mul", m.scale, 1), ("Add", m.shift, 0), ("Pow", m.power, 1)]
    _chain(b, x, y, [(op, v) for op, v, identity in steps if v != identity])


def _chain(b: _Builder, x: str, y: str, steps: list[tuple[str, float]]) -> None:
    """x -> op(x, constant) -> ... -> y (Identity when there are no steps)."""
    if not steps:
        b.op("Identity", x, out=y)
    for i, (op_type, value) in enumerate(steps):
        x = b.op(op_type, x, b.const(value, hint=op_type.lower()), out=y if i == len(steps) - 1 else None)


@emits("Exp")
def _exp(b: _Builder, layer: Layer, m: nn.Module) -> None:
    """outer * exp(inner * x), inner = ln(base) * scale, outer = base ** shift (as the converter resolved them)."""
    (x,), (y,) = b.inputs(layer), b.outputs(layer)
    inner = x if m.inner == 1 else b.op("Mul", x, b.const(m.inner, hint="inner"))
    if m.outer == 1:
        b.op("Exp", inner, out=y)
    else:
        b.op("Mul", b.op("Exp", inner), b.const(m.outer, hint="outer"), out=y)


@emits("Log")
def _log(b: _Builder, layer: Layer, m: nn.Module) -> None:
    """ln(shift + scale * x) / ln(base)."""
    (x,), (y,) = b.inputs(layer), b.outputs(layer)
    pre = [(op, v) for op, v, identity in [("Mul", m.scale, 1), ("Add", m.shift, 0)] if v != identity]
    inner = x
    for op_type, value in pre:
        inner = b.op(op_type, inner, b.const(value, hint=op_type.lower()))
    if m.base_scale == 1:
        b.op("Log", inner, out=y)
    else:
        b.op("Mul", b.op("Log", inner), b.const(m.base_scale, hint="base_scale"), out=y)


@emits("Threshold")
def _threshold(b: _Builder, layer: Layer, m: nn.Module) -> None:
    (x,), (y,) = b.inputs(layer), b.outputs(layer)
    b.op("Cast", b.op("Greater", x, b.const(m.threshold, hint="threshold")), out=y, to=TensorProto.FLOAT)


@emits("Clip")
def _clip(b: _Builder, layer: Layer, m: nn.Module) -> None:
    """max(min, min(x, max)) in Caffe's order (min wins when min > max), and NaN -> min."""
    (x,), (y,) = b.inputs(layer), b.outputs(layer)
    low = b.const(m.low, hint="min")
    clipped = b.op("Max", b.op("Min", x, b.const(m.high, hint="max")), low)
    b.op("Where", b.op("IsNaN", x), low, clipped, out=y)


@emits("Dropout")
def _dropout(b: _Builder, layer: Layer, m: nn.Module) -> None:
    """TEST phase: identity, or x * (1 - p) for the Fast R-CNN fork's `scale_train: false`."""
    (x,), (y,) = b.inputs(layer), b.outputs(layer)
    if isinstance(m, nn.Dropout):
        b.op("Identity", x, out=y)
    else:
        b.op("Mul", x, b.const(1.0 - m.p, hint="keep"), out=y)


# -- emitters: structural -------------------------------------------------------------------------------------------
@emits("Split")
def _split(b: _Builder, layer: Layer, m: nn.Module) -> None:
    (x,) = b.inputs(layer)
    for y in b.outputs(layer):
        b.op("Identity", x, out=y)


@emits("Silence")
def _silence(b: _Builder, layer: Layer, m: nn.Module) -> None:
    """Consumes its bottoms and produces nothing."""


@emits("Concat")
def _concat(b: _Builder, layer: Layer, m: nn.Module) -> None:
    xs, (y,) = b.inputs(layer), b.outputs(layer)
    if len(xs) == 1:
        b.op("Identity", xs[0], out=y)
    else:
        b.op("Concat", *xs, out=y, axis=int(m.axis))


@emits("Slice")
def _slice(b: _Builder, layer: Layer, m: nn.Module) -> None:
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
def _eltwise(b: _Builder, layer: Layer, m: nn.Module) -> None:
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
def _crop(b: _Builder, layer: Layer, m: nn.Module) -> None:
    """Slice dims axis.. of x from their offsets to offset + Shape(reference), computed at run time."""
    (x, ref), (y,) = b.inputs(layer), b.outputs(layer)
    rank = len(layer.in_shapes[0])
    count = rank - m.axis
    offsets = list(m.offsets) * count if len(m.offsets) == 1 else (list(m.offsets) or [0] * count)
    starts = b.ints(offsets, "offsets")
    ends = b.op("Add", b.dims(ref, m.axis, rank), starts)
    b.op("Slice", x, starts, ends, b.ints(range(m.axis, rank), "axes"), out=y)


@emits("Flatten")
def _flatten(b: _Builder, layer: Layer, m: nn.Module) -> None:
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
def _reshape(b: _Builder, layer: Layer, m: nn.Module) -> None:
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
def _argmax(b: _Builder, layer: Layer, m: nn.Module) -> None:
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


# -- names and shapes -----------------------------------------------------------------------------------------------
def _value_names(net: CaffeNet) -> dict[str, str]:
    """SSA name -> ONNX value name (see the module docstring)."""
    graph = net.graph
    names = {name: name for name in graph.inputs}
    for layer in net.layers_with_shapes:
        for ssa, blob in zip(layer.tops, layer.blob_tops):
            version = 0 if ssa == blob else int(ssa[len(blob) + 1:])
            final = graph.final_version.get(blob) == ssa and blob not in graph.inputs
            names[ssa] = blob if final else f"{blob}#{version}"
    return names


def _spatially_free(net: CaffeNet) -> bool:
    """True when no InnerProduct / Reshape / Scale-Bias blob over a spatial axis fixes the size of a value that
    follows the inputs' spatial dims, i.e. the net runs at any input height and width."""
    follows = {name for name, shape in net.graph.input_shapes.items() if len(shape) >= 3}
    for layer in net.layers_with_shapes:
        reads = layer.bottoms[:1] if layer.type == "ROIPooling" else layer.bottoms
        if not any(b in follows for b in reads):
            continue
        module = net.module_of(layer.name)
        if layer.type in ("InnerProduct", "Reshape"):
            return False
        if layer.type in ("Scale", "Bias"):
            blobs = [getattr(module, a) for a in module.caffe_blobs]
            if any(t.dim() and module.axis + t.dim() > 2 for t in blobs):
                return False
        # ROI pooling, global pooling and a whole-sample ArgMax give outputs of a fixed size.
        if layer.type == "ROIPooling" or isinstance(module, (nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)):
            continue
        if layer.type == "ArgMax" and module.axis is None:
            continue
        follows.update(layer.tops)
    return True


def _input_dims(net: CaffeNet, dynamic: bool) -> dict[str, list[Dim]]:
    """Each input's dims, symbolic where `dynamic` allows (see the module docstring)."""
    shapes = net.graph.input_shapes
    if not dynamic:
        return {name: list(shape) for name, shape in shapes.items()}
    roi_inputs = {layer.bottoms[1] for layer in net.layers_with_shapes
                  if layer.type == "ROIPooling" and len(layer.bottoms) > 1}
    spatial = _spatially_free(net)
    images = [name for name, shape in shapes.items() if len(shape) >= 3]
    batches = {shape[0] for name, shape in shapes.items() if shape and name not in roi_inputs}
    dims: dict[str, list[Dim]] = {}
    for name, shape in shapes.items():
        d: list[Dim] = list(shape)
        if d:
            # Inputs declared with one batch size share the symbol (CFN's nine tiles are concatenated per sample).
            d[0] = "num_rois" if name in roi_inputs else "batch" if len(batches) == 1 else f"{name}_batch"
        if spatial and name in images and name not in roi_inputs:
            labels = ["height", "width"] if len(shape) == 4 else [f"dim{i}" for i in range(2, len(shape))]
            prefix = "" if len(images) == 1 else f"{name}_"
            d[2:] = [prefix + label for label in labels]
        dims[name] = d
    return dims


@torch.no_grad()
def _meta_shapes(net: CaffeNet, input_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Shapes of every SSA value for the given input shapes, by running the modules on meta tensors."""
    env = {name: torch.empty(shape, device="meta") for name, shape in input_shapes.items()}
    for layer in net.layers_with_shapes:
        module = net.module_of(layer.name)
        state = {k: torch.empty(v.shape, dtype=v.dtype, device="meta")
                 for k, v in chain(module.named_parameters(remove_duplicate=False),
                                   module.named_buffers(remove_duplicate=False))}
        out = torch.func.functional_call(module, state, tuple(env[b] for b in layer.bottoms))
        for ssa, value in zip(layer.tops, out if isinstance(out, tuple) else (out,)):
            env[ssa] = value
    return {k: tuple(v.shape) for k, v in env.items()}


def _output_dims(net: CaffeNet, inputs: dict[str, list[Dim]]) -> dict[str, list[Dim]]:
    """Output dims: those that change when the symbolic input dims change are symbolic, named after the input
    dim they equal at two sizes (e.g. FCN's score is (batch, 21, height, width)), or "<output>_d<i>"."""
    final = net.graph.final_version
    base_inputs = net.graph.input_shapes
    base = {blob: net.blob_shapes[blob] for blob in net.output_names}
    symbols = sorted({d for dims in inputs.values() for d in dims if isinstance(d, str)})
    if not symbols:
        return {blob: list(shape) for blob, shape in base.items()}
    delta = {symbol: 1 + 4 * i for i, symbol in enumerate(symbols)}   # distinct, so matches are unambiguous
    values = {d: (base_inputs[name][i], base_inputs[name][i] + delta[d])
              for name, dims in inputs.items() for i, d in enumerate(dims) if isinstance(d, str)}
    try:
        moved = _meta_shapes(net, {name: tuple(d if isinstance(d, int) else values[d][1] for d in dims)
                                   for name, dims in inputs.items()})
    except Exception:  # a size the net cannot run at: leave every dim of the outputs open
        return {blob: [f"{blob}_d{i}" for i in range(len(shape))] for blob, shape in base.items()}
    out: dict[str, list[Dim]] = {}
    for blob, shape in base.items():
        moved_shape = moved[final[blob]]
        dims: list[Dim] = []
        for i, (a, c) in enumerate(zip(shape, moved_shape)):
            if a == c:
                dims.append(a)
            else:
                dims.append(next((s for s, pair in values.items() if pair == (a, c)), f"{blob}_d{i}"))
        out[blob] = dims
    return out


# -- export ---------------------------------------------------------------------------------------------------------
def _resolve_opset(net: CaffeNet, opset: int | None) -> int:
    types = {layer.type for layer in net.layers_with_shapes}
    if opset is None:
        return DEFAULT_OPSET
    newest = onnx.defs.onnx_opset_version()
    if opset < MIN_OPSET:
        why = ("the net has a Softmax layer, and Softmax before opset 13 flattens its input from `axis` on "
               "(wrong for Caffe's per-position softmax along axis 1)" if "Softmax" in types else
               "the emitters use opset-13 operators (Slice/Unsqueeze with tensor inputs, Softmax along one axis)")
        raise CaffeImportError(f"ONNX opset {opset} is not supported: {why}. Use opset {MIN_OPSET} or later "
                               f"(default {DEFAULT_OPSET}).")
    if "ROIPooling" in types and opset > MAX_ROI_POOL_OPSET:
        raise CaffeImportError(f"ONNX opset {opset} is not supported for a net with ROIPooling: MaxRoiPool-22 has no "
                               f"kernel in onnxruntime. Use opset {MIN_OPSET}..{MAX_ROI_POOL_OPSET} "
                               f"(default {DEFAULT_OPSET}).")
    if opset > newest:
        raise CaffeImportError(f"ONNX opset {opset} is newer than this onnx package supports ({newest}).")
    return opset


def _value_info(name: str, dims: list[Dim] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def build_onnx_model(net: CaffeNet, *, opset: int | None = None, dynamic: bool = True) -> onnx.ModelProto:
    """The ONNX model of `net` (TEST-phase semantics), in memory; see `export_onnx`."""
    opset = _resolve_opset(net, opset)
    names = _value_names(net)
    for blob in net.output_names:
        if blob in net.graph.inputs and net.graph.final_version[blob] != blob:
            raise CaffeImportError(f"output blob '{blob}' is a net input overwritten in place; ONNX cannot name the "
                                   "input and the overwritten value alike. Request another output blob.")
    in_dims = _input_dims(net, dynamic)
    static_spatial = all(isinstance(d, int) for dims in in_dims.values() for d in dims[2:])
    opset_ids = [helper.make_opsetid("", opset)]
    model = helper.make_model(helper.make_graph([], net.graph.name, [], []), opset_imports=opset_ids,
                              producer_name="caffe_import", ir_version=helper.find_min_ir_version_for(opset_ids))
    builder = _Builder(model.graph, opset, names, static_spatial)
    for layer in net.layers_with_shapes:
        emit = _emitter(layer)
        builder.layer = layer
        emit(builder, layer, net.module_of(layer.name))
    builder.layer = None
    out_dims = _output_dims(net, in_dims)
    model.graph.input.extend(_value_info(name, in_dims[name]) for name in net.graph.inputs)
    model.graph.output.extend(_value_info(names[net.graph.final_version[blob]], out_dims[blob])
                              for blob in net.output_names)
    model.doc_string = (f"Caffe net '{net.graph.name}' exported by caffe_import. Values carry Caffe blob names; "
                        "'<blob>#<k>' is version k of a blob that a later in-place layer overwrites.")
    return model


def export_onnx(net: CaffeNet, path: str | Path, *, opset: int | None = None, dynamic: bool = True) -> Path:
    """Write `net` as an ONNX model at `path` and verify it with `onnx.checker`; returns the path.

    Args:
        net: a loaded CaffeNet; the TEST-phase computation is exported (Dropout as identity or its TEST scale).
        opset: default-domain opset, 17 when None; 13..21 for nets with ROIPooling, >= 13 otherwise.
        dynamic: symbolic batch dim for every input (roi count for ROIPooling inputs), and symbolic height and
            width when the net runs at any size (no InnerProduct on a spatially sized value, e.g. FCN, Fast R-CNN).

    Weights above `EXTERNAL_DATA_THRESHOLD` bytes (protobuf's 2 GiB message limit) are written to
    `<path name>.data` next to the model (ONNX external data).
    """
    path = Path(path)
    model = build_onnx_model(net, opset=opset, dynamic=dynamic)
    weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    path.parent.mkdir(parents=True, exist_ok=True)
    if weight_bytes > EXTERNAL_DATA_THRESHOLD:
        data = path.with_name(path.name + ".data")
        data.unlink(missing_ok=True)   # onnx appends to an existing side file
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        onnx.checker.check_model(str(path))
    else:
        data = model.SerializeToString()   # serialised once, for the checker and the file
        onnx.checker.check_model(data)
        path.write_bytes(data)
    return path


# -- onnxruntime check ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OnnxCheck:
    """onnxruntime vs the PyTorch net on the same feeds.

    max_abs_err: per output, max |ort - torch|; max_rel_err: per output, max |ort - torch| / max(1, max |torch|).
    provider: the execution provider that ran the model; notice: a one-line note for the user (e.g. CPU fallback).
    """

    max_abs_err: dict[str, float]
    max_rel_err: dict[str, float]
    provider: str
    notice: str | None
    shapes: dict[str, tuple[int, ...]]

    @property
    def worst_rel_err(self) -> float:
        return max(self.max_rel_err.values(), default=0.0)

    def passed(self, tolerance: float = 1e-4) -> bool:
        return self.worst_rel_err <= tolerance


def random_rois(rng: np.random.Generator, count: int, *, batch: int, height: int, width: int) -> np.ndarray:
    """`count` valid ROIs [batch_index, x1, y1, x2, y2] (inclusive pixel corners) inside a height x width image."""
    x1 = rng.uniform(0, width - 2, count)
    y1 = rng.uniform(0, height - 2, count)
    x2 = np.minimum(x1 + rng.uniform(1, width, count), width - 1)
    y2 = np.minimum(y1 + rng.uniform(1, height, count), height - 1)
    index = rng.integers(0, batch, count)
    return np.stack([index, x1, y1, x2, y2], axis=1).astype(np.float32)


def default_feeds(net: CaffeNet, *, seed: int = 0, scale: float = 50.0) -> dict[str, np.ndarray]:
    """Seeded feeds of the declared input shapes: N(0, scale^2) images (Caffe nets see mean-subtracted 0..255
    pixels), and, for ROI inputs (second bottom of ROIPooling, or an (R, 5) input named like "rois"), at least 8
    valid ROIs inside the first 4-D input."""
    rng = np.random.default_rng(seed)
    shapes = net.graph.input_shapes
    roi_inputs = {layer.bottoms[1] for layer in net.layers_with_shapes
                  if layer.type == "ROIPooling" and len(layer.bottoms) > 1}
    image = next((s for n, s in shapes.items() if len(s) == 4 and n not in roi_inputs), (1, 3, 224, 224))
    feeds: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if name in roi_inputs or ("roi" in name.lower() and len(shape) == 2 and shape[1] == 5):
            feeds[name] = random_rois(rng, max(shape[0], 8), batch=image[0], height=image[2], width=image[3])
        else:
            feeds[name] = (rng.standard_normal(shape) * scale).astype(np.float32)
    return feeds


def _providers(ort: Any) -> tuple[list[Any], str | None]:
    """CUDA first when onnxruntime-gpu and a CUDA device are both there; otherwise CPU and a notice."""
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        return ["CPUExecutionProvider"], ("onnxruntime ran on CPU: this onnxruntime build has no "
                                          "CUDAExecutionProvider (install onnxruntime-gpu for GPU checks).")
    if not torch.cuda.is_available():
        return ["CPUExecutionProvider"], "onnxruntime ran on CPU: no CUDA device is available."
    if hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu loads CUDA/cuDNN from the nvidia-* wheels that torch also uses.
        try:
            ort.preload_dlls()
        except Exception:  # a failed preload shows up as the CPU fallback checked after session creation
            pass
    # TF32 (on by default in the CUDA EP) would put 1e-3 relative errors into a float32 parity check.
    return [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"], None


def check_onnx(net: CaffeNet, path: str | Path, feeds: Mapping[str, np.ndarray] | None = None, *,
               outputs: Iterable[str] | None = None) -> OnnxCheck:
    """Run the exported model in onnxruntime and compare with `net` (eval mode) on the same feeds.

    feeds: {input blob: array}; seeded random ones (`default_feeds`) when None.
    outputs: Caffe blob names to compare; default the model's outputs. Blobs that are not model outputs (e.g.
        "conv4") are fetched by adding them as outputs to a temporary copy of the model.
    """
    import onnxruntime as ort

    path = Path(path)
    feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in
             (default_feeds(net) if feeds is None else feeds).items()}
    model = onnx.load(str(path), load_external_data=False)
    graph_outputs = [o.name for o in model.graph.output]
    wanted = graph_outputs if outputs is None else list(outputs)
    extra = [name for name in wanted if name not in graph_outputs]
    providers, notice = _providers(ort)
    options = ort.SessionOptions()
    options.log_severity_level = 3   # below-22 pooling shape-inference warnings are known (module docstring)
    source: str | bytes = str(path)
    copy: Path | None = None
    if extra:
        model.graph.output.extend(_value_info(name, None) for name in extra)
        if any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer):
            # External data is found relative to the model file, so the copy must sit beside it.
            handle, name = tempfile.mkstemp(suffix=".onnx", prefix=f".{path.stem}-", dir=path.parent)
            os.close(handle)
            copy = Path(name)
            onnx.save_model(model, copy)
            source = str(copy)
        else:
            source = model.SerializeToString()
    try:
        session = ort.InferenceSession(source, options, providers=providers)
    finally:
        if copy is not None:
            copy.unlink(missing_ok=True)
    used = session.get_providers()[0]
    if len(providers) > 1 and used != "CUDAExecutionProvider":
        notice = "onnxruntime ran on CPU: CUDAExecutionProvider could not be created (CUDA/cuDNN libraries not found)."
    needed = {i.name for i in session.get_inputs()}
    ort_out = session.run(wanted, {k: v for k, v in feeds.items() if k in needed})
    device = next(chain(net.parameters(), net.buffers()), torch.empty(0)).device
    was_training, cudnn_tf32 = net.training, torch.backends.cudnn.allow_tf32
    net.eval()
    torch.backends.cudnn.allow_tf32 = False   # full float32 on the torch side too
    try:
        with torch.no_grad():
            ref = net(**{k: torch.from_numpy(v).to(device) for k, v in feeds.items()}, outputs=wanted)
    finally:
        net.train(was_training)
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
    abs_err, rel_err, shapes = {}, {}, {}
    for name, got in zip(wanted, ort_out):
        expected = ref[name].detach().to("cpu", torch.float64).numpy()
        if got.shape != expected.shape:
            raise CaffeImportError(f"ONNX output '{name}' has shape {got.shape} but the PyTorch net gives "
                                   f"{expected.shape} for the same feeds.")
        diff = float(np.abs(got.astype(np.float64) - expected).max()) if expected.size else 0.0
        scale = max(1.0, float(np.abs(expected).max())) if expected.size else 1.0
        abs_err[name], rel_err[name], shapes[name] = diff, diff / scale, tuple(got.shape)
    return OnnxCheck(abs_err, rel_err, used, notice, shapes)
