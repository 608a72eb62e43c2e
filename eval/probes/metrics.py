"""Top-k accuracy for the probes, and multi-crop averaging.

Caffe's ``Accuracy`` layer (BVLC ``src/caffe/layers/accuracy_layer.cpp``) counts a sample correct at top-k when
fewer than k other classes score at least as high as the true class (``num_better_predictions`` counts ``>=``);
ties therefore count against the sample (an all-zero classifier scores 0). `TopKAccuracy` does the same.
Multi-crop testing averages the softmax probabilities of the crops (Krizhevsky et al., NIPS 2012, Sec. 4.1:
"averaging the predictions made by the network's softmax layer on the ten patches").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Accuracy", "TopKAccuracy", "average_crops"]


@dataclass(frozen=True)
class Accuracy:
    """Top-1 / top-5 accuracy in percent over `count` samples."""

    top1: float
    top5: float
    count: int


class TopKAccuracy:
    """Accumulates correct counts; `compute()` returns percentages. `counts()`/`load_counts()` let ranks sum."""

    def __init__(self, ks: Sequence[int] = (1, 5)) -> None:
        self.ks = tuple(ks)
        self.correct = [0] * len(self.ks)
        self.count = 0

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        """scores (N, K) (logits or probabilities), labels (N,) int in [0, K)."""
        if scores.dim() != 2 or labels.shape != scores.shape[:1]:
            raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} do not match.")
        true = scores.gather(1, labels.view(-1, 1).long())
        higher = (scores >= true).sum(dim=1) - 1  # other classes at least as high as the true one
        for i, k in enumerate(self.ks):
            self.correct[i] += int((higher < k).sum())
        self.count += int(labels.numel())

    def counts(self) -> list[int]:
        return [*self.correct, self.count]

    def load_counts(self, counts: Sequence[int]) -> None:
        *self.correct, self.count = (int(c) for c in counts)

    def compute(self) -> Accuracy:
        if self.count == 0:
            raise ValueError("no samples were scored.")
        pct = [100.0 * c / self.count for c in self.correct]
        by_k = dict(zip(self.ks, pct))
        return Accuracy(top1=by_k.get(1, float("nan")), top5=by_k.get(5, float("nan")), count=self.count)


def average_crops(logits: torch.Tensor, views: int) -> torch.Tensor:
    """(N * views, K) logits, crops of an image consecutive -> (N, K) mean softmax probability."""
    if logits.shape[0] % views:
        raise ValueError(f"{logits.shape[0]} rows are not a multiple of {views} views.")
    probs = torch.softmax(logits.float(), dim=1)
    return probs.view(-1, views, probs.shape[1]).mean(dim=1)
