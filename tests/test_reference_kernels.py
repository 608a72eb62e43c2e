"""Hand-computed checks of the float64 Caffe reference kernels in ``tests/reference``.

The oracles are only useful if they are right, so each one is pinned by small cases worked out by hand from the
Caffe sources named in its docstring, plus cross-checks between oracles (a 1x1 convolution is an inner product,
deconvolution is the adjoint of convolution). Tolerances: exact equality where the arithmetic is exact in float64,
otherwise ``rtol=1e-12``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from reference import (
    NEG_FLT_MAX,
    batch_norm,
    bilinear_filler,
    c_round,
    convolution,
    crop,
    deconvolution,
    eltwise,
    inner_product,
    lrn_across,
    lrn_within,
    mvn,
    pooling,
    pooling_output_shape,
    power,
    roi_pooling,
    scale,
    softmax,
)

RTOL = 1e-12


def _grid(height: int, width: int) -> np.ndarray:
    """(1, 1, H, W) map whose value at (h, w) is 100*h + w, so a max names its position."""
    h, w = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return (100.0 * h + w)[None, None]


# ---------------------------------------------------------------- pooling


def test_neg_flt_max_is_float32_lowest() -> None:
    assert NEG_FLT_MAX == -3.4028234663852886e38


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pad", "round_mode", "expected"),
    [
        (5, 2, 2, 1, "CEIL", 3),  # ceil(5/2)+1 = 4, last window starts at 6 >= 5+1 -> dropped
        (5, 2, 2, 1, "FLOOR", 3),
        (4, 1, 2, 0, "CEIL", 3),  # no pad -> no clip rule: last window is empty
        (4, 1, 2, 0, "FLOOR", 2),
        (13, 3, 2, 0, "CEIL", 6),
        (13, 3, 2, 0, "FLOOR", 6),
        (6, 3, 2, 0, "CEIL", 3),  # AlexNet pool5 on a 64-px tile
        (6, 3, 2, 0, "FLOOR", 2),
        (227, 3, 2, 1, "CEIL", 114),  # Fast R-CNN CaffeNet pool1 (k3 s2 p1): ceil(226/2)+1, last start 226 < 228
        (8, 2, 2, 1, "CEIL", 5),  # ceil(8/2)+1 = 5, last start 8 < 9: kept
        (7, 4, 3, 3, "CEIL", 4),  # ceil(9/3)+1 = 4, last start 9 < 10: kept
        (6, 4, 3, 3, "CEIL", 3),  # ceil(8/3)+1 = 4, last start 9 >= 9: dropped
    ],
)
def test_pooling_output_size(size: int, kernel: int, stride: int, pad: int, round_mode: str, expected: int) -> None:
    shape = pooling_output_shape(
        size, size, kernel=(kernel, kernel), stride=(stride, stride), pad=(pad, pad), round_mode=round_mode
    )
    assert shape == (expected, expected)
    x = np.zeros((1, 1, size, size))
    y = pooling(x, kernel=(kernel, kernel), stride=(stride, stride), pad=(pad, pad), round_mode=round_mode)
    assert y.shape == (1, 1, expected, expected)


def test_pooling_clip_rule_is_joint_over_pads() -> None:
    # pad_h = 0 alone would keep 3 rows (see above); a non-zero pad_w switches the clip rule on for rows too.
    assert pooling_output_shape(4, 5, kernel=(1, 2), stride=(2, 2), pad=(0, 0)) == (3, 3)
    assert pooling_output_shape(4, 5, kernel=(1, 2), stride=(2, 2), pad=(0, 1)) == (2, 3)


def test_max_pooling_padded_values() -> None:
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    y = pooling(x, kernel=(2, 2), stride=(2, 2), pad=(1, 1), method="MAX")
    np.testing.assert_array_equal(y[0, 0], [[0, 2, 4], [10, 12, 14], [20, 22, 24]])


def test_ave_pooling_padded_values() -> None:
    # Row windows {0}, {1,2}, {3,4}; the divisor is 4 everywhere (padding counted).
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    y = pooling(x, kernel=(2, 2), stride=(2, 2), pad=(1, 1), method="AVE")
    np.testing.assert_array_equal(y[0, 0], [[0, 0.75, 1.75], [3.75, 9, 11], [8.75, 19, 21]])


def test_pooling_window_end_uses_unclipped_start() -> None:
    # 1-D column [1..5], k=3, s=2, p=2: 4 windows. The first covers padded rows -2..0, i.e. only row 0.
    x = np.arange(1.0, 6.0).reshape(1, 1, 5, 1)
    kwargs = {"kernel": (3, 1), "stride": (2, 1), "pad": (2, 0)}
    np.testing.assert_array_equal(pooling(x, method="MAX", **kwargs)[0, 0, :, 0], [1, 3, 5, 5])
    np.testing.assert_allclose(pooling(x, method="AVE", **kwargs)[0, 0, :, 0], [1 / 3, 2, 4, 5 / 3], rtol=RTOL)


def test_max_pooling_empty_window_is_neg_flt_max() -> None:
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    y = pooling(x, kernel=(1, 1), stride=(2, 2), pad=(0, 0), method="MAX")
    f = NEG_FLT_MAX
    np.testing.assert_array_equal(y[0, 0], [[0, 2, f], [8, 10, f], [f, f, f]])


def test_ave_pooling_degenerate_windows() -> None:
    # H=4, k=1, s=2: the last window has pool_size 0 -> 0/0 = nan.
    y = pooling(np.ones((1, 1, 4, 4)), kernel=(1, 1), stride=(2, 2), method="AVE")
    assert y[0, 0, 0, 0] == 1.0
    assert np.isnan(y[0, 0, 2, 0]) and np.isnan(y[0, 0, 2, 2])
    # H=6, k=1, s=4: the last window starts at 8 > 6, pool_size (6-8)*1 = -2 -> 0/-2 = -0.0; (-2)*(-2) -> +0.0.
    y = pooling(np.arange(36.0).reshape(1, 1, 6, 6), kernel=(1, 1), stride=(4, 4), method="AVE")
    np.testing.assert_array_equal(y[0, 0], [[0, 4, 0], [24, 28, 0], [0, 0, 0]])
    assert math.copysign(1.0, y[0, 0, 0, 2]) == -1.0
    assert math.copysign(1.0, y[0, 0, 2, 0]) == -1.0
    assert math.copysign(1.0, y[0, 0, 2, 2]) == 1.0


def test_max_pooling_ignores_nan_and_minus_inf() -> None:
    x = np.array([[[[np.nan, 1.0], [-np.inf, -np.inf]]]])
    y = pooling(x, kernel=(1, 2), stride=(1, 2), method="MAX")
    np.testing.assert_array_equal(y[0, 0, :, 0], [1.0, NEG_FLT_MAX])


def test_global_pooling() -> None:
    x = np.arange(24.0).reshape(1, 2, 3, 4)
    np.testing.assert_array_equal(pooling(x, global_pooling=True, method="MAX")[:, :, 0, 0], [[11, 23]])
    np.testing.assert_array_equal(pooling(x, global_pooling=True, method="AVE")[:, :, 0, 0], [[5.5, 17.5]])
    with pytest.raises(ValueError, match="global pooling"):
        pooling(x, global_pooling=True, pad=(1, 1))
    with pytest.raises(ValueError, match="global pooling"):
        pooling(x, global_pooling=True, stride=(2, 2))


def test_pooling_refuses_pad_not_below_kernel() -> None:
    with pytest.raises(ValueError, match="pad < kernel"):
        pooling(np.zeros((1, 1, 5, 5)), kernel=(2, 2), stride=(1, 1), pad=(2, 0))


def test_ave_pooling_equals_depthwise_box_convolution_without_padding() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 7))
    box = np.full((3, 1, 3, 2), 1.0 / 6.0)
    expected = convolution(x, box, stride=(2, 1), group=3)
    y = pooling(x, kernel=(3, 2), stride=(2, 1), method="AVE", round_mode="FLOOR")
    np.testing.assert_allclose(y, expected, rtol=RTOL, atol=1e-15)


def test_alexnet_chain_on_64px_tile() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 1, 64, 64))

    def conv(t: np.ndarray, k: int, s: int = 1, p: int = 0) -> np.ndarray:
        return convolution(t, np.ones((1, 1, k, k)) / (k * k), stride=(s, s), pad=(p, p))

    def pool(t: np.ndarray, mode: str) -> np.ndarray:
        return pooling(t, kernel=(3, 3), stride=(2, 2), round_mode=mode)

    sizes = {}
    for mode in ("CEIL", "FLOOR"):
        t = conv(x, 11, s=2)
        chain = [t.shape[-1]]
        t = pool(t, mode)
        chain.append(t.shape[-1])
        t = conv(t, 5, p=2)
        chain.append(t.shape[-1])
        t = pool(t, mode)
        chain.append(t.shape[-1])
        t = conv(conv(conv(t, 3, p=1), 3, p=1), 3, p=1)
        chain.append(t.shape[-1])
        chain.append(pool(t, mode).shape[-1])
        sizes[mode] = chain
    assert sizes["CEIL"] == [27, 13, 13, 6, 6, 3]
    assert sizes["FLOOR"] == [27, 13, 13, 6, 6, 2]


# ---------------------------------------------------------------- LRN


def test_lrn_across_hand_case() -> None:
    # size 3, alpha/size = 1, k = 1: scales 1+(1+4)=6, 1+(1+4+9)=15, 1+(4+9)=14.
    x = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    y = lrn_across(x, size=3, alpha=3.0, beta=1.0, k=1.0)
    np.testing.assert_allclose(y.ravel(), [1 / 6, 2 / 15, 3 / 14], rtol=RTOL)
    y = lrn_across(x, size=3, alpha=3.0, beta=0.5, k=2.0)  # scales 7, 16, 15
    np.testing.assert_allclose(y.ravel(), [1 / math.sqrt(7), 2 / 4, 3 / math.sqrt(15)], rtol=RTOL)


def test_lrn_across_window_reaches_two_channels_each_side_for_size_5() -> None:
    x = np.ones((1, 6, 1, 1))
    x[0, 5] = 2.0  # square 4 in the last channel
    y = lrn_across(x, size=5, alpha=5.0, beta=1.0, k=0.0)
    # channel 3 sees channels 1..5: 1+1+1+1+4 = 8; channel 2 sees 0..4: 5; channel 0 sees 0..2: 3.
    np.testing.assert_allclose(y.ravel()[[0, 2, 3]], [1 / 3, 1 / 5, 1 / 8], rtol=RTOL)


def test_lrn_refuses_even_size() -> None:
    with pytest.raises(ValueError, match="odd"):
        lrn_across(np.ones((1, 4, 2, 2)), size=4, alpha=1.0, beta=0.75)
    with pytest.raises(ValueError, match="odd"):
        lrn_within(np.ones((1, 4, 2, 2)), size=2, alpha=1.0, beta=0.75)


def test_lrn_within_hand_case_and_ignores_k() -> None:
    # 3x3 ones, size 3: neighbourhood sums of squares 4 (corner), 6 (edge), 9 (centre), always divided by 9;
    # alpha 9 -> y = 1 / (1 + sum).
    x = np.ones((1, 1, 3, 3))
    expected = 1.0 / (1.0 + np.array([[4, 6, 4], [6, 9, 6], [4, 6, 4]]))
    for k in (1.0, 2.0, 100.0):
        np.testing.assert_allclose(lrn_within(x, size=3, alpha=9.0, beta=1.0, k=k)[0, 0], expected, rtol=RTOL)


def test_lrn_within_is_per_channel() -> None:
    x = np.zeros((1, 2, 3, 3))
    x[0, 0] = 2.0
    y = lrn_within(x, size=3, alpha=9.0, beta=1.0)
    np.testing.assert_allclose(y[0, 0, 1, 1], 2.0 / (1 + 36.0), rtol=RTOL)
    assert not y[0, 1].any()


# ---------------------------------------------------------------- ROI pooling


@pytest.mark.parametrize(("value", "expected"), [(0.5, 1), (1.5, 2), (2.5, 3), (-0.5, -1), (-2.5, -3), (0.49, 0)])
def test_c_round_half_away_from_zero(value: float, expected: int) -> None:
    assert c_round(value) == expected


def test_roi_pooling_half_pixel_corners_round_away_from_zero() -> None:
    x = _grid(6, 6)
    rois = np.array([[0, 8, 8, 8, 8], [0, 40, 40, 40, 40], [0, 24, 8, 24, 8]], dtype=np.float64)
    y = roi_pooling(x, rois, pooled_h=1, pooled_w=1, spatial_scale=1 / 16)
    # 8/16 = 0.5 -> 1 (half-to-even would give 0), 40/16 = 2.5 -> 3 (even: 2), 24/16 = 1.5 -> 2.
    np.testing.assert_array_equal(y.ravel(), [101, 303, 102])


def test_roi_pooling_corner_product_is_float32() -> None:
    # 45 * 0.7 is 31.5 in float32 (-> 32) but 31.499999999999996 in float64 (-> 31).
    x = _grid(34, 34)
    y = roi_pooling(x, np.array([[0, 45, 45, 45, 45]]), pooled_h=1, pooled_w=1, spatial_scale=0.7)
    assert y.item() == 3232.0


def test_roi_pooling_bins() -> None:
    x = _grid(5, 5)
    # 4x4 ROI into 2x2: bins [0,2), [2,4).
    y = roi_pooling(x, np.array([[0, 0, 0, 3, 3]]), pooled_h=2, pooled_w=2, spatial_scale=1.0)
    np.testing.assert_array_equal(y[0, 0], [[101, 103], [301, 303]])
    # 3x3 ROI into 2x2: bin 1.5 -> rows [0,2) and [1,3) overlap.
    y = roi_pooling(x, np.array([[0, 0, 0, 2, 2]]), pooled_h=2, pooled_w=2, spatial_scale=1.0)
    np.testing.assert_array_equal(y[0, 0], [[101, 102], [201, 202]])
    # An inverted ROI is forced to 1x1 at its start corner.
    y = roi_pooling(x, np.array([[0, 3, 2, 1, 0]]), pooled_h=1, pooled_w=1, spatial_scale=1.0)
    assert y.item() == 203.0


def test_roi_pooling_empty_bins_are_zero_and_batch_index_truncates() -> None:
    x = np.concatenate([-1.0 - _grid(5, 5), 1.0 + _grid(5, 5)])  # batch 0 all negative
    rois = np.array([[0, 100, 100, 120, 120], [0, 0, 0, 1, 1], [1.9, 0, 0, 1, 1]])
    y = roi_pooling(x, rois, pooled_h=1, pooled_w=1, spatial_scale=1.0)
    np.testing.assert_array_equal(y.ravel(), [0.0, -1.0, 102.0])
    with pytest.raises(ValueError, match="batch index"):
        roi_pooling(x, np.array([[2, 0, 0, 1, 1]]), pooled_h=1, pooled_w=1, spatial_scale=1.0)


def test_roi_pooling_partial_overlap_is_clipped() -> None:
    x = _grid(4, 4)
    y = roi_pooling(x, np.array([[0, -3, -3, 1, 1]]), pooled_h=2, pooled_w=2, spatial_scale=1.0)
    # ROI rows -3..1 (5 rows), bin 2.5: [-3,0) empty -> 0, [-1,2) -> rows 0..1.
    np.testing.assert_array_equal(y[0, 0], [[0, 0], [0, 101]])


# ---------------------------------------------------------------- BatchNorm / Scale / MVN


def test_batch_norm_scale_factor_zero_means_zero_statistics() -> None:
    x = np.array([[1.0, 2.0]])
    y = batch_norm(x, mean_sum=[10.0, 20.0], var_sum=[30.0, 40.0], scale_factor=0.0, eps=1e-5)
    np.testing.assert_allclose(y, x / math.sqrt(1e-5), rtol=RTOL)


def test_batch_norm_divides_raw_blobs_by_scale_factor() -> None:
    x = np.arange(8.0).reshape(1, 2, 2, 2)
    y = batch_norm(x, mean_sum=[2.0, 8.0], var_sum=[8.0, 18.0], scale_factor=2.0, eps=0.0)
    # channel 0: mean 1, var 4; channel 1: mean 4, var 9.
    np.testing.assert_allclose(y[0, 0], (x[0, 0] - 1) / 2, rtol=RTOL)
    np.testing.assert_allclose(y[0, 1], (x[0, 1] - 4) / 3, rtol=RTOL)


def test_scale_broadcasting() -> None:
    x = np.ones((2, 3, 4, 5))
    y = scale(x, np.array([1.0, 2.0, 3.0]), bias=np.array([0.5, 0.0, -1.0]))
    np.testing.assert_array_equal(y[1, :, 3, 4], [1.5, 2.0, 2.0])
    s2 = np.arange(20.0).reshape(4, 5)
    np.testing.assert_array_equal(scale(x, s2, axis=2)[1, 2], s2)
    np.testing.assert_array_equal(scale(x, np.array(3.0)), 3 * x)
    with pytest.raises(ValueError):
        scale(x, np.ones(4))


def test_mvn() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)
    # mean 2.5, variance 1.25; eps is added to the standard deviation.
    y = mvn(x, eps=1.0)
    np.testing.assert_allclose(y.ravel(), (np.array([1, 2, 3, 4]) - 2.5) / (math.sqrt(1.25) + 1.0), rtol=RTOL)
    two = x.reshape(1, 2, 1, 2)
    np.testing.assert_allclose(mvn(two, across_channels=True, eps=1.0).ravel(), y.ravel(), rtol=RTOL)
    np.testing.assert_array_equal(mvn(two, normalize_variance=False).ravel(), [-0.5, 0.5, -0.5, 0.5])


# ---------------------------------------------------------------- Crop


def test_crop_offsets() -> None:
    x = np.arange(2 * 10 * 12, dtype=np.float64).reshape(1, 2, 10, 12)
    ref = (1, 1, 4, 5)
    y = crop(x, ref)
    assert y.shape == (1, 2, 4, 5)  # dims before axis 2 are kept, even though ref has 1 channel
    np.testing.assert_array_equal(y, x[:, :, 0:4, 0:5])
    np.testing.assert_array_equal(crop(x, ref, offset=(3,)), x[:, :, 3:7, 3:8])
    np.testing.assert_array_equal(crop(x, ref, offset=(3, 5)), x[:, :, 3:7, 5:10])
    np.testing.assert_array_equal(crop(x, ref, axis=1, offset=(1, 2, 3)), x[:, 1:2, 2:6, 3:8])
    with pytest.raises(ValueError, match="out of bounds"):
        crop(x, ref, offset=(7,))  # 10 - 7 < 4
    with pytest.raises(ValueError, match="offsets given"):
        crop(x, ref, offset=(1, 2, 3))


# ---------------------------------------------------------------- Convolution / InnerProduct


def test_convolution_hand_cases() -> None:
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    w = np.ones((1, 1, 2, 2))
    np.testing.assert_array_equal(convolution(x, w)[0, 0], [[8, 12], [20, 24]])
    np.testing.assert_array_equal(convolution(x, w, stride=(2, 2), pad=(1, 1))[0, 0], [[0, 3], [9, 24]])
    np.testing.assert_array_equal(convolution(x, w, dilation=(2, 2))[0, 0], [[16]])
    np.testing.assert_array_equal(convolution(x, w, np.array([-8.0]))[0, 0], [[0, 4], [12, 16]])


def test_convolution_groups() -> None:
    x = np.stack([np.ones((2, 2)), 2 * np.ones((2, 2))])[None]
    w = np.array([10.0, 100.0, 1000.0, 7.0]).reshape(4, 1, 1, 1)
    y = convolution(x, w, group=2)
    # outputs 0,1 read input channel 0; outputs 2,3 read channel 1.
    np.testing.assert_array_equal(y[0, :, 0, 0], [10, 100, 2000, 14])


def test_convolution_output_size() -> None:
    x = np.zeros((1, 1, 10, 9))
    y = convolution(x, np.zeros((1, 1, 3, 2)), stride=(3, 2), pad=(1, 0), dilation=(2, 3))
    # H: (10 + 2 - 5) // 3 + 1 = 3; W: (9 - 4) // 2 + 1 = 3.
    assert y.shape == (1, 1, 3, 3)


def test_inner_product_hand_case() -> None:
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    w = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    b = np.array([10.0, 0.0])
    np.testing.assert_array_equal(inner_product(x, w, b), [[8.0, 3.0], [8.0, 7.5]])
    np.testing.assert_array_equal(inner_product(x, w.T, b, transpose=True), [[8.0, 3.0], [8.0, 7.5]])
    x3 = np.arange(24.0).reshape(2, 3, 4)
    y = inner_product(x3, np.ones((5, 4)), axis=2)
    assert y.shape == (2, 3, 5)
    np.testing.assert_array_equal(y[1, 2], [sum(range(20, 24))] * 5)
    with pytest.raises(ValueError):
        inner_product(x3, np.ones((5, 4)))  # K = 12 at axis 1


def test_convolution_1x1_equals_inner_product() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 5, 3, 4))
    w = rng.standard_normal((6, 5, 1, 1))
    b = rng.standard_normal(6)
    y = convolution(x, w, b)
    pixels = x.transpose(0, 2, 3, 1).reshape(-1, 5)
    expected = inner_product(pixels, w.reshape(6, 5), b).reshape(2, 3, 4, 6).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(y, expected, rtol=RTOL, atol=1e-14)


def test_full_size_convolution_equals_inner_product_in_c_order() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 2, 4, 5))
    w = rng.standard_normal((7, 2, 4, 5))
    y = convolution(x, w)
    np.testing.assert_allclose(y[:, :, 0, 0], inner_product(x, w.reshape(7, -1)), rtol=RTOL, atol=1e-14)


# ---------------------------------------------------------------- Deconvolution


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pad", "dilation", "expected"),
    [(4, 4, 2, 1, 1, 8), (3, 2, 1, 0, 1, 4), (5, 16, 8, 4, 1, 40), (6, 3, 2, 2, 2, 11), (1, 64, 32, 0, 1, 64)],
)
def test_deconvolution_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int, expected: int) -> None:
    assert stride * (size - 1) + dilation * (kernel - 1) + 1 - 2 * pad == expected
    y = deconvolution(
        np.zeros((1, 2, size, size)),
        np.zeros((2, 3, kernel, kernel)),
        stride=(stride, stride),
        pad=(pad, pad),
        dilation=(dilation, dilation),
    )
    assert y.shape == (1, 3, expected, expected)


def test_deconvolution_hand_cases() -> None:
    x = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    w = np.ones((1, 1, 2, 2))
    y = deconvolution(x, w, stride=(2, 2))
    np.testing.assert_array_equal(y[0, 0], [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    y = deconvolution(x, w, stride=(1, 1))
    np.testing.assert_array_equal(y[0, 0], [[1, 3, 2], [4, 10, 6], [3, 7, 4]])
    y = deconvolution(x, w, np.array([0.5]), stride=(1, 1), pad=(1, 1))
    np.testing.assert_array_equal(y[0, 0], [[10.5]])


@pytest.mark.parametrize(
    ("stride", "pad", "dilation", "group", "height"),
    list(itertools.product([1, 2, 3], [0, 1, 2], [1, 2], [1, 2], [7, 8])),
)
def test_deconvolution_is_adjoint_of_convolution(stride: int, pad: int, dilation: int, group: int, height: int) -> None:
    rng = np.random.default_rng(stride * 100 + pad * 10 + dilation + group * 1000 + height)
    c_in, c_out, kh, kw = 4, 6, 3, 2
    # Caffe's deconvolution output is s*(o-1) + d*(k-1) + 1 - 2p; it is the exact adjoint of the convolution of an
    # input of that size (one the conv's floor division leaves no remainder on), so build x at that size.
    sizes = []
    for size, k in ((height, kh), (height + 1, kw)):
        extent = dilation * (k - 1) + 1
        out = (size + 2 * pad - extent) // stride + 1
        sizes.append(stride * (out - 1) + extent - 2 * pad)
    x = rng.standard_normal((2, c_in, *sizes))
    w = rng.standard_normal((c_out, c_in // group, kh, kw))
    conv_kwargs = {"stride": (stride, stride), "pad": (pad, pad), "dilation": (dilation, dilation), "group": group}
    y = convolution(x, w, **conv_kwargs)
    probe = rng.standard_normal(y.shape)
    back = deconvolution(probe, w, **conv_kwargs)
    assert back.shape == x.shape
    np.testing.assert_allclose(np.vdot(y, probe), np.vdot(x, back), rtol=1e-10)


def test_bilinear_deconvolution_upsamples_constant() -> None:
    w = bilinear_filler((1, 1, 4, 4))
    y = deconvolution(np.ones((1, 1, 4, 4)), w, stride=(2, 2), pad=(1, 1))
    edge = np.array([0.75, 1, 1, 1, 1, 1, 1, 0.75])
    np.testing.assert_allclose(y[0, 0], np.outer(edge, edge), rtol=RTOL)


# ---------------------------------------------------------------- Softmax / Eltwise / Power


def test_softmax() -> None:
    x = np.log(np.array([1.0, 2.0, 3.0])).reshape(1, 3)
    np.testing.assert_allclose(softmax(x), [[1 / 6, 2 / 6, 3 / 6]], rtol=RTOL)
    np.testing.assert_allclose(softmax(np.array([[1000.0, 1000.0]])), [[0.5, 0.5]], rtol=RTOL)
    rng = np.random.default_rng(4)
    y = softmax(rng.standard_normal((2, 21, 4, 5)))
    np.testing.assert_allclose(y.sum(axis=1), np.ones((2, 4, 5)), rtol=RTOL)
    y_last = softmax(rng.standard_normal((2, 3, 4)), axis=-1)
    np.testing.assert_allclose(y_last.sum(axis=-1), np.ones((2, 3)), rtol=RTOL)


def test_eltwise() -> None:
    a, b, c = np.array([1.0, 5.0, -2.0]), np.array([3.0, 2.0, -4.0]), np.array([0.0, 6.0, -3.0])
    np.testing.assert_array_equal(eltwise([a, b]), [4, 7, -6])
    np.testing.assert_array_equal(eltwise([a, b], coeff=[1, -1]), [-2, 3, 2])
    np.testing.assert_array_equal(eltwise([a, b, c], operation="PROD"), [0, 60, -24])
    np.testing.assert_array_equal(eltwise([a, b, c], operation="MAX"), [3, 6, -2])
    # Caffe's comparison order: a NaN in bottom 0 loses to bottom 1, a NaN in bottom 1 wins over bottom 0.
    nan = np.array([np.nan])
    np.testing.assert_array_equal(eltwise([nan, np.array([1.0])], operation="MAX"), [1.0])
    assert np.isnan(eltwise([np.array([1.0]), nan], operation="MAX")).all()
    with pytest.raises(ValueError, match="summation"):
        eltwise([a, b], operation="PROD", coeff=[1, 2])
    with pytest.raises(ValueError, match="one coefficient per bottom"):
        eltwise([a, b], coeff=[1])
    with pytest.raises(ValueError, match="at least 2"):
        eltwise([a])


def test_power() -> None:
    x = np.array([0.0, 1.0, 2.0])
    np.testing.assert_array_equal(power(x, power=2.0, scale=2.0, shift=1.0), [1, 9, 25])
    np.testing.assert_array_equal(power(x), x)
    # scale 0 or power 0: the input is ignored, even NaN.
    np.testing.assert_array_equal(power(np.array([np.nan, 5.0]), power=3.0, scale=0.0, shift=2.0), [8, 8])
    np.testing.assert_array_equal(power(np.array([np.nan, -1.0]), power=0.0, scale=3.0), [1, 1])


# ---------------------------------------------------------------- Bilinear filler


def _fcn_upsample_filt(size: int) -> np.ndarray:
    """FCN `surgery.upsample_filt`, from its documented formula."""
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    taps = 1 - np.abs(np.arange(size) - centre) / factor
    return np.outer(taps, taps)


def test_bilinear_filler_values() -> None:
    np.testing.assert_allclose(bilinear_filler((1, 1, 4, 4))[0, 0, 0], [0.0625, 0.1875, 0.1875, 0.0625], rtol=RTOL)
    w3 = bilinear_filler((2, 3, 3, 3))
    np.testing.assert_allclose(w3[1, 2], np.outer([0.5, 1, 0.5], [0.5, 1, 0.5]), rtol=RTOL)
    assert (w3 == w3[0, 0]).all()
    legacy3 = bilinear_filler((1, 1, 3, 3), legacy=True)[0, 0]
    np.testing.assert_allclose(legacy3, np.outer([0.25, 0.75, 0.75], [0.25, 0.75, 0.75]), rtol=RTOL)
    with pytest.raises(ValueError, match="square"):
        bilinear_filler((1, 1, 3, 4))


@pytest.mark.parametrize("size", [3, 4, 5, 6, 16, 32, 63, 64])
def test_bilinear_filler_matches_fcn(size: int) -> None:
    np.testing.assert_allclose(
        bilinear_filler((1, 1, size, size))[0, 0], _fcn_upsample_filt(size), rtol=RTOL, atol=1e-15
    )
    legacy_agrees = np.allclose(
        bilinear_filler((1, 1, size, size), legacy=True)[0, 0], _fcn_upsample_filt(size), rtol=RTOL, atol=1e-15
    )
    # The pre-2017 centre (2f - 1 - f%2) / 2f is right only when K and f = ceil(K/2) share parity.
    assert legacy_agrees == (size % 2 == math.ceil(size / 2) % 2)
