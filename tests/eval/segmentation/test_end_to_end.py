"""The whole FCN protocol on the real sample photos and masks (shrunk), from a converted seeded model: trained on the
SBD-format copy, tested on the VOC folder; the untrained net's mean IU, a short fine-tune at FCN's own learning rate,
scores far above, the prediction PNGs scored again by the CLI, and the row ``jigsawpp verify`` prints."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from eval.segmentation.config import FCNConfig
from eval.segmentation.pipeline import run_segmentation
from jigsawpp.cli import main

# FCN's lr and loss; 1 image per update instead of 20 and a few iterations, to fit 2 CPU cores.
FAST = dict(iter_size=1, val_data="voc_val", snapshot_iters=1000, display=5, num_overlays=1)
ITERS = 16


@pytest.fixture(scope="module")
def runs(seg_sample, sbd_sample, conv_model_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("fcn_runs")
    common = dict(voc_root=seg_sample.root, sbd_root=sbd_sample, progress=False)
    # the untrained net as the pipeline builds it, tested without a training run's files
    from eval.segmentation.data import voc_segmentation_split
    from eval.segmentation.evaluate import evaluate_segmenter
    from eval.segmentation.model import build_fcn
    from jigsawpp.transfer_weights import transfer_weights

    cfg = FCNConfig(**FAST)
    untrained = evaluate_segmenter(build_fcn(transfer_weights(conv_model_dir), seed=cfg.init_seed),
                                   voc_segmentation_split(seg_sample.root, "val"), base / "untrained",
                                   mean_bgr=cfg.mean_bgr, stamp={"key": "untrained"}, progress=False)
    trained = run_segmentation(conv_model_dir, base / "trained", FCNConfig(**FAST, max_iters=ITERS), **common)
    return untrained, trained


@pytest.mark.slow
def test_fine_tuning_fits_the_photos(runs):
    untrained, trained = runs
    before, after = untrained.scores.mean_iu, trained.scores.mean_iu
    # untrained: score_fr is zero, every pixel is background (class 0)
    assert untrained.scores.iu[1:].max() == 0 or before < 0.1
    assert after >= 2 * before and after - before >= 0.05, (before, after)
    stamp = trained.stamp
    assert stamp["protocol"] == "fcn_segmentation" and stamp["iterations"] == ITERS
    assert stamp["train_data"]["dataset"] == "SBD" and stamp["val_data"]["split"] == "val"
    assert stamp["init"]["fresh_layers"]["fc6"] == "gaussian std 0.005, bias 1.0"
    out = trained.out_dir
    for name in ("fcn.safetensors", "config.json", "iu.png", "training_curves.png", "scores.json"):
        assert (out / name).is_file(), name
    assert len(list((out / "overlays").glob("*.jpg"))) == 1
    assert len(list(trained.results_dir.glob("*.png"))) == trained.scores.n_images


@pytest.mark.slow
def test_cli_rescoring_and_verify(runs, seg_sample, tmp_path, conv_model_dir):
    _, trained = runs
    res = CliRunner().invoke(main, ["eval", "score-segmentation", "--voc", str(seg_sample.root), "--split", "val",
                                    "--results", str(trained.results_dir)])
    assert res.exit_code == 0, res.output
    rescored = json.loads((trained.results_dir / "scores.json").read_text())
    assert rescored["mean_iu"] == pytest.approx(trained.scores.mean_iu, abs=1e-12)
    assert rescored["provenance"]["protocol"]["key"] == trained.stamp["key"]
    # the result records its model: verify accepts it for that model (naming the paper row) and for no other
    res = CliRunner().invoke(main, ["verify", "--model", str(conv_model_dir), "--method", "CC+Jigsaw++",
                                    "--results", str(trained.out_dir)])
    assert res.exit_code == 0, res.output
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"paper": {"method": "CC+Jigsaw++"}}))
    refused = CliRunner().invoke(main, ["verify", "--model", str(other), "--results", str(trained.out_dir)])
    assert refused.exit_code == 1 and "not from --model" in refused.output
    row = next(line for line in res.output.splitlines() if line.startswith("table3  segmentation"))
    assert "40.0" in row and f"{trained.scores.mean_iu * 100:.1f}" in row
    assert "val_data voc_val (paper: seg11valid)" in res.output and "iter_size 1 (paper: 20)" in res.output


def test_cli_usage_errors(tmp_path, seg_sample):
    runner = CliRunner()
    res = runner.invoke(main, ["eval", "segmentation", "--help"])
    assert res.exit_code == 0 and "--caffe-test" in res.output and "--sbd" in res.output
    res = runner.invoke(main, ["eval", "segmentation", "--voc", str(seg_sample.root)])
    assert res.exit_code != 0 and "--model is required" in res.output
    res = runner.invoke(main, ["eval", "segmentation", "--voc", str(seg_sample.root), "--set", "lr=1"])
    assert res.exit_code != 0 and "unknown key" in res.output and "base_lr" in res.output
    res = runner.invoke(main, ["eval", "segmentation", "--voc", str(seg_sample.root), "--caffe-test",
                               str(tmp_path / "nope.prototxt")])
    assert res.exit_code != 0 and "does not exist" in res.output
    res = runner.invoke(main, ["eval", "score-segmentation", "--voc", str(seg_sample.root), "--results",
                               str(tmp_path)])
    assert res.exit_code != 0 and "4 of 4 predictions" in res.output and "Traceback" not in res.output
