"""Testing the heads: 10 cached views are scored by their mean softmax, one view by its logits; the image path
scores the centre view alone beside the average."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from eval.probes.cache import open_cache_split
from eval.probes.evaluate import evaluate_cached, evaluate_images
from eval.probes.heads import MultiHeadProbe


def _brute_top1(scores: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float(np.mean(scores.argmax(1) == labels))


def test_cached_ten_views_average_softmax(tmp_path):
    rng = np.random.default_rng(0)
    shapes = {"a": (3, 2, 2)}
    split = open_cache_split(tmp_path, "val_ten", key={"k": 1}, shapes=shapes, count=40, views=10, chunk_size=40)
    feats = rng.normal(size=(40, 10, 3, 2, 2)).astype(np.float16)
    labels = rng.integers(0, 5, 40)
    split.write_chunk(0, {"a": feats}, labels)
    torch.manual_seed(0)
    heads = MultiHeadProbe(shapes, 5)
    torch.nn.init.normal_(heads.head("a").cl.weight, std=1e-3)  # a fresh BatchNorm scales by 1/sqrt(eps)
    heads.eval()
    got = evaluate_cached(heads, split, batch_size=7)["a"]
    with torch.no_grad():
        logits = heads({"a": torch.from_numpy(feats.astype(np.float32).reshape(400, 3, 2, 2))})["a"].numpy()
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs = (probs / probs.sum(1, keepdims=True)).reshape(40, 10, 5).mean(1)
    assert got.count == 40 and got.top1 == _brute_top1(probs, labels)
    assert got.top1 != _brute_top1(logits.reshape(40, 10, 5).mean(1), labels)  # not the mean of the logits


class TenViews(Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        views = torch.zeros(10, 1, 1, 1)
        views[:, 0, 0, 0] = torch.arange(10) == (i % 10)  # the view that carries the class signal
        return views, i % 3, i


def test_image_path_scores_average_and_centre_view():
    weight = torch.tensor([[1.0], [0.0], [-1.0]]) * 20

    def forward(x):
        return {"fc8": x.flatten(1) @ weight.t()}

    acc, images = evaluate_images(forward, ["fc8"], TenViews(), batch_size=5, extra_view=4)
    assert images == 12
    # averaged: view i%10 pushes class 0, the other nine views tie -> class 0 wins for every image
    assert acc["fc8"].top1 == 100.0 * sum(i % 3 == 0 for i in range(12)) / 12
    # centre view alone (index 4): only image 4 has its signal there; ties elsewhere count as wrong (Caffe)
    assert acc["fc8@view4"].top1 == 0.0
