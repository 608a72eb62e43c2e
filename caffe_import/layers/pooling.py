"""Pooling (MAX / AVE), reproducing BVLC `src/caffe/layers/pooling_layer.cpp` (LayerSetUp, Reshape, Forward_cpu).

Caffe's pooling differs from PyTorch's in three places:

* output size: `ceil((size + 2*pad - kernel) / stride) + 1` (or floor with `round_mode: FLOOR`), then, only when
  the layer has *some* padding (`pad_h || pad_w`), every dimension whose last window would start at or past
  `size + pad` loses that window. PyTorch's `ceil_mode` applies that decrement even without padding, so the two
  disagree only when both pads are 0 and kernel < stride ("degenerate": Caffe keeps an empty last window);
* Caffe allows `pad < kernel`, PyTorch only `pad <= kernel // 2`;
* AVE divides by the window clipped to `[-pad, size + pad)`, i.e. it counts padding but not the ceil overhang
  (that is `count_include_pad=True` in PyTorch, whose CPU/CUDA kernels use the same formula).

So the converter emits native `nn.MaxPool2d` / `nn.AvgPool2d(ceil_mode, count_include_pad=True)` whenever they are
exact for every input size, and `CaffePool2d` (explicit padding to Caffe's implied extent) otherwise. `engine`
(CAFFE/CUDNN) is not read: we reproduce the CAFFE engine, which Caffe itself uses for every padded pooling layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from caffe_import.errors import CaffeImportError
from caffe_import.graph import Layer
from caffe_import.layers.registry import register
from caffe_import.proto import caffe_pb2

PP = caffe_pb2.PoolingParameter
Pair = tuple[int, int]


def caffe_pool_output_size(
    size: int | Sequence[int],
    kernel: int | Sequence[int],
    stride: int | Sequence[int],
    pad: int | Sequence[int],
    round_mode: str = "CEIL",
) -> int | tuple[int, ...]:
    """Caffe's pooled size (`PoolingLayer::Reshape`), per spatial dim.

        out = ceil((size + 2*pad - kernel) / stride) + 1        (round_mode CEIL, the default)
        out = floor((size + 2*pad - kernel) / stride) + 1       (round_mode FLOOR)
        if any pad of the layer is non-zero:  if (out - 1) * stride >= size + pad:  out -= 1   (each dim)

    The decrement is gated on the pads of *all* dims together (`if (pad_h_ || pad_w_)`), so pass the dims of one
    layer together as sequences; ints are one dim. Integer arithmetic (Caffe divides in float, which is exact for
    any realistic size). The result may be <= 0 when the padded input is smaller than the kernel.
    """
    if round_mode not in ("CEIL", "FLOOR"):
        raise ValueError(f"round_mode must be 'CEIL' or 'FLOOR', not {round_mode!r}")
    scalar = isinstance(size, int)
    sizes, kernels, strides, pads = ((v,) if isinstance(v, int) else tuple(v) for v in (size, kernel, stride, pad))
    outs = []
    for n, k, s, p in zip(sizes, kernels, strides, pads, strict=True):
        span = n + 2 * p - k
        outs.append((-(-span // s) if round_mode == "CEIL" else span // s) + 1)
    if any(pads):
        outs = [o - 1 if (o - 1) * s >= n + p else o for o, n, s, p in zip(outs, sizes, strides, pads)]
    return outs[0] if scalar else tuple(outs)


class CaffePool2d(nn.Module):
    """Caffe MAX/AVE pooling for the geometries PyTorch's pooling cannot express (pad > kernel//2, or the
    degenerate kernel < stride / pad 0 / CEIL case where Caffe keeps an empty last window).

    Shapes: (N, C, H, W) -> (N, C, H_out, W_out) with `caffe_pool_output_size`. The input is padded to the extent
    Caffe's windows imply, `pad` before and `(out - 1)*stride + kernel - size - pad` after (negative: cropped,
    those pixels are in no window), and pooled without padding:

    * MAX pads with the dtype's lowest value, Caffe's -FLT_MAX start value for float32, so a window lying
      wholly in the padding yields -FLT_MAX exactly as in Caffe. (Caffe also lets neither NaN nor -inf win
      against -FLT_MAX; PyTorch's max propagates them. Finite inputs are exact.)
    * AVE sums the zero-padded window and divides by Caffe's `pool_size = (hend - hstart) * (wend - wstart)` with
      `hstart = o*stride - pad`, `hend = min(hstart + kernel, size + pad)`, taken before clipping to the input.
      A window lying wholly past the input (degenerate case) would have pool_size <= 0 (Caffe divides by it and
      outputs NaN or -0): refused.

    All sizes come from the input at forward time; nothing is frozen at load time.
    """

    caffe_blobs: tuple[str, ...] = ()

    def __init__(self, method: str, kernel: Pair, stride: Pair, pad: Pair, round_mode: str, where: str) -> None:
        super().__init__()
        self.method, self.kernel, self.stride, self.pad, self.round_mode = method, kernel, stride, pad, round_mode
        self.where = where

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = (int(x.shape[-2]), int(x.shape[-1]))
        outs = caffe_pool_output_size(sizes, self.kernel, self.stride, self.pad, self.round_mode)
        if min(outs) <= 0:
            raise CaffeImportError(f"{self.where}: input of spatial size {sizes} gives an empty output {outs} "
                                   f"(kernel {self.kernel}, stride {self.stride}, pad {self.pad}).")
        after = [(o - 1) * s + k - n - p for o, s, k, n, p in zip(outs, self.stride, self.kernel, sizes, self.pad)]
        pads = (self.pad[1], after[1], self.pad[0], after[0])  # F.pad order: (left, right, top, bottom)
        if self.method == "MAX":
            padded = F.pad(x, pads, value=float(torch.finfo(x.dtype).min))
            return F.max_pool2d(padded, self.kernel, self.stride)
        extents = []
        for o, s, k, n, p in zip(outs, self.stride, self.kernel, sizes, self.pad):
            last = min(k, n + p - (o - 1) * s)   # the smallest window is the last one
            if last <= 0:
                raise CaffeImportError(
                    f"{self.where}: AVE pooling with kernel {self.kernel}, stride {self.stride} and pad 0 on an input "
                    f"of size {sizes}: Caffe's last window (CEIL rounding) lies wholly outside the input and Caffe "
                    f"divides by a pool size of {last} there (NaN / -0 outputs). Refusing to reproduce that; use "
                    "round_mode: FLOOR, a kernel >= stride, or an input size that avoids the empty window."
                )
            starts = torch.arange(o, device=x.device) * s - p
            extents.append(torch.clamp(starts + k, max=n + p) - starts)
        divisor = (extents[0][:, None] * extents[1][None, :]).to(x.dtype)
        total = F.avg_pool2d(F.pad(x, pads), self.kernel, self.stride, divisor_override=1)
        return total / divisor

    def extra_repr(self) -> str:
        return (f"{self.method}, kernel={self.kernel}, stride={self.stride}, pad={self.pad}, "
                f"round_mode={self.round_mode}")


def _pair(p: caffe_pb2.PoolingParameter, name: str, default: int, layer: Layer) -> Pair:
    """Caffe's `name` OR `name_h` and `name_w` rule (pooling_layer.cpp LayerSetUp CHECKs)."""
    has_h, has_w = p.HasField(f"{name}_h"), p.HasField(f"{name}_w")
    if has_h or has_w:
        if p.HasField(name) or not (has_h and has_w):
            raise CaffeImportError(f"{layer.where()}: pooling_param needs either {name} or both {name}_h and "
                                   f"{name}_w (Caffe refuses other combinations).")
        return getattr(p, f"{name}_h"), getattr(p, f"{name}_w")
    value = getattr(p, name) if p.HasField(name) else default
    return value, value


def _refuse(layer: Layer, message: str) -> CaffeImportError:
    return CaffeImportError(f"{layer.where()}: {message}")


@register("Pooling")
def pooling(layer: Layer) -> nn.Module:
    p = layer.param.pooling_param
    if p.pool == PP.STOCHASTIC:
        raise _refuse(layer, f"STOCHASTIC pooling is not supported (layer '{layer.name}'); Caffe samples windows "
                             "at random in TRAIN and uses an activation-weighted average at TEST.")
    method = "MAX" if p.pool == PP.MAX else "AVE"
    if len(layer.bottoms) != 1:
        raise _refuse(layer, f"Pooling takes one bottom, got {len(layer.bottoms)}.")
    if len(layer.tops) != 1:
        raise _refuse(layer, "a second top (the MAX pooling argmax mask) is not supported; drop it from the prototxt.")
    if len(layer.in_shapes[0]) != 4:
        raise _refuse(layer, f"Pooling needs a 4-D (N, C, H, W) bottom, got shape {layer.in_shapes[0]}.")
    stride, pad = _pair(p, "stride", 1, layer), _pair(p, "pad", 0, layer)
    if p.global_pooling:
        if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
            raise _refuse(layer, "global_pooling: true with a kernel size; Caffe refuses that (drop kernel_size).")
        if pad != (0, 0) or stride != (1, 1):
            raise _refuse(layer, f"global_pooling: true needs pad 0 and stride 1, got pad {pad}, stride {stride}.")
        module: nn.Module = nn.AdaptiveMaxPool2d(1) if method == "MAX" else nn.AdaptiveAvgPool2d(1)
        module.caffe_blobs = ()
        return module
    if p.HasField("kernel_size") == (p.HasField("kernel_h") and p.HasField("kernel_w")) or (
            p.HasField("kernel_h") != p.HasField("kernel_w")):
        raise _refuse(layer, "pooling_param needs either kernel_size or both kernel_h and kernel_w.")
    kernel = (p.kernel_size, p.kernel_size) if p.HasField("kernel_size") else (p.kernel_h, p.kernel_w)
    if min(kernel) <= 0 or min(stride) <= 0:
        raise _refuse(layer, f"kernel {kernel} and stride {stride} must be positive.")
    if any(pad) and (pad[0] >= kernel[0] or pad[1] >= kernel[1]):
        raise _refuse(layer, f"pad {pad} >= kernel {kernel}; Caffe requires pad < kernel (CHECK_LT in "
                             "pooling_layer.cpp).")
    round_mode = "CEIL" if p.round_mode == PP.CEIL else "FLOOR"
    # Native pooling is exact for every input size unless pad > kernel // 2 (PyTorch refuses it) or the degenerate
    # CEIL / pad 0 / kernel < stride geometry (PyTorch drops Caffe's empty last window); see the module docstring.
    degenerate = round_mode == "CEIL" and pad == (0, 0) and (kernel[0] < stride[0] or kernel[1] < stride[1])
    if degenerate or pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
        return CaffePool2d(method, kernel, stride, pad, round_mode, layer.where())
    ceil_mode = round_mode == "CEIL"
    if method == "MAX":
        module = nn.MaxPool2d(kernel, stride, pad, ceil_mode=ceil_mode)
    else:
        module = nn.AvgPool2d(kernel, stride, pad, ceil_mode=ceil_mode, count_include_pad=True)
    module.caffe_blobs = ()
    return module
