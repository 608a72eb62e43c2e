"""Probe taps: dimensions per the protocol tables, bilinear resize against OpenCV, average pooling against a float64
loop, shapes against a real forward, and a trunk that stays frozen."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from eval.probes.taps import AVGPOOL_KERNELS, CONV_TAPS, RESIZE_SIZES, ProbeTaps, tap_specs
from jigsawpp.models import AlexNetConfig, CaffeAlexNet

ALL_TAPS = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5")
# richzhang/colorization linear/train_val.prototxt: dims of every tap (reference_protocols §2d)
ZHANG_DIMS = {"conv1": 9600, "pool1": 9600, "conv2": 9216, "pool2": 9216, "conv3": 9600, "conv4": 9600,
              "conv5": 9216, "pool5": 9216}
VISSL_DIMS = {"conv1": 9600, "conv2": 9216, "conv3": 9600, "conv4": 9600, "conv5": 9216}


def _trunk(stride: int = 4, seed: int = 0) -> CaffeAlexNet:
    torch.manual_seed(seed)
    return CaffeAlexNet(AlexNetConfig(conv1_stride=stride, fc6=None, fc7=None, num_classes=None)).eval()


@pytest.fixture(scope="module")
def trunk():
    return _trunk()


def _blobs(taps: ProbeTaps, seed: int) -> dict[str, torch.Tensor]:
    """Random non-negative maps with the trunk's blob shapes (as after ReLU/pooling)."""
    g = torch.Generator().manual_seed(seed)
    return {t: torch.rand((2, *taps.blob_shapes[t]), generator=g) * 40 for t in taps.specs}


def test_zhang_bilinear_dims(trunk):
    taps = ProbeTaps(trunk, taps=ALL_TAPS)
    assert taps.dims == ZHANG_DIMS
    assert {t: s[1] for t, s in taps.shapes.items()} == RESIZE_SIZES


@pytest.mark.parametrize("stride", [4, 2])
def test_vissl_avgpool_dims(stride):
    taps = ProbeTaps(_trunk(stride), mode="avgpool")
    assert taps.dims == VISSL_DIMS
    specs = tap_specs(CONV_TAPS, mode="avgpool", conv1_stride=stride)
    assert specs["conv1"].kernel == AVGPOOL_KERNELS[stride]["conv1"][0]


def test_bad_taps_are_refused():
    with pytest.raises(ValueError, match="pool5"):
        tap_specs(("conv5", "pool5"), mode="avgpool", conv1_stride=4)
    with pytest.raises(ValueError, match="fc6"):
        tap_specs(("fc6",), mode="bilinear", conv1_stride=4)
    with pytest.raises(ValueError, match="stride 4 and 2"):
        tap_specs(("conv1",), mode="avgpool", conv1_stride=3)


def test_bilinear_matches_opencv(trunk):
    """Half-pixel bilinear without antialiasing is OpenCV's INTER_LINEAR on float images (an independent port)."""
    taps = ProbeTaps(trunk, taps=ALL_TAPS)
    blobs = _blobs(taps, 0)
    out = taps.shrink(blobs)
    for tap, blob in blobs.items():
        side = RESIZE_SIZES[tap]
        a = blob.numpy()
        ref = np.stack([np.stack([cv2.resize(a[n, c], (side, side), interpolation=cv2.INTER_LINEAR)
                                  for c in range(a.shape[1])]) for n in range(a.shape[0])])
        np.testing.assert_allclose(out[tap].numpy(), ref, rtol=1e-5, atol=1e-4)


def test_avgpool_matches_loop(trunk):
    taps = ProbeTaps(trunk, mode="avgpool")
    blobs = _blobs(taps, 1)
    out = taps.shrink(blobs)
    for tap, (k, s) in AVGPOOL_KERNELS[4].items():
        a = blobs[tap].double().numpy()[1]
        side = (a.shape[1] - k) // s + 1
        ref = np.zeros((a.shape[0], side, side))
        for i in range(side):
            for j in range(side):
                ref[:, i, j] = a[:, i * s:i * s + k, j * s:j * s + k].mean(axis=(1, 2))
        np.testing.assert_allclose(out[tap][1].double().numpy(), ref, rtol=1e-5, atol=1e-5)


def test_forward_shapes_and_frozen_trunk(trunk):
    """One real forward: the analytic blob shapes are the trunk's, and nothing in the trunk can learn."""
    taps = ProbeTaps(trunk, taps=ALL_TAPS).train()
    assert not taps.trunk.training
    assert not any(p.requires_grad for p in taps.trunk.parameters())
    x = torch.randn(1, 3, 227, 227) * 50
    with torch.no_grad():
        blobs = trunk.blobs(x, ALL_TAPS)
    assert {t: tuple(b.shape[1:]) for t, b in blobs.items()} == taps.blob_shapes
    out = taps(x)
    assert {t: tuple(v.shape[1:]) for t, v in out.items()} == taps.shapes
    assert not any(v.requires_grad for v in out.values())
    torch.testing.assert_close(out["pool5"], blobs["pool5"])  # native 6x6: no resampling at all


@pytest.mark.parametrize("align", [False, True])
def test_separable_resize_equals_interpolate(align):
    """The matrix form is F.interpolate's bilinear (no antialias), for both sampling grids, up and down."""
    from eval.probes.taps import bilinear_resize

    x = torch.rand(2, 3, 13, 13, dtype=torch.float64)
    for size in (5, 6, 10, 20):
        ref = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=align)
        torch.testing.assert_close(bilinear_resize(x, size, align_corners=align), ref, rtol=1e-12, atol=1e-12)
