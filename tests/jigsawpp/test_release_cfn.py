"""The Jigsaw++ release (9-tower CFN, conv1 stride 2): tower collapse, both conv1 variants, fc8 vs permutations.

One stand-in zip (~340 MB, written once) is converted once for the module; the tower-mismatch test packs a
perturbed copy of the same caffemodel. Tolerance for the parity with caffe_import: 1e-5 * max(1, max |ref|).
"""

from __future__ import annotations

import warnings
import zipfile

import numpy as np
import pytest
import torch

import caffe_import
import prototxt
from jigsawpp.fixtures import make_release_zip
from jigsawpp.models import from_release
from jigsawpp.release import ReleaseError, convert_release, inspect_release

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def cfn_zip(tmp_path_factory, cfn_caffemodel):
    return make_release_zip(tmp_path_factory.mktemp("cfn_zip") / "jigsawpp.zip", "jigsawpp", layout="split",
                            caffemodel=cfn_caffemodel)


@pytest.fixture(scope="module")
def cfn_out(tmp_path_factory, cfn_zip):
    out = tmp_path_factory.mktemp("cfn_out") / "jigsawpp"
    return out, convert_release(cfn_zip["path"], out)


def test_info_finds_the_cfn_and_plans_both_variants(cfn_zip):
    info = inspect_release(cfn_zip["path"])
    assert not info.problems
    assert info.caffemodel.kind == "cfn" and info.caffemodel.towers.towers == tuple(range(1, 10))
    assert info.caffemodel.towers.identical
    assert info.prototxts[0].member == cfn_zip["members"]["deploy_pretext"]
    assert info.prototxts[0].mode == "raw" and info.prototxts[0].fits
    assert info.prototxts[1].member == cfn_zip["members"]["deploy_transfer"]
    assert info.prototxts[1].mode == "towers collapsed" and info.prototxts[1].fits
    plans = {v.name: v for v in info.variants}
    assert plans["pretext_conv1s2"].deploy_source == "bundled:alexnet/deploy_conv1s2.prototxt"
    assert plans["transfer_conv1s4"].deploy_source == f"zip:{cfn_zip['members']['deploy_transfer']}"
    assert info.transfer_variant == "transfer_conv1s4"
    assert info.release.file == "jigsawpp" and info.release_why == "the zip file name"
    checks = {c.name: c for c in info.checks}
    assert checks["towers"].ok is True
    assert checks["tower_geometry"].ok is True and "Power scale [50.0]" in checks["tower_geometry"].message
    fc8 = checks["fc8"].message
    assert "fc8 has 1000 outputs" in fc8 and "701 permutations" in fc8
    assert "the caffemodel's fc8 shape (1000) is authoritative" in fc8
    assert info.permutations.count == 701 and info.permutations.one_based


def test_release_is_recognised_by_content_when_renamed(tmp_path, cfn_zip):
    renamed = tmp_path / "download.zip"
    renamed.symlink_to(cfn_zip["path"])
    info = inspect_release(renamed)
    assert info.release.file == "jigsawpp"
    assert info.release_why.startswith("the zip's top folder") or info.release_why.startswith("content")


def test_both_variants_and_their_sizes(cfn_out):
    out, manifest = cfn_out
    assert manifest["transfer_variant"] == "transfer_conv1s4"
    pretext, transfer = manifest["variants"]["pretext_conv1s2"], manifest["variants"]["transfer_conv1s4"]
    assert (pretext["for_transfer"], transfer["for_transfer"]) == (False, True)
    assert pretext["outputs"] == {"pool5": [1, 256, 3, 3]}      # 64-px tile, Caffe ceil pooling
    assert transfer["outputs"] == {"pool5": [1, 256, 6, 6]}     # 227 input at stride 4
    assert pretext["not_converted"] == ["fc6", "fc7", "fc8"] and pretext["preprocessing"]["mean_bgr"] is None
    for entry in (pretext, transfer):
        assert entry["parity"]["caffe_alexnet_vs_caffe_import"]["max_abs_err"] == 0.0
        assert max(entry["parity"]["onnx"]["export_size"]["max_rel_err"].values()) < 1e-4
    assert manifest["paper"]["method"] == "Jigsaw++"
    assert manifest["paper"]["tables"]["table4"]["conv5"] == 28.0


def test_from_release_pretext_equals_caffe_import_tower(cfn_out, cfn_caffemodel):
    out, _ = cfn_out
    model = from_release(out, "pretext")
    assert model.config.conv1_stride == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfn = caffe_import.load(prototxt.path("jigsawpp/cfn_deploy.prototxt"), cfn_caffemodel)
    g = torch.Generator().manual_seed(5)
    tiles = {f"data_{i}": torch.rand(2, 3, 64, 64, generator=g) * 255 for i in range(1, 10)}
    with torch.inference_mode():
        ref = cfn(**tiles, outputs=["scale_1", "pool5_s1", "conv3_s1"])
        got = model.blobs(ref["scale_1"], ["conv3", "pool5"])
    for ours, theirs in (("pool5", "pool5_s1"), ("conv3", "conv3_s1")):
        scale = max(1.0, float(ref[theirs].abs().max()))
        assert float((got[ours] - ref[theirs]).abs().max()) <= TOLERANCE * scale


def test_transfer_weights_are_the_shared_tower_weights(cfn_out, cfn_caffemodel):
    out, _ = cfn_out
    model = from_release(out)
    assert model.config.conv1_stride == 4 and model.config.fc6 is None
    weights = {lp.name: lp for lp in caffe_import.read_caffemodel(cfn_caffemodel).layer}
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        for tower in (1, 9):
            blob = np.asarray(weights[f"{name}_s{tower}"].blobs[0].data, np.float32)
            np.testing.assert_array_equal(getattr(model, name).weight.detach().numpy().ravel(), blob)
    assert model(torch.zeros(1, 3, 227, 227)).shape == (1, 256, 6, 6)


def test_non_identical_tower_copies_are_detected(tmp_path, cfn_zip, cfn_caffemodel):
    net = caffe_import.read_caffemodel(cfn_caffemodel)
    layer = next(lp for lp in net.layer if lp.name == "conv3_s5")
    layer.blobs[0].data[17] += 0.25
    path = tmp_path / "jigsawpp.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("jigsawpp/jigsawpp.caffemodel", net.SerializeToString(), compress_type=zipfile.ZIP_STORED)
        with zipfile.ZipFile(cfn_zip["path"]) as src:
            zf.writestr("jigsawpp/deploy.prototxt", src.read(cfn_zip["members"]["deploy_transfer"]))
    info = inspect_release(path)
    towers = {c.name: c for c in info.checks}["towers"]
    assert towers.ok is False and "conv3 0.25" in towers.message
    assert info.caffemodel.towers.max_abs_diff["conv3"] == pytest.approx(0.25)
    assert info.caffemodel.towers.max_abs_diff["conv1"] == 0.0
    assert any("--allow-tower-mismatch" in p for p in info.problems)
    with pytest.raises(ReleaseError, match="tower copies differ"):
        convert_release(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not inspect_release(path, allow_tower_mismatch=True).problems


def test_a_nine_tower_deploy_cannot_be_a_variant(cfn_zip):
    info = inspect_release(cfn_zip["path"], deploy=cfn_zip["members"]["deploy_pretext"])
    assert any("not a Caffe AlexNet" in p for p in info.problems)
