"""Frozen-feature taps of the linear probes: which AlexNet blobs are read and how each is shrunk to ~9K dimensions.

Two published ways of shrinking a tap, both selectable:

* ``bilinear`` (the paper's protocol, Table 4 caption: "the features of each layer are spatially resized until there
  are fewer than 9K dimensions left"; Noroozi et al. "use the publicly available code and configuration of [39]"):
  richzhang/colorization ``feature_learning_tests/linear/train_val.prototxt@4617507``, one ``Resize`` layer per tap
  with ``resize_param { height width }``: conv1 10x10 (9600), pool1 10x10 (9600), conv2 6x6 (9216), pool2 6x6
  (9216), conv3 5x5 (9600), conv4 5x5 (9600), conv5 6x6 (9216), pool5 at its native 6x6 (9216, no Resize layer).
  The README of that repository says this bilinear resizing replaced the average pooling of the ECCV'16 paper.
  The source of the Caffe fork's ``Resize`` layer was not found, so its sampling grid is a choice: half-pixel
  centres without antialiasing (``F.interpolate(mode="bilinear", align_corners=False)``, OpenCV's INTER_LINEAR),
  or ``align_corners=True``; the choice is recorded in every result's stamp. It is computed as two interpolation
  matrices (`bilinear_resize`).
* ``avgpool`` (VISSL's AlexNet linear benchmark, Goyal et al. 2019): ``nn.AvgPool2d(kernel, stride, 0)`` per tap,
  with the kernels of ``configs/config/benchmark/linear_image_classification/imagenet1k/models/`` @ VISSL:
  ``alexnet_bvlc_supervised.yaml`` for a stride-4 conv1 (conv1 k19 s4, conv2 k12 s3, conv3/conv4 k9 s1, conv5 k8 s1)
  and ``alexnet_jigsaw.yaml`` for a stride-2 conv1 (conv1 k28 s9, conv2 k24 s6, conv3/conv4 k14 s3, conv5 k16 s2);
  both give 9600 / 9216 / 9600 / 9600 / 9216 dimensions at a 227-pixel input. VISSL defines no pool taps.

Every tap's output is (N, C, s, s); the probe head flattens it in Caffe's (C, H, W) order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from caffe_import.layers.pooling import caffe_pool_output_size
from jigsawpp.models import CaffeAlexNet

__all__ = ["AVGPOOL_KERNELS", "CONV_TAPS", "POOL_TAPS", "RESIZE_SIZES", "ProbeTaps", "TapSpec", "bilinear_resize",
           "blob_shapes", "resize_matrix", "tap_specs"]

ResizeMode = Literal["bilinear", "avgpool"]

# The columns of Tables 4 and 5, and the extra blobs Zhang et al.'s prototxt also probes.
CONV_TAPS = ("conv1", "conv2", "conv3", "conv4", "conv5")
POOL_TAPS = ("pool1", "pool2", "pool5")

# Output side of each Resize layer (richzhang/colorization feature_learning_tests/linear/train_val.prototxt@4617507);
# pool5 has no Resize layer there: its native 6x6 at a 227 input with a stride-4 conv1.
RESIZE_SIZES: dict[str, int] = {"conv1": 10, "pool1": 10, "conv2": 6, "pool2": 6, "conv3": 5, "conv4": 5, "conv5": 6,
                                "pool5": 6}

# (kernel, stride) of VISSL's AvgPool2d per tap and conv1 stride (padding 0 everywhere), sources in the docstring.
AVGPOOL_KERNELS: dict[int, dict[str, tuple[int, int]]] = {
    4: {"conv1": (19, 4), "conv2": (12, 3), "conv3": (9, 1), "conv4": (9, 1), "conv5": (8, 1)},
    2: {"conv1": (28, 9), "conv2": (24, 6), "conv3": (14, 3), "conv4": (14, 3), "conv5": (16, 2)},
}


@dataclass(frozen=True)
class TapSpec:
    """How one blob becomes probe features: bilinear resize to `size` x `size`, or AvgPool(kernel, stride)."""

    blob: str
    mode: ResizeMode
    size: int | None = None              # bilinear: output side
    kernel: int | None = None            # avgpool: kernel side
    stride: int | None = None            # avgpool: stride

    def describe(self) -> str:
        if self.mode == "bilinear":
            return f"{self.blob}: bilinear resize to {self.size}x{self.size}"
        return f"{self.blob}: AvgPool k{self.kernel} s{self.stride}"


def tap_specs(taps: Sequence[str], *, mode: ResizeMode, conv1_stride: int) -> dict[str, TapSpec]:
    """The spec of each requested tap; raises ValueError naming an unknown tap or an undefined combination."""
    known = CONV_TAPS + POOL_TAPS
    unknown = [t for t in taps if t not in known]
    if unknown:
        raise ValueError(f"unknown probe tap(s) {unknown}; choose from {', '.join(known)}.")
    if len(set(taps)) != len(taps) or not taps:
        raise ValueError(f"probe taps must be distinct and at least one, got {list(taps)}.")
    if mode == "bilinear":
        return {t: TapSpec(t, "bilinear", size=RESIZE_SIZES[t]) for t in taps}
    if mode != "avgpool":
        raise ValueError(f"resize mode {mode!r} is not 'bilinear' or 'avgpool'.")
    pools = [t for t in taps if t in POOL_TAPS]
    if pools:
        raise ValueError(f"taps {pools} have no average-pooling kernel in VISSL's benchmark; use them with "
                         "--resize bilinear (Zhang et al.'s prototxt defines them).")
    kernels = AVGPOOL_KERNELS.get(conv1_stride)
    if kernels is None:
        raise ValueError(f"VISSL's average-pooling kernels exist for conv1 stride 4 and 2, not {conv1_stride}; use "
                         "--resize bilinear.")
    return {t: TapSpec(t, "avgpool", kernel=kernels[t][0], stride=kernels[t][1]) for t in taps}


def resize_matrix(n_in: int, n_out: int, *, align_corners: bool = False) -> torch.Tensor:
    """(n_out, n_in) float64 weights of 1-D linear interpolation, rows summing to 1.

    Half-pixel centres (align_corners False): ``src = max(0, (i + 0.5) * n_in / n_out - 0.5)``; corners aligned:
    ``src = i * (n_in - 1) / (n_out - 1)``. Output i mixes ``floor(src)`` and the next sample (clamped at the
    border) with weights ``1 - frac`` and ``frac``: PyTorch's and OpenCV's bilinear without antialiasing.
    """
    i = torch.arange(n_out, dtype=torch.float64)
    if align_corners:
        src = i * ((n_in - 1) / (n_out - 1)) if n_out > 1 else torch.zeros_like(i)
    else:
        src = ((i + 0.5) * (n_in / n_out) - 0.5).clamp(min=0.0)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    weights.index_put_((i.long(), lo), 1.0 - frac, accumulate=True)
    weights.index_put_((i.long(), hi), frac, accumulate=True)
    return weights


def bilinear_resize(x: torch.Tensor, size: int, *, align_corners: bool = False) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, size, size) bilinear, as two small matrix products (separable; the same numbers as
    ``F.interpolate(mode="bilinear", antialias=False)`` to float rounding, and several times faster on CPU)."""
    rows = resize_matrix(x.shape[-2], size, align_corners=align_corners).to(x.device, x.dtype)
    cols = resize_matrix(x.shape[-1], size, align_corners=align_corners).to(x.device, x.dtype)
    return torch.matmul(torch.matmul(rows, x), cols.t())


def blob_shapes(trunk: CaffeAlexNet, input_size: int) -> dict[str, tuple[int, int, int]]:
    """(C, H, W) of every conv/pool blob for a square input, with Caffe's rounding (conv floor, pooling ceil)."""
    c = trunk.config
    conv1 = (input_size + 2 * c.conv1_pad - 11) // c.conv1_stride + 1
    pool1 = caffe_pool_output_size(conv1, 3, 2, c.pool_pad)
    pool2 = caffe_pool_output_size(pool1, 3, 2, c.pool_pad)  # conv2 keeps pool1's size (k5 p2)
    pool5 = caffe_pool_output_size(pool2, 3, 2, 0)  # conv3..conv5 keep pool2's size (k3 p1)
    sides = {"conv1": (96, conv1), "pool1": (96, pool1), "conv2": (256, pool1), "pool2": (256, pool2),
             "conv3": (384, pool2), "conv4": (384, pool2), "conv5": (256, pool2), "pool5": (256, pool5)}
    return {blob: (ch, side, side) for blob, (ch, side) in sides.items()}


class ProbeTaps(nn.Module):
    """The frozen trunk and its shrunk taps: one trunk forward feeds every tap, as in the reference prototxt.

    Input (N, 3, H, W): BGR, 0-255, minus the model's mean (H = W = 227 in the protocol). Output {tap: (N, C, s, s)}
    float tensors. The trunk stays in eval mode with requires_grad False whatever `train()` is called with, and the
    forward runs under `torch.no_grad()` (the probes never back-propagate into the trunk).
    """

    def __init__(self, trunk: CaffeAlexNet, *, taps: Sequence[str] = CONV_TAPS, mode: ResizeMode = "bilinear",
                 align_corners: bool = False, input_size: int = 227) -> None:
        super().__init__()
        self.trunk = trunk.eval()
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        self.specs = tap_specs(list(taps), mode=mode, conv1_stride=trunk.config.conv1_stride)
        self.mode = mode
        self.align_corners = align_corners
        self.input_size = input_size
        self.blob_shapes = blob_shapes(trunk, input_size)
        self.shapes: dict[str, tuple[int, int, int]] = {}
        for tap, spec in self.specs.items():
            c, h, w = self.blob_shapes[tap]
            side = spec.size if spec.mode == "bilinear" else (h - spec.kernel) // spec.stride + 1
            if h <= 0 or side <= 0 or (spec.mode == "avgpool" and h < spec.kernel):
                raise ValueError(f"tap {tap} is empty at a {input_size}-pixel input ({spec.describe()}, blob "
                                 f"{h}x{w}).")
            self.shapes[tap] = (c, side, side)

    @property
    def dims(self) -> dict[str, int]:
        """Feature dimension of each tap (C * s * s)."""
        return {t: c * h * w for t, (c, h, w) in self.shapes.items()}

    def describe(self) -> list[str]:
        return [spec.describe() for spec in self.specs.values()]

    def train(self, mode: bool = True) -> ProbeTaps:
        super().train(mode)
        self.trunk.eval()  # frozen: dropout off, and nothing in the trunk keeps statistics
        return self

    def shrink(self, blobs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{tap: shrunk tensor} from the trunk's blobs (N, C, H, W)."""
        out = {}
        for tap, spec in self.specs.items():
            x = blobs[tap]
            if spec.mode == "bilinear":
                if x.shape[-2:] != (spec.size, spec.size):
                    x = bilinear_resize(x, spec.size, align_corners=self.align_corners)
            else:
                x = F.avg_pool2d(x, spec.kernel, spec.stride, 0)
            out[tap] = x
        return out

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.shrink(self.trunk.blobs(x, tuple(self.specs)))
