"""Resumable batch sources for the probe training loops (the engine's `BatchSource` protocol: `next_batch()`,
`state_dict()`, `load_state_dict()`).

Sampling is by epochs: epoch e visits the training set in the order `randperm(n)` drawn from a generator seeded
with (seed, e), cut into global batches of `batch_size`; under torchrun rank r of w takes rows r::w of each global
batch (so the effective batch, summed over ranks, is `batch_size`). The last incomplete global batch of an epoch
is dropped, as ``drop_last`` does. Every random choice of a sample (its cached view, or its crop and mirror) is
seeded by (seed, epoch, index), so a resumed run draws exactly the batches an uninterrupted one would have,
whatever the number of data-loading workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from eval.probes.cache import CacheSplit

__all__ = ["CachedFeatureSource", "EpochPlan", "FeatureBatch", "ImageBatch", "ImageBatchSource", "sample_seed"]


def sample_seed(seed: int, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of one sample's random choices in one epoch (`stream` separates unrelated choices)."""
    return np.random.default_rng([seed, epoch, index, stream])


@dataclass(frozen=True)
class EpochPlan:
    """Which dataset rows each rank reads at each step."""

    count: int
    batch_size: int      # global, over all ranks
    seed: int
    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if self.batch_size % self.world:
            raise ValueError(f"batch size {self.batch_size} is not divisible by the {self.world} processes; choose "
                             "a multiple of the number of GPUs.")
        if self.count < self.batch_size:
            raise ValueError(f"{self.count} training samples are fewer than one batch of {self.batch_size}.")

    @property
    def steps_per_epoch(self) -> int:
        return self.count // self.batch_size

    def order(self, epoch: int) -> np.ndarray:
        """The visiting order of `epoch` (computed once per epoch and kept)."""
        cached = self.__dict__.get("_order")
        if cached is None or cached[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            cached = (epoch, torch.randperm(self.count, generator=g).numpy())
            object.__setattr__(self, "_order", cached)
        return cached[1]

    def rows(self, epoch: int, step: int) -> np.ndarray:
        """This rank's dataset indices at `step` of `epoch`."""
        batch = self.order(epoch)[step * self.batch_size:(step + 1) * self.batch_size]
        return batch[self.rank::self.world]


@dataclass
class FeatureBatch:
    """Cached features {tap: (B, C, s, s) float32}, labels (B,)."""

    features: dict[str, torch.Tensor]
    labels: torch.Tensor

    def to(self, device: torch.device) -> FeatureBatch:
        return FeatureBatch({k: v.to(device, non_blocking=True) for k, v in self.features.items()},
                            self.labels.to(device, non_blocking=True))


@dataclass
class ImageBatch:
    """Images (B, 3, H, W) float32 (BGR minus mean), labels (B,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device) -> ImageBatch:
        return ImageBatch(self.images.to(device, non_blocking=True), self.labels.to(device, non_blocking=True))


class CachedFeatureSource:
    """Batches read from a `CacheSplit`: each sample contributes one of its V stored views, drawn per epoch."""

    def __init__(self, cache: CacheSplit, plan: EpochPlan, taps: Sequence[str]) -> None:
        if not cache.complete:
            raise ValueError(f"{cache.split_dir} is incomplete; extract it first.")
        self.cache, self.plan, self.taps = cache, plan, tuple(taps)
        self.arrays = {t: cache.features(t) for t in self.taps}
        self.labels = np.asarray(cache.labels())
        self.epoch, self.step = 0, 0

    def next_batch(self) -> FeatureBatch:
        rows = self.plan.rows(self.epoch, self.step)
        views = np.array([sample_seed(self.plan.seed, self.epoch, int(i), 1).integers(self.cache.views) for i in rows])
        order = np.argsort(rows, kind="stable")  # read the memmap in file order, then restore the batch order
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        features = {}
        for tap, array in self.arrays.items():
            block = np.asarray(array[rows[order]])  # (B, V, C, s, s) float16
            picked = block[np.arange(len(rows)), views[order]][inverse]
            features[tap] = torch.from_numpy(picked.astype(np.float32))
        labels = torch.from_numpy(self.labels[rows].astype(np.int64))
        self._advance()
        return FeatureBatch(features, labels)

    def _advance(self) -> None:
        self.step += 1
        if self.step == self.plan.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch, self.step = int(state["epoch"]), int(state["step"])


class _PlanSampler(Sampler[list[tuple[int, int]]]):
    """Batches of (epoch, index) keys from (epoch, step) onwards, endlessly."""

    def __init__(self, plan: EpochPlan, epoch: int, step: int) -> None:
        self.plan, self.epoch, self.step = plan, epoch, step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, step = self.epoch, self.step
        while True:
            yield [(epoch, int(i)) for i in self.plan.rows(epoch, step)]
            step += 1
            if step == self.plan.steps_per_epoch:
                epoch, step = epoch + 1, 0


class ImageBatchSource:
    """Batches of augmented images through a DataLoader with `workers` processes.

    `dataset[(epoch, index)]` must return ``(image (3, H, W) float tensor, label)`` with its random crop and mirror
    seeded by (seed, epoch, index) (`eval.probes.data.EpochKeyed`). The state counts the batches handed out, not
    the ones prefetched.
    """

    def __init__(self, dataset: Dataset, plan: EpochPlan, *, workers: int = 4, pin_memory: bool = False) -> None:
        self.dataset, self.plan, self.workers, self.pin_memory = dataset, plan, workers, pin_memory
        self.epoch, self.step = 0, 0
        self._iterator: Iterator | None = None

    def _start(self) -> None:
        loader = DataLoader(self.dataset, batch_sampler=_PlanSampler(self.plan, self.epoch, self.step),
                            num_workers=self.workers, pin_memory=self.pin_memory,
                            persistent_workers=False, prefetch_factor=4 if self.workers else None)
        self._iterator = iter(loader)

    def next_batch(self) -> ImageBatch:
        if self._iterator is None:
            self._start()
        images, labels = next(self._iterator)  # type: ignore[arg-type]
        self.step += 1
        if self.step == self.plan.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        return ImageBatch(images, labels)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self._iterator = None  # restart the workers at the restored position

    def close(self) -> None:
        self._iterator = None
