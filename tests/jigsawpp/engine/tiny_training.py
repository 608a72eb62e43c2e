"""A tiny image classifier trained with `train_loop` on real photos; imported by test_loop.py and also run as a
script (``python tiny_training.py DATA OUT KILL_AT``) that SIGKILLs itself after logging iteration KILL_AT."""

from __future__ import annotations

import os
import signal
import sys

import torch
import torch.nn.functional as F
from torch import nn

from jigsawpp.data import ImageDataset, caffe_transform, image_folder
from jigsawpp.engine.loop import DatasetSource, PrefetchSource, train_loop
from jigsawpp.engine.solver import CaffeSGD, LRPolicy, param_specs

MEAN = (104.0, 117.0, 123.0)
CONFIG = {"base_lr": 0.01, "batch_size": 2, "crop": 16, "max_iters": 6}


class TinyNet(nn.Module):
    """conv1 3x3 -> ReLU -> max pool 2 -> dropout 0.5 -> fc: (N, 3, 16, 16) -> (N, classes)."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 7 * 7, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.dropout(F.max_pool2d(F.relu(self.conv1(x / 64.0)), 2), 0.5, self.training)
        return self.fc(x.flatten(1))


def classification_loss(net: nn.Module, batch) -> dict[str, torch.Tensor]:
    scores = net(batch.images)
    return {"loss": F.cross_entropy(scores, batch.labels),
            "accuracy": (scores.argmax(1) == batch.labels).float().mean()}


def train(data_dir, out_dir, *, stop_after=None, on_log=None, max_iters=6):
    listing = image_folder(data_dir)
    dataset = ImageDataset(listing.samples, caffe_transform(mean_bgr=MEAN, resize=20, crop=16, train=True), seed=0)
    torch.manual_seed(0)
    model = TinyNet(len(listing.classes))
    optimizer = CaffeSGD(param_specs(model), momentum=0.9, weight_decay=0.0005)
    source = PrefetchSource(DatasetSource(dataset, batch_size=2, seed=1))
    result = train_loop(model=model, optimizer=optimizer, lr=LRPolicy("step", 0.01, gamma=0.5, stepsize=2),
                        source=source, loss_fn=classification_loss, out_dir=out_dir, max_iters=max_iters,
                        snapshot_iters=3, config={**CONFIG, "max_iters": max_iters}, fingerprint="five photos",
                        device="cpu", progress=False, display=1, seed=3, stop_after=stop_after, on_log=on_log)
    return model, result


if __name__ == "__main__":
    data, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def kill(record: dict) -> None:
        if record["iteration"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    train(data, out, on_log=kill)
