"""ROIPooling of the Fast R-CNN fork (`rbgirshick/caffe-fast-rcnn`, `src/caffe/layers/roi_pooling_layer.cpp`).

`torchvision.ops.roi_pool` is the same kernel step for step: C `round` of `coord * spatial_scale` (in float32;
halves away from zero), ROI size `max(end - start + 1, 1)`, float bin size, `floor`/`ceil` bin edges clipped to
the map, 0 for an empty bin, -FLT_MAX as the max start value. So the converter only adapts calling conventions.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision
from torch import nn

from caffe_import.errors import CaffeImportError
from caffe_import.graph import Layer
from caffe_import.layers.registry import register


class CaffeROIPooling(nn.Module):
    """Caffe ROIPooling: (features (N, C, H, W), rois (R, 5) rows [batch, x1, y1, x2, y2]) -> (R, C, ph, pw).

    `spatial_scale` is the float32 value of Caffe's proto float (torchvision casts it to the input dtype, so the
    corner products are float32 as in Caffe). Batch indices are truncated to int; ones outside [0, N) are refused
    as Caffe's CPU CHECK does (torchvision would read out of bounds). When features and rois differ in dtype (e.g.
    float16 features), the op runs in float32 so that coordinates keep their precision; max pooling is exact under
    the cast back.
    """

    caffe_blobs: tuple[str, ...] = ()

    def __init__(self, pooled_h: int, pooled_w: int, spatial_scale: float, where: str) -> None:
        super().__init__()
        self.output_size = (pooled_h, pooled_w)
        self.spatial_scale = float(np.float32(spatial_scale))
        self.where = where

    def _check_batch_index(self, features: torch.Tensor, rois: torch.Tensor) -> None:
        if rois.device.type == "meta" or torch.jit.is_tracing() or torch.compiler.is_compiling() or not len(rois):
            return
        batch = rois[:, 0]
        if bool(((batch <= -1) | (batch >= features.shape[0])).any()):
            bad = batch[(batch <= -1) | (batch >= features.shape[0])][0].item()
            raise CaffeImportError(f"{self.where}: an ROI has batch index {bad}, outside the {features.shape[0]} "
                                   "feature maps of bottom 0.")

    def forward(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        if rois.dim() > 2:  # Caffe reads rows of count/num values, so (R, 5, 1, 1) works there too
            rois = rois.flatten(1)
        if rois.dim() != 2 or rois.shape[1] != 5:
            raise CaffeImportError(f"{self.where}: rois must have shape (R, 5) [batch, x1, y1, x2, y2], got "
                                   f"{tuple(rois.shape)}.")
        self._check_batch_index(features, rois)
        if features.dtype != rois.dtype:
            out = torchvision.ops.roi_pool(features.float(), rois.float(), self.output_size, self.spatial_scale)
            return out.to(features.dtype)
        return torchvision.ops.roi_pool(features, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


@register("ROIPooling")
def roi_pooling(layer: Layer) -> nn.Module:
    p = layer.param.roi_pooling_param
    where = layer.where()
    if len(layer.bottoms) != 2 or len(layer.tops) != 1:
        raise CaffeImportError(f"{where}: ROIPooling takes two bottoms (features, rois) and one top, got "
                               f"{len(layer.bottoms)} and {len(layer.tops)}.")
    if p.pooled_h <= 0 or p.pooled_w <= 0:
        raise CaffeImportError(f"{where}: roi_pooling_param.pooled_h and pooled_w must be positive, got "
                               f"{p.pooled_h} and {p.pooled_w}.")
    if len(layer.in_shapes[0]) != 4:
        raise CaffeImportError(f"{where}: bottom 0 must be a 4-D (N, C, H, W) feature map, got shape "
                               f"{layer.in_shapes[0]}.")
    return CaffeROIPooling(p.pooled_h, p.pooled_w, p.spatial_scale, where)
