"""The whole classification protocol on the real sample photos, from a converted seeded model: the untrained net's
mAP, a short fine-tune that is interrupted and resumed, scores far above the untrained ones, the devkit files scored
again by the CLI, and the result placed in its Table 3 cell by ``jigsawpp verify``."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from eval.classification.config import VOCClassificationConfig
from eval.classification.pipeline import run_classification
from jigsawpp.cli import main

# Small enough for 2 CPU cores: fc6-fc8 fine-tuned (no conv backward), 4 images per batch, 2 test crops, lr x 10.
FAST = dict(variant="fc678", batch_size=4, base_lr=0.01, test_crops=2, snapshot_iters=3, display=3)


@pytest.fixture(scope="module")
def runs(cls_sample, conv_model_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("cls_runs")
    # the untrained net as the pipeline builds it, tested without a training run's files
    from eval.classification.model import VARIANTS, build_classifier
    from eval.classification.pipeline import evaluate_classifier
    from jigsawpp.transfer_weights import transfer_weights

    cfg = VOCClassificationConfig(**FAST)
    model = build_classifier(transfer_weights(conv_model_dir), VARIANTS[cfg.variant],
                             seed=cfg.init_seed)
    untrained = evaluate_classifier(model, cls_sample.root, base / "untrained", cfg, stamp={"key": "untrained"},
                                    progress=False)
    first = run_classification(conv_model_dir, cls_sample.root, base / "trained",
                               VOCClassificationConfig(**FAST, max_iters=3), progress=False)
    trained = run_classification(conv_model_dir, cls_sample.root, base / "trained",
                                 VOCClassificationConfig(**FAST, max_iters=6), progress=False)
    return untrained, first, trained


@pytest.mark.slow
def test_fine_tuning_fits_the_photos_and_resumes(runs):
    untrained, first, trained = runs
    assert first.train.iterations == 3 and trained.train.resumed_from == 3 and trained.train.iterations == 6
    before, after = untrained.ap.map_sklearn, trained.ap.map_sklearn
    assert after >= 0.9 and after - before >= 0.25, (before, after)
    assert trained.ap.map_11point >= 0.9
    stamp = trained.stamp
    assert stamp["protocol"] == "voc07_classification" and stamp["iterations"] == 6
    assert stamp["frozen_layers"] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert set(stamp["init"]["fresh_layers"]) == {"fc6", "fc7", "fc8_cls"}
    out = trained.out_dir
    for name in ("classifier.safetensors", "config.json", "pr_curves.png", "training_curves.png", "train_log.jsonl"):
        assert (out / name).is_file(), name
    summary = json.loads(trained.scores_path.read_text())
    assert summary["map_sklearn"] == pytest.approx(after) and summary["provenance"]["protocol"]["key"] == stamp["key"]


@pytest.mark.slow
def test_cli_rescoring_and_verify(runs, cls_sample, tmp_path, conv_model_dir):
    _, _, trained = runs
    res = CliRunner().invoke(main, ["eval", "score-classification", "--voc", str(cls_sample.root), "--results",
                                    str(trained.results_dir)])
    assert res.exit_code == 0, res.output
    rescored = json.loads((trained.results_dir / "scores.json").read_text())
    assert rescored["map_sklearn"] == pytest.approx(trained.ap.map_sklearn, abs=1e-12)
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
    row = next(line for line in res.output.splitlines() if line.startswith("table3  classification"))
    assert "69.9" in row and f"{trained.ap.map_sklearn * 100:.1f}" in row
    assert "6 iterations (paper: 80000)" in res.output and "variant fc678 (paper: all)" in res.output


def test_cli_usage_errors(tmp_path, cls_sample, conv_model_dir):
    runner = CliRunner()
    res = runner.invoke(main, ["eval", "classification", "--help"])
    assert res.exit_code == 0 and "--variant" in res.output and "--transfer" in res.output
    res = runner.invoke(main, ["eval", "classification", "--model", str(conv_model_dir), "--voc", str(cls_sample.root),
                               "--set", "max_iter=5"])
    assert res.exit_code != 0 and "unknown key" in res.output and "max_iters" in res.output
    res = runner.invoke(main, ["eval", "classification", "--model", str(conv_model_dir), "--voc", str(cls_sample.root),
                               "--variant", "fc8", "--iters", "1", "--out", str(tmp_path / "o"), "--quiet"])
    assert res.exit_code != 0 and "--transfer conv+fc" in res.output and "Traceback" not in res.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    res = runner.invoke(main, ["eval", "classification", "--model", str(conv_model_dir), "--voc", str(cls_sample.root),
                               "--out", str(tmp_path / "full"), "--no-resume"])
    assert res.exit_code != 0 and "--overwrite" in res.output
    res = runner.invoke(main, ["eval", "score-classification", "--voc", str(cls_sample.root), "--results",
                               str(tmp_path)])
    assert res.exit_code != 0 and "comp1_cls_test_aeroplane.txt does not exist" in res.output
