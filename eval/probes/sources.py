"""Training from a feature cache: a dataset over a cached split for the engine's `DatasetSource`, and the module that
splits its flat rows back into taps.

``CachedFeatures[i]`` is ``(features (D,), label, i)``: the taps' stored (C, s, s) arrays of image i, flattened and
concatenated in tap order, as float32. Each image has V stored views (random crop+mirror draws made at extraction);
the view used in pass e is drawn from ``numpy.random.default_rng((seed, e, i, 1))``, so a resumed run reads the
same rows as an uninterrupted one. Memory maps are opened lazily in each process (DataLoader workers included), never
pickled.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from eval.probes.cache import CacheSplit

__all__ = ["CachedFeatures", "SplitFeatures", "feature_layout"]


def feature_layout(shapes: dict[str, tuple[int, ...]], taps: Sequence[str]) -> list[tuple[str, tuple[int, ...],
                                                                                             int, int]]:
    """[(tap, shape, start, stop)] of each tap in a flat row."""
    out, start = [], 0
    for tap in taps:
        size = int(np.prod(shapes[tap]))
        out.append((tap, tuple(shapes[tap]), start, start + size))
        start += size
    return out


class CachedFeatures(Dataset):
    """A complete cached split as ``(flat float32 features, label, index)`` items (see the module docstring)."""

    def __init__(self, cache: CacheSplit, taps: Sequence[str], *, seed: int) -> None:
        if not cache.complete:
            raise ValueError(f"{cache.split_dir} is incomplete; extract it first.")
        self.cache, self.taps, self.seed = cache, tuple(taps), int(seed)
        self.layout = feature_layout(cache.shapes, self.taps)
        self.dim = self.layout[-1][3]
        self.epoch = 0
        self._arrays: dict[str, np.memmap] | None = None
        self._labels: np.ndarray | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.cache.count

    def __getstate__(self) -> dict:  # worker processes reopen the maps themselves
        state = dict(self.__dict__)
        state["_arrays"], state["_labels"] = None, None
        return state

    def _open(self) -> tuple[dict[str, np.memmap], np.ndarray]:
        if self._arrays is None or self._labels is None:
            self._arrays = {t: self.cache.features(t) for t in self.taps}
            self._labels = np.asarray(self.cache.labels())
        return self._arrays, self._labels

    def view_of(self, index: int) -> int:
        """The stored view image `index` contributes in the current pass."""
        if self.cache.views == 1:
            return 0
        return int(np.random.default_rng((self.seed, self.epoch, int(index), 1)).integers(self.cache.views))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        arrays, labels = self._open()
        view = self.view_of(index)
        row = np.empty(self.dim, np.float32)
        for tap, _, start, stop in self.layout:
            row[start:stop] = np.asarray(arrays[tap][index, view], dtype=np.float32).reshape(-1)
        return torch.from_numpy(row), int(labels[index]), int(index)


class SplitFeatures(nn.Module):
    """Flat cached rows (B, D) -> `heads`' logits {tap: (B, classes)}, reshaping each tap's slice to (C, s, s)."""

    def __init__(self, heads: nn.Module, layout: list[tuple[str, tuple[int, ...], int, int]]) -> None:
        super().__init__()
        self.heads = heads
        self.layout = layout

    def forward(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        n = rows.shape[0]
        return self.heads({tap: rows[:, a:b].reshape(n, *shape) for tap, shape, a, b in self.layout})
