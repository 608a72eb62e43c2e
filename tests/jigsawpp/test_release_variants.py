"""Which variants a release converts to, for each combination of caffemodel and deploys, and why a deploy is unused.

The stand-in for a single-tower AlexNet trained at conv1 stride 2 (fc6 reads its 3x3 pool5) uses small fc layers
(256, 256, 2000) so that its caffemodel is ~14 MB; so does the CC-like AlexNet trained at stride 4 (fc6 reads a
6x6 pool5), which is only inspected. Parity with caffe_import on a real photograph: 1e-5 * max(1, max |ref|).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import caffe_import
from jigsawpp.fixtures import (
    S2_FC_DEPLOY,
    S4_FC_DEPLOY,
    make_release_zip,
    release_prototxt_text,
    seeded_caffemodel,
    write_release_caffemodel,
)
from jigsawpp.images import caffe_blob, demo_photo_path, read_bgr
from jigsawpp.io import load_state_dict_file
from jigsawpp.models import from_release
from jigsawpp.release import convert_release, format_release_info, inspect_release

TOLERANCE = 1e-5
FC_SIZES = (256, 256, 2000)
CONV = ("conv1", "conv2", "conv3", "conv4", "conv5")


@pytest.fixture(scope="module")
def s2_caffemodel(tmp_path_factory):
    return write_release_caffemodel("alexnet_s2", tmp_path_factory.mktemp("s2") / "s2.caffemodel", seed=7,
                                    fc_sizes=FC_SIZES)


@pytest.fixture(scope="module")
def s2_release(tmp_path_factory, s2_caffemodel):
    made = make_release_zip(tmp_path_factory.mktemp("s2_zip") / "jigsawpp.zip", "alexnet_s2", layout="split",
                            caffemodel=s2_caffemodel, fc_sizes=FC_SIZES)
    out = tmp_path_factory.mktemp("s2_out") / "jigsawpp"
    return made, out, convert_release(made["path"], out, onnx=False)


def s2_zip(path, caffemodel, deploys):
    return make_release_zip(path, "alexnet_s2", layout="flat", caffemodel=caffemodel, fc_sizes=FC_SIZES,
                            deploys=deploys)


def test_a_stride2_alexnet_with_both_deploys_gets_both_variants(s2_release):
    made, out, manifest = s2_release
    assert list(manifest["variants"]) == ["pretext_conv1s2", "transfer_conv1s4"]
    pretext, transfer = manifest["variants"]["pretext_conv1s2"], manifest["variants"]["transfer_conv1s4"]
    assert pretext["deploy"]["source"] == f"zip:{made['members']['deploy_pretext']}"
    assert transfer["deploy"]["source"] == f"zip:{made['members']['deploy_transfer']}"
    assert pretext["not_converted"] == [] and pretext["outputs"] == {"fc8": [1, 2000]}
    assert pretext["alexnet_config"]["conv1_stride"] == 2 and pretext["alexnet_config"]["fc6"] == 256
    assert transfer["not_converted"] == ["fc6", "fc7", "fc8"] and transfer["for_transfer"]
    assert manifest["transfer_variant"] == "transfer_conv1s4"
    use = {c["member"]: c["use"] for c in manifest["deploy_candidates"]}
    assert use[made["members"]["deploy_pretext"]] == "used for pretext_conv1s2"
    assert use[made["members"]["deploy_transfer"]] == "used for transfer_conv1s4"
    text = format_release_info(inspect_release(made["path"]))
    assert "-> used for pretext_conv1s2" in text and "-> used for transfer_conv1s4" in text
    assert "-> not used: it does not fit the caffemodel: fc6, fc7, fc8 have other shapes" in text  # caffenet


def test_both_variants_hold_the_same_conv_tensors(s2_release, s2_caffemodel):
    _, out, _ = s2_release
    pretext = load_state_dict_file(out / "pretext_conv1s2" / "model.safetensors")
    transfer = load_state_dict_file(out / "transfer_conv1s4" / "model.safetensors")
    stored = {lp.name: lp for lp in caffe_import.read_caffemodel(s2_caffemodel).layer}
    for name in CONV:
        for i, kind in enumerate(("weight", "bias")):
            key = f"{name}.{kind}"
            torch.testing.assert_close(pretext[key], transfer[key], rtol=0, atol=0)
            np.testing.assert_array_equal(pretext[key].numpy().ravel(), np.asarray(stored[name].blobs[i].data))
    assert {"fc6.weight", "fc8.bias"} <= set(pretext) and not any(k.startswith("fc") for k in transfer)


@pytest.mark.parametrize("variant, role, size, mean, blobs", [
    ("pretext", "deploy_pretext", 64, (0.0, 0.0, 0.0), ["pool5", "fc8"]),
    ("transfer", "deploy_transfer", 227, (104.0, 117.0, 123.0), ["conv3", "pool5"]),
])
def test_each_variant_equals_caffe_import_with_its_own_deploy_on_a_photo(s2_release, s2_caffemodel, variant, role,
                                                                         size, mean, blobs):
    made, out, _ = s2_release
    model = from_release(out, variant)
    assert not model.training
    deploy = release_prototxt_text(S2_FC_DEPLOY if variant == "pretext" else "alexnet/conv_conv1s4.prototxt",
                                   fc_sizes=FC_SIZES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_net = caffe_import.load(caffe_import.read_prototxt_string(deploy), s2_caffemodel)
    x = caffe_blob(read_bgr(demo_photo_path()), size=size, mean_bgr=mean, resize=size)
    with torch.inference_mode():
        ref = ref_net(data=x, outputs=blobs)
        got = model.blobs(x, blobs)
    for name in blobs:
        scale = max(1.0, float(ref[name].abs().max()))
        assert float(ref[name].abs().max()) > 0
        assert float((got[name] - ref[name]).abs().max()) <= TOLERANCE * scale, name


def test_without_a_tile_deploy_the_bundled_one_makes_the_pretext_variant(tmp_path, s2_caffemodel):
    made = s2_zip(tmp_path / "jigsawpp.zip", s2_caffemodel, ["alexnet/conv_conv1s4.prototxt"])
    info = inspect_release(made["path"])
    assert not info.problems
    plans = {v.name: v for v in info.variants}
    assert plans["pretext_conv1s2"].deploy_source == "bundled:alexnet/deploy_conv1s2.prototxt"
    assert "conv layers only: the bundled tile deploy has no fc layers" in plans["pretext_conv1s2"].why
    assert plans["transfer_conv1s4"].deploy_source == "zip:conv_conv1s4.prototxt"


def test_a_stride4_deploy_with_fc_of_another_size_falls_back_to_conv_layers(tmp_path, s2_caffemodel):
    """Before, the bundled full stride-4 deploy was tried and the zip refused ("no deploy fits")."""
    made = s2_zip(tmp_path / "jigsawpp.zip", s2_caffemodel, ["alexnet/deploy_conv1s4.prototxt"])
    info = inspect_release(made["path"])
    assert not info.problems
    plans = {v.name: v for v in info.variants}
    assert plans["transfer_conv1s4"].deploy_source == "bundled:alexnet/conv_conv1s4.prototxt"
    assert "conv layers only: the caffemodel's fc6 takes 2304 inputs, not the 9216" in plans["transfer_conv1s4"].why
    assert info.deploy_use["deploy_conv1s4.prototxt"] == (
        "not used: it does not fit the caffemodel: fc6, fc7, fc8 have other shapes")


def test_cc_deploys_that_fit_but_are_not_used_say_why(tmp_path):
    deploy = caffe_import.read_prototxt_string(release_prototxt_text(S4_FC_DEPLOY, fc_sizes=FC_SIZES))
    caffemodel = tmp_path / "cc.caffemodel"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seeded_caffemodel(deploy, caffemodel, seed=8)
    made = make_release_zip(tmp_path / "jigsawpp_acc.zip", "cc", layout="flat", caffemodel=caffemodel,
                            fc_sizes=FC_SIZES, deploys=[S4_FC_DEPLOY, "alexnet/conv_conv1s4.prototxt",
                                                        "alexnet/deploy_conv1s2.prototxt"])
    info = inspect_release(made["path"])
    assert not info.problems and [v.name for v in info.variants] == ["transfer_conv1s4"]
    assert info.variants[0].deploy_source == "zip:deploy_conv1s4_fc.prototxt"
    assert all(s.fits for s in info.prototxts)
    use = info.deploy_use
    assert use["deploy_conv1s4_fc.prototxt"] == "used for transfer_conv1s4"
    assert use["conv_conv1s4.prototxt"] == (
        "not used: fits, but transfer_conv1s4 uses deploy_conv1s4_fc.prototxt (it uses more of the caffemodel's "
        "weight layers: 8 of 8 against 5 of 8)")
    assert use["deploy_conv1s2.prototxt"] == (
        "not used: its conv layers fit, but its pool5 gives 2304 (256x3x3) values while the caffemodel's fc6 takes "
        "9216: the weights were not trained in this stride-2 network")
    assert any(n.startswith("no pretext_conv1s2 variant:") and "not the 2304 (256x3x3)" in n for n in info.notes)
    text = format_release_info(info)
    assert text.count("-> not used: ") == 2 and "-> used for transfer_conv1s4" in text
