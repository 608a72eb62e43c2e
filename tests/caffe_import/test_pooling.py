"""Pooling converter vs the float64 port of BVLC `pooling_layer.cpp` (tests/reference/pooling.py).

The sweep covers H in 4..18 (plus non-square inputs), kernel 1..5, stride 1..4, pad 0..kernel-1, MAX and AVE, CEIL
for every size and FLOOR for a subset: the geometry where converters go wrong (ceil, the clip rule that only applies
with padding, pad > kernel/2 which PyTorch refuses, and the AVE divisor counting padding but not the ceil overhang).
One net is built per geometry and run at every size, which also proves sizes are not frozen at load time.

Tolerances: MAX must be bit-exact (max |diff| == 0 against the reference cast to float32, -FLT_MAX included);
AVE within rtol 1e-6, atol 1e-6 (float32 sums in another order than the float64 reference).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from reference import pooling, pooling_output_shape
from torch import nn

import caffe_import
from caffe_import import CaffeImportError
from caffe_import.layers.pooling import CaffePool2d, caffe_pool_output_size

AVE_RTOL = AVE_ATOL = 1e-6
CEIL_SIZES = [(h, h) for h in range(4, 19)] + [(5, 9), (11, 6), (18, 4), (7, 16)]
FLOOR_SIZES = [(4, 4), (5, 5), (6, 9), (9, 6), (12, 12), (17, 17)]
GEOMETRIES = [(k, s, p) for k in range(1, 6) for s in range(1, 5) for p in range(k)]  # 60 (kernel, stride, pad)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """The tensors here are tiny: intra-op threads only add overhead (3x slower on a busy 2-core runner)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pooling_prototxt(shape: tuple[int, ...], params: str, tops: str = 'top: "pool"') -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return (f'name: "pool_test"\ninput: "data" input_shape {{ {dims} }}\n'
            f'layer {{ name: "pool" type: "Pooling" bottom: "data" {tops} pooling_param {{ {params} }} }}\n')


def load_pooling(shape: tuple[int, ...], params: str, **kwargs) -> caffe_import.CaffeNet:
    return caffe_import.load(caffe_import.read_prototxt_string(pooling_prototxt(shape, params, **kwargs)))


def make_input(h: int, w: int, seed: int) -> np.ndarray:
    """Channel 0 mixed signs, channel 1 all negative (so a zero-padded MAX would show), distinct values."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 2, h, w)).astype(np.float32)
    x[:, 1] = -np.abs(x[:, 1]) - 1.0
    return x


def caffe_degenerate(size: tuple[int, int], kernel, stride, pad, round_mode: str) -> bool:
    """Caffe keeps a last window lying wholly past the input (only possible with pad 0, CEIL and kernel < stride)."""
    outs = pooling_output_shape(*size, kernel=kernel, stride=stride, pad=pad, round_mode=round_mode)
    return any((o - 1) * s >= n + p for o, s, n, p in zip(outs, stride, size, pad))


def check_against_reference(net: caffe_import.CaffeNet, x: np.ndarray, method: str, **geometry) -> None:
    ref = pooling(x, method=method, **geometry)
    if 0 in ref.shape:  # padded input smaller than the kernel: Caffe would make an empty blob; we refuse
        with pytest.raises((CaffeImportError, RuntimeError)):
            net(data=torch.from_numpy(x))
        return
    out = net(data=torch.from_numpy(x))["pool"].numpy()
    assert out.shape == ref.shape, (geometry, x.shape)
    if method == "MAX":
        assert np.abs(out - ref.astype(np.float32)).max() == 0, (geometry, x.shape)
    else:
        np.testing.assert_allclose(out, ref, rtol=AVE_RTOL, atol=AVE_ATOL, err_msg=str((geometry, x.shape)))


def run_sweep(method: str, round_mode: str, kernel: int, stride: int, pad: int, sizes) -> None:
    geometry = dict(kernel=(kernel, kernel), stride=(stride, stride), pad=(pad, pad), round_mode=round_mode)
    valid = [s for s in sizes if not (method == "AVE" and caffe_degenerate(s, **geometry))]
    degenerate = [s for s in sizes if s not in valid]
    params = f"pool: {method} kernel_size: {kernel} stride: {stride} pad: {pad} round_mode: {round_mode}"
    # Declare the net at the largest valid size (the load itself runs shape inference there).
    declared = max(valid, key=lambda s: s[0] * s[1])
    net = load_pooling((1, 2) + declared, params)
    for i, (h, w) in enumerate(valid):
        check_against_reference(net, make_input(h, w, seed=1000 * kernel + 100 * stride + 10 * pad + i), method,
                                **geometry)
    for h, w in degenerate:
        with pytest.raises(CaffeImportError, match="lies wholly outside the input"):
            net(data=torch.zeros(1, 2, h, w))


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("kernel,stride,pad", GEOMETRIES)
def test_pooling_sweep_ceil(method: str, kernel: int, stride: int, pad: int) -> None:
    run_sweep(method, "CEIL", kernel, stride, pad, CEIL_SIZES)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("kernel,stride,pad", GEOMETRIES)
def test_pooling_sweep_floor(method: str, kernel: int, stride: int, pad: int) -> None:
    run_sweep(method, "FLOOR", kernel, stride, pad, FLOOR_SIZES)


ANISOTROPIC = [  # (kernel, stride, pad) per (h, w): the joint clip rule and mixed native/explicit dims
    ((3, 2), (2, 1), (2, 0)),
    ((2, 3), (2, 2), (0, 1)),
    ((1, 3), (2, 1), (0, 2)),
    ((4, 2), (3, 2), (3, 1)),
    ((1, 1), (2, 3), (0, 0)),
    ((5, 2), (1, 4), (1, 0)),
]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("round_mode", ["CEIL", "FLOOR"])
@pytest.mark.parametrize("kernel,stride,pad", ANISOTROPIC)
def test_pooling_anisotropic(method: str, round_mode: str, kernel, stride, pad) -> None:
    params = (f"pool: {method} kernel_h: {kernel[0]} kernel_w: {kernel[1]} stride_h: {stride[0]} "
              f"stride_w: {stride[1]} pad_h: {pad[0]} pad_w: {pad[1]} round_mode: {round_mode}")
    geometry = dict(kernel=kernel, stride=stride, pad=pad, round_mode=round_mode)
    sizes = [s for s in itertools.product(range(5, 12, 2), range(4, 13, 3))
             if not (method == "AVE" and caffe_degenerate(s, **geometry))]
    net = load_pooling((1, 2) + sizes[0], params)
    for i, (h, w) in enumerate(sizes):
        check_against_reference(net, make_input(h, w, seed=i), method, **geometry)


def test_caffe_pool_output_size() -> None:
    assert caffe_pool_output_size(5, 2, 2, 1) == 3            # clip rule: ceil gives 4, the last starts in the pad
    assert caffe_pool_output_size(5, 2, 2, 1, "FLOOR") == 3
    assert caffe_pool_output_size(4, 1, 2, 0) == 3            # no pad, no clip: Caffe keeps an empty last window
    assert caffe_pool_output_size(13, 3, 2, 0) == 6           # AlexNet pool5 on 13x13
    assert caffe_pool_output_size(227, 3, 2, 1) == 114        # Fast R-CNN CaffeNet pool1 style (pad 1, ceil)
    # The clip rule is gated on the pads of all dims together (`if (pad_h_ || pad_w_)`).
    assert caffe_pool_output_size((4, 4), (2, 1), (2, 2), (1, 0)) == (3, 2)
    assert caffe_pool_output_size(4, 1, 2, 0) == 3            # the same w dim alone: no pad, no clip
    for size, kernel, stride, pad in itertools.product(range(4, 19), range(1, 6), range(1, 5), range(0, 5)):
        if pad >= kernel:
            continue
        for mode in ("CEIL", "FLOOR"):
            expected = pooling_output_shape(size, size + 1, kernel=(kernel, kernel), stride=(stride, stride),
                                            pad=(pad, pad), round_mode=mode)
            got = caffe_pool_output_size((size, size + 1), (kernel,) * 2, (stride,) * 2, (pad,) * 2, mode)
            assert got == expected


@pytest.mark.parametrize("params,expected", [
    ("pool: MAX kernel_size: 3 stride: 2 pad: 1", nn.MaxPool2d),               # pad <= k/2: native, exact
    ("pool: AVE kernel_size: 3 stride: 2 pad: 1", nn.AvgPool2d),
    ("pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR", nn.MaxPool2d),
    ("pool: MAX kernel_size: 3 stride: 2 pad: 2", CaffePool2d),                # pad > k/2: PyTorch refuses
    ("pool: MAX kernel_size: 1 stride: 2", CaffePool2d),                       # kernel < stride, pad 0, CEIL
    ("pool: MAX kernel_size: 1 stride: 2 round_mode: FLOOR", nn.MaxPool2d),
    ("pool: MAX global_pooling: true", nn.AdaptiveMaxPool2d),
    ("pool: AVE global_pooling: true", nn.AdaptiveAvgPool2d),
])
def test_pooling_uses_native_modules_where_exact(params: str, expected: type) -> None:
    net = load_pooling((1, 2, 9, 9), params)
    assert type(net.module_of("pool")) is expected


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_global_pooling(method: str) -> None:
    net = load_pooling((2, 3, 7, 5), f"pool: {method} global_pooling: true")
    for h, w in [(7, 5), (13, 4), (1, 1)]:
        x = np.random.default_rng(h).standard_normal((2, 3, h, w)).astype(np.float32) - 2.0
        out = net(data=torch.from_numpy(x))["pool"].numpy()
        ref = pooling(x, method=method, global_pooling=True)
        assert out.shape == ref.shape == (2, 3, 1, 1)
        np.testing.assert_allclose(out, ref, rtol=AVE_RTOL, atol=0 if method == "MAX" else AVE_ATOL)


@pytest.mark.parametrize("params", [
    "pool: MAX kernel_size: 3 stride: 2 pad: 2",      # explicit path
    "pool: AVE kernel_size: 3 stride: 2 pad: 2",
    "pool: AVE kernel_size: 3 stride: 2 pad: 1",      # native path
])
def test_pooling_runs_at_a_second_input_size(params: str) -> None:
    net = load_pooling((1, 2, 10, 10), params)
    assert net.blob_shapes["pool"] == (1, 2, 6, 6)
    x = make_input(13, 17, seed=3)
    out = net(data=torch.from_numpy(x))["pool"].numpy()
    ref = pooling(x, kernel=3, stride=2, pad=int(params[-1]), method=params.split()[1])
    assert out.shape == ref.shape and ref.shape[2:] in ((8, 10), (7, 9))
    np.testing.assert_allclose(out, ref, rtol=AVE_RTOL, atol=AVE_ATOL)


def test_max_degenerate_window_is_neg_flt_max() -> None:
    net = load_pooling((1, 1, 4, 4), "pool: MAX kernel_size: 1 stride: 2")
    out = net(data=torch.ones(1, 1, 4, 4))["pool"]
    assert out.shape == (1, 1, 3, 3)
    assert out[0, 0, 2, 0].item() == float(np.finfo(np.float32).min)
    assert out[0, 0, 0, 0].item() == 1.0


def test_ave_degenerate_window_is_refused_at_load() -> None:
    with pytest.raises(CaffeImportError, match=r"layer 'pool' \(Pooling\).*AVE pooling.*lies wholly outside"):
        load_pooling((1, 1, 4, 4), "pool: AVE kernel_size: 1 stride: 2")


def test_pooling_float16_and_meta() -> None:
    net = load_pooling((1, 2, 9, 9), "pool: MAX kernel_size: 3 stride: 2 pad: 2")
    assert net(data=torch.empty(1, 2, 11, 11, device="meta"))["pool"].shape == (1, 2, 7, 7)
    x = make_input(9, 9, seed=0)
    out = net(data=torch.from_numpy(x).half())["pool"]
    assert out.dtype == torch.float16
    ref = pooling(x.astype(np.float16).astype(np.float64), kernel=3, stride=2, pad=2, method="MAX")
    assert np.abs(out.float().numpy() - ref.astype(np.float16).astype(np.float32)).max() == 0


@pytest.mark.parametrize("params,message", [
    ("pool: STOCHASTIC kernel_size: 3 stride: 2", r"layer 'pool' \(Pooling\): STOCHASTIC pooling is not supported "
                                                  r"\(layer 'pool'\)"),
    ("pool: MAX kernel_size: 3 pad: 3", r"pad \(3, 3\) >= kernel \(3, 3\); Caffe requires pad < kernel"),
    ("pool: MAX kernel_h: 2 kernel_w: 3 pad_h: 2 pad_w: 0", r"pad \(2, 0\) >= kernel \(2, 3\)"),
    ("pool: MAX global_pooling: true kernel_size: 3", "global_pooling: true with a kernel size"),
    ("pool: MAX global_pooling: true stride: 2", "global_pooling: true needs pad 0 and stride 1"),
    ("pool: MAX kernel_size: 3 kernel_h: 3 kernel_w: 2", "either kernel_size or both kernel_h and kernel_w"),
    ("pool: MAX kernel_h: 3", "either kernel_size or both kernel_h and kernel_w"),
    ("pool: MAX kernel_size: 3 pad: 1 pad_h: 1", "either pad or both pad_h and pad_w"),
    ("pool: MAX", "either kernel_size or both kernel_h and kernel_w"),
])
def test_pooling_refusals(params: str, message: str) -> None:
    with pytest.raises(CaffeImportError, match=message):
        load_pooling((1, 2, 9, 9), params)


def test_pooling_mask_top_is_refused() -> None:
    with pytest.raises(CaffeImportError, match="argmax mask"):
        load_pooling((1, 2, 9, 9), "pool: MAX kernel_size: 3", tops='top: "pool" top: "mask"')
