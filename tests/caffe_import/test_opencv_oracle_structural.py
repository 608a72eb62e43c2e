"""OpenCV 4.x's Caffe importer as an independent oracle for element-wise, normalisation and structural layers.

Each case writes a prototxt, loads it with `caffe_import.load` (Caffe fillers, fixed seed; BatchNorm statistics set
by hand since Caffe fills them with 0), writes the weights with `caffe_import.save_caffemodel`, and runs the same
files through `cv2.dnn.readNetFromCaffe`. OpenCV addresses outputs by layer, so a multi-top layer is compared on
its first top. Tolerance: max |ours - opencv| <= 1e-4 * max(1, max |opencv|). OpenCV 5 dropped `readNetFromCaffe`,
hence the skip.

Left to the numpy oracles because OpenCV 4.14 is not one there: blobs in `double_data` and 0-axis blobs (PReLU
`channel_shared`, Scale `num_axes: 0`) are refused; a two-bottom Scale with `bias_term` returns x + b (the second
bottom is ignored); Log ignores base/scale/shift; MVN puts eps inside the square root; an equal Slice split asserts;
Bias, ArgMax, Threshold and Clip layers do not exist.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import caffe_import

cv2 = pytest.importorskip("cv2")
if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
    pytest.skip("this OpenCV has no Caffe importer (OpenCV 5 removed it)", allow_module_level=True)

Setup = Callable[[caffe_import.CaffeNet], None]


def _input(name: str, shape: tuple[int, ...]) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'


def batch_norm_stats(layer: str, factor: float) -> Setup:
    """Raw Caffe statistics: sums scaled by `factor`, third blob = factor (0 -> mean 0, var 0 at inference)."""

    def setup(net: caffe_import.CaffeNet) -> None:
        module = net.module_of(layer)
        gen = torch.Generator().manual_seed(3)
        channels = module.running_mean_sum.shape[0]
        with torch.no_grad():
            module.running_mean_sum.copy_(torch.randn(channels, generator=gen) * factor)
            module.running_var_sum.copy_((torch.rand(channels, generator=gen) + 0.5) * factor)
            module.scale_factor.fill_(factor)

    return setup


GAUSS = 'filler { type: "gaussian" std: 1 }'
BN_SCALE = ('layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }\n'
            'layer { name: "sc" type: "Scale" bottom: "bn" top: "sc" scale_param { bias_term: true '
            f'{GAUSS} bias_filler {{ type: "gaussian" std: 1 }} }} }}\n')
THREE = {"a": (2, 3, 4, 5), "b": (2, 3, 4, 5), "c": (2, 3, 4, 5)}
V1_NET = """
name: "legacy"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 8 input_dim: 8
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
         convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "slice1" type: SLICE bottom: "conv1" top: "s1" top: "s2" slice_param { slice_point: 1 } }
layers { name: "pool1" type: POOLING bottom: "s2" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "fc" type: INNER_PRODUCT bottom: "pool1" top: "fc"
         inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
"""

# (id, inputs, layers, output layer, setup)
CASES: list[tuple[str, dict[str, tuple[int, ...]], str, str, Setup | None]] = [
    ("bn_scale_s7.5", {"data": (2, 3, 4, 5)}, BN_SCALE, "sc", batch_norm_stats("bn", 7.5)),
    ("bn_scale_s0", {"data": (2, 3, 4, 5)}, BN_SCALE, "sc", batch_norm_stats("bn", 0.0)),
    ("bn_alone", {"data": (2, 3, 4, 5)}, 'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }\n', "bn",
     batch_norm_stats("bn", 999.0)),
    ("scale_axis_num_axes", {"data": (2, 3, 4, 5)},
     f'layer {{ name: "sc" type: "Scale" bottom: "data" top: "sc" scale_param {{ axis: 1 num_axes: 2 {GAUSS} }} }}',
     "sc", None),
    ("eltwise_sum_coeff", THREE, 'layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "e" '
     "eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 } }", "e", None),
    ("eltwise_prod", THREE, 'layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "e" '
     "eltwise_param { operation: PROD } }", "e", None),
    ("eltwise_max", THREE, 'layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "e" '
     "eltwise_param { operation: MAX } }", "e", None),
    ("scale_two_bottoms", {"data": (2, 3, 4, 5), "s": (3, 4)},
     'layer { name: "sc" type: "Scale" bottom: "data" bottom: "s" top: "y" }', "sc", None),
    ("softmax_axis_last", {"data": (2, 3, 4, 5)}, 'layer { name: "p" type: "Softmax" bottom: "data" top: "p" '
     "softmax_param { axis: -1 } }", "p", None),
    ("softmax_axis1", {"data": (2, 21, 4, 5)}, 'layer { name: "p" type: "Softmax" bottom: "data" top: "p" }', "p",
     None),
    ("slice_points", {"data": (2, 5, 3, 3)}, 'layer { name: "s" type: "Slice" bottom: "data" top: "s0" top: "s1" '
     'top: "s2" slice_param { slice_point: 2 slice_point: 3 } }', "s", None),
    ("slice_axis2", {"data": (2, 3, 6, 3)}, 'layer { name: "s" type: "Slice" bottom: "data" top: "s0" '
     'top: "s1" slice_param { axis: 2 slice_point: 4 } }', "s", None),
    ("concat_axis1", THREE, 'layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" bottom: "c" top: "y" }',
     "cat", None),
    ("concat_axis2", {"a": (2, 3, 4, 5), "b": (2, 3, 1, 5)}, 'layer { name: "cat" type: "Concat" bottom: "a" '
     'bottom: "b" top: "y" concat_param { axis: 2 } }', "cat", None),
    ("crop_single_offset", {"data": (1, 3, 30, 31), "ref": (1, 3, 20, 19)},
     'layer { name: "cr" type: "Crop" bottom: "data" bottom: "ref" top: "y" crop_param { axis: 2 offset: 5 } }',
     "cr", None),
    ("crop_per_axis", {"data": (2, 5, 9, 9), "ref": (2, 3, 4, 6)},
     'layer { name: "cr" type: "Crop" bottom: "data" bottom: "ref" top: "y" '
     "crop_param { axis: 1 offset: 1 offset: 0 offset: 3 } }", "cr", None),
    ("power", {"data": (2, 3, 4, 5)}, 'layer { name: "pw" type: "Power" bottom: "data" top: "y" '
     "power_param { power: 2 scale: 0.5 shift: 1 } }", "pw", None),
    ("power_scale_shift", {"data": (2, 3, 4, 5)}, 'layer { name: "pw" type: "Power" bottom: "data" top: "y" '
     "power_param { scale: -3 shift: 0.25 } }", "pw", None),
    ("prelu", {"data": (2, 3, 4, 5)}, 'layer { name: "pr" type: "PReLU" bottom: "data" top: "y" '
     f"prelu_param {{ {GAUSS} }} }}", "pr", None),
    ("prelu_default_filler", {"data": (2, 3, 4, 5)}, 'layer { name: "pr" type: "PReLU" bottom: "data" top: "y" }',
     "pr", None),
    ("flatten", {"data": (2, 3, 4, 5)}, 'layer { name: "f" type: "Flatten" bottom: "data" top: "y" }', "f", None),
    ("flatten_axis2", {"data": (2, 3, 4, 5)}, 'layer { name: "f" type: "Flatten" bottom: "data" top: "y" '
     "flatten_param { axis: 2 } }", "f", None),
    ("reshape", {"data": (1, 18, 7, 5)}, 'layer { name: "r" type: "Reshape" bottom: "data" top: "y" '
     "reshape_param { shape { dim: 0 dim: 2 dim: -1 dim: 0 } } }", "r", None),
    ("mvn", {"data": (2, 3, 4, 5)}, 'layer { name: "m" type: "MVN" bottom: "data" top: "y" }', "m", None),
    # Default eps only: OpenCV divides by sqrt(var + eps), Caffe by sqrt(var) + eps (mvn_layer.cpp); with eps 0.01
    # they differ by ~5e-3, so eps itself is checked against the numpy oracle instead.
    ("mvn_across", {"data": (2, 3, 4, 5)}, 'layer { name: "m" type: "MVN" bottom: "data" top: "y" '
     "mvn_param { across_channels: true } }", "m", None),
    ("mvn_mean_only", {"data": (2, 3, 4, 5)}, 'layer { name: "m" type: "MVN" bottom: "data" top: "y" '
     "mvn_param { normalize_variance: false } }", "m", None),
    ("leaky_relu", {"data": (2, 3, 4, 5)}, 'layer { name: "r" type: "ReLU" bottom: "data" top: "y" '
     "relu_param { negative_slope: 0.2 } }", "r", None),
    ("elu", {"data": (2, 3, 4, 5)}, 'layer { name: "e" type: "ELU" bottom: "data" top: "y" elu_param { alpha: 0.7 } }',
     "e", None),
    ("sigmoid", {"data": (2, 3, 4, 5)}, 'layer { name: "s" type: "Sigmoid" bottom: "data" top: "y" }', "s", None),
    ("tanh", {"data": (2, 3, 4, 5)}, 'layer { name: "t" type: "TanH" bottom: "data" top: "y" }', "t", None),
    ("absval", {"data": (2, 3, 4, 5)}, 'layer { name: "a" type: "AbsVal" bottom: "data" top: "y" }', "a", None),
    ("bnll", {"data": (2, 3, 4, 5)}, 'layer { name: "b" type: "BNLL" bottom: "data" top: "y" }', "b", None),
    ("exp", {"data": (2, 3, 4, 5)}, 'layer { name: "e" type: "Exp" bottom: "data" top: "y" '
     "exp_param { base: 2 scale: 0.5 shift: 0.25 } }", "e", None),
    ("dropout_test_phase", {"data": (2, 3, 4, 5)}, 'layer { name: "d" type: "Dropout" bottom: "data" top: "y" '
     "dropout_param { dropout_ratio: 0.3 } }", "d", None),
]


def compare(tmp_path: Path, prototxt_text: str, inputs: dict[str, tuple[int, ...]], layer: str,
            setup: Setup | None) -> float:
    """Max |ours - OpenCV| / max(1, max |OpenCV|) for the output of `layer`."""
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(prototxt_text)
    net = caffe_import.load(prototxt, seed=11)
    if setup is not None:
        setup(net)
    caffemodel = caffe_import.save_caffemodel(net, tmp_path / "net.caffemodel")
    ours_net = caffe_import.load(prototxt, caffemodel, strict=True)

    rng = np.random.default_rng(5)
    arrays = {name: rng.normal(size=shape).astype(np.float32) for name, shape in inputs.items()}
    cv_net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    for name, array in arrays.items():
        cv_net.setInput(array, name)
    expected = cv_net.forward(layer)

    top = ours_net.graph.layer(layer).blob_tops[0]
    with torch.no_grad():
        ours = ours_net(**{k: torch.from_numpy(v) for k, v in arrays.items()}, outputs=[top])[top].numpy()
    assert ours.shape == expected.shape, (ours.shape, expected.shape)
    return float(np.abs(ours - expected).max() / max(1.0, float(np.abs(expected).max())))


@pytest.mark.parametrize(("inputs", "body", "layer", "setup"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_layer_matches_opencv(tmp_path: Path, inputs, body: str, layer: str, setup: Setup | None) -> None:
    text = 'name: "oracle"\n' + "".join(_input(name, shape) for name, shape in inputs.items()) + body + "\n"
    assert compare(tmp_path, text, inputs, layer, setup) <= 1e-4


# OpenCV's forward("conv1") is the convolution's own output (before the in-place relu1), while our blob "conv1" is
# pycaffe's (after it); "relu1" is the layer whose output both mean.
@pytest.mark.parametrize("layer", ["relu1", "slice1", "pool1", "fc", "prob"])
def test_v1_net_matches_opencv(tmp_path: Path, layer: str) -> None:
    assert compare(tmp_path, V1_NET, {"data": (2, 3, 8, 8)}, layer, None) <= 1e-4
