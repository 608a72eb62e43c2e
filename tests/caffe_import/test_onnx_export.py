"""ONNX export (`caffe_import.onnx_export`) run in onnxruntime against the PyTorch net, or the float64 Caffe port.

Tolerances:
* nets: per output, max |ort - torch| <= TOL * max(1, max |torch|) with TOL = 1e-4 (float32 nets of up to 16
  accumulating layers; observed errors are ~1e-6 relative);
* the pooling sweep against `tests/reference/pooling.py`: MAX bit-exact (-FLT_MAX included), AVE rtol = atol = 1e-5;
* ArgMax indices exact.
Every model is also passed through `onnx.checker` (export does it; the external-data test calls it on the path).
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from reference import pooling, pooling_output_shape

import caffe_import
import prototxt
from caffe_import import CaffeImportError, check_onnx, export_onnx
from caffe_import.layers import registry
from caffe_import.onnx_export import (
    DEFAULT_OPSET,
    build_onnx_model,
    default_feeds,
    emits,
    onnx_exportable_types,
    random_rois,
)
from jigsawpp.fixtures import randomize_weights

TOL = 1e-4


def load_bundled(name: str, **kwargs) -> caffe_import.CaffeNet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return randomize_weights(caffe_import.load(prototxt.path(name), **kwargs), seed=0)


def load_text(text: str) -> caffe_import.CaffeNet:
    return randomize_weights(caffe_import.load(caffe_import.read_prototxt_string(text)), seed=0)


def feeds_for(net: caffe_import.CaffeNet, shapes: dict[str, tuple[int, ...]], *, seed: int = 0,
              scale: float = 50.0) -> dict[str, np.ndarray]:
    """N(0, scale^2) arrays of the given shapes; an (R, 5) "rois" input gets valid ROIs plus half-pixel and
    partly-outside ones (the cases where ROI pooling implementations differ)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, shape in shapes.items():
        if name == "rois":
            _, _, h, w = shapes["data"]
            rois = random_rois(rng, shape[0], batch=shapes["data"][0], height=h, width=w)
            rois[0, 1:] = [8.0, 24.0, 104.0, 120.0]          # corners * 1/16 = n + 0.5 exactly
            rois[1, 1:] = [-8.0, -20.0, 40.0, 300.0]         # partly outside the image
            feeds[name] = rois
        else:
            feeds[name] = (rng.standard_normal(shape) * scale).astype(np.float32)
    return feeds


def ops(path_or_model) -> list[str]:
    model = onnx.load(str(path_or_model)) if not isinstance(path_or_model, onnx.ModelProto) else path_or_model
    return [node.op_type for node in model.graph.node]


def value_dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def assert_parity(net, path, feeds=None, outputs=None, tol: float = TOL):
    result = check_onnx(net, path, feeds, outputs=outputs)
    assert result.passed(tol), result
    return result


def test_every_converted_type_has_an_emitter():
    missing = set(caffe_import.supported_types()) - set(onnx_exportable_types())
    assert not missing, f"Caffe types without an ONNX emitter: {sorted(missing)}"


def test_duplicate_emitter_is_an_error():
    with pytest.raises(RuntimeError, match="already registered"):
        emits("ReLU")(lambda b, layer, m: None)


def test_missing_emitter_names_layer_and_type(tmp_path, monkeypatch):
    monkeypatch.setitem(registry._CONVERTERS, "Fancy", registry._CONVERTERS["AbsVal"])
    net = load_text('layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }\n'
                    'layer { name: "fancy1" type: "Fancy" bottom: "data" top: "y" }')
    with pytest.raises(CaffeImportError, match=r"layer 'fancy1' \(Fancy\).*'Fancy' has no ONNX emitter"):
        export_onnx(net, tmp_path / "m.onnx")


# -- every bundled prototxt ---------------------------------------------------------------------------------------
TILES = {f"data_{i}": (2, 3, 64, 64) for i in range(1, 10)}
# name -> (load kwargs, feed shapes). Feed shapes differ from the declared ones where the export is dynamic.
BUNDLED = {
    "alexnet/conv_conv1s4.prototxt": ({}, {"data": (2, 3, 227, 227)}),
    "alexnet/deploy_conv1s2.prototxt": ({}, {"data": (2, 3, 80, 96)}),
    "alexnet/deploy_conv1s4.prototxt": ({}, {"data": (3, 3, 227, 227)}),
    "caffenet/deploy.prototxt": ({}, {"data": (2, 3, 227, 227)}),
    "fast_rcnn/CaffeNet/test.prototxt": ({}, {"data": (1, 3, 227, 300), "rois": (7, 5)}),
    "fast_rcnn/CaffeNet/train.prototxt": ({"inputs": {"data": (1, 3, 227, 227), "rois": (8, 5)}},
                                          {"data": (1, 3, 240, 200), "rois": (5, 5)}),
    "fcn_alexnet/deploy.prototxt": ({}, {"data": (1, 3, 187, 211)}),
    "jigsawpp/cfn_deploy.prototxt": ({}, TILES),
    "jigsawpp/train_val_cfn_jps++.prototxt": ({"inputs": TILES}, TILES),
    "vgg16/deploy.prototxt": ({}, {"data": (1, 3, 224, 224)}),
}
# Blobs compared besides the outputs: the logits before a softmax (a saturated softmax hides errors) and a pool.
EXTRA_BLOBS = {
    "alexnet/deploy_conv1s4.prototxt": ["fc8"], "caffenet/deploy.prototxt": ["pool5", "fc8"],
    "fast_rcnn/CaffeNet/test.prototxt": ["pool5", "cls_score"], "jigsawpp/cfn_deploy.prototxt": ["concat", "fc8"],
    "vgg16/deploy.prototxt": ["pool5", "fc8"],
}
NOT_NETS = {"fast_rcnn/CaffeNet/solver.prototxt": "a solver definition, not a net"}
SLOW = {"vgg16/deploy.prototxt", "fast_rcnn/CaffeNet/train.prototxt", "jigsawpp/train_val_cfn_jps++.prototxt",
        "alexnet/deploy_conv1s4.prototxt"}


REUSED = {"fcn_alexnet/deploy.prototxt", "fast_rcnn/CaffeNet/test.prototxt"}   # checked again below


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (net, exported path); nets in REUSED are exported once for the module."""
    cache: dict[str, tuple[caffe_import.CaffeNet, object]] = {}

    def get(name: str):
        if name in cache:
            return cache[name]
        net = load_bundled(name, **BUNDLED[name][0])
        entry = (net, export_onnx(net, tmp_path_factory.mktemp("onnx") / "net.onnx"))
        if name in REUSED:
            cache[name] = entry
        return entry

    return get


def test_bundled_cases_cover_every_prototxt():
    assert set(prototxt.available()) == set(BUNDLED) | set(NOT_NETS)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in BUNDLED])
def test_bundled_net_parity(exported, name):
    net, path = exported(name)
    onnx.checker.check_model(str(path))
    blobs = list(net.output_names) + EXTRA_BLOBS.get(name, [])
    result = assert_parity(net, path, feeds_for(net, BUNDLED[name][1]), outputs=blobs)
    assert set(result.max_abs_err) == set(blobs)


def test_fcn_runs_at_two_sizes_from_one_export(exported):
    net, path = exported("fcn_alexnet/deploy.prototxt")
    graph = onnx.load(str(path)).graph
    assert value_dims(graph.input[0]) == ["batch", 3, "height", "width"]
    assert value_dims(graph.output[0]) == ["batch", 21, "height", "width"]
    for shape in [(1, 3, 100, 120), (2, 3, 128, 96)]:   # declared 500 x 500; the parity test ran 187 x 211
        result = assert_parity(net, path, feeds_for(net, {"data": shape}))
        assert result.shapes["score"] == (shape[0], 21) + shape[2:]


def test_fast_rcnn_roi_count_and_image_size_are_dynamic(exported):
    net, path = exported("fast_rcnn/CaffeNet/test.prototxt")
    model = onnx.load(str(path), load_external_data=False)
    assert "MaxRoiPool" in ops(model) and model.opset_import[0].version == DEFAULT_OPSET
    assert {i.name: value_dims(i) for i in model.graph.input} == {"data": ["batch", 3, "height", "width"],
                                                                   "rois": ["num_rois", 5]}
    assert {o.name: value_dims(o) for o in model.graph.output} == {"cls_prob": ["num_rois", 21],
                                                                    "bbox_pred": ["num_rois", 84]}
    for shapes in [{"data": (1, 3, 200, 260), "rois": (3, 5)}, {"data": (2, 3, 227, 227), "rois": (11, 5)}]:
        result = assert_parity(net, path, feeds_for(net, shapes, seed=1))
        assert result.shapes["cls_prob"] == (shapes["rois"][0], 21)


def test_intermediate_values_carry_caffe_blob_names(tmp_path):
    net = load_bundled("alexnet/conv_conv1s4.prototxt")
    path = export_onnx(net, tmp_path / "alexnet.onnx")
    produced = {out: node.op_type for node in onnx.load(str(path)).graph.node for out in node.output}
    # conv4 is rectified in place by relu4: the plain name is the last version, "conv4#0" the one before.
    assert produced["conv4#0"] == "Conv" and produced["conv4"] == "Relu"
    assert produced["pool5"] == "MaxPool" and produced["norm1"] == "LRN"
    feeds = feeds_for(net, {"data": (1, 3, 227, 227)})
    result = assert_parity(net, path, feeds, outputs=["conv4", "norm2", "pool5"])
    assert result.shapes["conv4"] == net.blob_shapes["conv4"]
    names = {o.name for o in onnx.load(str(path)).graph.output}
    assert names == {"pool5"}   # the file itself is untouched by the extra outputs
    default = assert_parity(net, path)   # seeded feeds of the declared shapes
    assert default.provider in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert (default.notice is None) == (default.provider == "CUDAExecutionProvider")


# -- per-layer checks ---------------------------------------------------------------------------------------------
def input_layer(shape: tuple[int, ...], top: str = "data") -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "input_{top}" type: "Input" top: "{top}" input_param {{ shape {{ {dims} }} }} }}\n'


def pooling_net(params: str, shape=(1, 2, 9, 9), after: str = "") -> caffe_import.CaffeNet:
    pool = f'layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param {{ {params} }} }}\n'
    return load_text(input_layer(shape) + pool + after)


def ort_session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def pool_input(h: int, w: int, seed: int) -> np.ndarray:
    """Channel 0 mixed signs, channel 1 all negative (a zero-padded MAX would show)."""
    x = np.random.default_rng(seed).standard_normal((1, 2, h, w)).astype(np.float32)
    x[:, 1] = -np.abs(x[:, 1]) - 1.0
    return x


POOL_GEOMETRIES = [(k, s, p) for k in range(1, 5) for s in range(1, 4) for p in range(k)]   # incl. pad > k/2
POOL_SIZES = [(5, 5), (6, 9), (8, 7), (11, 4)]


@pytest.mark.parametrize("method,round_mode,opset", [(m, r, 17) for m in ("MAX", "AVE") for r in ("CEIL", "FLOOR")]
                         + [("MAX", "CEIL", 22), ("AVE", "CEIL", 22)])
def test_pooling_sweep_matches_caffe_reference(method, round_mode, opset):
    """One dynamic export per geometry, run at every size: ceil / clip rule, pad > kernel/2, the degenerate
    kernel < stride MAX case (explicit -FLT_MAX Pad + floor pool), AVE divisor with padding but no overhang."""
    checked = 0
    for k, s, p in POOL_GEOMETRIES:
        geometry = dict(kernel=(k, k), stride=(s, s), pad=(p, p), round_mode=round_mode)
        sizes = []
        for h, w in POOL_SIZES:
            outs = pooling_output_shape(h, w, **geometry)
            empty_window = any((o - 1) * s >= n + p for o, n in zip(outs, (h, w)))
            if 0 not in outs and not (method == "AVE" and empty_window):
                sizes.append((h, w))   # else: no output, or Caffe's NaN / -0 AVE windows the converter refuses
        if not sizes:
            continue
        params = f"pool: {method} kernel_size: {k} stride: {s} pad: {p} round_mode: {round_mode}"
        session = ort_session(build_onnx_model(pooling_net(params, shape=(1, 2) + sizes[0]), opset=opset))
        for h, w in sizes:
            x = pool_input(h, w, seed=k * 100 + s * 10 + p)
            ref = pooling(x.astype(np.float64), method=method, **geometry)
            (got,) = session.run(None, {"data": x})
            assert got.shape == ref.shape, (params, (h, w))
            if method == "MAX":
                assert np.array_equal(got, ref.astype(np.float32)), (params, (h, w))
            else:
                np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, err_msg=f"{params} at {(h, w)}")
            checked += 1
    assert checked >= 100


def test_degenerate_max_pool_keeps_caffe_empty_window():
    net = pooling_net("pool: MAX kernel_size: 1 stride: 2", shape=(1, 2, 4, 4))
    (got,) = ort_session(build_onnx_model(net)).run(None, {"data": pool_input(4, 4, 0)})
    assert got.shape == (1, 2, 3, 3) and (got[:, :, 2, :] == -np.finfo(np.float32).max).all()


def test_degenerate_max_pool_static_pads(tmp_path):
    """A net with an InnerProduct after the pool has fixed spatial sizes: the pads are folded at export."""
    net = pooling_net("pool: MAX kernel_size: 2 stride: 3", shape=(2, 2, 10, 8),
                      after='layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" '
                            'inner_product_param { num_output: 3 } }')
    path = export_onnx(net, tmp_path / "p.onnx")
    assert "Pad" in ops(path) and "Shape" not in ops(path)
    assert_parity(net, path, feeds_for(net, {"data": (4, 2, 10, 8)}, scale=1.0))


@pytest.mark.parametrize("params", ["pool: MAX global_pooling: true", "pool: AVE global_pooling: true"])
def test_global_pooling(tmp_path, params):
    net = pooling_net(params)
    path = export_onnx(net, tmp_path / "g.onnx")
    assert ops(path)[0].startswith("Global")
    assert_parity(net, path, feeds_for(net, {"data": (2, 2, 7, 5)}))


def test_lrn_across_is_an_onnx_lrn_node_with_k(tmp_path):
    net = load_text(input_layer((2, 7, 6, 5))
                    + 'layer { name: "n1" type: "LRN" bottom: "data" top: "n1" '
                      'lrn_param { local_size: 5 alpha: 0.5 beta: 0.75 k: 2 } }\n'
                    + 'layer { name: "n2" type: "LRN" bottom: "data" top: "n2" '
                      'lrn_param { local_size: 3 alpha: 0.3 beta: 0.6 k: 5 norm_region: WITHIN_CHANNEL } }\n')
    path = export_onnx(net, tmp_path / "lrn.onnx")
    lrn = [n for n in onnx.load(str(path)).graph.node if n.op_type == "LRN"]
    assert len(lrn) == 1 and lrn[0].output == ["n1"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in lrn[0].attribute}
    assert attrs["size"] == 5 and attrs["bias"] == pytest.approx(2.0) and attrs["alpha"] == pytest.approx(0.5)
    assert_parity(net, path, feeds_for(net, {"data": (3, 7, 9, 4)}, scale=3.0))


SOFTMAX_NET = input_layer((2, 5, 3, 4)) + 'layer { name: "prob" type: "Softmax" bottom: "data" top: "prob" }\n'


def test_softmax_along_channels_of_4d(tmp_path):
    net = load_text(SOFTMAX_NET)
    path = export_onnx(net, tmp_path / "s.onnx")
    node = onnx.load(str(path)).graph.node[0]
    assert node.op_type == "Softmax" and node.attribute[0].i == 1
    assert_parity(net, path, feeds_for(net, {"data": (2, 5, 3, 4)}, scale=3.0), tol=1e-6)


def test_opset_refusals(tmp_path):
    with pytest.raises(CaffeImportError, match="opset 12 is not supported: the net has a Softmax layer"):
        export_onnx(load_text(SOFTMAX_NET), tmp_path / "s.onnx", opset=12)
    roi_net = load_text(input_layer((1, 4, 20, 24)) + input_layer((3, 5), "rois")
                        + 'layer { name: "roi" type: "ROIPooling" bottom: "data" bottom: "rois" top: "pool" '
                          'roi_pooling_param { pooled_h: 2 pooled_w: 3 spatial_scale: 0.5 } }\n')
    with pytest.raises(CaffeImportError, match=r"opset 22 is not supported for a net with ROIPooling.*13\.\.21"):
        export_onnx(roi_net, tmp_path / "r.onnx", opset=22)
    feeds = {"data": np.random.default_rng(0).standard_normal((1, 4, 20, 24)).astype(np.float32),
             "rois": random_rois(np.random.default_rng(1), 6, batch=1, height=40, width=48)}
    for opset in (13, 21):
        path = export_onnx(roi_net, tmp_path / f"r{opset}.onnx", opset=opset)
        assert onnx.load(str(path)).opset_import[0].version == opset
        assert check_onnx(roi_net, path, feeds).max_abs_err["pool"] == 0.0


def test_crop_follows_the_reference_at_run_time(tmp_path):
    net = load_text(input_layer((1, 3, 11, 13))
                    + 'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
                      'convolution_param { num_output: 4 kernel_size: 3 stride: 2 } }\n'
                    + 'layer { name: "up" type: "Deconvolution" bottom: "conv" top: "up" '
                      'convolution_param { num_output: 4 kernel_size: 4 stride: 2 bias_term: false } }\n'
                    + 'layer { name: "crop" type: "Crop" bottom: "up" bottom: "data" top: "crop" '
                      'crop_param { axis: 2 offset: 1 } }\n'
                    + 'layer { name: "crop2" type: "Crop" bottom: "up" bottom: "data" top: "crop2" '
                      'crop_param { axis: 1 offset: 1 offset: 1 offset: 0 } }\n')
    path = export_onnx(net, tmp_path / "crop.onnx")
    model = onnx.load(str(path))
    constants = {t.name for t in model.graph.initializer}
    slices = [n for n in model.graph.node if n.op_type == "Slice" and n.output[0] in ("crop", "crop2")]
    assert len(slices) == 2 and all(n.input[2] not in constants for n in slices)   # ends come from Shape(data)
    for shape in [(1, 3, 11, 13), (2, 3, 17, 19)]:
        result = assert_parity(net, path, feeds_for(net, {"data": shape}, scale=1.0))
        assert result.shapes["crop"][2:] == shape[2:]


def test_dropout_scale_train_false_scales_at_test(tmp_path):
    net = load_text(input_layer((2, 6))
                    + 'layer { name: "d1" type: "Dropout" bottom: "data" top: "d1" '
                      'dropout_param { dropout_ratio: 0.3 scale_train: false } }\n'
                    + 'layer { name: "d2" type: "Dropout" bottom: "data" top: "d2" '
                      'dropout_param { dropout_ratio: 0.3 } }\n')
    path = export_onnx(net, tmp_path / "d.onnx")
    assert ops(path) == ["Mul", "Identity"]
    feeds = feeds_for(net, {"data": (4, 6)}, scale=1.0)
    result = assert_parity(net, path, feeds, tol=1e-7)
    assert result.shapes == {"d1": (4, 6), "d2": (4, 6)}
    (d1,) = ort_session(onnx.load(str(path))).run(["d1"], feeds)
    np.testing.assert_allclose(d1, feeds["data"] * 0.7, rtol=1e-6)


AFFINE_NET = input_layer((2, 4, 6, 7)) + """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 6 kernel_size: 3 pad: 2 dilation: 2 group: 2 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" batch_norm_param { eps: 0.001 } }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "prelu" type: "PReLU" bottom: "conv" top: "prelu" }
layer { name: "bn0" type: "BatchNorm" bottom: "prelu" top: "bn0" }
layer { name: "prelu_shared" type: "PReLU" bottom: "prelu" top: "prelu2" prelu_param { channel_shared: true } }
layer { name: "bias" type: "Bias" bottom: "prelu2" top: "bias" }
layer { name: "deconv" type: "Deconvolution" bottom: "bias" top: "deconv"
        convolution_param { num_output: 4 kernel_size: 4 stride: 2 pad: 1 group: 2 } }
layer { name: "conv_hw" type: "Convolution" bottom: "deconv" top: "conv_hw"
        convolution_param { num_output: 3 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0
                            bias_term: false } }
layer { name: "bn_batch" type: "BatchNorm" bottom: "conv_hw" top: "bn_batch"
        batch_norm_param { use_global_stats: false } }
layer { name: "scale_hw" type: "Scale" bottom: "bn0" top: "scale_hw" scale_param { axis: 2 num_axes: 1 } }
"""

ELEMENTWISE_NET = input_layer((2, 3, 5, 6)) + """
layer { name: "leaky" type: "ReLU" bottom: "data" top: "leaky" relu_param { negative_slope: 0.1 } }
layer { name: "elu" type: "ELU" bottom: "data" top: "elu" elu_param { alpha: 0.7 } }
layer { name: "sig" type: "Sigmoid" bottom: "data" top: "sig" }
layer { name: "tanh" type: "TanH" bottom: "data" top: "tanh" }
layer { name: "abs" type: "AbsVal" bottom: "data" top: "abs" }
layer { name: "relu_abs" type: "ReLU" bottom: "abs" top: "abs" }
layer { name: "bnll" type: "BNLL" bottom: "data" top: "bnll" }
layer { name: "power" type: "Power" bottom: "data" top: "power" power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "power0" type: "Power" bottom: "data" top: "power0" power_param { power: 3 scale: 0 shift: 2 } }
layer { name: "power_id" type: "Power" bottom: "data" top: "power_id" }
layer { name: "exp" type: "Exp" bottom: "data" top: "exp" exp_param { base: 2 scale: 0.5 shift: 0.25 } }
layer { name: "expe" type: "Exp" bottom: "data" top: "expe" }
layer { name: "log" type: "Log" bottom: "sig" top: "log" log_param { base: 10 scale: 2 shift: 1 } }
layer { name: "loge" type: "Log" bottom: "sig" top: "loge" }
layer { name: "thr" type: "Threshold" bottom: "data" top: "thr" threshold_param { threshold: 0.1 } }
layer { name: "clip" type: "Clip" bottom: "data" top: "clip" clip_param { min: -0.5 max: 0.7 } }
"""

STRUCTURAL_NET = input_layer((2, 4, 3, 5)) + input_layer((2, 4, 3, 5), "other") + """
layer { name: "esum" type: "Eltwise" bottom: "data" bottom: "other" top: "esum"
        eltwise_param { operation: SUM coeff: 0.5 coeff: -2 } }
layer { name: "eprod" type: "Eltwise" bottom: "data" bottom: "other" top: "eprod" eltwise_param { operation: PROD } }
layer { name: "emax" type: "Eltwise" bottom: "data" bottom: "other" bottom: "esum" top: "emax"
        eltwise_param { operation: MAX } }
layer { name: "cat" type: "Concat" bottom: "esum" bottom: "eprod" top: "cat" }
layer { name: "cat2" type: "Concat" bottom: "emax" bottom: "data" top: "cat2" concat_param { axis: 2 } }
layer { name: "slice" type: "Slice" bottom: "cat" top: "s1" top: "s2" top: "s3"
        slice_param { axis: 1 slice_point: 1 slice_point: 3 } }
layer { name: "halves" type: "Slice" bottom: "cat" top: "h1" top: "h2" }
layer { name: "split" type: "Split" bottom: "s3" top: "sp1" top: "sp2" }
layer { name: "silence" type: "Silence" bottom: "sp2" }
layer { name: "flat" type: "Flatten" bottom: "h1" top: "flat" flatten_param { axis: 2 end_axis: 3 } }
layer { name: "flat2" type: "Flatten" bottom: "s2" top: "flat2" }
layer { name: "ip_axis" type: "InnerProduct" bottom: "flat" top: "ip_axis"
        inner_product_param { num_output: 6 axis: 2 transpose: true } }
layer { name: "rs" type: "Reshape" bottom: "h2" top: "rs" reshape_param { shape { dim: 0 dim: 2 dim: -1 } } }
layer { name: "rs_mid" type: "Reshape" bottom: "cat2" top: "rs_mid"
        reshape_param { shape { dim: 2 dim: -1 } axis: 1 num_axes: 1 } }
layer { name: "mvn" type: "MVN" bottom: "sp1" top: "mvn" }
layer { name: "mvn2" type: "MVN" bottom: "s2" top: "mvn2"
        mvn_param { across_channels: true normalize_variance: false } }
layer { name: "gpool" type: "Pooling" bottom: "data" top: "gpool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "gflat" type: "Reshape" bottom: "gpool" top: "gflat" reshape_param { shape { dim: 0 dim: -1 } } }
layer { name: "scale2" type: "Scale" bottom: "data" bottom: "gflat" top: "scale2" scale_param { axis: 0 } }
layer { name: "bias2" type: "Bias" bottom: "data" bottom: "gflat" top: "bias2" bias_param { axis: 0 } }
layer { name: "ip" type: "InnerProduct" bottom: "scale2" top: "ip"
        inner_product_param { num_output: 5 bias_term: false } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
layer { name: "am" type: "ArgMax" bottom: "data" top: "am" argmax_param { axis: 1 top_k: 2 } }
layer { name: "am2" type: "ArgMax" bottom: "data" top: "am2" argmax_param { top_k: 3 out_max_val: true } }
"""


@pytest.mark.parametrize("opset", [13, DEFAULT_OPSET, 18, 22])   # 18: ReduceMean axes input, Split num_outputs
@pytest.mark.parametrize("text,shapes", [
    (AFFINE_NET, [{"data": (2, 4, 6, 7)}, {"data": (3, 4, 6, 7)}]),   # scale_hw fixes H
    (ELEMENTWISE_NET, [{"data": (2, 3, 5, 6)}, {"data": (1, 3, 4, 9)}]),
    (STRUCTURAL_NET, [{"data": (2, 4, 3, 5), "other": (2, 4, 3, 5)}, {"data": (3, 4, 3, 5), "other": (3, 4, 3, 5)}]),
], ids=["affine", "elementwise", "structural"])
def test_layer_zoo(tmp_path, text, shapes, opset):
    net = load_text(text)
    if "bn0" in net.layer_attr:
        net.module_of("bn0").scale_factor.zero_()   # Caffe's 0 -> 0 factor: mean = var = 0
    path = export_onnx(net, tmp_path / "zoo.onnx", opset=opset)
    for i, feed_shapes in enumerate(shapes):
        result = assert_parity(net, path, feeds_for(net, feed_shapes, seed=i, scale=2.0))
        if "am" in result.max_abs_err:
            assert result.max_abs_err["am"] == 0.0


def test_bnll_is_stable_at_large_magnitudes(tmp_path):
    net = load_text(input_layer((1, 6)) + 'layer { name: "bnll" type: "BNLL" bottom: "data" top: "bnll" }\n')
    path = export_onnx(net, tmp_path / "b.onnx")
    feeds = {"data": np.array([[-100.0, -20.0, -0.5, 0.5, 30.0, 100.0]], np.float32)}
    assert check_onnx(net, path, feeds).max_rel_err["bnll"] <= 1e-6


def test_input_overwritten_in_place_keeps_its_name(tmp_path):
    net = load_text(input_layer((2, 3)) + 'layer { name: "relu" type: "ReLU" bottom: "data" top: "data" }\n'
                    + 'layer { name: "abs" type: "AbsVal" bottom: "data" top: "y" }\n')
    model = build_onnx_model(net)
    assert [(n.input[0], n.output[0]) for n in model.graph.node] == [("data", "data#1"), ("data#1", "y")]
    with pytest.raises(CaffeImportError, match="net input overwritten in place"):
        build_onnx_model(load_text(input_layer((2, 3))
                                   + 'layer { name: "relu" type: "ReLU" bottom: "data" top: "data" }\n'))


def test_default_feeds_make_valid_rois():
    net = load_bundled("fast_rcnn/CaffeNet/test.prototxt")
    feeds = default_feeds(net)
    rois = feeds["rois"]
    assert rois.shape[1] == 5 and len(rois) >= 8
    assert (rois[:, 1] >= 0).all() and (rois[:, 3] <= 226).all() and (rois[:, 3] >= rois[:, 1]).all()
    assert (rois[:, 4] <= 226).all() and (rois[:, 4] >= rois[:, 2]).all() and (rois[:, 0] == 0).all()


def test_static_export_fixes_every_dim(tmp_path):
    net = load_text(SOFTMAX_NET)
    graph = build_onnx_model(net, dynamic=False).graph
    assert value_dims(graph.input[0]) == value_dims(graph.output[0]) == [2, 5, 3, 4]
    graph = build_onnx_model(net).graph
    assert value_dims(graph.input[0]) == value_dims(graph.output[0]) == ["batch", 5, "height", "width"]


def test_external_data_above_threshold(tmp_path, monkeypatch):
    import caffe_import.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 10_000)
    net = load_bundled("alexnet/deploy_conv1s2.prototxt")
    path = export_onnx(net, tmp_path / "ext.onnx")
    data = tmp_path / "ext.onnx.data"
    assert data.exists() and data.stat().st_size > 9_000_000 and path.stat().st_size < 100_000
    onnx.checker.check_model(str(path))
    feeds = feeds_for(net, {"data": (1, 3, 64, 64)})
    assert_parity(net, path, feeds)
    assert_parity(net, path, feeds, outputs=["conv3", "pool5"])    # temporary copy beside the model
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx", "ext.onnx.data"]
    size = data.stat().st_size
    export_onnx(net, path)                                          # a rewrite replaces the side file
    assert data.stat().st_size == size
    assert_parity(net, path, feeds)


def test_an_opset_onnxruntime_cannot_load_is_one_sentence(tmp_path):
    """onnx can write newer opsets than onnxruntime loads (here onnx 28, onnxruntime at most 26): the check says so
    and which opset to lower, instead of onnxruntime's own exception."""
    newest = onnx.defs.onnx_opset_version()
    net = pooling_net("pool: MAX kernel_size: 2 stride: 2")
    path = export_onnx(net, tmp_path / "net.onnx", opset=newest)
    try:
        check_onnx(net, path)
    except ValueError as exc:
        assert f"cannot load the export of net.onnx at opset {newest}" in str(exc)
        assert "lower opset (opset=...)" in str(exc)
    else:
        pytest.skip(f"onnxruntime {ort.__version__} loads opset {newest}: nothing to refuse")
