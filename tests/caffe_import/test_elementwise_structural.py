"""Element-wise, normalisation and structural converters against float64 numpy oracles.

Oracles: `tests/reference` (batch_norm, scale, mvn, softmax, eltwise, power, crop) and, for layers whose Caffe
kernel is a one-line formula (ReLU, Exp, Log, Clip, ...), that formula in numpy next to the test. Nets run in
float64 (`net.double()`), so the converter's arithmetic is checked at rtol 1e-12 unless a test says otherwise; a
float32 run at rtol 1e-5 checks that the default dtype path agrees.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from reference import batch_norm, crop, eltwise, mvn, power, scale, softmax

import caffe_import
from caffe_import import CaffeImportError

RTOL64 = 1e-12
ATOL64 = 1e-12


def inputs(**shapes: tuple[int, ...]) -> str:
    """An Input layer per blob (in keyword order)."""
    return "".join(
        f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ '
        + " ".join(f"dim: {d}" for d in shape) + " } } }\n"
        for name, shape in shapes.items()
    )


def build(body: str, *, float64: bool = True, **shapes: tuple[int, ...]) -> caffe_import.CaffeNet:
    net = caffe_import.load(caffe_import.read_prototxt_string(inputs(**shapes) + body))
    return net.double() if float64 else net


def run(net: caffe_import.CaffeNet, **arrays: np.ndarray) -> dict[str, np.ndarray]:
    """Run a float32 net."""
    tensors = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()}
    with torch.no_grad():
        return {k: v.numpy() for k, v in net(**tensors).items()}


def run64(net: caffe_import.CaffeNet, **arrays: np.ndarray) -> dict[str, np.ndarray]:
    tensors = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in arrays.items()}
    with torch.no_grad():
        return {k: v.numpy() for k, v in net(**tensors).items()}


def close(actual: np.ndarray, expected: np.ndarray, rtol: float = RTOL64, atol: float = ATOL64) -> None:
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def set_blob(net: caffe_import.CaffeNet, layer: str, attr: str, value: np.ndarray) -> None:
    target = getattr(net.module_of(layer), attr)
    with torch.no_grad():
        target.copy_(torch.from_numpy(np.asarray(value, dtype=np.float64)).reshape(target.shape))


# -- neuron layers -------------------------------------------------------------------------------------------------

NEURONS = [
    ("ReLU", "", lambda x: np.maximum(x, 0)),
    ("ReLU", "relu_param { negative_slope: 0.1 }", lambda x: np.maximum(x, 0) + np.float32(0.1) * np.minimum(x, 0)),
    ("Sigmoid", "", lambda x: 1 / (1 + np.exp(-x))),
    ("TanH", "", np.tanh),
    ("AbsVal", "", np.abs),
    ("BNLL", "", lambda x: np.where(x > 0, x + np.log1p(np.exp(-np.abs(x))), np.log1p(np.exp(np.minimum(x, 0))))),
    ("ELU", "", lambda x: np.maximum(x, 0) + (np.exp(np.minimum(x, 0)) - 1)),
    ("ELU", "elu_param { alpha: 0.5 }", lambda x: np.maximum(x, 0) + 0.5 * (np.exp(np.minimum(x, 0)) - 1)),
    ("Threshold", "threshold_param { threshold: 0.25 }", lambda x: (x > 0.25).astype(np.float64)),
    ("Clip", "clip_param { min: -0.5 max: 0.75 }", lambda x: np.clip(x, -0.5, 0.75)),
    ("Exp", "", np.exp),
    ("Exp", "exp_param { base: 2 scale: 0.5 shift: 1.5 }", lambda x: 2.0 ** (1.5 + 0.5 * x)),
    ("Log", "log_param { base: 10 scale: 2 shift: 9 }", lambda x: np.log10(9 + 2 * x)),
    ("Log", "log_param { shift: 5 }", lambda x: np.log(5 + x)),
]


@pytest.mark.parametrize(("kind", "param", "formula"), NEURONS, ids=[f"{k}-{p[:20]}" for k, p, _ in NEURONS])
def test_neuron_layers(kind: str, param: str, formula, rng: np.random.Generator) -> None:
    """Caffe's per-element formulas (relu/sigmoid/.../log_layer.cpp), float64 at 1e-12 and float32 at 1e-5."""
    x = rng.normal(scale=3.0, size=(2, 3, 4, 5))
    x[0, 0, 0, :3] = [0.0, 0.25, -0.5]  # the boundaries of ReLU, Threshold and Clip
    if kind == "Log":  # keep away from log(0), where float32 cancellation in shift + scale * x dominates
        x = np.abs(x) + 0.1
    body = f'layer {{ name: "y" type: "{kind}" bottom: "x" top: "y" {param} }}'
    close(run64(build(body, x=x.shape), x=x)["y"], formula(x))
    out32 = run(build(body, float64=False, x=x.shape), x=x.astype(np.float32))["y"]
    close(out32.astype(np.float64), formula(x.astype(np.float32).astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_clip_nan_and_crossed_bounds() -> None:
    """Clip is max(min, min(x, max)) with std::min/max: NaN -> min, and min > max gives min (torch.clamp: max)."""
    x = np.array([[np.nan, -3.0, 0.0, 3.0]])
    out = run64(build('layer { name: "y" type: "Clip" bottom: "x" top: "y" clip_param { min: -1 max: 2 } }',
                      x=x.shape), x=x)["y"]
    close(out, np.array([[-1.0, -1.0, 0.0, 2.0]]))
    crossed = run64(build('layer { name: "y" type: "Clip" bottom: "x" top: "y" clip_param { min: 1 max: -1 } }',
                          x=x.shape), x=x)["y"]
    close(crossed, np.full((1, 4), 1.0))


@pytest.mark.parametrize(("p", "s", "t"), list(itertools.product([0.0, 1.0, 2.0, 0.5, -1.0, 3.0], [1.0, 0.0, -2.0],
                                                                  [0.0, 1.5])))
def test_power(p: float, s: float, t: float, rng: np.random.Generator) -> None:
    """y = (shift + scale x)^power incl. Caffe's constant path (power * scale == 0 ignores x, even inf/NaN)."""
    x = rng.normal(size=(2, 3, 2, 2))
    x[0, 0, 0, 0] = np.inf if p * s == 0 else 0.7
    body = (f'layer {{ name: "y" type: "Power" bottom: "x" top: "y" '
            f'power_param {{ power: {p} scale: {s} shift: {t} }} }}')
    close(run64(build(body, x=x.shape), x=x)["y"], power(x, power=p, scale=s, shift=t))


def test_prelu(rng: np.random.Generator) -> None:
    """PReLU per channel (blob (C,)) and shared (a 0-axis blob); default filler is constant 0.25 as in Caffe."""
    x = rng.normal(size=(2, 3, 4, 4))
    net = build('layer { name: "y" type: "PReLU" bottom: "x" top: "y" }', x=x.shape)
    assert tuple(net.y.weight.shape) == (3,) and torch.all(net.y.weight == 0.25)
    slopes = np.array([0.1, -0.3, 2.0])
    set_blob(net, "y", "weight", slopes)
    close(run64(net, x=x)["y"], np.maximum(x, 0) + slopes[None, :, None, None] * np.minimum(x, 0))
    shared = build('layer { name: "y" type: "PReLU" bottom: "x" top: "y" prelu_param { channel_shared: true } }',
                   x=x.shape)
    assert tuple(shared.y.weight.shape) == ()
    set_blob(shared, "y", "weight", np.array(0.3))
    close(run64(shared, x=x)["y"], np.maximum(x, 0) + 0.3 * np.minimum(x, 0))


def test_zero_axis_blobs_round_trip_through_a_caffemodel(tmp_path, rng: np.random.Generator) -> None:
    """Caffe writes a channel-shared PReLU slope / scalar Scale as a blob with an empty shape, not (1,)."""
    body = ('layer { name: "pr" type: "PReLU" bottom: "x" top: "p" prelu_param { channel_shared: true } }\n'
            'layer { name: "sc" type: "Scale" bottom: "p" top: "y" scale_param { num_axes: 0 '
            'filler { type: "gaussian" } } }')
    text = inputs(x=(2, 3, 4)) + body
    net = caffe_import.load(caffe_import.read_prototxt_string(text), seed=3)
    path = caffe_import.save_caffemodel(net, tmp_path / "scalar.caffemodel")
    stored = {layer.name: layer.blobs for layer in caffe_import.read_caffemodel(path).layer if len(layer.blobs)}
    assert [list(b.shape.dim) for b in stored["pr"]] == [[]] and [list(b.shape.dim) for b in stored["sc"]] == [[]]
    again = caffe_import.load(caffe_import.read_prototxt_string(text), path, strict=True)
    assert torch.equal(again.pr.weight, net.pr.weight) and torch.equal(again.sc.weight, net.sc.weight)
    x = rng.normal(size=(2, 3, 4))
    w, s = float(net.pr.weight.detach()), float(net.sc.weight.detach())
    close(run(again, x=x)["y"], (np.maximum(x, 0) + w * np.minimum(x, 0)) * s, rtol=1e-5, atol=1e-6)


def test_dropout_train_and_eval(rng: np.random.Generator) -> None:
    """BVLC: TRAIN x * mask / (1 - p), TEST x. Fork `scale_train: false`: TRAIN x * mask, TEST x * (1 - p)."""
    x = rng.uniform(1.0, 2.0, size=(4, 64, 8, 8))
    net = build('layer { name: "y" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 0.25 } }',
                x=x.shape)
    close(run64(net, x=x)["y"], x)
    net.train()
    torch.manual_seed(0)
    y = run64(net, x=x)["y"]
    kept = y != 0
    close(y[kept], x[kept] / 0.75)
    assert abs(kept.mean() - 0.75) < 0.01

    body = ('layer { name: "y" type: "Dropout" bottom: "x" top: "y" '
            'dropout_param { dropout_ratio: 0.5 scale_train: false } }')
    fork = build(body, x=x.shape)
    close(run64(fork, x=x)["y"], x * 0.5)
    fork.train()
    y = run64(fork, x=x)["y"]
    kept = y != 0
    close(y[kept], x[kept])
    assert abs(kept.mean() - 0.5) < 0.01


# -- normalisation -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("factor", [7.5, 1.0, 0.0])
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (6, 3), (2, 3, 7)])
def test_batch_norm_global_stats(factor: float, shape: tuple[int, ...], rng: np.random.Generator) -> None:
    """TEST-phase BatchNorm divides the raw blobs by the third (0 -> 0) and has no affine part."""
    x = rng.normal(loc=2.0, scale=3.0, size=shape)
    mean_sum, var_sum = rng.normal(size=3) * factor, rng.uniform(0.5, 2.0, size=3) * factor
    net = build('layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" batch_norm_param { eps: 0.001 } }',
                x=shape)
    for attr, value in [("running_mean_sum", mean_sum), ("running_var_sum", var_sum), ("scale_factor", [factor])]:
        set_blob(net, "bn", attr, np.asarray(value))
    y = run64(net, x=x)["y"]
    eps = float(np.float32(0.001))
    close(y, batch_norm(x, mean_sum=mean_sum, var_sum=var_sum, scale_factor=factor, eps=eps))
    if factor == 0:  # mean 0, var 0: y = x / sqrt(eps), the analytic value
        close(y, x / np.sqrt(eps))


def test_batch_norm_scale_matches_affine_batch_norm(rng: np.random.Generator) -> None:
    """BN (blobs scaled by 7.5) + Scale(bias_term) == torch's batch_norm on the unscaled statistics, float32."""
    x = rng.normal(size=(2, 4, 6, 6)).astype(np.float32)
    body = ('layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" }\n'
            'layer { name: "sc" type: "Scale" bottom: "x" top: "x" scale_param { bias_term: true } }')
    net = build(body, float64=False, x=x.shape)
    mean, var = rng.normal(size=4), rng.uniform(0.5, 2, size=4)
    gamma, beta = rng.normal(size=4), rng.normal(size=4)
    for layer, attr, value in [("bn", "running_mean_sum", mean * 7.5), ("bn", "running_var_sum", var * 7.5),
                               ("bn", "scale_factor", [7.5]), ("sc", "weight", gamma), ("sc", "bias", beta)]:
        set_blob(net, layer, attr, np.asarray(value))
    y = run(net, x=x)["x"]
    expected = torch.nn.functional.batch_norm(torch.from_numpy(x), *(torch.tensor(v, dtype=torch.float32) for v in
                                              (mean, var, gamma, beta)), eps=1e-5)
    close(y, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_batch_norm_train_mode_updates_raw_blobs(rng: np.random.Generator) -> None:
    """TRAIN: batch statistics (biased variance) normalise; blobs update as s*maf + 1, mean_sum*maf + mean,
    var_sum*maf + m/(m-1) var (batch_norm_layer.cpp Forward_cpu)."""
    x = rng.normal(loc=1.0, scale=2.0, size=(3, 2, 4, 5))
    net = build('layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" '
                'batch_norm_param { moving_average_fraction: 0.5 } }', x=x.shape)
    start = {"running_mean_sum": np.array([1.0, -1.0]), "running_var_sum": np.array([2.0, 4.0]), "scale_factor": [3.0]}
    for attr, value in start.items():
        set_blob(net, "bn", attr, np.asarray(value))
    net.train()
    y = run64(net, x=x)["y"]
    mean = x.mean(axis=(0, 2, 3))
    var = ((x - mean[None, :, None, None]) ** 2).mean(axis=(0, 2, 3))
    eps = float(np.float32(1e-5))
    close(y, (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + eps))
    m = 3 * 4 * 5
    maf = 0.5
    bn = net.bn
    close(bn.scale_factor.numpy(), np.array([3.0 * maf + 1]))
    close(bn.running_mean_sum.numpy(), start["running_mean_sum"] * maf + mean)
    close(bn.running_var_sum.numpy(), start["running_var_sum"] * maf + m / (m - 1) * var)
    # An explicit use_global_stats wins over the module's mode.
    fixed = build('layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" '
                  'batch_norm_param { use_global_stats: true } }', x=x.shape)
    for attr, value in start.items():
        set_blob(fixed, "bn", attr, np.asarray(value))
    fixed.train()
    close(run64(fixed, x=x)["y"], batch_norm(x, mean_sum=start["running_mean_sum"],
                                             var_sum=start["running_var_sum"], scale_factor=3.0, eps=eps))
    assert float(fixed.bn.scale_factor) == 3.0


SCALE_CASES = [
    # (scale_param, blob shape on a (2, 3, 4, 5) bottom, axis the blob starts at)
    ("", (3,), 1),
    ("bias_term: true", (3,), 1),
    ("axis: 2 num_axes: 2", (4, 5), 2),
    ("axis: -2 num_axes: -1 bias_term: true", (4, 5), 2),
    ("axis: 0 num_axes: 2", (2, 3), 0),
    ("num_axes: 0 bias_term: true", (), 0),
    ("axis: 1 num_axes: -1", (3, 4, 5), 1),
]


@pytest.mark.parametrize(("param", "blob_shape", "axis"), SCALE_CASES)
def test_scale_learned(param: str, blob_shape: tuple[int, ...], axis: int, rng: np.random.Generator) -> None:
    x = rng.normal(size=(2, 3, 4, 5))
    net = build(f'layer {{ name: "sc" type: "Scale" bottom: "x" top: "y" scale_param {{ {param} }} }}', x=x.shape)
    assert tuple(net.sc.weight.shape) == blob_shape and torch.all(net.sc.weight == 1)  # default filler: 1
    s = rng.normal(size=blob_shape)
    set_blob(net, "sc", "weight", s)
    b = None
    if "bias_term" in param:
        assert net.sc.caffe_blobs == ("weight", "bias") and torch.all(net.sc.bias == 0)
        b = rng.normal(size=blob_shape)
        set_blob(net, "sc", "bias", b)
    else:
        assert net.sc.caffe_blobs == ("weight",)
    close(run64(net, x=x)["y"], scale(x, s, bias=b, axis=axis))


@pytest.mark.parametrize("bias_term", [False, True])
def test_scale_two_bottoms(bias_term: bool, rng: np.random.Generator) -> None:
    """The second bottom is the scale; a bias_term then has the second bottom's shape."""
    x, s = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(3, 4))
    body = (f'layer {{ name: "sc" type: "Scale" bottom: "x" bottom: "s" top: "y" '
            f'scale_param {{ bias_term: {str(bias_term).lower()} }} }}')
    net = build(body, x=x.shape, s=s.shape)
    b = None
    if bias_term:
        assert net.sc.caffe_blobs == ("bias",) and tuple(net.sc.bias.shape) == (3, 4)
        b = rng.normal(size=(3, 4))
        set_blob(net, "sc", "bias", b)
    else:
        assert net.sc.caffe_blobs == ()
    close(run64(net, x=x, s=s)["y"], scale(x, s, bias=b, axis=1))


def test_bias_layer(rng: np.random.Generator) -> None:
    x = rng.normal(size=(2, 3, 4, 5))
    net = build('layer { name: "b" type: "Bias" bottom: "x" top: "y" bias_param { axis: 2 num_axes: 1 } }',
                x=x.shape)
    b = rng.normal(size=4)
    set_blob(net, "b", "bias", b)
    close(run64(net, x=x)["y"], x + b[None, None, :, None])
    two = build('layer { name: "b" type: "Bias" bottom: "x" bottom: "c" top: "y" }', x=x.shape, c=(3,))
    c = rng.normal(size=3)
    close(run64(two, x=x, c=c)["y"], x + c[None, :, None, None])


@pytest.mark.parametrize(("normalize_variance", "across_channels"), list(itertools.product([True, False], repeat=2)))
def test_mvn(normalize_variance: bool, across_channels: bool, rng: np.random.Generator) -> None:
    """MVN: eps is added to the standard deviation (mvn_layer.cpp); default eps 1e-9."""
    x = rng.normal(loc=3.0, size=(2, 3, 4, 5))
    param = f"normalize_variance: {str(normalize_variance).lower()} across_channels: {str(across_channels).lower()}"
    for extra, eps in [("", 1e-9), ("eps: 0.5", 0.5)]:
        net = build(f'layer {{ name: "m" type: "MVN" bottom: "x" top: "y" mvn_param {{ {param} {extra} }} }}',
                    x=x.shape)
        expected = mvn(x, normalize_variance=normalize_variance, across_channels=across_channels,
                       eps=float(np.float32(eps)))
        close(run64(net, x=x)["y"], expected)


@pytest.mark.parametrize(("axis", "shape"), [(1, (2, 21, 4, 5)), (-1, (2, 3, 4, 5)), (2, (1, 2, 9, 3)), (1, (4, 7))])
def test_softmax_one_axis(axis: int, shape: tuple[int, ...], rng: np.random.Generator) -> None:
    """One softmax per position of the other axes (per pixel for axis 1 on NCHW), never a flattened one."""
    x = rng.normal(scale=4.0, size=shape)
    param = "" if axis == 1 else f"softmax_param {{ axis: {axis} }}"
    net = build(f'layer {{ name: "p" type: "Softmax" bottom: "x" top: "y" {param} }}', x=shape)
    y = run64(net, x=x)["y"]
    close(y, softmax(x, axis=axis))
    close(y.sum(axis=axis), np.ones(np.delete(np.array(shape), axis)))


# -- structural ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("param", "axis"), [("", 1), ("concat_param { axis: 2 }", 2),
                                           ("concat_param { concat_dim: 2 }", 2), ("concat_param { axis: -1 }", 3)])
def test_concat(param: str, axis: int, rng: np.random.Generator) -> None:
    shapes = [[2, 3, 4, 5], [2, 3, 4, 5], [2, 3, 4, 5]]
    for s, extra in zip(shapes, (1, 2, 3)):
        s[axis] = extra
    xs = [rng.normal(size=s) for s in shapes]
    net = build(f'layer {{ name: "c" type: "Concat" bottom: "a" bottom: "b" bottom: "d" top: "y" {param} }}',
                a=tuple(shapes[0]), b=tuple(shapes[1]), d=tuple(shapes[2]))
    close(run64(net, a=xs[0], b=xs[1], d=xs[2])["y"], np.concatenate(xs, axis=axis))


def test_concat_axis_and_concat_dim_is_an_error() -> None:
    with pytest.raises(CaffeImportError, match="both axis and the deprecated concat_dim"):
        build('layer { name: "c" type: "Concat" bottom: "a" bottom: "b" top: "y" concat_param { axis: 1 '
              'concat_dim: 1 } }', a=(1, 2), b=(1, 2))


@pytest.mark.parametrize(("param", "tops", "cuts", "axis"), [
    ("slice_param { slice_point: 1 slice_point: 4 }", 3, [1, 4], 1),
    ("", 3, [2, 4], 1),
    ("slice_param { slice_dim: 2 slice_point: 3 }", 2, [3], 2),
    ("slice_param { axis: -1 }", 2, [3], 3),
])
def test_slice(param: str, tops: int, cuts: list[int], axis: int, rng: np.random.Generator) -> None:
    x = rng.normal(size=(2, 6, 6, 6))
    top_text = " ".join(f'top: "t{i}"' for i in range(tops))
    net = build(f'layer {{ name: "s" type: "Slice" bottom: "x" {top_text} {param} }}', x=x.shape)
    out = run64(net, x=x)
    for i, expected in enumerate(np.split(x, cuts, axis=axis)):
        close(out[f"t{i}"], expected)


@pytest.mark.parametrize(("param", "tops", "message"), [
    ("slice_param { slice_point: 3 slice_point: 2 }", 3, "strictly increasing"),
    ("slice_param { slice_point: 2 slice_point: 2 }", 3, "strictly increasing"),
    ("slice_param { slice_point: 2 }", 3, "1 slice_point values need 2 tops"),
    ("", 4, "4 tops do not evenly divide axis 1 of size 6"),
    ("slice_param { axis: 1 slice_dim: 1 }", 2, "both axis and the deprecated slice_dim"),
])
def test_slice_errors(param: str, tops: int, message: str) -> None:
    top_text = " ".join(f'top: "t{i}"' for i in range(tops))
    with pytest.raises(CaffeImportError, match=message):
        build(f'layer {{ name: "s" type: "Slice" bottom: "x" {top_text} {param} }}', x=(2, 6, 3))


def test_split_returns_the_bottom_for_every_top(rng: np.random.Generator) -> None:
    x = rng.normal(size=(2, 3))
    out = run64(build('layer { name: "s" type: "Split" bottom: "x" top: "a" top: "b" top: "c" }', x=x.shape), x=x)
    for name in "abc":
        close(out[name], x)


@pytest.mark.parametrize(("param", "operation", "coeff"), [
    ("eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 }", "SUM", [1, -0.5, 2]),
    ("", "SUM", None),
    ("eltwise_param { operation: PROD }", "PROD", None),
    ("eltwise_param { operation: MAX }", "MAX", None),
])
def test_eltwise(param: str, operation: str, coeff: list[float] | None, rng: np.random.Generator) -> None:
    xs = [rng.normal(size=(2, 3, 4, 4)) for _ in range(3)]
    xs[1][0, 0, 0, :2] = xs[0][0, 0, 0, :2]  # ties for MAX
    net = build(f'layer {{ name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y" {param} }}',
                a=xs[0].shape, b=xs[1].shape, c=xs[2].shape)
    close(run64(net, a=xs[0], b=xs[1], c=xs[2])["y"], eltwise(xs, operation=operation, coeff=coeff))


@pytest.mark.parametrize(("param", "message"), [
    ("eltwise_param { coeff: 1 coeff: 2 }", "one coefficient per bottom blob: 2 coeff for 3 bottoms"),
    ("eltwise_param { operation: PROD coeff: 1 coeff: 2 coeff: 3 }", "only takes coefficients for summation"),
    ("eltwise_param { operation: MAX coeff: 1 coeff: 2 coeff: 3 }", "only takes coefficients for summation"),
])
def test_eltwise_errors(param: str, message: str) -> None:
    with pytest.raises(CaffeImportError, match=message):
        build(f'layer {{ name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y" {param} }}',
              a=(1, 2), b=(1, 2), c=(1, 2))


CROP_CASES = [
    # (crop_param, data shape, reference shape, axis, offsets)
    ("crop_param { axis: 2 offset: 5 }", (1, 3, 30, 31), (1, 3, 20, 19), 2, [5]),
    ("", (1, 3, 30, 31), (1, 3, 20, 19), 2, []),
    ("crop_param { axis: 2 offset: 2 offset: 7 }", (1, 3, 30, 31), (1, 3, 20, 19), 2, [2, 7]),
    ("crop_param { axis: 1 offset: 1 offset: 0 offset: 3 }", (2, 5, 9, 9), (7, 3, 4, 6), 1, [1, 0, 3]),
    ("crop_param { axis: 1 offset: 1 }", (2, 5, 9, 9), (7, 3, 4, 6), 1, [1]),
    ("crop_param { axis: -1 offset: 2 }", (2, 5, 9, 9), (2, 5, 9, 4), 3, [2]),
]


@pytest.mark.parametrize(("param", "data_shape", "ref_shape", "axis", "offsets"), CROP_CASES)
def test_crop(param: str, data_shape, ref_shape, axis: int, offsets: list[int], rng: np.random.Generator) -> None:
    x, r = rng.normal(size=data_shape), rng.normal(size=ref_shape)
    net = build(f'layer {{ name: "c" type: "Crop" bottom: "x" bottom: "r" top: "y" {param} }}',
                x=data_shape, r=ref_shape)
    close(run64(net, x=x, r=r)["y"], crop(x, ref_shape, axis=axis, offset=offsets))


def test_crop_follows_the_runtime_input_size(rng: np.random.Generator) -> None:
    """FCN-style: data and reference shrink/grow with the input; the crop window is computed at run time."""
    body = ('layer { name: "up" type: "Power" bottom: "data" top: "up" power_param { scale: 2 } }\n'
            'layer { name: "score" type: "Crop" bottom: "up" bottom: "data" top: "score" crop_param { offset: 0 } }\n'
            'layer { name: "c2" type: "Crop" bottom: "big" bottom: "data" top: "c2" crop_param { axis: 2 offset: 3 '
            'offset: 1 } }')
    net = build(body, data=(1, 2, 10, 12), big=(1, 2, 20, 20))
    for h, w in [(10, 12), (17, 9), (31, 40)]:
        x, big = rng.normal(size=(1, 2, h, w)), rng.normal(size=(1, 2, h + 5, w + 2))
        out = run64(net, data=x, big=big)
        close(out["score"], 2 * x)
        close(out["c2"], crop(big, x.shape, axis=2, offset=[3, 1]))
    with pytest.raises(CaffeImportError, match=r"crop of dim 2 does not fit: data size 14, offset 3, crop size 12"):
        run64(net, data=rng.normal(size=(1, 2, 12, 4)), big=rng.normal(size=(1, 2, 14, 9)))


@pytest.mark.parametrize(("param", "data_shape", "ref_shape", "message"), [
    ("crop_param { offset: 4 }", (1, 3, 10, 10), (1, 3, 7, 7), "crop of dim 2 does not fit"),
    ("crop_param { axis: 2 offset: 1 offset: 1 offset: 1 }", (1, 3, 10, 10), (1, 3, 7, 7), "3 offsets given"),
])
def test_crop_errors(param: str, data_shape, ref_shape, message: str) -> None:
    with pytest.raises(CaffeImportError, match=message):
        build(f'layer {{ name: "c" type: "Crop" bottom: "x" bottom: "r" top: "y" {param} }}', x=data_shape,
              r=ref_shape)


@pytest.mark.parametrize(("param", "expected_shape"), [
    ("", (2, 60)), ("flatten_param { axis: 2 }", (2, 3, 20)), ("flatten_param { axis: 1 end_axis: 2 }", (2, 12, 5)),
    ("flatten_param { axis: 0 end_axis: -2 }", (24, 5)),
])
def test_flatten(param: str, expected_shape: tuple[int, ...], rng: np.random.Generator) -> None:
    x = rng.normal(size=(2, 3, 4, 5))
    close(run64(build(f'layer {{ name: "f" type: "Flatten" bottom: "x" top: "y" {param} }}', x=x.shape), x=x)["y"],
          x.reshape(expected_shape))


@pytest.mark.parametrize(("param", "in_shape", "expected_shape"), [
    ("shape { dim: 0 dim: -1 }", (2, 3, 4, 5), (2, 60)),
    ("shape { dim: 0 dim: 2 dim: -1 dim: 0 }", (1, 18, 7, 5), (1, 2, 63, 5)),  # the RPN cls-score reshape
    ("shape { dim: 2 dim: 2 } axis: 1 num_axes: 1", (2, 4, 3), (2, 2, 2, 3)),
    ("shape { dim: -1 } axis: -3", (2, 3, 4, 5), (2, 3, 20)),
    ("shape { dim: 1 } axis: 1 num_axes: 0", (2, 3), (2, 1, 3)),
    ("shape { dim: 3 dim: -1 } axis: 0 num_axes: 2", (6, 4, 5), (3, 8, 5)),
    ("shape { dim: 0 dim: -1 } axis: 1", (2, 3, 4, 5), (2, 3, 20)),
])
def test_reshape(param: str, in_shape, expected_shape, rng: np.random.Generator) -> None:
    x = rng.normal(size=in_shape)
    net = build(f'layer {{ name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param {{ {param} }} }}', x=in_shape)
    close(run64(net, x=x)["y"], x.reshape(expected_shape))


def test_reshape_follows_the_runtime_input_size(rng: np.random.Generator) -> None:
    net = build('layer { name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 0 dim: 2 '
                'dim: -1 dim: 0 } } }', x=(1, 18, 7, 5))
    x = rng.normal(size=(2, 18, 3, 11))
    close(run64(net, x=x)["y"], x.reshape(2, 2, 27, 11))
    with pytest.raises(CaffeImportError, match="more than one -1"):
        build('layer { name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: -1 dim: -1 } } }',
              x=(2, 3))
    with pytest.raises(CaffeImportError, match="not divisible"):
        build('layer { name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 4 dim: -1 } } }',
              x=(2, 3))


def test_silence_hides_its_bottom(rng: np.random.Generator) -> None:
    body = ('layer { name: "s" type: "Slice" bottom: "x" top: "a" top: "b" }\n'
            'layer { name: "mute" type: "Silence" bottom: "b" }')
    net = build(body, x=(2, 4))
    assert net.output_names == ("a",)
    x = rng.normal(size=(2, 4))
    close(run64(net, x=x)["a"], x[:, :2])


def _argmax_reference(x: np.ndarray, top_k: int, out_max_val: bool, axis: int | None) -> np.ndarray:
    """ArgMaxLayer::Forward_cpu: sort (value, index) pairs descending (ties: larger index first)."""
    if axis is None:
        flat = x.reshape(x.shape[0], -1)
        out = np.zeros((x.shape[0], 2 if out_max_val else 1, top_k) + (1,) * (max(x.ndim, 3) - 3))
        for n in range(flat.shape[0]):
            order = sorted(((v, j) for j, v in enumerate(flat[n])), reverse=True)[:top_k]
            out[n, 0, :, ...] = np.array([j for _, j in order]).reshape((top_k,) + (1,) * (out.ndim - 3))
            if out_max_val:
                out[n, 1, :, ...] = np.array([v for v, _ in order]).reshape((top_k,) + (1,) * (out.ndim - 3))
        return out
    moved = np.moveaxis(x, axis, -1)
    out = np.zeros(moved.shape[:-1] + (top_k,))
    for idx in np.ndindex(*moved.shape[:-1]):
        order = sorted(((v, j) for j, v in enumerate(moved[idx])), reverse=True)[:top_k]
        out[idx] = [v if out_max_val else j for v, j in order]
    return np.moveaxis(out, -1, axis)


@pytest.mark.parametrize(("param", "top_k", "out_max_val", "axis"), [
    ("argmax_param { axis: 1 }", 1, False, 1),
    ("argmax_param { axis: 1 top_k: 3 out_max_val: true }", 3, True, 1),
    ("argmax_param { axis: -1 top_k: 2 }", 2, False, 3),
    ("argmax_param { top_k: 2 }", 2, False, None),
    ("argmax_param { top_k: 3 out_max_val: true }", 3, True, None),
])
def test_argmax(param: str, top_k: int, out_max_val: bool, axis: int | None, rng: np.random.Generator) -> None:
    x = np.round(rng.normal(size=(2, 5, 3, 4)), 0)  # rounding makes ties
    net = build(f'layer {{ name: "a" type: "ArgMax" bottom: "x" top: "y" {param} }}', x=x.shape)
    close(run64(net, x=x)["y"], _argmax_reference(x, top_k, out_max_val, axis))
