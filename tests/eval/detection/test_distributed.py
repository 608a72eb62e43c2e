"""Several processes through torchrun (gloo on CPU): the mini-batch's images are split over the ranks, checkpoints
hold every rank's RNG state, and a second launch resumes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_two_processes_train_checkpoint_and_resume(sample_voc, conv_model_dir, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "jigsawpp.cli",
               "eval", "detection", "--model", str(conv_model_dir), "--voc", str(sample_voc.root), "--out", str(out),
               "--device", "cpu", "--proposal-cache", str(tmp_path / "cache"), "--workers", "1", "--quiet",
               "--set", "train_scales=[160]", "--set", "test_scales=[160]", "--set", "train_max_size=256",
               "--set", "test_max_size=256", "--set", "rois_per_batch=16", "--set", "snapshot_iters=2"]
    first = subprocess.run(command + ["--iters", "2"], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoint = out / "checkpoints" / "iter_0000002"
    assert json.loads((checkpoint / "state.json").read_text())["world_size"] == 2
    assert (checkpoint / "rng_rank0.safetensors").is_file() and (checkpoint / "rng_rank1.safetensors").is_file()
    second = subprocess.run(command + ["--iters", "4"], capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [2, 4]
    assert json.loads((out / "scores.json").read_text())["provenance"]["fast_rcnn"]["world_size"] == 2
    assert "mAP" in second.stdout
