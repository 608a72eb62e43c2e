"""ROIPooling converter vs the float64 port of the Fast R-CNN fork's `roi_pooling_layer.cpp` (tests/reference).

ROI pooling is a max over integer-bounded bins, so the only acceptable error is none: max |diff| == 0 against the
reference cast to float32. The ROIs exercise what differs between implementations: half-pixel corners (coordinate
= 8 mod 16 at scale 1/16, where C's round goes away from zero and numpy/torch round to even), ROIs partly or fully
outside the map, inverted boxes (forced to 1x1), fractional batch indices (truncated), all-negative features
(max start value -FLT_MAX, empty bins 0) and a spatial scale that is not a power of two (float32 products).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import roi_pooling

import caffe_import
from caffe_import import CaffeImportError
from caffe_import.layers.roi_pooling import CaffeROIPooling

FEATURES = (2, 4, 38, 50)   # a VGG16 conv5_3 map of a ~608 x 800 image at scale 1/16


def make_rois(rng: np.random.Generator) -> np.ndarray:
    """>= 300 ROIs covering the cases listed in the module docstring; rows [batch, x1, y1, x2, y2]."""
    n = 200
    batch = rng.integers(0, 2, n).astype(np.float32)
    x1, y1 = rng.uniform(-120, 820, n), rng.uniform(-120, 620, n)
    rois = [np.stack([batch, x1, y1, x1 + rng.uniform(0, 400, n), y1 + rng.uniform(0, 300, n)], axis=1)]
    # Half-pixel corners: every coordinate = 16 m + 8, so coordinate * 1/16 = m + 0.5 exactly.
    m = rng.integers(-3, 52, (60, 4)) * 16 + 8
    rois.append(np.concatenate([rng.integers(0, 2, (60, 1)), np.sort(m[:, [0, 2]], 1)[:, [0]], np.sort(m[:, [1, 3]], 1)
                                [:, [0]], np.sort(m[:, [0, 2]], 1)[:, [1]], np.sort(m[:, [1, 3]], 1)[:, [1]]], axis=1))
    # Inverted boxes, ROIs wholly outside the map, tiny and whole-image ROIs, fractional batch indices.
    rois.append(np.array([
        [0, 300, 200, 100, 50], [1, 500, 500, 499, 499], [0, -200, -200, -50, -40], [1, 900, 700, 1200, 900],
        [0, 0, 0, 0, 0], [1, 0, 0, 799, 607], [0.7, 8, 8, 24, 24], [1.99, -8, -8, 8, 8], [0, 792, 600, 815, 615],
        [1, -24, 8, 40, -8], [0, 7.99, 8.0, 8.01, 23.99], [1, 24, 40, 24, 40],
    ]))
    rois.append(np.concatenate([rng.integers(0, 2, (30, 1)), rng.uniform(-50, 850, (30, 4))], axis=1))
    return np.concatenate(rois).astype(np.float32)


@pytest.mark.parametrize("negative", [False, True])
@pytest.mark.parametrize("pooled,scale", [((6, 6), 1 / 16), ((7, 5), 1 / 16), ((3, 4), 1 / 15)])
def test_roi_pooling_matches_reference_exactly(negative: bool, pooled: tuple[int, int], scale: float) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(FEATURES).astype(np.float32)
    if negative:
        x = -np.abs(x) - 10.0
    rois = make_rois(rng)
    assert len(rois) >= 300
    module = CaffeROIPooling(*pooled, spatial_scale=scale, where="layer 'roi' (ROIPooling)")
    out = module(torch.from_numpy(x), torch.from_numpy(rois)).numpy()
    ref = roi_pooling(x, rois, pooled_h=pooled[0], pooled_w=pooled[1], spatial_scale=scale)
    assert out.shape == ref.shape == (len(rois), FEATURES[1]) + pooled
    assert np.abs(out - ref.astype(np.float32)).max() == 0
    if negative:  # empty bins (ROIs outside the map) are 0, others negative: both cases are present
        assert (out == 0).any() and (out < 0).any()
    if scale == 1 / 16 and not negative:
        # Sensitivity: rounding the half-pixel corners to even (numpy/torch round) changes many of those ROIs.
        half = rois[200:260]
        assert np.all((half[:, 1:] * scale) % 1 == 0.5)
        corners = half.copy()
        corners[:, 1:] = np.round(half[:, 1:] * scale) / scale  # now integral after scaling: no tie left
        to_even = roi_pooling(x, corners, pooled_h=pooled[0], pooled_w=pooled[1], spatial_scale=scale)
        assert (np.abs(to_even - ref[200:260]).reshape(60, -1).max(axis=1) > 0).sum() > 30


ROI_NET = """name: "roi_test"
input: "data"
input_shape { dim: 2 dim: 4 dim: 38 dim: 50 }
input: "rois"
input_shape { dim: 1 dim: 5 }
layer {
  name: "roi_pool5"
  type: "ROIPooling"
  bottom: "data"
  bottom: "rois"
  top: "pool5"
  roi_pooling_param { pooled_w: 6 pooled_h: 6 spatial_scale: 0.0625 }
}
"""


def test_roi_pooling_through_a_net() -> None:
    net = caffe_import.load(caffe_import.read_prototxt_string(ROI_NET))
    assert net.blob_shapes["pool5"] == (1, 4, 6, 6)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(FEATURES).astype(np.float32)
    rois = make_rois(rng)
    out = net(data=torch.from_numpy(x), rois=torch.from_numpy(rois))["pool5"].numpy()
    ref = roi_pooling(x, rois, pooled_h=6, pooled_w=6, spatial_scale=0.0625)
    assert out.shape == ref.shape
    assert np.abs(out - ref.astype(np.float32)).max() == 0
    # Caffe reads rois rows of count/num values, so a (R, 5, 1, 1) blob works as well; and a second map size.
    x2 = rng.standard_normal((2, 4, 20, 31)).astype(np.float32)
    out2 = net(data=torch.from_numpy(x2), rois=torch.from_numpy(rois[:, :, None, None]))["pool5"].numpy()
    ref2 = roi_pooling(x2, rois, pooled_h=6, pooled_w=6, spatial_scale=0.0625)
    assert np.abs(out2 - ref2.astype(np.float32)).max() == 0


def test_roi_pooling_keeps_the_float32_scale() -> None:
    net = caffe_import.load(caffe_import.read_prototxt_string(ROI_NET.replace("0.0625", "0.0666667")))
    assert net.module_of("roi_pool5").spatial_scale == float(np.float32(0.0666667))


def test_roi_pooling_float16_features() -> None:
    """float16 features pool to the float64 reference's values on the same (float16-rounded) features."""
    module = CaffeROIPooling(6, 6, 0.0625, "layer 'roi' (ROIPooling)")
    x = torch.randn(FEATURES)
    rois = torch.tensor([[0, 8, 8, 300, 200], [1, 0, 0, 799, 607]], dtype=torch.float32)
    out = module(x.half(), rois)
    assert out.dtype == torch.float16
    ref = roi_pooling(x.half().double().numpy(), rois.numpy(), pooled_h=6, pooled_w=6, spatial_scale=0.0625)
    assert np.abs(out.double().numpy() - ref).max() == 0


def test_roi_pooling_refuses_bad_batch_index() -> None:
    module = CaffeROIPooling(6, 6, 0.0625, "layer 'roi' (ROIPooling)")
    with pytest.raises(CaffeImportError, match=r"layer 'roi' \(ROIPooling\): an ROI has batch index 2"):
        module(torch.zeros(FEATURES), torch.tensor([[2.0, 0, 0, 10, 10]]))


@pytest.mark.parametrize("params,message", [
    ("pooled_w: 6 spatial_scale: 0.0625", "pooled_h and pooled_w must be positive"),
])
def test_roi_pooling_refusals(params: str, message: str) -> None:
    text = ROI_NET.replace("pooled_w: 6 pooled_h: 6 spatial_scale: 0.0625", params)
    with pytest.raises(CaffeImportError, match=message):
        caffe_import.load(caffe_import.read_prototxt_string(text))
