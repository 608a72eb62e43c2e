"""Normalisation and affine layers: BatchNorm, Scale, Bias, MVN, Softmax.

Reproduces BVLC `src/caffe/layers/batch_norm_layer.cpp`, `scale_layer.cpp`, `bias_layer.cpp`, `mvn_layer.cpp` and
`softmax_layer.cpp`. Caffe's BatchNorm has no affine part (that is the following Scale layer) and stores its
statistics as raw running sums with a third blob that normalises them, so we keep the three blobs raw and divide at
forward time.
"""

from __future__ import annotations

import torch
from torch import nn

from caffe_import.errors import CaffeImportError
from caffe_import.graph import Layer
from caffe_import.layers.activations import stateless
from caffe_import.layers.registry import register
from caffe_import.proto import caffe_pb2


def canonical_axis(layer: Layer, axis: int, rank: int, field: str) -> int:
    """Caffe `Blob::CanonicalAxisIndex`: -rank <= axis < rank, negative axes count from the end."""
    if not -rank <= axis < rank:
        raise CaffeImportError(f"{layer.where()}: {field} = {axis} is out of range for a {rank}-D bottom.")
    return axis + rank if axis < 0 else axis


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # Statistics of half/bfloat16 activations are taken in float32, as Caffe's blobs are float32.
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


class CaffeBatchNorm(nn.Module):
    """Caffe BatchNorm (no affine part), per channel of axis 1 over N and all spatial positions.

    Blobs, stored raw as Caffe stores them: running_mean_sum (C,), running_var_sum (C,), scale_factor (1,).
    Global statistics (TEST, or `use_global_stats: true`): factor = 0 if s == 0 else 1 / s, mean = mean_sum * factor,
    var = var_sum * factor, y = (x - mean) / sqrt(var + eps).
    Batch statistics (TRAIN): mean = E[x], var = E[(x - mean)^2] (biased) normalise the batch, and the blobs are
    updated as `Forward_cpu` does: s = s * maf + 1, mean_sum = mean_sum * maf + mean,
    var_sum = var_sum * maf + m / (m - 1) * var with m = N * spatial (1 when m == 1).
    Without an explicit `use_global_stats`, `self.training` plays Caffe's phase (TRAIN -> batch statistics).
    """

    caffe_blobs = ("running_mean_sum", "running_var_sum", "scale_factor")

    def __init__(self, channels: int, eps: float, moving_average_fraction: float,
                 use_global_stats: bool | None) -> None:
        super().__init__()
        self.eps, self.moving_average_fraction, self.use_global_stats = eps, moving_average_fraction, use_global_stats
        self.register_buffer("running_mean_sum", torch.empty(channels))
        self.register_buffer("running_var_sum", torch.empty(channels))
        self.register_buffer("scale_factor", torch.empty(1))
        self.caffe_fillers = (None, None, None)  # Caffe initialises all three blobs to 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = self.running_mean_sum.shape[0]
        if x.dim() < 2 or x.shape[1] != channels:
            raise CaffeImportError(f"BatchNorm over {channels} channels got a bottom of shape {tuple(x.shape)}.")
        view = (1, channels) + (1,) * (x.dim() - 2)
        dtype = _compute_dtype(x)
        xc = x.to(dtype)
        use_global = (not self.training) if self.use_global_stats is None else self.use_global_stats
        if use_global:
            s = self.scale_factor.to(dtype)
            factor = torch.where(s == 0, torch.zeros_like(s), 1.0 / s)
            mean = (self.running_mean_sum.to(dtype) * factor).reshape(view)
            var = (self.running_var_sum.to(dtype) * factor).reshape(view)
        else:
            dims = [0] + list(range(2, x.dim()))
            mean = xc.mean(dim=dims, keepdim=True)
            var = (xc - mean).square().mean(dim=dims, keepdim=True)
            self._update(mean.detach().reshape(-1), var.detach().reshape(-1), x.numel() // channels)
        return ((xc - mean) / torch.sqrt(var + self.eps)).to(x.dtype)

    @torch.no_grad()
    def _update(self, mean: torch.Tensor, var: torch.Tensor, m: int) -> None:
        maf = self.moving_average_fraction
        correction = m / (m - 1) if m > 1 else 1.0
        self.scale_factor.mul_(maf).add_(1.0)
        self.running_mean_sum.mul_(maf).add_(mean.to(self.running_mean_sum.dtype))
        self.running_var_sum.mul_(maf).add_(var.to(self.running_var_sum.dtype) * correction)

    def extra_repr(self) -> str:
        return (f"{self.running_mean_sum.shape[0]}, eps={self.eps}, moving_average_fraction="
                f"{self.moving_average_fraction}, use_global_stats={self.use_global_stats}")


@register("BatchNorm")
def batch_norm(layer: Layer) -> nn.Module:
    p = layer.param.batch_norm_param
    shape = layer.in_shapes[0]
    if len(shape) < 2:
        raise CaffeImportError(f"{layer.where()}: needs a bottom with a channel axis (N, C, ...), got shape {shape}.")
    # Caffe refuses statistics that are learned (BatchNormLayer::LayerSetUp CHECKs lr_mult == 0).
    for i, spec in enumerate(layer.param.param[:3]):
        if spec.HasField("lr_mult") and spec.lr_mult != 0:
            raise CaffeImportError(f"{layer.where()}: param[{i}].lr_mult = {spec.lr_mult}; Caffe requires 0 for the "
                                   "BatchNorm statistics ('Cannot configure batch normalization statistics as layer "
                                   "parameters').")
    use_global = p.use_global_stats if p.HasField("use_global_stats") else None
    return CaffeBatchNorm(shape[1], p.eps, p.moving_average_fraction, use_global)


def _affine_shape(layer: Layer, axis: int, num_axes: int, field: str) -> tuple[int, tuple[int, ...]]:
    """(canonical axis, blob shape) of a learned Scale/Bias blob: bottom shape[axis : axis + num_axes]."""
    shape = layer.in_shapes[0]
    axis = canonical_axis(layer, axis, len(shape), f"{field}.axis")
    if num_axes < -1:
        raise CaffeImportError(f"{layer.where()}: {field}.num_axes = {num_axes}; it must be >= 0, or -1 for all.")
    end = len(shape) if num_axes == -1 else axis + num_axes
    if end > len(shape):
        raise CaffeImportError(f"{layer.where()}: {field} axis {axis} + num_axes {num_axes} extends past the "
                               f"{len(shape)}-D bottom {shape}.")
    return axis, tuple(shape[axis:end])


def _broadcast(x: torch.Tensor, blob: torch.Tensor, axis: int, where: str) -> torch.Tensor:
    """`blob` viewed so that it multiplies/adds along x.shape[axis : axis + blob.dim()] (axis 0 for a scalar)."""
    if blob.dim() == 0:
        return blob.to(x.dtype)
    if tuple(x.shape[axis:axis + blob.dim()]) != tuple(blob.shape):
        raise CaffeImportError(f"{where}: blob of shape {tuple(blob.shape)} does not match bottom {tuple(x.shape)} "
                               f"from axis {axis}.")
    view = (1,) * axis + tuple(blob.shape) + (1,) * (x.dim() - axis - blob.dim())
    return blob.reshape(view).to(x.dtype)


class CaffeScale(nn.Module):
    """Caffe Scale: y = x * s (+ b), s broadcast along x.shape[axis : axis + s.dim()].

    One bottom: s is the learned blob `weight` (filler default constant 1); two bottoms: s is the second bottom.
    `bias_term` adds the learned `bias` of the same shape (Caffe runs an inner Bias layer; filler default 0).
    """

    def __init__(self, axis: int, weight_shape: tuple[int, ...] | None, bias_shape: tuple[int, ...] | None,
                 fillers: tuple[caffe_pb2.FillerParameter | None, ...], where: str) -> None:
        super().__init__()
        self.axis, self.where = axis, where
        names = []
        if weight_shape is not None:
            self.weight = nn.Parameter(torch.empty(weight_shape))
            names.append("weight")
        if bias_shape is not None:
            self.bias = nn.Parameter(torch.empty(bias_shape))
            names.append("bias")
        self.caffe_blobs = tuple(names)
        self.caffe_fillers = fillers

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        s = self.weight if scale is None else scale
        # Caffe sets the axis to 0 for a scalar scale; a bias then is a scalar too.
        axis = 0 if s.dim() == 0 else self.axis
        y = x * _broadcast(x, s, axis, self.where)
        if "bias" in self.caffe_blobs:
            y = y + _broadcast(x, self.bias, axis, self.where)
        return y

    def extra_repr(self) -> str:
        return f"axis={self.axis}, blobs={self.caffe_blobs}"


@register("Scale")
def scale(layer: Layer) -> nn.Module:
    p = layer.param.scale_param
    if len(layer.bottoms) not in (1, 2):
        raise CaffeImportError(f"{layer.where()}: takes 1 or 2 bottoms, got {len(layer.bottoms)}.")
    fillers: list[caffe_pb2.FillerParameter | None] = []
    if len(layer.bottoms) == 1:
        axis, weight_shape = _affine_shape(layer, p.axis, p.num_axes, "scale_param")
        fillers.append(p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(type="constant", value=1.0))
        bias_axes = p.num_axes
    else:
        weight_shape = None
        axis = canonical_axis(layer, p.axis, len(layer.in_shapes[0]), "scale_param.axis")
        bias_axes = len(layer.in_shapes[1])
    bias_shape = None
    if p.bias_term:
        _, bias_shape = _affine_shape(layer, p.axis, bias_axes, "scale_param")
        fillers.append(p.bias_filler if p.HasField("bias_filler") else None)
    return CaffeScale(axis, weight_shape, bias_shape, tuple(fillers), layer.where())


class CaffeBias(nn.Module):
    """Caffe Bias: y = x + b, b broadcast along x.shape[axis : axis + b.dim()]; b is the learned blob `bias` (one
    bottom, filler default constant 0) or the second bottom."""

    def __init__(self, axis: int, bias_shape: tuple[int, ...] | None, filler: caffe_pb2.FillerParameter | None,
                 where: str) -> None:
        super().__init__()
        self.axis, self.where = axis, where
        if bias_shape is not None:
            self.bias = nn.Parameter(torch.empty(bias_shape))
        self.caffe_blobs = ("bias",) if bias_shape is not None else ()
        self.caffe_fillers = (filler,)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        b = self.bias if bias is None else bias
        return x + _broadcast(x, b, 0 if b.dim() == 0 else self.axis, self.where)

    def extra_repr(self) -> str:
        return f"axis={self.axis}"


@register("Bias")
def bias(layer: Layer) -> nn.Module:
    p = layer.param.bias_param
    if len(layer.bottoms) == 1:
        axis, shape = _affine_shape(layer, p.axis, p.num_axes, "bias_param")
        return CaffeBias(axis, shape, p.filler if p.HasField("filler") else None, layer.where())
    if len(layer.bottoms) == 2:
        return CaffeBias(canonical_axis(layer, p.axis, len(layer.in_shapes[0]), "bias_param.axis"), None, None,
                         layer.where())
    raise CaffeImportError(f"{layer.where()}: takes 1 or 2 bottoms, got {len(layer.bottoms)}.")


class CaffeMVN(nn.Module):
    """Caffe MVN (mean-variance normalisation), per sample (`across_channels`) or per sample and channel.

    y = x - E[x]; with `normalize_variance`, y = (x - E[x]) / (sqrt(E[(x - E[x])^2]) + eps): eps is added to the
    standard deviation, not the variance. Statistics over (C, H, W) or (H, W) respectively.
    """

    caffe_blobs = ()

    def __init__(self, normalize_variance: bool, across_channels: bool, eps: float) -> None:
        super().__init__()
        self.normalize_variance, self.across_channels, self.eps = normalize_variance, across_channels, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Caffe uses the legacy num()/channels() accessors: a 1-D blob is (N, 1, 1, 1).
        rows = x.shape[0] if self.across_channels or x.dim() < 2 else x.shape[0] * x.shape[1]
        dtype = _compute_dtype(x)
        flat = x.to(dtype).reshape(rows, -1)
        y = flat - flat.mean(dim=1, keepdim=True)
        if self.normalize_variance:
            y = y / (y.square().mean(dim=1, keepdim=True).sqrt() + self.eps)
        return y.reshape(x.shape).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"normalize_variance={self.normalize_variance}, across_channels={self.across_channels}, "
                f"eps={self.eps}")


@register("MVN")
def mvn(layer: Layer) -> nn.Module:
    rank = len(layer.in_shapes[0])
    if rank > 4:
        raise CaffeImportError(f"{layer.where()}: MVN works on blobs of at most 4 axes (Caffe's legacy accessors), "
                               f"got shape {layer.in_shapes[0]}.")
    p = layer.param.mvn_param
    return CaffeMVN(p.normalize_variance, p.across_channels, p.eps)


@register("Softmax")
def softmax(layer: Layer) -> nn.Module:
    # Caffe: an independent softmax along ONE axis (default 1, channels) for every position of the other axes.
    axis = canonical_axis(layer, layer.param.softmax_param.axis, len(layer.in_shapes[0]), "softmax_param.axis")
    return stateless(nn.Softmax(dim=axis))

