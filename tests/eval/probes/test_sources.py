"""Batch sources: ranks split each global batch, epochs reshuffle, and a restored state replays the same batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from eval.probes.cache import open_cache_split
from eval.probes.sources import CachedFeatureSource, EpochPlan, ImageBatchSource


def test_plan_shards_and_epochs():
    plans = [EpochPlan(23, 6, seed=1, rank=r, world=3) for r in range(3)]
    assert plans[0].steps_per_epoch == 3  # 23 // 6, the remainder dropped
    for epoch in (0, 1):
        seen = np.concatenate([np.concatenate([p.rows(epoch, s) for p in plans]) for s in range(3)])
        assert len(seen) == 18 and len(set(seen.tolist())) == 18
        whole = EpochPlan(23, 6, seed=1).rows(epoch, 1)
        assert sorted(np.concatenate([p.rows(epoch, 1) for p in plans]).tolist()) == sorted(whole.tolist())
    assert not np.array_equal(plans[0].order(0), plans[0].order(1))
    with pytest.raises(ValueError, match="not divisible"):
        EpochPlan(23, 6, seed=1, rank=0, world=4)


def _cache(tmp_path, views=3):
    cache = open_cache_split(tmp_path, "train", key={"k": 1}, shapes={"a": (2, 1, 1)}, count=10, views=views,
                             chunk_size=10)
    values = np.arange(10 * views * 2, dtype=np.float16).reshape(10, views, 2, 1, 1)
    cache.write_chunk(0, {"a": values}, np.arange(10) % 4)
    return cache, values


def test_cached_source_resumes_exactly(tmp_path):
    cache, values = _cache(tmp_path)
    source = CachedFeatureSource(cache, EpochPlan(10, 4, seed=5), ["a"])
    batches = [source.next_batch() for _ in range(3)]  # crosses into epoch 1 (2 steps per epoch)
    for b in batches:  # each row is one stored view of its image, label with it
        for row, label in zip(b.features["a"].numpy(), b.labels.numpy()):
            image = int(row[0, 0, 0]) // (3 * 2)
            assert label == image % 4 and any(np.array_equal(row, values[image, v]) for v in range(3))
    again = CachedFeatureSource(cache, EpochPlan(10, 4, seed=5), ["a"])
    again.load_state_dict({"epoch": 0, "step": 1})
    for b, want in zip([again.next_batch() for _ in range(2)], batches[1:]):
        torch.testing.assert_close(b.features["a"], want.features["a"])
        torch.testing.assert_close(b.labels, want.labels)
    assert again.state_dict() == {"epoch": 1, "step": 1}


class Keyed(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, key):
        epoch, index = key
        rng = np.random.default_rng((7, epoch, index))
        return torch.tensor([index, epoch, rng.integers(1000)], dtype=torch.float32), index % 2


@pytest.mark.parametrize("workers", [0, 2])
def test_image_source_resumes_exactly(workers):
    source = ImageBatchSource(Keyed(), EpochPlan(10, 4, seed=3), workers=workers)
    batches = [source.next_batch() for _ in range(4)]
    state = {"epoch": 1, "step": 0}
    again = ImageBatchSource(Keyed(), EpochPlan(10, 4, seed=3), workers=0)
    again.load_state_dict(state)
    for b, want in zip([again.next_batch() for _ in range(2)], batches[2:]):
        torch.testing.assert_close(b.images, want.images)
    assert batches[2].images[:, 1].eq(1).all()  # the epoch travels with each index
