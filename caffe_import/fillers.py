"""Caffe's weight fillers (BVLC `include/caffe/filler.hpp`), used when a net is loaded without a caffemodel.

Caffe initialises every parameter blob from the layer's `*_filler` message; an absent filler means
`constant` 0 (FillerParameter defaults). Fan-in/fan-out follow Caffe: fan_in = count / shape[0],
fan_out = count / shape[1].
"""

from __future__ import annotations

import math

import torch

from caffe_import.errors import CaffeImportError
from caffe_import.proto import caffe_pb2


def _fans(t: torch.Tensor) -> tuple[float, float]:
    count = t.numel()
    fan_in = count / t.shape[0] if t.dim() >= 1 and t.shape[0] else count
    fan_out = count / t.shape[1] if t.dim() >= 2 and t.shape[1] else count
    return fan_in, fan_out


def _variance_n(t: torch.Tensor, filler: caffe_pb2.FillerParameter) -> float:
    fan_in, fan_out = _fans(t)
    norm = filler.variance_norm
    if norm == caffe_pb2.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if norm == caffe_pb2.FillerParameter.FAN_OUT:
        return fan_out
    return fan_in


def bilinear_kernel(shape: tuple[int, ...]) -> torch.Tensor:
    """Caffe BilinearFiller (BVLC master): f = ceil(K/2), c = (K - 1) / (2f), w = (1-|x/f-c|)(1-|y/f-c|) per (o, i).

    Caffe 1.0 and older used c = (2f - 1 - f % 2) / (2f), which differs for K = 3, 6, 63 (FCN's upsample_filt
    agrees with master); stored caffemodel weights are always used when present, so this only affects fresh nets.
    """
    if len(shape) != 4 or shape[2] != shape[3]:
        raise CaffeImportError(f"bilinear filler needs a 4-D blob with square kernels, got shape {shape}.")
    k = shape[3]
    f = math.ceil(k / 2.0)
    c = (k - 1) / (2.0 * f)
    coords = torch.arange(k, dtype=torch.float64)
    line = 1 - (coords / f - c).abs()
    return (line[:, None] * line[None, :]).to(torch.float32).expand(shape).clone()


@torch.no_grad()
def fill(t: torch.Tensor, filler: caffe_pb2.FillerParameter | None, *, where: str,
         generator: torch.Generator | None = None) -> None:
    """Fill `t` in place as Caffe's filler of that type would (same distribution, not the same random stream)."""
    if filler is None:
        t.zero_()
        return
    kind = filler.type or "constant"
    if kind == "constant":
        t.fill_(filler.value)
    elif kind == "uniform":
        t.uniform_(filler.min, filler.max, generator=generator)
    elif kind == "gaussian":
        t.normal_(filler.mean, filler.std, generator=generator)
        if filler.sparse >= 0:
            # Caffe keeps each weight with probability sparse / num_outputs (num_outputs = shape[0]).
            keep = min(1.0, filler.sparse / t.shape[0]) if t.dim() >= 1 and t.shape[0] else 1.0
            t.mul_(torch.bernoulli(torch.full_like(t, keep), generator=generator))
    elif kind == "positive_unitball":
        t.uniform_(0.0, 1.0, generator=generator)
        rows = t.view(t.shape[0], -1) if t.dim() >= 1 and t.shape[0] else t.view(1, -1)
        rows.div_(rows.sum(dim=1, keepdim=True))
    elif kind == "xavier":
        scale = math.sqrt(3.0 / _variance_n(t, filler))
        t.uniform_(-scale, scale, generator=generator)
    elif kind == "msra":
        t.normal_(0.0, math.sqrt(2.0 / _variance_n(t, filler)), generator=generator)
    elif kind == "bilinear":
        t.copy_(bilinear_kernel(tuple(t.shape)))
    else:
        raise CaffeImportError(f"{where}: filler type '{kind}' is not supported (constant, uniform, gaussian, "
                               "positive_unitball, xavier, msra, bilinear).")
