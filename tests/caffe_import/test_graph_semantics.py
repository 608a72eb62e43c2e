"""Graph-level semantics of the importer: formats, in-place layers, phases, pruning, weight binding, file limits.

Each test pins one rule of BVLC Caffe (`src/caffe/net.cpp` Init/FilterNet/AppendParam/CopyTrainedLayersFrom,
`src/caffe/util/insert_splits.cpp`, `src/caffe/util/upgrade_proto.cpp`, `src/caffe/util/io.cpp`) or of pycaffe's
`net.blobs`. Numeric checks compare with the float64 references in `tests/reference` at rtol 1e-5 (the nets run in
float32), and format equivalences are exact (`torch.equal`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import convolution, inner_product, pooling, softmax

import caffe_import
from caffe_import import CaffeImportError, CaffeImportWarning
from caffe_import.graph import build_graph, layer_included
from caffe_import.layers import registry
from caffe_import.proto import caffe_pb2

RTOL, ATOL = 1e-5, 1e-5


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def parse(text: str) -> caffe_pb2.NetParameter:
    return caffe_import.read_prototxt_string(text)


def params(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {name: getattr(module, name).detach().double().numpy() for name in module.caffe_blobs}


def run(net: caffe_import.CaffeNet, outputs: list[str] | None = None, **arrays: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = net(**{k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()}, outputs=outputs)
    return {k: v.double().numpy() for k, v in out.items()}


def close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


CONV_NET = """
name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 64 dim: 64 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 5 stride: 2 pad: 1
                            weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
"""


def conv_pool_reference(x: np.ndarray, net: caffe_import.CaffeNet) -> tuple[np.ndarray, np.ndarray]:
    p = params(net.conv1)
    conv = np.maximum(convolution(x, p["weight"], p["bias"], stride=2, pad=1), 0)
    return conv, pooling(conv, kernel=3, stride=2, method="MAX")


# -- (a) V1 format ---------------------------------------------------------------------------------------------------

V1_NET = """
name: "legacy"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 8 input_dim: 8
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" blobs_lr: 1 blobs_lr: 2
         convolution_param { num_output: 4 kernel_size: 3 } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "fc" type: INNER_PRODUCT bottom: "pool1" top: "fc" inner_product_param { num_output: 5 } }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
"""

V2_NET = """
name: "legacy"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def legacy_blob(values: np.ndarray) -> caffe_pb2.BlobProto:
    """A pre-BlobShape blob: num/channels/height/width, with lower ranks padded by leading 1s."""
    dims = (1,) * (4 - values.ndim) + values.shape
    blob = caffe_pb2.BlobProto(num=dims[0], channels=dims[1], height=dims[2], width=dims[3])
    blob.data.extend(values.astype(np.float32).ravel().tolist())
    return blob


def shaped_blob(values: np.ndarray, *, double: bool = False) -> caffe_pb2.BlobProto:
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(values.shape)
    (blob.double_data if double else blob.data).extend(values.ravel().tolist())
    return blob


def test_v1_net_equals_its_v2_equivalent(tmp_path: Path, rng: np.random.Generator) -> None:
    w1, b1 = rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)
    w2, b2 = rng.normal(size=(5, 36)), rng.normal(size=5)
    v1_model = caffe_pb2.NetParameter(name="legacy")
    v1_types = caffe_pb2.V1LayerParameter
    for name, kind, blobs in [("conv1", v1_types.CONVOLUTION, [w1, b1]), ("relu1", v1_types.RELU, []),
                              ("pool1", v1_types.POOLING, []), ("fc", v1_types.INNER_PRODUCT, [w2, b2])]:
        layer = v1_model.layers.add(name=name, type=kind)
        layer.blobs.extend(legacy_blob(b) for b in blobs)
    assert (v1_model.layers[3].blobs[0].num, v1_model.layers[3].blobs[0].channels,
            v1_model.layers[3].blobs[0].height, v1_model.layers[3].blobs[0].width) == (1, 1, 5, 36)
    v1_path = tmp_path / "legacy_v1.caffemodel"
    v1_path.write_bytes(v1_model.SerializeToString())

    v2_model = caffe_pb2.NetParameter(name="legacy")
    for name, kind, blobs in [("conv1", "Convolution", [w1, b1]), ("fc", "InnerProduct", [w2, b2])]:
        v2_model.layer.add(name=name, type=kind).blobs.extend(shaped_blob(b.astype(np.float32)) for b in blobs)
    v2_path = tmp_path / "legacy_v2.caffemodel"
    v2_path.write_bytes(v2_model.SerializeToString())

    v1 = caffe_import.load(write(tmp_path, "v1.prototxt", V1_NET), v1_path, strict=True)
    v2 = caffe_import.load(write(tmp_path, "v2.prototxt", V2_NET), v2_path, strict=True)
    assert [layer.type for layer in v1.graph.layers] == [layer.type for layer in v2.graph.layers]
    assert v1.graph.layers[0].param.param[1].lr_mult == 2
    assert v1.state_dict().keys() == v2.state_dict().keys()
    for key, value in v1.state_dict().items():
        assert torch.equal(value, v2.state_dict()[key]), key
    x = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    out1, out2 = run(v1, data=x), run(v2, data=x)
    assert out1.keys() == out2.keys() == {"prob"}
    assert np.array_equal(out1["prob"], out2["prob"])

    f32 = [a.astype(np.float32).astype(np.float64) for a in (w1, b1, w2, b2)]
    conv = np.maximum(convolution(x.astype(np.float64), f32[0], f32[1]), 0)
    expected = softmax(inner_product(pooling(conv, kernel=2, stride=2), f32[2], f32[3]), axis=1)
    close(out1["prob"], expected)


# -- (b), (c) in-place layers -----------------------------------------------------------------------------------------

def test_in_place_relu_feeds_two_consumers(rng: np.random.Generator) -> None:
    text = CONV_NET + 'layer { name: "pool2" type: "Pooling" bottom: "conv1" top: "pool2" ' \
                      'pooling_param { pool: AVE kernel_size: 2 stride: 2 } }\n'
    net = caffe_import.load(parse(text))
    x = rng.normal(size=(1, 3, 64, 64))
    out = run(net, data=x)
    conv, pool1 = conv_pool_reference(x, net)
    close(out["pool1"], pool1)
    close(out["pool2"], pooling(conv, kernel=2, stride=2, method="AVE"))
    # (c) pycaffe blob semantics: `conv1` is the blob after the in-place ReLU.
    conv1 = run(net, data=x, outputs=["conv1"])["conv1"]
    assert conv1.min() == 0.0
    close(conv1, conv)


def test_consumer_before_in_place_layer_sees_the_old_value(rng: np.random.Generator) -> None:
    """Caffe refuses this net ('Top blob ... produced by multiple sources'); we follow OpenCV and warn."""
    text = """
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 8 dim: 8 } } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 3 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 1 } } }
    layer { name: "pool_a" type: "Pooling" bottom: "conv" top: "pool_a"
            pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
    layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
    layer { name: "pool_b" type: "Pooling" bottom: "conv" top: "pool_b"
            pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
    """
    with pytest.warns(CaffeImportWarning, match="produced by multiple sources"):
        net = caffe_import.load(parse(text))
    x = rng.normal(size=(1, 2, 8, 8))
    out = run(net, data=x)
    p = params(net.conv)
    pre = convolution(x, p["weight"], p["bias"], pad=1)
    assert pre.min() < 0
    close(out["pool_a"], pooling(pre, kernel=2, stride=2, method="AVE"))
    close(out["pool_b"], pooling(np.maximum(pre, 0), kernel=2, stride=2, method="AVE"))
    assert not np.allclose(out["pool_a"], out["pool_b"])
    close(run(net, data=x, outputs=["conv"])["conv"], np.maximum(pre, 0))


# -- (d) phases, levels, stages ----------------------------------------------------------------------------------------

PHASE_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "always" type: "Power" bottom: "data" top: "always" }
layer { name: "train_only" type: "Power" bottom: "data" top: "train_only" include { phase: TRAIN } }
layer { name: "test_only" type: "Power" bottom: "data" top: "test_only" include { phase: TEST } }
layer { name: "not_in_test" type: "Power" bottom: "data" top: "not_in_test" exclude { phase: TEST } }
layer { name: "deploy_stage" type: "Power" bottom: "data" top: "deploy_stage" include { stage: "deploy" } }
layer { name: "not_deploy" type: "Power" bottom: "data" top: "not_deploy" include { not_stage: "deploy" } }
layer { name: "level_1" type: "Power" bottom: "data" top: "level_1" include { min_level: 1 } }
layer { name: "either" type: "Power" bottom: "data" top: "either" include { phase: TRAIN } include { stage: "x" } }
"""


def test_phase_include_exclude_rules() -> None:
    names = lambda graph: [layer.name for layer in graph.layers]  # noqa: E731
    test = caffe_import.load(parse(PHASE_NET))
    assert names(test.graph) == ["always", "test_only", "not_deploy"]
    assert not test.training
    train = caffe_import.load(parse(PHASE_NET), phase="TRAIN")
    assert names(train.graph) == ["always", "train_only", "not_in_test", "not_deploy", "either"]
    assert train.training
    staged = build_graph(parse(PHASE_NET), phase="TEST", stages=["deploy", "x"], level=1)
    assert names(staged) == ["always", "test_only", "deploy_stage", "level_1", "either"]
    both = caffe_pb2.LayerParameter(name="bad")
    both.include.add(phase=caffe_pb2.TEST)
    both.exclude.add(phase=caffe_pb2.TRAIN)
    with pytest.raises(CaffeImportError, match="both include and exclude"):
        layer_included(both, "TEST")


# -- (e) data / loss / accuracy layers ---------------------------------------------------------------------------------

def test_data_loss_and_accuracy_layers_are_dropped_with_notes(rng: np.random.Generator) -> None:
    text = """
    layer { name: "data" type: "Data" top: "data" top: "label" data_param { source: "train_lmdb" batch_size: 8 } }
    layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3 } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
    layer { name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy" include { phase: TEST } }
    """
    with pytest.raises(CaffeImportError, match="declares no inputs"):
        caffe_import.load(parse(text))
    net = caffe_import.load(parse(text), inputs={"data": (2, 4)})
    assert [layer.name for layer in net.graph.layers] == ["fc"]
    assert net.output_names == ("fc",)
    notes = "\n".join(net.notes)
    assert "layer 'data' (Data) skipped" in notes
    assert "layer 'loss' (SoftmaxWithLoss) dropped" in notes and "layer 'accuracy' (Accuracy) dropped" in notes
    deploy = text.replace('layer { name: "data" type: "Data" top: "data" top: "label" '
                          'data_param { source: "train_lmdb" batch_size: 8 } }',
                          'layer { name: "data" type: "Data" top: "data" top: "label" }\n'
                          'layer { name: "in" type: "Input" top: "img" input_param { shape { dim: 2 dim: 4 } } }')
    deploy = deploy.replace('bottom: "data" top: "fc"', 'bottom: "img" top: "fc"')
    net = caffe_import.load(parse(deploy))
    assert "layer 'data' (Data) dropped from the TEST graph: data/loss/accuracy layer" in "\n".join(net.notes)
    assert run(net, img=rng.normal(size=(2, 4)))["fc"].shape == (2, 3)


# -- (f) pruning to outputs ------------------------------------------------------------------------------------------

def test_outputs_prune_an_unsupported_head(rng: np.random.Generator) -> None:
    text = CONV_NET + 'layer { name: "head" type: "FancyHead" bottom: "pool1" top: "head" }\n'
    with pytest.raises(CaffeImportError, match=r"layer 'head' \(FancyHead\).*not supported.*Supported types: .*"
                                               r"Convolution.*Pooling"):
        caffe_import.load(parse(text))
    net = caffe_import.load(parse(text), outputs=["conv1"])
    assert net.output_names == ("conv1",) and [layer.name for layer in net.graph.layers] == ["conv1", "relu1"]
    x = rng.normal(size=(1, 3, 64, 64))
    close(run(net, data=x)["conv1"], conv_pool_reference(x, net)[0])


# -- (g) weight binding errors ---------------------------------------------------------------------------------------

def test_weight_shape_missing_and_unused_errors(tmp_path: Path) -> None:
    wrong = caffe_import.load(parse(CONV_NET.replace("num_output: 4", "num_output: 5")))
    wrong_path = caffe_import.save_caffemodel(wrong, tmp_path / "wrong.caffemodel")
    with pytest.raises(CaffeImportError, match=r"layer 'conv1' \(Convolution\): blob 0 has shape \(5, 3, 5, 5\) in "
                                               r"the caffemodel but the prototxt implies \(4, 3, 5, 5\)"):
        caffe_import.load(parse(CONV_NET), wrong_path)

    two_convs = CONV_NET + ('layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" '
                            'convolution_param { num_output: 2 kernel_size: 1 } }\n')
    small_path = caffe_import.save_caffemodel(caffe_import.load(parse(CONV_NET)), tmp_path / "small.caffemodel")
    with pytest.raises(CaffeImportError, match=r"no weights for layer\(s\) conv2 \(matched by layer name"):
        caffe_import.load(parse(two_convs), small_path)
    with pytest.warns(CaffeImportWarning, match=r"blob\(s\) conv2.weight, conv2.bias are not in the caffemodel"):
        filled = caffe_import.load(parse(two_convs), small_path, allow_missing=True)
    assert filled.weight_report["filled"] == ["conv2.weight", "conv2.bias"]

    big_path = caffe_import.save_caffemodel(caffe_import.load(parse(two_convs)), tmp_path / "big.caffemodel")
    with pytest.raises(CaffeImportError, match=r"1 caffemodel layer\(s\) with weights are not used by this net: conv2"):
        caffe_import.load(parse(CONV_NET), big_path, strict=True)
    lenient = caffe_import.load(parse(CONV_NET), big_path)
    assert lenient.weight_report["unused"] == ["conv2"]
    assert any("not used by this net: conv2" in note for note in lenient.notes)


# -- (h) shared parameters -------------------------------------------------------------------------------------------

SHARED_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 6 dim: 6 } } }
layer { name: "a" type: "Convolution" bottom: "data" top: "a" param { name: "w" } param { name: "b" }
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "b" type: "Convolution" bottom: "data" top: "b" param { name: "w" } param { name: "b" }
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" } } }
"""


def test_shared_params_are_one_parameter(tmp_path: Path, rng: np.random.Generator) -> None:
    net = caffe_import.load(parse(SHARED_NET))
    assert net.a.weight is net.b.weight and net.a.bias is net.b.bias
    assert net.shared_params() == {"w": ["a", "b"], "b": ["a", "b"]}
    assert len(list(net.parameters())) == 2
    path = caffe_import.save_caffemodel(net, tmp_path / "shared.caffemodel")
    assert [len(layer.blobs) for layer in caffe_import.read_caffemodel(path).layer if layer.name in "ab"] == [2, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CaffeImportWarning)
        again = caffe_import.load(parse(SHARED_NET), path)
    assert again.a.weight is again.b.weight
    assert torch.equal(again.a.weight, net.a.weight)
    x = rng.normal(size=(1, 2, 6, 6))
    out = run(again, data=x)
    np.testing.assert_array_equal(out["a"], out["b"])


# -- (i) double_data -------------------------------------------------------------------------------------------------

def test_blob_in_double_data_loads(tmp_path: Path, rng: np.random.Generator) -> None:
    w, b = rng.normal(size=(4, 3, 5, 5)), rng.normal(size=4)
    model = caffe_pb2.NetParameter(name="small")
    model.layer.add(name="conv1", type="Convolution").blobs.extend([shaped_blob(w, double=True),
                                                                    shaped_blob(b, double=True)])
    path = tmp_path / "double.caffemodel"
    path.write_bytes(model.SerializeToString())
    net = caffe_import.load(parse(CONV_NET), path)
    assert net.weight_report["double_data"] == ["conv1", "conv1"]
    np.testing.assert_array_equal(net.conv1.weight.detach().numpy(), w.astype(np.float32))
    np.testing.assert_array_equal(net.conv1.bias.detach().numpy(), b.astype(np.float32))


# -- (j) unknown fields and the ceil_mode collision ------------------------------------------------------------------

def test_unknown_fields_warn_once_and_ceil_mode_is_read_as_round_mode(tmp_path: Path) -> None:
    text = """
    name: "forked"
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 9 dim: 9 } } }
    layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
            convolution_param { num_output: 2 kernel_size: 3 fancy_field: 7 } fancy_param { a: 1 b { c: 2 } } }
    layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
            pooling_param { pool: MAX kernel_size: 2 stride: 2 ceil_mode: false } }
    """
    path = write(tmp_path, "forked.prototxt", text)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net_param = caffe_import.read_prototxt(path)
    messages = [str(w.message) for w in caught if issubclass(w.category, CaffeImportWarning)]
    unknown = [m for m in messages if "unknown to the Caffe schema" in m]
    assert len(unknown) == 1
    assert "layer 'conv1': convolution_param.fancy_field" in unknown[0]
    assert "layer 'conv1': fancy_param" in unknown[0]
    notes = [m for m in messages if "ceil_mode" in m]
    assert len(notes) == 1 and "round_mode: FLOOR" in notes[0]
    assert net_param.layer[2].pooling_param.round_mode == caffe_pb2.PoolingParameter.FLOOR
    net = caffe_import.load(net_param)
    assert net.blob_shapes["pool1"] == (1, 2, 3, 3)  # floor((7 - 2) / 2) + 1 = 3; CEIL would give 4


# -- (k) protobuf's 2 GiB limit --------------------------------------------------------------------------------------

def test_files_over_the_message_limit_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = caffe_import.save_caffemodel(caffe_import.load(parse(CONV_NET)), tmp_path / "w.caffemodel")
    prototxt = write(tmp_path, "net.prototxt", CONV_NET)
    monkeypatch.setattr(caffe_import.parse, "MAX_MESSAGE_BYTES", 256)
    with pytest.raises(CaffeImportError, match="over the 2 GiB limit of a protobuf message"):
        caffe_import.read_caffemodel(path)
    with pytest.raises(CaffeImportError, match="w.caffemodel: .* GiB is over the 2 GiB limit"):
        caffe_import.load(parse(CONV_NET), path)
    with pytest.raises(CaffeImportError, match="over the 2 GiB limit"):
        caffe_import.read_prototxt(prototxt)


# -- (l), (m) state_dict keys and free input sizes -------------------------------------------------------------------

def test_state_dict_keys_follow_layer_names() -> None:
    net = caffe_import.load(parse(V2_NET))
    assert list(net.state_dict()) == ["conv1.weight", "conv1.bias", "fc.weight", "fc.bias"]
    bn = caffe_import.load(parse(CONV_NET + 'layer { name: "bn1" type: "BatchNorm" bottom: "pool1" top: "pool1" }\n'))
    assert [k for k in bn.state_dict() if k.startswith("bn1.")] == [
        "bn1.running_mean_sum", "bn1.running_var_sum", "bn1.scale_factor"]


def test_input_size_is_not_frozen(rng: np.random.Generator) -> None:
    net = caffe_import.load(parse(CONV_NET))
    assert net.blob_shapes["pool1"] == (1, 4, 15, 15)  # conv (64 + 2 - 5) // 2 + 1 = 31, pool ceil(28 / 2) + 1
    for shape in [(1, 3, 40, 48), (2, 3, 33, 21)]:
        x = rng.normal(size=shape)
        out = run(net, data=x)
        close(out["pool1"], conv_pool_reference(x, net)[1])


# -- Python layers ---------------------------------------------------------------------------------------------------

PYTHON_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 3 } } }
layer { name: "proposal" type: "Python" bottom: "data" top: "out"
        python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" param_str: "'feat_stride': 16" } }
"""


def test_unknown_python_layer_names_module_and_layer() -> None:
    with pytest.raises(CaffeImportError, match=r"layer 'proposal' \(Python\): Python layer module "
                                               r"'rpn.proposal_layer', layer 'ProposalLayer'.*register_python"):
        caffe_import.load(parse(PYTHON_NET))


def test_registered_python_layer_runs(monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator) -> None:
    monkeypatch.setattr(registry, "_PYTHON_LAYERS", dict(registry._PYTHON_LAYERS))

    class ScaleByStride(torch.nn.Module):
        """A toy stand-in: multiplies by the feat_stride read from param_str, as the Python layer would."""

        caffe_blobs = ()

        def __init__(self, stride: float) -> None:
            super().__init__()
            self.stride = stride

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.stride

    @caffe_import.register_python("rpn.proposal_layer.ProposalLayer")
    def proposal(layer: caffe_import.Layer) -> torch.nn.Module:
        key, value = layer.param.python_param.param_str.split(":")
        assert key.strip(" '") == "feat_stride"
        return ScaleByStride(float(value))

    net = caffe_import.load(parse(PYTHON_NET))
    x = rng.normal(size=(1, 2, 3))
    close(run(net, data=x)["out"], 16 * x)
    with pytest.raises(RuntimeError, match="already registered"):
        caffe_import.register_python("rpn.proposal_layer.ProposalLayer")(proposal)


def test_inference_runs_in_place_layers_in_place_without_touching_shared_or_caller_tensors():
    """Under no_grad an in-place Caffe layer overwrites its dead input (as hand-written inplace=True nets do), but
    never a tensor that another live blob or the caller still holds (Split and Reshape alias storage)."""
    text = """
    layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
    layer { name: "flat" type: "Reshape" bottom: "data" top: "flat" reshape_param { shape { dim: 0 dim: -1 } } }
    layer { name: "relu0" type: "ReLU" bottom: "flat" top: "flat" relu_param { negative_slope: 0.5 } }
    layer { name: "split" type: "Split" bottom: "flat" top: "a" top: "b" }
    layer { name: "relu_b" type: "ReLU" bottom: "b" top: "b" relu_param { negative_slope: 0.5 } }
    layer { name: "pow_a" type: "Power" bottom: "a" top: "a" power_param { shift: -1 } }
    layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" }
    """
    net = caffe_import.load(caffe_import.read_prototxt_string(text))
    x = torch.randn(2, 3, 4, 4)
    original = x.clone()
    with torch.no_grad():
        out = net(data=x)["sum"]
    leaky = torch.nn.functional.leaky_relu
    f = leaky(original, 0.5).reshape(2, -1)
    expected = (f - 1) + leaky(f, 0.5)      # relu_b must not overwrite `a`, which Split made the same tensor
    assert torch.equal(x, original)          # the caller's tensor is untouched (flat is a view of it)
    assert torch.allclose(out, expected)
    with torch.enable_grad():
        assert torch.allclose(net(data=x)["sum"], expected)


INPLACE_CHAIN = """
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 4 dim: 16 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 32 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu" type: "ReLU" bottom: "fc" top: "fc" }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" dropout_param { dropout_ratio: 0.5 } }
layer { name: "out" type: "InnerProduct" bottom: "fc" top: "out"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
"""


def test_in_place_inference_follows_train_eval_switches_made_after_the_first_run():
    """A net first run in train mode and then switched to eval() must stop dropping out under no_grad too (the
    in-place path once kept a copy of Dropout frozen in the mode of its first run)."""
    net = caffe_import.load(caffe_import.read_prototxt_string(INPLACE_CHAIN), seed=3)
    x = torch.randn(4, 16)
    net.train()
    with torch.no_grad():
        net(data=x)
    net.eval()
    with torch.enable_grad():
        expected = net(data=x)["out"].detach()
    with torch.no_grad():
        assert torch.equal(net(data=x)["out"], expected)
        assert torch.equal(net(data=x)["out"], expected)


def test_forward_hooks_see_the_values_they_would_without_in_place_inference():
    """A hook that keeps a layer's output (the common way to grab features) must not find it overwritten by the
    in-place ReLU that follows."""
    net = caffe_import.load(caffe_import.read_prototxt_string(INPLACE_CHAIN), seed=3).eval()
    x = torch.randn(4, 16)
    kept: list[torch.Tensor] = []
    handle = net.module_of("fc").register_forward_hook(lambda _m, _a, output: kept.append(output))
    try:
        with torch.no_grad():
            net(data=x)
    finally:
        handle.remove()
    fc = net.module_of("fc")
    with torch.no_grad():
        raw = torch.nn.functional.linear(x, fc.weight, fc.bias)
    assert bool((raw < 0).any())             # the check can fail: the ReLU would change this tensor
    assert torch.equal(kept[0], raw)
