"""`jigsawpp verify`: a result is placed in its paper cell only if it is of --model, on the paper's test set, for a
known paper row; every protocol difference is listed."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from eval.detection.config import protocol
from eval.detection.provenance import provenance_stamp
from eval.verify import RESULT_KINDS, VOC2007_TEST_POSITIVES, ResultKind, VerifyError, VerifyRow, verify
from jigsawpp.cli import main
from jigsawpp.convert import model_record


@pytest.fixture()
def model(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"paper": {"method": "CC+Jigsaw++"}}))
    return folder


def _scores(path, *, model_dir, map_11point=0.551, positives=None, split="test", record=True, **stamp_args):
    cfg = protocol("multiscale", proposals="selective_search_mat")
    stamp = provenance_stamp(cfg, mode="train+test", proposals={"method": "selective_search_mat"},
                             iterations=stamp_args.get("iterations", 150_000), init={}, device="cpu")
    if record:
        stamp["model"] = model_record(model_dir)
    per_class = {c: {"n_pos": n} for c, n in (positives or VOC2007_TEST_POSITIVES).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"map_11point": map_11point, "per_class": per_class,
                                "provenance": {"split": split, "fast_rcnn": stamp}}))
    return path


def test_the_full_test_set_is_the_paper_s():
    # VOC2007 test: 4,952 images; 12,032 objects without the difficult flag (the devkit's positives)
    assert sum(VOC2007_TEST_POSITIVES.values()) == 12_032 and len(VOC2007_TEST_POSITIVES) == 20


def test_a_paper_protocol_result_of_this_model_is_placed_in_its_cell(tmp_path, model):
    _scores(tmp_path / "ms" / "scores.json", model_dir=model)
    (tmp_path / "bare.json").write_text(json.dumps({"map_11point": 0.4}))
    res = CliRunner().invoke(main, ["verify", "--model", str(model), "--results", str(tmp_path / "ms"),
                                    "--results", str(tmp_path / "bare.json")])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == "paper row: CC+Jigsaw++"
    ms = next(line for line in lines if "detection_ms" in line)
    assert "55.1" in ms and "55.8" in ms and "-0.7" in ms
    bare = next(line for line in lines if "detection_ss" in line)
    assert "40.0" in bare and "55.0" in bare and "n/c" in bare  # no per-class counts: not comparable, no diff
    differs = [line for line in lines if "differs:" in line]
    assert len(differs) == 3, res.output  # all three for the bare result
    assert any("no provenance stamp" in d for d in differs)
    assert any("does not record which model" in d for d in differs)
    assert any("not comparable to the paper" in d for d in differs)
    sources = [line.split("from: ", 1)[1] for line in lines if "from: " in line]  # several results: each row's file
    assert sources == [str(tmp_path / "ms" / "scores.json"), str(tmp_path / "bare.json")], res.output


def test_a_subset_of_the_test_set_is_not_comparable(tmp_path, model):
    four_images = dict.fromkeys(VOC2007_TEST_POSITIVES, 0) | {"person": 5, "dog": 2}
    _scores(tmp_path / "a.json", model_dir=model, positives=four_images)
    _scores(tmp_path / "b.json", model_dir=model, positives={**VOC2007_TEST_POSITIVES, "person": 4527})
    _scores(tmp_path / "c.json", model_dir=model, split="trainval")
    _, rows = verify(model, [tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"])
    assert [r.comparable for r in rows] == [False, False, False]
    assert all(r.difference is None and r.measured == pytest.approx(55.1) and r.paper == 55.8 for r in rows)
    assert "7 non-difficult objects" in rows[0].deviations[0] and "4,952 images" in rows[0].deviations[0]
    assert "person 4527 vs 4528" in rows[1].deviations[0]
    assert "split 'trainval'" in rows[2].deviations[0]
    data = json.loads((tmp_path / "a.json").read_text()) | {"n_images": 4}
    (tmp_path / "d.json").write_text(json.dumps({**data, "per_class": {c: {"n_pos": n} for c, n in
                                                                      VOC2007_TEST_POSITIVES.items()}}))
    (row,) = verify(model, [tmp_path / "d.json"])[1]
    assert not row.comparable and "test set of 4 images" in row.deviations[0]


def test_results_of_another_model_are_refused(tmp_path, model):
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"paper": {"method": "Jigsaw++"}}))
    _scores(tmp_path / "r.json", model_dir=other)
    with pytest.raises(VerifyError, match="computed from the model in 'other'.*not from --model"):
        verify(model, [tmp_path / "r.json"])
    (model / "manifest.json").write_text(json.dumps({"paper": {"method": "CC+Jigsaw++"}, "edited": True}))
    _scores(tmp_path / "s.json", model_dir=tmp_path / "model")
    assert verify(model, [tmp_path / "s.json"])[1][0].comparable


def test_a_variant_folder_is_the_release_s_model(tmp_path):
    root = tmp_path / "jpp"
    (root / "transfer_conv1s4").mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"variants": {"transfer_conv1s4": {}},
                                                    "paper": {"method": "Jigsaw++"}}))
    _scores(tmp_path / "r.json", model_dir=root / "transfer_conv1s4")
    method, rows = verify(root, [tmp_path / "r.json"])
    assert method == "Jigsaw++" and rows[0].paper == 55.7
    assert model_record(root)["manifest_sha256"] == model_record(root / "transfer_conv1s4")["manifest_sha256"]


def test_the_model_identity_ignores_how_long_the_conversion_took(tmp_path):
    """Converting the same zip again changes only the manifest's "seconds": its results still verify; any other
    difference (an input file's sha256) is another model."""
    from jigsawpp.convert import manifest_sha256

    data = {"inputs": {"caffemodel": {"sha256": "a" * 64}}, "variants": {"transfer_conv1s4": {}}, "seconds": 1.57}
    (tmp_path / "one.json").write_text(json.dumps(data))
    (tmp_path / "two.json").write_text(json.dumps({**data, "seconds": 3.15}, indent=2))
    (tmp_path / "other.json").write_text(json.dumps({**data, "inputs": {"caffemodel": {"sha256": "b" * 64}}}))
    assert manifest_sha256(tmp_path / "one.json") == manifest_sha256(tmp_path / "two.json")
    assert manifest_sha256(tmp_path / "one.json") != manifest_sha256(tmp_path / "other.json")


def test_an_unknown_method_is_refused_with_the_paper_s_rows(tmp_path, model):
    _scores(tmp_path / "r.json", model_dir=model)
    with pytest.raises(VerifyError, match=r"'CC\+Jigsaw\+\+ ', which .*known rows: Supervised, CC\+HOG, Random"):
        verify(model, [tmp_path / "r.json"], method="CC+Jigsaw++ ")
    (model / "manifest.json").write_text(json.dumps({"paper": {"method": "Jigsaw+++"}}))
    with pytest.raises(VerifyError, match=r"manifest of .*paper.method"):
        verify(model, [tmp_path / "r.json"])


def test_a_protocol_adds_its_rows_through_the_registry(tmp_path, model, monkeypatch):
    def rows(scores_path, data, method):
        return [VerifyRow(table="table9", column="conv5", measured=data["top1"], paper=None, protocol="p",
                          deviations=(), source=str(scores_path))]

    monkeypatch.setitem(RESULT_KINDS, "toy_probe", ResultKind(rows, ("stamp",)))
    path = tmp_path / "toy.json"
    path.write_text(json.dumps({"kind": "toy_probe", "top1": 33.0, "stamp": {"model": model_record(model)}}))
    (row,) = verify(model, [path])[1]
    assert row.table == "table9" and row.measured == 33.0 and row.deviations == ()
    path.write_text(json.dumps({"kind": "toy_probe", "top1": 33.0, "stamp": {}}))
    (row,) = verify(model, [path])[1]
    assert "does not record which model" in row.deviations[0]


def test_classification_and_segmentation_stamps_name_their_model(tmp_path, model):
    """The transferred-layer record every protocol puts in its stamp carries the model record, so verify refuses a
    classification or segmentation result of another model as it does a detection result."""
    import torch

    from jigsawpp.io import save_state_dict_file
    from jigsawpp.transfer_weights import transfer_weights

    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"paper": {"method": "Jigsaw++"}}))
    shapes = {"conv1": (96, 3, 11, 11), "conv2": (256, 48, 5, 5), "conv3": (384, 256, 3, 3),
              "conv4": (384, 192, 3, 3), "conv5": (256, 192, 3, 3)}
    state = {f"{k}.{b}": torch.zeros(s if b == "weight" else s[:1]) for k, s in shapes.items() for b in ("weight",
                                                                                                         "bias")}
    save_state_dict_file(state, other / "model.safetensors")
    weights = transfer_weights(other)
    assert weights.record()["model"] == model_record(other)
    for kind, key in (("voc07_classification", "map_sklearn"), ("fcn_segmentation", "mean_iu")):
        path = tmp_path / f"{kind}.json"
        path.write_text(json.dumps({key: 0.5, "provenance": {"split": "test", "protocol": {
            "protocol": kind, "init": weights.record()}}}))
        with pytest.raises(VerifyError, match="computed from the model in 'other'"):
            verify(model, [path])


def _cls_seg_scores(path, kind, *, model_dir, **fields):
    """A classification or segmentation scores.json of `model_dir` (stamp as the pipelines write it)."""
    path.write_text(json.dumps({**fields, "provenance": {"protocol": {
        "protocol": kind, "key": "k", "iterations": 1, "mode": "train+test", "config": {},
        "init": {"model": model_record(model_dir)}, **fields.pop("stamp", {})}}}))
    return path


def test_classification_and_segmentation_on_other_test_sets_are_not_comparable(tmp_path, model):
    def cls(name, n_neg):  # per class: positives + negatives + difficult = the test images
        per_class = {c: {"n_pos": 1, "n_neg": n_neg, "n_difficult": 1} for c in VOC2007_TEST_POSITIVES}
        return _cls_seg_scores(tmp_path / name, "voc07_classification", model_dir=model, map_sklearn=0.7,
                               per_class=per_class)

    def seg(name, val):
        return _cls_seg_scores(tmp_path / name, "fcn_segmentation", model_dir=model, mean_iu=0.4,
                               stamp={"val_data": val})

    fcn = {"dataset": "VOC2011", "split": "seg11valid", "count": 736, "is_fcn_seg11valid": True}
    paths = [cls("full.json", 4950), cls("subset.json", 2), cls("one_short.json", 4949),
             seg("seg11valid.json", fcn), seg("other_list.json", {**fcn, "count": 735, "is_fcn_seg11valid": False}),
             seg("voc_val.json", {"dataset": "VOC2012", "split": "val", "count": 1449})]
    _, rows = verify(model, paths)
    assert [r.comparable for r in rows] == [True, False, False, True, False, False]
    assert rows[0].difference == pytest.approx(70.0 - 69.9) and rows[3].difference == pytest.approx(40.0 - 40.0)
    assert all(r.difference is None for i, r in enumerate(rows) if i not in (0, 3))
    assert "test set of 4 images, not the full VOC2007 test (4,952)" in rows[1].deviations[0]
    assert "test set of 4,951 images" in rows[2].deviations[0]
    assert "seg11valid list differs from FCN's (735 images, FCN's 736)" in rows[4].deviations[0]
    assert "test set VOC2012 val (1449 images), not FCN's seg11valid (736)" in rows[5].deviations[0]
    assert all("not comparable to the paper" in rows[i].deviations[0] for i in (1, 2, 4, 5))
