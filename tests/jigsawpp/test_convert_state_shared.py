"""`jigsawpp convert` / `jigsawpp export` with Caffe NetState stages and levels, and with shared parameters.

A DIGITS-style file (train/val/deploy layers in one prototxt) converts with `--stage deploy`; the folder records
the state so that reloading and exporting it selects the same layers. A net whose caffemodel stores a shared param
once converts to safetensors that reload exactly (same tensors, same ties, same outputs bit for bit).
"""

from __future__ import annotations

import json

import numpy as np
import torch
from click.testing import CliRunner
from safetensors import safe_open

import caffe_import
from jigsawpp.cli import main
from jigsawpp.convert import convert_caffe
from jigsawpp.export import load_model
from jigsawpp.io import ALIASES_KEY

DIGITS_NET = """
name: "tiny"
layer { name: "train-data" type: "Data" top: "data" top: "label" data_param { batch_size: 8 }
        include { stage: "train" } }
layer { name: "val-data" type: "Data" top: "data" top: "label" data_param { batch_size: 8 } include { stage: "val" } }
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 12 dim: 12 } }
        include { stage: "deploy" } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "hi" type: "Power" bottom: "pool1" top: "hi" power_param { scale: 2 } include { min_level: 1 } }
layer { name: "accuracy" type: "Accuracy" bottom: "pool1" bottom: "label" top: "accuracy" include { stage: "val" } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "pool1" bottom: "label" top: "loss" exclude { stage: "deploy" } }
layer { name: "prob" type: "Softmax" bottom: "pool1" top: "prob" include { stage: "deploy" } }
"""


def test_digits_style_file_converts_and_exports_with_its_stage(tmp_path):
    prototxt = tmp_path / "all_in_one.prototxt"
    prototxt.write_text(DIGITS_NET)
    weights = caffe_import.save_caffemodel(caffe_import.load(prototxt, stages=["deploy"], seed=3),
                                           tmp_path / "tiny.caffemodel")
    runner = CliRunner()
    base = ["convert", "--prototxt", str(prototxt), "--caffemodel", str(weights)]
    refused = runner.invoke(main, [*base, "--out", str(tmp_path / "refused")])
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "only layer 'input' makes, and its rules (include { stage: \"deploy\" })" in refused.output
    assert "--stage" in refused.output and not (tmp_path / "refused").exists()

    out = tmp_path / "converted"
    result = runner.invoke(main, [*base, "--out", str(out), "--stage", "deploy"])
    assert result.exit_code == 0, result.output
    assert "net state: phase TEST, level 0, stages ['deploy']" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["net_state"] == {"phase": "TEST", "level": 0, "stages": ["deploy"]}
    assert list(manifest["net"]["outputs"]) == ["prob"]
    leveled = runner.invoke(main, [*base, "--out", str(tmp_path / "leveled"), "--stage", "deploy", "--level", "1"])
    assert leveled.exit_code == 0, leveled.output
    level_manifest = json.loads((tmp_path / "leveled" / "manifest.json").read_text())
    assert level_manifest["net_state"]["level"] == 1 and list(level_manifest["net"]["outputs"]) == ["hi", "prob"]

    # The folder reloads with the recorded state; asking it for another state is a one-line error.
    net, source = load_model(out)
    direct = caffe_import.load(prototxt, weights, stages=["deploy"])
    x = torch.rand(1, 3, 12, 12) * 255
    with torch.no_grad():
        assert torch.equal(net(data=x)["prob"], direct(data=x)["prob"])
    assert "stages ['deploy'], level 0" in source
    wrong = runner.invoke(main, ["export", "--model", str(out), "--out", str(tmp_path / "x.onnx"), "--stage", "val"])
    assert wrong.exit_code == 1 and "converted with stages ['deploy'] and level 0" in wrong.output
    assert "Traceback" not in wrong.output
    for args in (["--model", str(out)], ["--model", str(prototxt), "--caffemodel", str(weights), "--stage", "deploy"]):
        exported = runner.invoke(main, ["export", *args, "--out", str(tmp_path / "tiny.onnx")])
        assert exported.exit_code == 0, exported.output
        assert "onnxruntime vs PyTorch on the export input" in exported.output
    release_flags = runner.invoke(main, ["convert", str(weights), "--out", str(tmp_path / "r"), "--stage", "deploy"])
    assert release_flags.exit_code == 2 and "not both" in release_flags.output


SHARED_NET = """
layer { name: "data" type: "Input" top: "data" top: "data2"
        input_param { shape { dim: 2 dim: 6 } shape { dim: 2 dim: 8 } } }
layer { name: "ip_a" type: "InnerProduct" bottom: "data" top: "out_a" param { name: "w" } param { name: "b" }
        inner_product_param { num_output: 4 } }
layer { name: "ip_c" type: "InnerProduct" bottom: "data" top: "out_c" param { name: "w" } param { name: "b" }
        inner_product_param { num_output: 4 } }
layer { name: "ip_b" type: "InnerProduct" bottom: "data2" top: "out_b" param { name: "w" share_mode: PERMISSIVE }
        inner_product_param { num_output: 3 bias_term: false } }
"""


def test_shared_params_stored_once_convert_and_reload_exactly(tmp_path):
    """The caffemodel stores the shared blobs under the owner only; ip_c (STRICT) and ip_b (PERMISSIVE, (3, 8) over
    the owner's (4, 6)) are served by sharing. The safetensors file holds each shared tensor once."""
    from caffe_import.proto import caffe_pb2

    rng = np.random.default_rng(2)
    model = caffe_pb2.NetParameter(name="shared")
    layer = model.layer.add(name="ip_a", type="InnerProduct")
    for values in (rng.normal(size=(4, 6)), rng.normal(size=4)):
        blob = layer.blobs.add()
        blob.shape.dim.extend(values.shape)
        blob.data.extend(values.ravel().tolist())
    prototxt, weights = tmp_path / "shared.prototxt", tmp_path / "shared.caffemodel"
    prototxt.write_text(SHARED_NET)
    weights.write_bytes(model.SerializeToString())

    result = convert_caffe(prototxt, weights, tmp_path / "out")
    report = result.manifest["weights"]
    assert report["shared_only"] == ["ip_c", "ip_b"]
    assert report["shared"]["w"] == {"layers": ["ip_a", "ip_c", "ip_b"], "stored_by": ["ip_a"], "value_from": "ip_a"}
    assert result.manifest["net"]["shared_params"] == {"w": ["ip_a", "ip_c", "ip_b"], "b": ["ip_a", "ip_c"]}
    with safe_open(str(tmp_path / "out" / "model.safetensors"), framework="pt") as handle:
        stored, aliases = set(handle.keys()), json.loads(handle.metadata()[ALIASES_KEY])
    assert stored == {"ip_a.weight", "ip_a.bias"}
    assert aliases == {"ip_c.weight": "ip_a.weight", "ip_c.bias": "ip_a.bias",
                       "ip_b.parametrizations.weight.original": "ip_a.weight"}

    direct = caffe_import.load(prototxt, weights)
    reloaded, _ = load_model(tmp_path / "out")
    assert reloaded.ip_c.weight is reloaded.ip_a.weight
    assert reloaded.ip_b.parametrizations.weight.original is reloaded.ip_a.weight
    for key, value in direct.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    feeds = {"data": torch.randn(2, 6), "data2": torch.randn(2, 8)}
    with torch.no_grad():
        ours, again = direct(**feeds), reloaded(**feeds)
    for blob in ("out_a", "out_b", "out_c"):
        assert torch.equal(ours[blob], again[blob]), blob


def test_shared_params_export_to_onnx_once_per_storage_and_match(tmp_path):
    """The ONNX initializers of a shared net: the STRICT sharer reuses the owner's tensors, the PERMISSIVE sharer
    (a (3, 8) view of the owner's (4, 6) weight) gets its own reshaped copy; onnxruntime agrees with PyTorch."""
    import onnx

    net = caffe_import.load(caffe_import.read_prototxt_string(SHARED_NET), seed=0)
    path = caffe_import.export_onnx(net, tmp_path / "shared.onnx")
    initializers = {t.name: tuple(t.dims) for t in onnx.load(str(path)).graph.initializer}
    weights = {k: v for k, v in initializers.items() if k.startswith("ip_")}
    assert weights == {"ip_a.weight": (4, 6), "ip_a.bias": (4,), "ip_b.weight": (3, 8)}
    check = caffe_import.check_onnx(net, path)
    assert set(check.max_rel_err) == {"out_a", "out_b", "out_c"} and check.passed(1e-6), check.max_rel_err
