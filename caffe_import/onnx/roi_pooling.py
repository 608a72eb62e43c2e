"""Fast R-CNN ROIPooling -> MaxRoiPool (`roi_pooling_layer.cpp` of rbgirshick/caffe-fast-rcnn)."""

from __future__ import annotations

import numpy as np
from torch import nn

from caffe_import.graph import Layer
from caffe_import.onnx.builder import Builder
from caffe_import.onnx.registry import emits


@emits("ROIPooling")
def _roi_pooling(b: Builder, layer: Layer, m: nn.Module) -> None:
    """Fast R-CNN ROIPooling -> MaxRoiPool (bit-exact in onnxruntime: C rounding of corners, float32 scale)."""
    x, rois = b.inputs(layer)
    pooled_h, pooled_w = m.output_size
    b.op("MaxRoiPool", x, rois, out=b.outputs(layer)[0], pooled_shape=[int(pooled_h), int(pooled_w)],
         spatial_scale=float(np.float32(m.spatial_scale)))
