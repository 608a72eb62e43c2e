"""The finder on release-shaped zips in every layout and label format (conv-only stand-in weights: ~9 MB, fast).

Each layout moves the files so that no fixed path could find them: flat; nested folders with macOS metadata and a
README; caffemodel and deploy in different folders next to unrelated prototxts and a solver; odd names (a
caffemodel without extension, a deploy named .txt).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile

import numpy as np
import pytest

import prototxt
from caffe_import.proto import caffe_pb2
from jigsawpp.fixtures import LABEL_FORMATS, RELEASE_LAYOUTS, make_release_zip
from jigsawpp.models import CaffeAlexNet, from_release
from jigsawpp.release import ReleaseError, convert_release, inspect_release


@pytest.mark.parametrize("layout", RELEASE_LAYOUTS)
def test_finder_in_every_layout(tmp_path, conv_caffemodel, layout):
    made = make_release_zip(tmp_path / "jigsawpp_acc.zip", "conv", layout=layout, caffemodel=conv_caffemodel)
    members = made["members"]
    info = inspect_release(made["path"])
    assert not info.problems
    assert info.caffemodel is not None and info.caffemodel.member == members["caffemodel"]
    best = info.prototxts[0]
    assert best.member == members["deploy"] and best.fits
    assert all(not s.fits for s in info.prototxts[1:])
    roles = {m.name: m.role for m in info.members}
    assert roles[members["caffemodel"]] == "caffemodel"
    assert {f.split: f.member for f in info.labels} == {"train": members["labels_train"],
                                                       "val": members["labels_val"]}
    assert [v.name for v in info.variants] == ["transfer_conv1s4"]
    assert info.variants[0].deploy_source == f"zip:{members['deploy']}"
    if layout == "split":
        assert sum(r == "solver" for r in roles.values()) == 1
        extra = [s for s in info.prototxts if "extra/" in s.member]
        assert len(extra) == 2 and all(s.rank < best.rank for s in extra)
    if layout == "nested":
        assert [n for n, r in roles.items() if r == "ignored"] == [m for m in roles if m.startswith("__MACOSX/")]


@pytest.mark.parametrize("label_format", sorted(LABEL_FORMATS))
def test_pseudo_labels_round_trip(tmp_path, conv_caffemodel, label_format):
    made = make_release_zip(tmp_path / "jigsawpp_acc.zip", "conv", layout="nested", label_format=label_format,
                            caffemodel=conv_caffemodel)
    out = tmp_path / "out"
    manifest = convert_release(made["path"], out, onnx=False)
    for split, (names, labels) in made["labels"].items():
        with np.load(out / "pseudo_labels" / f"{split}.npz", allow_pickle=False) as npz:
            assert npz["labels"].dtype == np.int32
            np.testing.assert_array_equal(npz["labels"], labels)
            if manifest["pseudo_labels"][split]["names_from_file"]:
                assert list(npz["names"]) == names
            else:
                assert list(npz["names"]) == [str(i) for i in range(len(labels))]
        entry = manifest["pseudo_labels"][split]
        assert entry["member"] == made["members"][f"labels_{split}"]
        assert entry["count"] == len(labels) and entry["format"]
    assert manifest["pseudo_labels"]["train"]["names_from_file"] == (label_format not in ("labels_only", "npy"))


def test_output_layout_and_manifest(tmp_path, conv_caffemodel):
    made = make_release_zip(tmp_path / "jigsawpp_acc.zip", "conv", layout="split", caffemodel=conv_caffemodel)
    out = tmp_path / "out"
    manifest = convert_release(made["path"], out)
    assert sorted(os.listdir(out)) == ["manifest.json", "pseudo_labels", "transfer_conv1s4"]
    assert sorted(os.listdir(out / "transfer_conv1s4")) == ["deploy.prototxt", "model.onnx", "model.safetensors"]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    with zipfile.ZipFile(made["path"]) as zf:
        expected = {i.filename: hashlib.sha256(zf.read(i)).hexdigest() for i in zf.infolist()}
    assert {m["member"]: m["sha256"] for m in manifest["inputs"]} == expected
    assert manifest["source"]["sha256"] == hashlib.sha256(made["path"].read_bytes()).hexdigest()
    assert manifest["transfer_variant"] == "transfer_conv1s4"
    assert manifest["release"]["name"] == "jigsawpp_acc"
    assert manifest["paper"]["tables"]["table3"]["detection_ms"] == 55.8
    assert manifest["preprocessing"]["channel_order"] == "BGR" and manifest["preprocessing"]["mean_bgr"]
    onnx = manifest["variants"]["transfer_conv1s4"]["parity"]["onnx"]
    assert max(onnx["export_size"]["max_rel_err"].values()) < 1e-4
    assert any(k.startswith("second_size_") for k in onnx)
    model = from_release(out)
    assert isinstance(model, CaffeAlexNet) and model.config.conv1_stride == 4 and model.config.fc6 is None


def test_deploy_override(tmp_path, conv_caffemodel):
    made = make_release_zip(tmp_path / "jigsawpp_acc.zip", "conv", layout="split", caffemodel=conv_caffemodel)
    with pytest.raises(ReleaseError, match="does not fit the caffemodel.*fc6, fc7, fc8"):
        inspect_release(made["path"], deploy="caffenet_deploy.prototxt")
    with pytest.raises(ReleaseError, match="neither a member"):
        inspect_release(made["path"], deploy="nope.prototxt")
    custom = tmp_path / "my_deploy.prototxt"
    custom.write_text(prototxt.path("alexnet/conv_conv1s4.prototxt").read_text())
    info = inspect_release(made["path"], deploy=custom)
    assert info.variants[0].deploy_source == "file:my_deploy.prototxt"
    assert info.variants[0].why == "chosen with --deploy"


def test_failed_convert_leaves_no_partial_output(tmp_path, conv_caffemodel, monkeypatch):
    made = make_release_zip(tmp_path / "zips" / "jigsawpp_acc.zip", "conv", layout="flat",
                            caffemodel=conv_caffemodel)
    corrupt = tmp_path / "zips" / "corrupt.zip"
    with zipfile.ZipFile(made["path"]) as src, zipfile.ZipFile(corrupt, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, data[: len(data) // 2] if item.filename.endswith(".caffemodel") else data)
    with pytest.raises(ReleaseError, match="no caffemodel found .*corrupt or truncated"):
        convert_release(corrupt, tmp_path / "new" / "out")
    assert not (tmp_path / "new").exists()

    import jigsawpp.release as release

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(release, "save_pseudo_labels", fail)   # after the variant folder was written
    with pytest.raises(OSError, match="disk full"):
        convert_release(made["path"], tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["zips"]


def test_overwrite_rules(tmp_path, conv_caffemodel):
    made = make_release_zip(tmp_path / "jigsawpp_acc.zip", "conv", layout="flat", caffemodel=conv_caffemodel)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        convert_release(made["path"], out, onnx=False)
    convert_release(made["path"], out, onnx=False, overwrite=True)
    assert not (out / "old.txt").exists() and (out / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jigsawpp_acc.zip", "out"]


def test_release_identity_from_folder_name_or_unknown(tmp_path, conv_caffemodel):
    made = make_release_zip(tmp_path / "download.zip", "conv", layout="nested", caffemodel=conv_caffemodel,
                            release="context_acc")
    info = inspect_release(made["path"])
    assert info.release is not None and info.release.paper_method == "CC+Context-ColorDrop"
    assert info.release_why == "the zip's top folder context_acc/"
    made = make_release_zip(tmp_path / "download2.zip", "conv", layout="flat", caffemodel=conv_caffemodel)
    info = inspect_release(made["path"])
    assert info.release is None and "unknown" in info.release_why
    assert not info.problems   # still convertible, just without paper numbers


def _shape_only_alexnet(fc8_rows: int) -> bytes:
    """A caffemodel with AlexNet blob shapes but no values: enough for the finder, which reads shapes only."""
    shapes = {"conv1": [(96, 3, 11, 11), (96,)], "conv2": [(256, 48, 5, 5), (256,)],
              "conv3": [(384, 256, 3, 3), (384,)], "conv4": [(384, 192, 3, 3), (384,)],
              "conv5": [(256, 192, 3, 3), (256,)], "fc6": [(4096, 9216), (4096,)], "fc7": [(4096, 4096), (4096,)],
              "fc8": [(fc8_rows, 4096), (fc8_rows,)]}
    net = caffe_pb2.NetParameter(name="shape_only")
    for name, blobs in shapes.items():
        layer = net.layer.add(name=name, type="InnerProduct" if name.startswith("fc") else "Convolution")
        for shape in blobs:
            layer.blobs.add().shape.dim.extend(shape)
    return net.SerializeToString()


def test_bundled_deploy_is_patched_to_the_caffemodel_fc8(tmp_path):
    path = tmp_path / "hog_cc.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("hog_cc/hog_cc.caffemodel", _shape_only_alexnet(1500))
        zf.writestr("hog_cc/train.txt", "a.JPEG 3\nb.JPEG 1499\n")
        zf.writestr("hog_cc/val.txt", "ILSVRC2012_val_00000001.JPEG 1600\n")
    info = inspect_release(path)
    (variant,) = info.variants
    assert variant.deploy_source == "bundled:alexnet/deploy_conv1s4.prototxt"
    assert variant.patches == ("fc8 num_output 2000 -> 1500 (the caffemodel's shape is authoritative)",)
    assert "num_output: 1500" in variant.deploy_text
    checks = {c.name: c for c in info.checks}
    assert checks["labels:train"].ok is True
    assert checks["labels:val"].ok is False and "cannot be this network's targets" in checks["labels:val"].message
    assert info.release is not None and info.release.paper_method == "CC+HOG"
