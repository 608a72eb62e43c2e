"""The nonlinear classifier end to end at toy size: frozen layers stay put, the fresh ones move, the 10-crop test
and the centre crop are both scored, and `verify` marks the row unverified. (Eight iterations show the plumbing, not
learning: a CaffeNet head from Caffe's fillers needs hundreds of iterations to leave chance.)"""

from __future__ import annotations

import json

import torch

from eval.probes.config import NonlinearConfig
from eval.probes.nonlinear import run_nonlinear
from eval.verify import verify


def test_small_run(caffenet_dir, probe_data, tmp_path):
    from jigsawpp.io import load_state_dict_file

    cfg = NonlinearConfig(freeze_upto="conv3", image_size=72, crop_size=67, fc_units=256, batch_size=20, max_iter=8,
                          lr_policy="fixed", base_lr=0.01, snapshot_iters=8, display=4, test_batch_size=25)
    result = run_nonlinear(caffenet_dir, probe_data.root, tmp_path / "out", cfg, dataset="folder", workers=0,
                           progress=False)
    assert result.iterations == 8 and result.accuracy.count == 50 and result.center.count == 50
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [4, 8] and all(0 < r["loss"] < 10 for r in log)
    trained = load_state_dict_file(tmp_path / "out" / "model.safetensors")
    source = load_state_dict_file(caffenet_dir / "model.safetensors")
    for layer in ("conv1", "conv2", "conv3"):
        torch.testing.assert_close(trained[f"{layer}.weight"], source[f"{layer}.weight"], rtol=0, atol=0)
    assert not torch.equal(trained["conv4.weight"], source["conv4.weight"])  # re-initialised and trained
    assert float(trained["fc8.weight"].std()) != 0.0 and trained["fc8.weight"].shape == (10, 256)
    scores = json.loads(result.scores_path.read_text())
    assert scores["kind"] == "nonlinear_classifier" and set(scores["top1"]) == {"conv3"}
    assert scores["provenance"]["frozen_layers"] == ["conv1", "conv2", "conv3"]
    _, rows = verify(caffenet_dir, [tmp_path / "out"], method="Jigsaw++")
    assert rows[0].column == "conv3" and rows[0].paper is None  # a folder data set has no paper cell
    assert any(d.startswith("unverified protocol") for d in rows[0].deviations)
