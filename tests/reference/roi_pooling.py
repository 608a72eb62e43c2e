"""Reference ROI max pooling, following the Fast R-CNN fork of Caffe (`rbgirshick/caffe-fast-rcnn`, branch
``fast-rcnn``), `src/caffe/layers/roi_pooling_layer.cpp` Forward_cpu.

The integer decisions (corner rounding, bin edges) are made in float32 like Caffe's ``Dtype = float`` so that
half-pixel corners and float32-vs-float64 product differences come out the same; only the max itself is float64.
"""

from __future__ import annotations

import math

import numpy as np

from ._common import NEG_FLT_MAX, as_f64, c_round


def roi_pooling(x: np.ndarray, rois: np.ndarray, *, pooled_h: int, pooled_w: int, spatial_scale: float) -> np.ndarray:
    """Caffe ``ROIPooling`` forward.

    Shapes: ``x`` (N, C, H, W), ``rois`` (R, 5) rows ``[batch_idx, x1, y1, x2, y2]`` (inclusive image corners)
    -> (R, C, pooled_h, pooled_w).

    Per ROI: ``batch = int(rois[0])`` (truncation); ``start_w = round(x1 * spatial_scale)`` with the product in
    float32 and C ``round`` (halves away from zero; 8 * 1/16 = 0.5 -> 1); likewise ``start_h, end_w, end_h``;
    ``roi_h = max(end_h - start_h + 1, 1)``; ``bin_h = float32(roi_h) / float32(pooled_h)``. Bin ``ph`` covers rows
    ``[floor(ph * bin_h) + start_h, ceil((ph + 1) * bin_h) + start_h)`` clipped to ``[0, H]`` (columns the same).
    An empty bin outputs 0; otherwise the max over the bin starting from ``-FLT_MAX`` (NaN never wins).
    """
    x = as_f64(x)
    if x.ndim != 4:
        raise ValueError(f"roi_pooling expects (N, C, H, W) features, got shape {x.shape}")
    rois32 = np.asarray(rois, dtype=np.float32)  # Caffe's bottom[1] is a float blob.
    if rois32.ndim != 2 or rois32.shape[1] != 5:
        raise ValueError(f"rois must have shape (R, 5), got {rois32.shape}")
    if pooled_h <= 0 or pooled_w <= 0:
        raise ValueError(f"pooled size must be positive, got ({pooled_h}, {pooled_w})")
    batch, channels, height, width = x.shape
    scale32 = np.float32(spatial_scale)
    y = np.empty((rois32.shape[0], channels, pooled_h, pooled_w), dtype=np.float64)
    for r, roi in enumerate(rois32):
        batch_idx = int(roi[0])
        if not 0 <= batch_idx < batch:
            raise ValueError(f"ROI {r} has batch index {batch_idx}, features have batch {batch}")
        start_w, start_h, end_w, end_h = (c_round(roi[i] * scale32) for i in (1, 2, 3, 4))
        roi_h = max(end_h - start_h + 1, 1)
        roi_w = max(end_w - start_w + 1, 1)
        bin_h = np.float32(roi_h) / np.float32(pooled_h)
        bin_w = np.float32(roi_w) / np.float32(pooled_w)
        features = x[batch_idx]
        for ph in range(pooled_h):
            hstart = math.floor(float(np.float32(ph) * bin_h))
            hend = math.ceil(float(np.float32(ph + 1) * bin_h))
            hstart = min(max(hstart + start_h, 0), height)
            hend = min(max(hend + start_h, 0), height)
            for pw in range(pooled_w):
                wstart = math.floor(float(np.float32(pw) * bin_w))
                wend = math.ceil(float(np.float32(pw + 1) * bin_w))
                wstart = min(max(wstart + start_w, 0), width)
                wend = min(max(wend + start_w, 0), width)
                if hend <= hstart or wend <= wstart:
                    y[r, :, ph, pw] = 0.0
                    continue
                window = features[:, hstart:hend, wstart:wend].reshape(channels, -1)
                window = np.where(np.isnan(window), -np.inf, window)
                y[r, :, ph, pw] = np.max(window, axis=1, initial=NEG_FLT_MAX)
    return y
