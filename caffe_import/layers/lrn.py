"""Local response normalisation, as BVLC `src/caffe/layers/lrn_layer.cpp` defines it (the CAFFE engine).

ACROSS_CHANNELS: `y = x * (k + alpha/size * sum_{|c'-c| <= (size-1)/2} x[c']^2)^(-beta)`, exactly
`nn.LocalResponseNorm(size, alpha, beta, k)` for Caffe's odd sizes (k is honoured; several converters drop it,
and Fast R-CNN's VGG_CNN_M_1024 uses k = 2).

WITHIN_CHANNEL: Caffe builds a chain split -> Power(x^2) -> AVE Pooling(size, stride 1, pad (size-1)/2) ->
Power(shift 1, scale alpha, power -beta) -> product, so `k` is never read there (`CaffeLRNWithin`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from caffe_import.errors import CaffeImportError
from caffe_import.graph import Layer
from caffe_import.layers.registry import register
from caffe_import.proto import caffe_pb2


class CaffeLRNWithin(nn.Module):
    """Caffe WITHIN_CHANNEL LRN on (N, C, H, W):

        y = x * (1 + alpha * avg_pool(x^2, size, stride 1, pad (size-1)/2, padding counted))^(-beta)

    The divisor is size^2 everywhere (padding counted, no ceil overhang at stride 1). The shift is Caffe's
    hard-coded 1: `lrn_param.k` is ignored, as in Caffe's CPU/CAFFE engine. (Caffe builds with cuDNN route
    WITHIN_CHANNEL to a different kernel, CuDNNLCNLayer, which does read k; we reproduce the CAFFE engine, as
    OpenCV does.)
    """

    caffe_blobs: tuple[str, ...] = ()

    def __init__(self, size: int, alpha: float, beta: float) -> None:
        super().__init__()
        self.size, self.alpha, self.beta = size, alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_sq = F.avg_pool2d(x * x, self.size, stride=1, padding=(self.size - 1) // 2, count_include_pad=True)
        return x * (1 + self.alpha * mean_sq).pow(-self.beta)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}"


@register("LRN")
def lrn(layer: Layer) -> nn.Module:
    p = layer.param.lrn_param
    where = layer.where()
    if len(layer.bottoms) != 1 or len(layer.tops) != 1:
        raise CaffeImportError(f"{where}: LRN takes one bottom and one top.")
    if len(layer.in_shapes[0]) != 4:
        raise CaffeImportError(f"{where}: LRN needs a 4-D (N, C, H, W) bottom, got shape {layer.in_shapes[0]}.")
    if p.local_size % 2 == 0:
        raise CaffeImportError(f"{where}: lrn_param.local_size = {p.local_size}; Caffe only supports odd sizes.")
    if p.norm_region == caffe_pb2.LRNParameter.WITHIN_CHANNEL:
        return CaffeLRNWithin(p.local_size, p.alpha, p.beta)
    module = nn.LocalResponseNorm(p.local_size, alpha=p.alpha, beta=p.beta, k=p.k)
    module.caffe_blobs = ()
    return module
