"""Probe heads against float64 loop ports of Caffe (BatchNorm TRAIN/TEST, Accuracy), and multi-crop averaging."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import batch_norm as caffe_bn_test

from eval.probes.heads import CaffeBatchNorm, MultiHeadProbe, probe_loss
from eval.probes.metrics import TopKAccuracy, average_crops


def caffe_bn_train_step(x: np.ndarray, blobs: list[np.ndarray], maf: float, eps: float):
    """batch_norm_layer.cpp Forward_cpu with use_global_stats false, written as loops over channels in float64."""
    n, c = x.shape[:2]
    spatial = int(np.prod(x.shape[2:])) if x.ndim > 2 else 1
    m = n * spatial
    y = np.empty_like(x, dtype=np.float64)
    mean_sum, var_sum, scale = (b.copy() for b in blobs)
    scale = scale * maf + 1.0
    for ch in range(c):
        values = x[:, ch].astype(np.float64).ravel()
        mu = values.sum() / m
        var = ((values - mu) ** 2).sum() / m
        y[:, ch] = (x[:, ch] - mu) / np.sqrt(var + eps)
        mean_sum[ch] = mu + maf * mean_sum[ch]
        var_sum[ch] = var * (m / (m - 1)) + maf * var_sum[ch]
    return y, [mean_sum, var_sum, scale]


@pytest.mark.parametrize("shape", [(6, 3, 4, 4), (5, 7)])
def test_caffe_batchnorm_train_and_test(shape):
    rng = np.random.default_rng(0)
    bn = CaffeBatchNorm(shape[1], moving_average_fraction=0.9, eps=1e-5).train()
    blobs = [np.zeros(shape[1]), np.zeros(shape[1]), np.zeros(1)]
    for step in range(4):
        x = rng.normal(step, 1.0 + step, shape).astype(np.float32)
        got = bn(torch.from_numpy(x))
        want, blobs = caffe_bn_train_step(x, blobs, 0.9, 1e-5)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(bn.mean_sum.numpy(), blobs[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(bn.var_sum.numpy(), blobs[1], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(bn.scale_factor.numpy(), blobs[2], rtol=1e-6)
    bn.eval()
    x = rng.normal(0, 2, shape).astype(np.float32)
    want = caffe_bn_test(x, mean_sum=blobs[0], var_sum=blobs[1], scale_factor=float(blobs[2][0]), eps=1e-5)
    np.testing.assert_allclose(bn(torch.from_numpy(x)).numpy(), want, rtol=1e-4, atol=1e-4)


def test_fresh_batchnorm_in_test_mode_uses_zero_stats():
    """scale_factor 0 -> mean 0, var 0: y = x / sqrt(eps), as Caffe."""
    bn = CaffeBatchNorm(2).eval()
    x = torch.tensor([[1.0, -2.0]])
    torch.testing.assert_close(bn(x), x / np.sqrt(1e-5))


def test_multihead_starts_at_zero_and_sums_losses():
    heads = MultiHeadProbe({"conv1": (2, 3, 3), "conv5": (4, 2, 2)}, 5)
    feats = {"conv1": torch.randn(8, 2, 3, 3), "conv5": torch.randn(8, 4, 2, 2)}
    logits = heads(feats)
    assert all(float(z.detach().abs().max()) == 0.0 for z in logits.values())  # Caffe's default constant-0 filler
    labels = torch.arange(8) % 5
    losses = probe_loss(logits, labels)
    torch.testing.assert_close(losses["loss_conv1"], torch.tensor(np.log(5.0), dtype=torch.float32))
    torch.testing.assert_close(losses["loss"], losses["loss_conv1"] + losses["loss_conv5"])
    losses["loss"].backward()
    assert heads.head("conv1").cl.weight.grad is not None
    assert all(not b.requires_grad for b in heads.buffers())


def _caffe_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """accuracy_layer.cpp: count classes (the true one included) scoring >= the true class, minus one."""
    correct = 0
    for row, label in zip(scores, labels):
        better = -1
        for value in row:
            better += value >= row[label]
        correct += better < k
    return 100.0 * correct / len(labels)


def test_topk_matches_caffe_accuracy_with_ties():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, (50, 7)).astype(np.float32)  # many ties
    labels = rng.integers(0, 7, 50)
    acc = TopKAccuracy((1, 5))
    acc.update(torch.from_numpy(scores[:20]), torch.from_numpy(labels[:20]))
    acc.update(torch.from_numpy(scores[20:]), torch.from_numpy(labels[20:]))
    result = acc.compute()
    assert result.count == 50
    assert result.top1 == pytest.approx(_caffe_accuracy(scores, labels, 1))
    assert result.top5 == pytest.approx(_caffe_accuracy(scores, labels, 5))
    zero = TopKAccuracy((1,))
    zero.update(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0]))
    assert zero.compute().top1 == 0.0


def test_average_crops_is_mean_softmax():
    logits = torch.randn(3 * 10, 4)
    probs = average_crops(logits, 10)
    want = torch.softmax(logits, 1).numpy().reshape(3, 10, 4).mean(1)
    np.testing.assert_allclose(probs.numpy(), want, rtol=1e-6)
