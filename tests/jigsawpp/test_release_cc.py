"""A cluster-classification release (plain AlexNet, conv1 stride 4, fc8 = 2000 clusters): one stand-in zip
(~250 MB, written once), converted once. Tolerance vs caffe_import: 1e-5 * max(1, max |ref|)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import caffe_import
import prototxt
from jigsawpp.fixtures import make_release_zip
from jigsawpp.models import CaffeAlexNet, from_release
from jigsawpp.release import convert_release, inspect_release

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def cc_out(tmp_path_factory, cc_caffemodel):
    made = make_release_zip(tmp_path_factory.mktemp("cc_zip") / "jigsawpp_vcc.zip", "cc", layout="split",
                            label_format="npz", caffemodel=cc_caffemodel, release="jigsawpp_vcc")
    out = tmp_path_factory.mktemp("cc_out") / "jigsawpp_vcc"
    return made, out, convert_release(made["path"], out)


def test_cc_release_has_one_full_transfer_variant(cc_out):
    made, out, manifest = cc_out
    assert list(manifest["variants"]) == ["transfer_conv1s4"]
    entry = manifest["variants"]["transfer_conv1s4"]
    assert entry["for_transfer"] and entry["deploy"]["source"] == f"zip:{made['members']['deploy']}"
    assert entry["alexnet_config"]["num_classes"] == 2000 and entry["outputs"] == {"fc8": [1, 2000]}
    assert entry["not_converted"] == []
    assert manifest["caffemodel"]["kind"] == "alexnet" and manifest["caffemodel"]["towers"] is None
    assert manifest["release"]["paper_method"] == "CC+vgg-Jigsaw++"
    assert manifest["paper"]["tables"]["table3"]["classification"] == 72.5
    labels = {c["name"]: c for c in manifest["checks"]}
    assert labels["labels:train"]["ok"] is True and "fc8 has 2000 outputs" in labels["labels:train"]["message"]
    candidates = manifest["deploy_candidates"]
    assert candidates[0]["fits"] and not any(c["fits"] for c in candidates[1:])
    caffenet = next(c for c in candidates if c["member"].endswith("caffenet_deploy.prototxt"))
    assert "fc8: [(1000, 4096), (1000,)] vs [(2000, 4096), (2000,)]" in caffenet["why"]


def test_from_release_equals_caffe_import(cc_out, cc_caffemodel):
    _, out, _ = cc_out
    model = from_release(out, "transfer")
    assert isinstance(model, CaffeAlexNet) and not model.training
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_net = caffe_import.load(prototxt.path("alexnet/deploy_conv1s4.prototxt"), cc_caffemodel)
    x = torch.rand(2, 3, 227, 227, generator=torch.Generator().manual_seed(3)) * 255 - 120
    with torch.inference_mode():
        ref = ref_net(data=x, outputs=["pool5", "fc8"])
        got = model.blobs(x, ["pool5", "fc8"])
    for name in ("pool5", "fc8"):
        scale = max(1.0, float(ref[name].abs().max()))
        assert float((got[name] - ref[name]).abs().max()) <= TOLERANCE * scale, name


def test_npz_pseudo_labels_round_trip(cc_out):
    made, out, manifest = cc_out
    for split, (names, labels) in made["labels"].items():
        with np.load(out / "pseudo_labels" / f"{split}.npz") as npz:
            assert list(npz["names"]) == names
            np.testing.assert_array_equal(npz["labels"], labels)
        assert manifest["pseudo_labels"][split]["format"] == "npz arrays 'paths' and 'clusters'"


def test_without_a_deploy_in_the_zip_the_bundled_one_is_used(tmp_path, cc_caffemodel):
    import zipfile

    path = tmp_path / "jigsawpp_acc.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.write(cc_caffemodel, "weights/model.caffemodel", compress_type=zipfile.ZIP_STORED)
    info = inspect_release(path)
    assert not info.problems
    (variant,) = info.variants
    assert variant.deploy_source == "bundled:alexnet/deploy_conv1s4.prototxt" and variant.patches == ()
    assert "no usable stride-4 single-tower deploy in the zip (there are none)" in variant.why
