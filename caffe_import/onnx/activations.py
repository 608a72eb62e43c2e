"""Element-wise layers: ReLU, PReLU, Sigmoid, TanH, AbsVal, BNLL, ELU, Power, Exp, Log, Threshold, Clip, Dropout
(TEST phase), with the same formulas as `caffe_import.layers.activations`."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, numpy_helper
from torch import nn

from caffe_import.graph import Layer
from caffe_import.layers.activations import _c_pow
from caffe_import.onnx.builder import Builder
from caffe_import.onnx.registry import Emitter, emits


def _unary(op_type: str) -> Emitter:
    def emit(b: Builder, layer: Layer, m: nn.Module) -> None:
        b.op(op_type, b.inputs(layer)[0], out=b.outputs(layer)[0])

    return emit


emits("Sigmoid")(_unary("Sigmoid"))
emits("TanH")(_unary("Tanh"))
emits("AbsVal")(_unary("Abs"))
emits("BNLL")(_unary("Softplus"))  # log(1 + exp(x)); onnxruntime's kernel does not overflow for large x


@emits("ReLU")
def _relu(b: Builder, layer: Layer, m: nn.Module) -> None:
    (x,), (y,) = b.inputs(layer), b.outputs(layer)
    if isinstance(m, nn.LeakyReLU):
        b.op("LeakyRelu", x, out=y, alpha=float(m.negative_slope))
    else:
        b.op("Relu", x, out=y)


@emits("PReLU")
def _prelu(b: Builder, layer: Layer, m: nn.Module) -> None:
    (x,), (y,) = b.inputs(layer), b.outputs(layer)
    rank = len(layer.in_shapes[0])
    shape = (1,) if m.weight.dim() == 0 else (m.weight.shape[0],) + (1,) * (rank - 2)
    b.op("PRelu", x, b.weight(m, "weight", shape), out=y)


@emits("ELU")
def _elu(b: Builder, layer: Layer, m: nn.Module) -> None:
    b.op("Elu", b.inputs(layer)[0], out=b.outputs(layer)[0], alpha=float(m.alpha))


@emits("Power")
def _power(b: Builder, layer: Layer, m: nn.Module) -> None:
    """(shift + scale * x) ** power; a constant map when power * scale == 0, as `PowerLayer` does."""
    (x,), (y,) = b.inputs(layer), b.outputs(layer)
    if m.power * m.scale == 0:
        value = 1.0 if m.power == 0 else _c_pow(m.shift, m.power)
        b.op("ConstantOfShape", b.shape(x), out=y,
             value=numpy_helper.from_array(np.array([value], np.float32)))
        return
    _steps(b, x, [("Mul", m.scale, 1, "mul"), ("Add", m.shift, 0, "add"), ("Pow", m.power, 1, "pow")], out=y)


def _steps(b: Builder, x: str, steps: list[tuple[str, float, float, str]], *, out: str | None = None) -> str:
    """x -> op(x, constant) -> ... for each (op, constant, identity value, hint) whose constant is not the identity;
    the last node writes `out` (an Identity node when every step is skipped and `out` is given)."""
    kept = [(op_type, value, hint) for op_type, value, identity, hint in steps if value != identity]
    if not kept and out is not None:
        return b.op("Identity", x, out=out)
    for i, (op_type, value, hint) in enumerate(kept):
        x = b.op(op_type, x, b.const(value, hint=hint), out=out if i == len(kept) - 1 else None)
    return x


def _around(b: Builder, x: str, y: str, op_type: str, before: list[tuple[str, float, float, str]],
            scale: tuple[float, str]) -> None:
    """y = op(steps(x)) * scale (the Mul left out when scale is 1)."""
    inner = _steps(b, x, before)
    if scale[0] == 1:
        b.op(op_type, inner, out=y)
    else:
        b.op("Mul", b.op(op_type, inner), b.const(scale[0], hint=scale[1]), out=y)


@emits("Exp")
def _exp(b: Builder, layer: Layer, m: nn.Module) -> None:
    """outer * exp(inner * x), inner = ln(base) * scale, outer = base ** shift (as the converter resolved them)."""
    (x,), (y,) = b.inputs(layer), b.outputs(layer)
    _around(b, x, y, "Exp", [("Mul", m.inner, 1, "inner")], (m.outer, "outer"))


@emits("Log")
def _log(b: Builder, layer: Layer, m: nn.Module) -> None:
    """ln(shift + scale * x) / ln(base)."""
    (x,), (y,) = b.inputs(layer), b.outputs(layer)
    _around(b, x, y, "Log", [("Mul", m.scale, 1, "mul"), ("Add", m.shift, 0, "add")], (m.base_scale, "base_scale"))


@emits("Threshold")
def _threshold(b: Builder, layer: Layer, m: nn.Module) -> None:
    (x,), (y,) = b.inputs(layer), b.outputs(layer)
    b.op("Cast", b.op("Greater", x, b.const(m.threshold, hint="threshold")), out=y, to=TensorProto.FLOAT)


@emits("Clip")
def _clip(b: Builder, layer: Layer, m: nn.Module) -> None:
    """max(min, min(x, max)) in Caffe's order (min wins when min > max), and NaN -> min."""
    (x,), (y,) = b.inputs(layer), b.outputs(layer)
    low = b.const(m.low, hint="min")
    clipped = b.op("Max", b.op("Min", x, b.const(m.high, hint="max")), low)
    b.op("Where", b.op("IsNaN", x), low, clipped, out=y)


@emits("Dropout")
def _dropout(b: Builder, layer: Layer, m: nn.Module) -> None:
    """TEST phase: identity, or x * (1 - p) for the Fast R-CNN fork's `scale_train: false`."""
    (x,), (y,) = b.inputs(layer), b.outputs(layer)
    if isinstance(m, nn.Dropout):
        b.op("Identity", x, out=y)
    else:
        b.op("Mul", x, b.const(1.0 - m.p, hint="keep"), out=y)
