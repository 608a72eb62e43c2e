"""Convolution, Deconvolution, InnerProduct and LRN converters vs the float64 ports of BVLC `conv_layer.cpp`,
`deconv_layer.cpp`, `inner_product_layer.cpp` and `lrn_layer.cpp` (tests/reference).

Weights come from the layers' Caffe fillers (seeded), so every test also checks that blobs have Caffe's shapes.
Tolerances (float32 against float64): conv/deconv/IP max |diff| <= 1e-5 * max(1, max |ref|) (sums of at most a
few hundred products); LRN max relative error <= 1e-5 on activations scaled by 50.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import bilinear_filler, convolution, deconvolution, inner_product, lrn_across, lrn_within
from torch import nn

import caffe_import
from caffe_import import CaffeImportError

LINEAR_TOL = 1e-5
LRN_REL_TOL = 1e-5


def one_layer(shape: tuple[int, ...], layer: str) -> caffe_import.CaffeNet:
    dims = " ".join(f"dim: {d}" for d in shape)
    text = f'name: "t"\ninput: "data" input_shape {{ {dims} }}\nlayer {{ name: "l" bottom: "data" {layer} }}\n'
    return caffe_import.load(caffe_import.read_prototxt_string(text), seed=7)


def run(net: caffe_import.CaffeNet, x: np.ndarray, blob: str = "out") -> np.ndarray:
    with torch.no_grad():
        return net(data=torch.from_numpy(x))[blob].numpy()


def assert_linear_close(out: np.ndarray, ref: np.ndarray) -> float:
    assert out.shape == ref.shape
    err = float(np.abs(out - ref).max())
    assert err <= LINEAR_TOL * max(1.0, float(np.abs(ref).max())), err
    return err


def params_of(net: caffe_import.CaffeNet, layer: str = "l") -> list[np.ndarray]:
    module = net.module_of(layer)
    return [getattr(module, name).detach().numpy().astype(np.float64) for name in module.caffe_blobs]


GAUSS = 'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "uniform" min: -1 max: 1 }'

CONV_CASES = [  # (conv params, reference kwargs)
    ("num_output: 6 kernel_size: 3", dict()),
    ("num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 3", dict(stride=2, pad=1, group=3)),
    ("num_output: 4 kernel_size: 3 dilation: 2 pad: 2", dict(dilation=2, pad=2)),
    ("num_output: 6 kernel_h: 3 kernel_w: 1 stride_h: 1 stride_w: 2 pad_w: 2", dict(stride=(1, 2), pad=(0, 2))),
    ("num_output: 6 kernel_size: 3 kernel_size: 2 stride: 2 stride: 1 pad: 1 pad: 0 dilation: 1 dilation: 2 group: 2",
     dict(stride=(2, 1), pad=(1, 0), dilation=(1, 2), group=2)),
    ("num_output: 3 kernel_size: 1 group: 3 bias_term: false", dict(group=3)),
    ("num_output: 6 kernel_h: 2 kernel_w: 3 stride_h: 3 stride_w: 2 pad_h: 1 dilation: 2 bias_term: false",
     dict(stride=(3, 2), pad=(1, 0), dilation=2)),
]


@pytest.mark.parametrize("params,kwargs", CONV_CASES)
def test_convolution(params: str, kwargs: dict) -> None:
    net = one_layer((2, 6, 11, 9), f'type: "Convolution" top: "out" convolution_param {{ {params} {GAUSS} }}')
    blobs = params_of(net)
    assert len(blobs) == (1 if "bias_term: false" in params else 2)
    group = kwargs.get("group", 1)
    assert blobs[0].shape[1] == 6 // group  # Caffe's (C_out, C_in / group, kh, kw)
    for size in [(11, 9), (16, 7)]:
        x = np.random.default_rng(sum(size)).standard_normal((2, 6) + size).astype(np.float32)
        ref = convolution(x, blobs[0], blobs[1] if len(blobs) > 1 else None, **kwargs)
        assert_linear_close(run(net, x), ref)


def test_convolution_with_two_bottoms_shares_weights() -> None:
    text = ('name: "t"\ninput: "a" input_shape { dim: 1 dim: 2 dim: 5 dim: 5 }\n'
            'input: "b" input_shape { dim: 1 dim: 2 dim: 5 dim: 5 }\n'
            f'layer {{ name: "l" type: "Convolution" bottom: "a" bottom: "b" top: "ya" top: "yb" '
            f'convolution_param {{ num_output: 3 kernel_size: 3 {GAUSS} }} }}\n')
    net = caffe_import.load(caffe_import.read_prototxt_string(text))
    w, b = params_of(net)
    a, bb = (np.random.default_rng(i).standard_normal((1, 2, 5, 5)).astype(np.float32) for i in (0, 1))
    out = net(a=torch.from_numpy(a), b=torch.from_numpy(bb))
    assert_linear_close(out["ya"].detach().numpy(), convolution(a, w, b))
    assert_linear_close(out["yb"].detach().numpy(), convolution(bb, w, b))


def test_deconvolution_bilinear_group_c() -> None:
    """The FCN / Caffe BilinearFiller upsampling recipe: kernel 2f - f%2, stride f, pad ceil((f-1)/2), group C."""
    for factor in (2, 3, 8):
        kernel, pad = 2 * factor - factor % 2, -(-(factor - 1) // 2)
        net = one_layer((1, 5, 6, 7), f'type: "Deconvolution" top: "out" convolution_param {{ num_output: 5 '
                                      f'group: 5 kernel_size: {kernel} stride: {factor} pad: {pad} bias_term: false '
                                      'weight_filler { type: "bilinear" } }')
        (w,) = params_of(net)
        assert w.shape == (5, 1, kernel, kernel)
        np.testing.assert_allclose(w, np.broadcast_to(bilinear_filler((5, 1, kernel, kernel)), w.shape), atol=1e-7)
        x = np.random.default_rng(factor).standard_normal((1, 5, 6, 7)).astype(np.float32)
        out = run(net, x)
        assert out.shape == (1, 5, factor * 5 + kernel - 2 * pad, factor * 6 + kernel - 2 * pad)
        assert_linear_close(out, deconvolution(x, w, stride=factor, pad=pad, group=5))


@pytest.mark.parametrize("params,kwargs", [
    ("num_output: 4 kernel_size: 4 stride: 2", dict(stride=2)),                                # FCN style, full
    ("num_output: 6 kernel_size: 3 stride: 3 pad: 1 group: 2", dict(stride=3, pad=1, group=2)),
    ("num_output: 4 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 dilation: 2 bias_term: false",
     dict(stride=(2, 3), pad=(1, 0), dilation=2)),
])
def test_deconvolution_full_weights(params: str, kwargs: dict) -> None:
    net = one_layer((2, 6, 5, 7), f'type: "Deconvolution" top: "out" convolution_param {{ {params} {GAUSS} }}')
    blobs = params_of(net)
    assert blobs[0].shape[0] == 6  # Caffe's reversed (C_in, C_out / group, kh, kw)
    for size in [(5, 7), (8, 3)]:
        x = np.random.default_rng(size[0]).standard_normal((2, 6) + size).astype(np.float32)
        ref = deconvolution(x, blobs[0], blobs[1] if len(blobs) > 1 else None, **kwargs)
        out = run(net, x)
        stride, pad, dilation = (np.broadcast_to(kwargs.get(k, d), 2) for k, d in (("stride", 1), ("pad", 0),
                                                                                   ("dilation", 1)))
        kernel = np.array(blobs[0].shape[2:])
        assert out.shape[2:] == tuple(stride * (np.array(size) - 1) + dilation * (kernel - 1) + 1 - 2 * pad)
        assert_linear_close(out, ref)


@pytest.mark.parametrize("shape,axis,transpose,bias,out_shape", [
    ((3, 6, 4, 5), 1, False, True, (3, 7)),          # 4-D bottom -> (N, num_output), not (N, 7, 1, 1)
    ((3, 6, 4, 5), 1, True, True, (3, 7)),
    ((3, 6, 4, 5), 2, False, False, (3, 6, 7)),
    ((3, 6, 4, 5), 2, True, False, (3, 6, 7)),
    ((3, 6, 4, 5), -1, False, True, (3, 6, 4, 7)),
    ((5, 12), 1, False, False, (5, 7)),
    ((5, 12), 1, True, True, (5, 7)),
])
def test_inner_product(shape, axis: int, transpose: bool, bias: bool, out_shape) -> None:
    net = one_layer(shape, f'type: "InnerProduct" top: "out" inner_product_param {{ num_output: 7 axis: {axis} '
                           f'transpose: {str(transpose).lower()} bias_term: {str(bias).lower()} {GAUSS} }}')
    blobs = params_of(net)
    k = int(np.prod(shape[axis % len(shape):]))
    assert blobs[0].shape == ((k, 7) if transpose else (7, k))
    assert len(blobs) == (2 if bias else 1)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    out = run(net, x)
    assert out.shape == out_shape
    ref = inner_product(x, blobs[0], blobs[1] if bias else None, axis=axis, transpose=transpose)
    assert_linear_close(out, ref)


def test_weights_round_trip_through_a_caffemodel(tmp_path) -> None:
    text = ('name: "t"\ninput: "data" input_shape { dim: 1 dim: 4 dim: 6 dim: 6 }\n'
            f'layer {{ name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param {{ num_output: 4 '
            f'group: 2 kernel_h: 3 kernel_w: 2 bias_term: false {GAUSS} }} }}\n'
            f'layer {{ name: "d" type: "Deconvolution" bottom: "c" top: "d" convolution_param {{ num_output: 6 '
            f'group: 2 kernel_size: 4 stride: 2 {GAUSS} }} }}\n'
            f'layer {{ name: "ip" type: "InnerProduct" bottom: "d" top: "ip" inner_product_param {{ num_output: 3 '
            f'transpose: true {GAUSS} }} }}\n')
    net = caffe_import.load(caffe_import.read_prototxt_string(text))
    path = caffe_import.save_caffemodel(net, tmp_path / "t.caffemodel")
    again = caffe_import.load(caffe_import.read_prototxt_string(text), path)
    for (name, a), (_, b) in zip(net.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    assert tuple(again.module_of("ip").weight.shape) == (6 * 10 * 12, 3)  # c: 4x5, d: 2(4-1)+4 x 2(5-1)+4


def lrn_input(shape=(2, 7, 6, 5)) -> np.ndarray:
    return (50 * np.random.default_rng(5).standard_normal(shape)).astype(np.float32)


def max_rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    return float((np.abs(out - ref) / np.maximum(np.abs(ref), 1e-30)).max())


@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-4, 0.75, 1.0), (5, 5e-4, 0.75, 2.0), (3, 5e-5, 0.75, 2.0),
                                                (5, 1.0, 0.75, 1.0), (1, 0.01, 0.5, 2.0)])
def test_lrn_across_channels(size: int, alpha: float, beta: float, k: float) -> None:
    net = one_layer((2, 7, 6, 5), f'type: "LRN" top: "out" lrn_param {{ local_size: {size} alpha: {alpha} '
                                  f'beta: {beta} k: {k} }}')
    assert isinstance(net.module_of("l"), nn.LocalResponseNorm)
    x = lrn_input()
    # The layer sees the float32 values of the proto floats, as Caffe does.
    f32 = lambda v: float(np.float32(v))  # noqa: E731
    ref = lrn_across(x, size=size, alpha=f32(alpha), beta=f32(beta), k=f32(k))
    assert max_rel_err(run(net, x), ref) <= LRN_REL_TOL
    if k != 1.0:  # k matters (Fast R-CNN VGG_CNN_M_1024 uses k = 2): k = 1 would be far off
        assert max_rel_err(run(net, x), lrn_across(x, size=size, alpha=f32(alpha), beta=f32(beta), k=1.0)) > 0.1


@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-4, 0.75, 1.0), (3, 5e-4, 0.75, 2.0), (5, 0.01, 0.5, 3.0)])
def test_lrn_within_channel_ignores_k(size: int, alpha: float, beta: float, k: float) -> None:
    net = one_layer((2, 7, 6, 5), f'type: "LRN" top: "out" lrn_param {{ local_size: {size} alpha: {alpha} '
                                  f'beta: {beta} k: {k} norm_region: WITHIN_CHANNEL }}')
    x = lrn_input()
    out = run(net, x)
    f32 = lambda v: float(np.float32(v))  # noqa: E731
    assert max_rel_err(out, lrn_within(x, size=size, alpha=f32(alpha), beta=f32(beta), k=k)) <= LRN_REL_TOL
    x2 = lrn_input((1, 3, 9, 4))  # a second input size
    assert max_rel_err(run(net, x2), lrn_within(x2, size=size, alpha=f32(alpha), beta=f32(beta))) <= LRN_REL_TOL


@pytest.mark.parametrize("shape,layer,message", [
    ((1, 4, 6, 6), 'type: "Convolution" top: "out" convolution_param { num_output: 2 kernel_size: 3 axis: 2 }',
     r"layer 'l' \(Convolution\): convolution_param.axis = 2 is not supported"),
    ((1, 4, 6, 6), 'type: "Convolution" top: "out" convolution_param { num_output: 2 kernel_size: 3 '
                   'force_nd_im2col: true }', "force_nd_im2col = true is not supported"),
    ((1, 4, 6, 6, 6), 'type: "Convolution" top: "out" convolution_param { num_output: 2 kernel_size: 3 }',
     "N-D convolution is not"),
    ((1, 4, 6, 6), 'type: "Convolution" top: "out" convolution_param { num_output: 2 kernel_size: 3 kernel_h: 3 '
                   'kernel_w: 3 }', "sets both kernel_size and kernel_h/kernel_w"),
    ((1, 4, 6, 6), 'type: "Convolution" top: "out" convolution_param { num_output: 2 kernel_h: 3 }',
     r"kernel \(3, 0\), stride \(1, 1\) and dilation \(1, 1\) must be positive"),
    ((1, 4, 6, 6), 'type: "Convolution" top: "out" convolution_param { num_output: 2 }', "needs kernel_size"),
    ((1, 4, 6, 6), 'type: "Convolution" top: "out" convolution_param { num_output: 2 kernel_size: 3 kernel_size: 3 '
                   'kernel_size: 3 }', "kernel_size has 3 values for 2 spatial dims"),
    ((1, 4, 6, 6), 'type: "Deconvolution" top: "out" convolution_param { num_output: 3 kernel_size: 3 group: 2 }',
     "must be positive multiples of group 2"),
    ((1, 4, 6, 6), 'type: "InnerProduct" top: "out" inner_product_param { num_output: 3 axis: 4 }',
     "inner_product_param.axis = 4 is out of range"),
    ((1, 4, 6, 6), 'type: "LRN" top: "out" lrn_param { local_size: 4 }', "local_size = 4; Caffe only supports odd"),
    ((1, 4, 6), 'type: "LRN" top: "out" lrn_param { local_size: 3 }', "LRN needs a 4-D"),
])
def test_refusals(shape, layer: str, message: str) -> None:
    with pytest.raises(CaffeImportError, match=message):
        one_layer(shape, layer)
