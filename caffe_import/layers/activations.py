"""Element-wise ("neuron") layers and Dropout.

Reproduces BVLC `src/caffe/layers/{relu,prelu,sigmoid,tanh,absval,power,exp,log,bnll,elu,threshold,clip}_layer.cpp`
and `dropout_layer.cpp`, plus the Fast R-CNN fork's `DropoutParameter.scale_train` (rbgirshick/caffe-fast-rcnn,
branch faster-rcnn, `src/caffe/layers/dropout_layer.cpp`). `engine` fields (CAFFE/CUDNN) pick an implementation
of the same formula, so they are accepted as they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from caffe_import.errors import CaffeImportError
from caffe_import.graph import Layer
from caffe_import.layers.registry import register
from caffe_import.proto import caffe_pb2


def stateless(module: nn.Module) -> nn.Module:
    """Mark a native torch module as a converter result without Caffe blobs."""
    module.caffe_blobs = ()
    return module


def _rank_at_least_2(layer: Layer) -> None:
    if layer.in_shapes and len(layer.in_shapes[0]) < 2:
        raise CaffeImportError(f"{layer.where()}: needs a bottom with at least 2 axes (N, C, ...), got shape "
                               f"{layer.in_shapes[0]}; Caffe refuses it too.")


@register("ReLU")
def relu(layer: Layer) -> nn.Module:
    # Caffe: y = max(x, 0) + negative_slope * min(x, 0), i.e. a leaky ReLU when the slope is non-zero.
    slope = layer.param.relu_param.negative_slope
    return stateless(nn.LeakyReLU(slope) if slope != 0 else nn.ReLU())


class CaffePReLU(nn.Module):
    """Caffe PReLU: y = max(x, 0) + a_c * min(x, 0) with one slope per channel (axis 1), or one shared slope.

    The blob is (C,) or, with `channel_shared`, a 0-axis blob of one value (Caffe `Blob(vector<int>(0))`).
    """

    caffe_blobs = ("weight",)

    def __init__(self, channels: int, channel_shared: bool, filler: caffe_pb2.FillerParameter) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(() if channel_shared else (channels,)))
        self.caffe_fillers = (filler,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.prelu(x, self.weight.reshape(-1).to(x.dtype))


@register("PReLU")
def prelu(layer: Layer) -> nn.Module:
    _rank_at_least_2(layer)
    p = layer.param.prelu_param
    # PReLULayer::LayerSetUp: without a filler the slopes start at constant 0.25 (not FillerParameter's 0).
    filler = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(type="constant", value=0.25)
    return CaffePReLU(layer.in_shapes[0][1], p.channel_shared, filler)


@register("Sigmoid")
def sigmoid(layer: Layer) -> nn.Module:
    return stateless(nn.Sigmoid())


@register("TanH")
def tanh(layer: Layer) -> nn.Module:
    return stateless(nn.Tanh())


class CaffeAbsVal(nn.Module):
    """Caffe AbsVal: y = |x|."""

    caffe_blobs = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs()


@register("AbsVal")
def absval(layer: Layer) -> nn.Module:
    return CaffeAbsVal()


class CaffePower(nn.Module):
    """Caffe Power: y = (shift + scale * x) ** power.

    Like `PowerLayer::Forward_cpu`, when power * scale == 0 the input is ignored (even NaN/inf) and every output is
    1 (power 0) or shift ** power (scale 0); the multiply, add and pow are skipped when they are identities.
    """

    caffe_blobs = ()

    def __init__(self, power: float, scale: float, shift: float) -> None:
        super().__init__()
        self.power, self.scale, self.shift = power, scale, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.power * self.scale == 0:
            value = 1.0 if self.power == 0 else _c_pow(self.shift, self.power)
            return torch.full_like(x, value)
        y = x
        if self.scale != 1:
            y = y * self.scale
        if self.shift != 0:
            y = y + self.shift
        if self.power != 1:
            y = y.pow(self.power)
        return y

    def extra_repr(self) -> str:
        return f"power={self.power}, scale={self.scale}, shift={self.shift}"


def _c_pow(base: float, exponent: float) -> float:
    """C `pow` for the constant path: NaN for a negative base with a fractional exponent, inf for 0 ** negative."""
    try:
        value = base ** exponent
    except ZeroDivisionError:
        return math.inf
    return math.nan if isinstance(value, complex) else float(value)


@register("Power")
def power(layer: Layer) -> nn.Module:
    p = layer.param.power_param
    return CaffePower(p.power, p.scale, p.shift)


def _log_base(layer: Layer, base: float) -> float:
    # base == -1 means e, with log(base) = 1 exactly (ExpLayer / LogLayer::LayerSetUp).
    if base == -1:
        return 1.0
    if not base > 0:
        raise CaffeImportError(f"{layer.where()}: base = {base} must be strictly positive (or -1 for e).")
    return math.log(base)


class CaffeExp(nn.Module):
    """Caffe Exp: y = base ** (shift + scale * x), computed as outer * exp(inner * x) with inner = ln(base) * scale
    and outer = base ** shift (base = e when `base` is -1)."""

    caffe_blobs = ()

    def __init__(self, inner: float, outer: float) -> None:
        super().__init__()
        self.inner, self.outer = inner, outer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.exp() if self.inner == 1 else (x * self.inner).exp()
        return y if self.outer == 1 else y * self.outer

    def extra_repr(self) -> str:
        return f"inner={self.inner}, outer={self.outer}"


@register("Exp")
def exp(layer: Layer) -> nn.Module:
    p = layer.param.exp_param
    log_base = _log_base(layer, p.base)
    outer = 1.0 if p.shift == 0 else (math.exp(p.shift) if p.base == -1 else p.base ** p.shift)
    return CaffeExp(log_base * p.scale, outer)


class CaffeLog(nn.Module):
    """Caffe Log: y = log_base(shift + scale * x) = ln(shift + scale * x) / ln(base) (base = e when -1)."""

    caffe_blobs = ()

    def __init__(self, scale: float, shift: float, base_scale: float) -> None:
        super().__init__()
        self.scale, self.shift, self.base_scale = scale, shift, base_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.scale != 1:
            y = y * self.scale
        if self.shift != 0:
            y = y + self.shift
        y = y.log()
        return y if self.base_scale == 1 else y * self.base_scale

    def extra_repr(self) -> str:
        return f"scale={self.scale}, shift={self.shift}, base_scale={self.base_scale}"


@register("Log")
def log(layer: Layer) -> nn.Module:
    p = layer.param.log_param
    log_base = _log_base(layer, p.base)
    if log_base == 0:
        raise CaffeImportError(f"{layer.where()}: base = 1 gives log(base) = 0, a division by zero.")
    return CaffeLog(p.scale, p.shift, 1.0 / log_base)


@register("BNLL")
def bnll(layer: Layer) -> nn.Module:
    # Caffe: y = x + log(1 + exp(-x)) for x > 0 else log(1 + exp(x)), i.e. softplus. torch switches to y = x above
    # 20, where log(1 + exp(-x)) < 2.1e-9 is already below half a float32 ulp of x.
    return stateless(nn.Softplus(beta=1.0, threshold=20.0))


@register("ELU")
def elu(layer: Layer) -> nn.Module:
    # Caffe: y = max(x, 0) + alpha * (exp(min(x, 0)) - 1), which is torch's ELU.
    return stateless(nn.ELU(alpha=layer.param.elu_param.alpha))


class CaffeThreshold(nn.Module):
    """Caffe Threshold: y = 1 if x > threshold else 0 (a strict comparison; NaN gives 0)."""

    caffe_blobs = ()

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > self.threshold).to(x.dtype)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


@register("Threshold")
def threshold(layer: Layer) -> nn.Module:
    return CaffeThreshold(layer.param.threshold_param.threshold)


class CaffeClip(nn.Module):
    """Caffe Clip: y = max(min, min(x, max)) with C++ `std::min`/`std::max`.

    That order differs from `torch.clamp` in two corners: min > max gives min (torch gives max), and NaN gives min
    (`std::min(NaN, max)` is NaN, `std::max(min, NaN)` is min); torch would propagate NaN.
    """

    caffe_blobs = ()

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        self.low, self.high = low, high

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.clamp(max=self.high).clamp(min=self.low)
        return torch.where(torch.isnan(x), torch.full_like(y, self.low), y)

    def extra_repr(self) -> str:
        return f"min={self.low}, max={self.high}"


@register("Clip")
def clip(layer: Layer) -> nn.Module:
    p = layer.param.clip_param
    missing = [name for name in ("min", "max") if not p.HasField(name)]
    if missing:
        raise CaffeImportError(f"{layer.where()}: clip_param.{missing[0]} is required (caffe.proto ClipParameter).")
    return CaffeClip(p.min, p.max)


class CaffeDropout(nn.Module):
    """Dropout of the Fast R-CNN fork with `scale_train: false` (BVLC's default uses `nn.Dropout`).

    TRAIN: y = x * mask, mask ~ Bernoulli(1 - p), with no 1/(1 - p) rescaling; TEST: y = x * (1 - p). (With
    `scale_train: true`, BVLC's y = x * mask / (1 - p) in TRAIN and y = x in TEST.) `self.training` plays Caffe's phase.
    """

    caffe_blobs = ()

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return x * torch.bernoulli(torch.full_like(x, 1.0 - self.p))
        return x * (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, scale_train=False"


@register("Dropout")
def dropout(layer: Layer) -> nn.Module:
    p = layer.param.dropout_param
    ratio = p.dropout_ratio
    if not 0.0 <= ratio < 1.0:
        raise CaffeImportError(f"{layer.where()}: dropout_ratio = {ratio} must lie in [0, 1).")
    if p.scale_train:
        return stateless(nn.Dropout(ratio))
    return CaffeDropout(ratio)
