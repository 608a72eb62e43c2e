"""Layer families against an independent Caffe implementation: OpenCV 4.x `cv2.dnn.readNetFromCaffe`.

Each test writes a prototxt, makes seeded filler weights with `caffe_import.load` (no caffemodel) and
`save_caffemodel`, and runs the same files through OpenCV. Tolerance: max |diff| <= 1e-4 * max(1, max |ref|).

Known OpenCV 4.14 deviations from Caffe, kept out of the comparisons (each checked against the numpy ports in
tests/reference instead): LRN `k` is ignored (ACROSS_CHANNELS only tested with k = 1), InnerProduct `transpose: true`
is ignored (the (K, N) blob is read as (N, K)), Deconvolution ignores `dilation`, a lone `pad_w` (without `pad_h`)
is ignored, and the empty last window of degenerate MAX pooling (kernel < stride, pad 0) is 0 instead of -FLT_MAX.
OpenCV's schema spells FLOOR rounding as the fork field `ceil_mode: false`, which our parser maps to BVLC's
`round_mode: FLOOR`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import caffe_import
from caffe_import import CaffeImportWarning

cv2 = pytest.importorskip("cv2")
if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
    pytest.skip("this OpenCV has no readNetFromCaffe (removed in OpenCV 5)", allow_module_level=True)

REL_TOL = 1e-4
GAUSS = 'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "uniform" min: -1 max: 1 }'


def run_both(tmp_path: Path, text: str, inputs: dict[str, np.ndarray], layers: list[str]):
    """(ours, OpenCV's) outputs of `layers` (layer name == top name) for the same prototxt and caffemodel."""
    prototxt, caffemodel = tmp_path / "net.prototxt", tmp_path / "net.caffemodel"
    prototxt.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CaffeImportWarning)  # the `ceil_mode` fork spelling note
        net = caffe_import.load(prototxt)
    caffe_import.save_caffemodel(net, caffemodel)
    with torch.no_grad():
        ours = net(**{k: torch.from_numpy(v) for k, v in inputs.items()}, outputs=layers)
    cv_net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    for name, value in inputs.items():
        cv_net.setInput(value, name)
    theirs = cv_net.forward(layers)
    return {name: (ours[name].numpy(), np.asarray(t)) for name, t in zip(layers, theirs)}


def assert_close(results: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    for name, (ours, theirs) in results.items():
        assert ours.shape == theirs.shape, name
        scale = max(1.0, float(np.abs(theirs).max()))
        err = float(np.abs(ours - theirs).max())
        assert err <= REL_TOL * scale, (name, err, scale)


def input_blob(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    x[:, -1] = -np.abs(x[:, -1]) - 1.0  # an all-negative channel: a zero-padded MAX pool would show
    return (scale * x).astype(np.float32)


POOLS = {  # layer name -> pooling_param (CEIL unless noted)
    "max_k3s2p1": "pool: MAX kernel_size: 3 stride: 2 pad: 1",          # Fast R-CNN CaffeNet pool1
    "max_k3s2p2": "pool: MAX kernel_size: 3 stride: 2 pad: 2",          # pad > k/2: PyTorch refuses it natively
    "max_k2s2p1": "pool: MAX kernel_size: 2 stride: 2 pad: 1",          # the clip rule drops a window
    "max_k5s3p4": "pool: MAX kernel_size: 5 stride: 3 pad: 4",
    "max_k3s2": "pool: MAX kernel_size: 3 stride: 2",                   # AlexNet / CaffeNet
    "ave_k3s2p1": "pool: AVE kernel_size: 3 stride: 2 pad: 1",          # divisor counts pad, not the ceil overhang
    "ave_k3s2p2": "pool: AVE kernel_size: 3 stride: 2 pad: 2",
    "ave_k4s3p3": "pool: AVE kernel_size: 4 stride: 3 pad: 3",
    "max_aniso": "pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 2 pad_w: 0",
    "ave_aniso": "pool: AVE kernel_h: 2 kernel_w: 4 stride_h: 1 stride_w: 3 pad_h: 1 pad_w: 3",
    "max_global": "pool: MAX global_pooling: true",
    "ave_global": "pool: AVE global_pooling: true",
    "max_floor": "pool: MAX kernel_size: 3 stride: 2 pad: 2 ceil_mode: false",
    "ave_floor": "pool: AVE kernel_size: 3 stride: 2 pad: 2 ceil_mode: false",
}


def pooling_net(shape: tuple[int, ...], pools: dict[str, str]) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    layers = "".join(f'layer {{ name: "{name}" type: "Pooling" bottom: "data" top: "{name}" '
                     f'pooling_param {{ {p} }} }}\n' for name, p in pools.items())
    return f'name: "pools"\ninput: "data" input_shape {{ {dims} }}\n{layers}'


@pytest.mark.parametrize("size", [(10, 13), (9, 9), (17, 6)])
def test_pooling_matches_opencv(tmp_path: Path, size: tuple[int, int]) -> None:
    text = pooling_net((2, 3) + size, POOLS)
    assert_close(run_both(tmp_path, text, {"data": input_blob((2, 3) + size, seed=size[0])}, list(POOLS)))


def test_degenerate_max_pooling_shape_matches_opencv(tmp_path: Path) -> None:
    """Both keep Caffe's extra empty window (4 rows -> 3 outputs at kernel 1, stride 2); OpenCV writes 0 into it
    where Caffe leaves its -FLT_MAX start value, so only the non-empty rows are compared."""
    text = pooling_net((1, 3, 4, 7), {"max_degenerate": "pool: MAX kernel_size: 1 stride: 2"})
    ((ours, theirs),) = run_both(tmp_path, text, {"data": input_blob((1, 3, 4, 7), seed=0)},
                                 ["max_degenerate"]).values()
    assert ours.shape == theirs.shape == (1, 3, 3, 4)
    assert np.all(ours[:, :, 2] == np.finfo(np.float32).min)
    assert np.array_equal(ours[:, :, :2], theirs[:, :, :2])


def test_convolution_and_deconvolution_match_opencv(tmp_path: Path) -> None:
    text = f"""name: "convs"
input: "data" input_shape {{ dim: 2 dim: 6 dim: 11 dim: 9 }}
layer {{ name: "conv_group" type: "Convolution" bottom: "data" top: "conv_group" convolution_param {{ num_output: 6
  group: 3 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 0 pad_w: 1 dilation: 2 {GAUSS} }} }}
layer {{ name: "conv_dw" type: "Convolution" bottom: "data" top: "conv_dw" convolution_param {{ num_output: 12
  group: 6 kernel_size: 3 stride: 2 pad: 1 {GAUSS} }} }}
layer {{ name: "conv_nobias" type: "Convolution" bottom: "data" top: "conv_nobias" convolution_param {{
  num_output: 4 kernel_size: 3 kernel_size: 5 pad: 1 pad: 2 bias_term: false {GAUSS} }} }}
layer {{ name: "up_bilinear" type: "Deconvolution" bottom: "data" top: "up_bilinear" convolution_param {{
  num_output: 6 group: 6 kernel_size: 4 stride: 2 pad: 1 bias_term: false weight_filler {{ type: "bilinear" }} }} }}
layer {{ name: "up_full" type: "Deconvolution" bottom: "data" top: "up_full" convolution_param {{ num_output: 4
  kernel_size: 3 stride: 3 pad: 1 {GAUSS} }} }}
layer {{ name: "up_group" type: "Deconvolution" bottom: "data" top: "up_group" convolution_param {{ num_output: 4
  group: 2 kernel_h: 4 kernel_w: 3 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 0 {GAUSS} }} }}
"""
    layers = ["conv_group", "conv_dw", "conv_nobias", "up_bilinear", "up_full", "up_group"]
    assert_close(run_both(tmp_path, text, {"data": input_blob((2, 6, 11, 9), seed=1)}, layers))


def test_lrn_and_inner_product_match_opencv(tmp_path: Path) -> None:
    text = f"""name: "norms"
input: "data" input_shape {{ dim: 2 dim: 6 dim: 7 dim: 5 }}
layer {{ name: "lrn_across" type: "LRN" bottom: "data" top: "lrn_across" lrn_param {{ local_size: 5 alpha: 0.0001
  beta: 0.75 }} }}
layer {{ name: "lrn_across3" type: "LRN" bottom: "data" top: "lrn_across3" lrn_param {{ local_size: 3 alpha: 0.01
  beta: 0.6 }} }}
layer {{ name: "lrn_within" type: "LRN" bottom: "data" top: "lrn_within" lrn_param {{ local_size: 3 alpha: 0.001
  beta: 0.75 k: 2 norm_region: WITHIN_CHANNEL }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param {{ num_output: 7 {GAUSS} }} }}
layer {{ name: "ip_axis2" type: "InnerProduct" bottom: "data" top: "ip_axis2" inner_product_param {{ num_output: 7
  axis: 2 {GAUSS} }} }}
layer {{ name: "ip_nobias" type: "InnerProduct" bottom: "data" top: "ip_nobias" inner_product_param {{
  num_output: 7 bias_term: false {GAUSS} }} }}
"""
    layers = ["lrn_across", "lrn_across3", "lrn_within", "ip", "ip_axis2", "ip_nobias"]
    results = run_both(tmp_path, text, {"data": input_blob((2, 6, 7, 5), seed=2, scale=50.0)}, layers)
    assert results["ip"][0].shape == (2, 7) and results["ip_axis2"][0].shape == (2, 6, 7)
    assert_close(results)


def test_roi_pooling_matches_opencv(tmp_path: Path) -> None:
    text = """name: "roi"
input: "data" input_shape { dim: 2 dim: 4 dim: 38 dim: 50 }
input: "rois" input_shape { dim: 1 dim: 5 }
layer { name: "roi_pool5" type: "ROIPooling" bottom: "data" bottom: "rois" top: "roi_pool5"
  roi_pooling_param { pooled_w: 6 pooled_h: 6 spatial_scale: 0.0625 } }
"""
    rng = np.random.default_rng(3)
    rois = np.concatenate([rng.integers(0, 2, (300, 1)), rng.uniform(-50, 850, (300, 4))], axis=1)
    rois[:60, 1:] = rng.integers(-2, 52, (60, 4)) * 16 + 8  # half-pixel corners at scale 1/16
    inputs = {"data": input_blob((2, 4, 38, 50), seed=3), "rois": rois.astype(np.float32)}
    ((ours, theirs),) = run_both(tmp_path, text, inputs, ["roi_pool5"]).values()
    assert ours.shape == theirs.shape == (300, 4, 6, 6)
    assert np.abs(ours - theirs).max() == 0
