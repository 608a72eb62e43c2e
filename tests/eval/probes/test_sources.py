"""Training rows from a feature cache: flat layout, the view drawn per pass, and worker processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from eval.probes.cache import open_cache_split
from eval.probes.heads import MultiHeadProbe
from eval.probes.sources import CachedFeatures, SplitFeatures


@pytest.fixture()
def cache(tmp_path):
    shapes = {"a": (2, 1, 1), "b": (1, 2, 2)}
    split = open_cache_split(tmp_path, "train", key={"k": 1}, shapes=shapes, count=6, views=3, chunk_size=6)
    rng = np.random.default_rng(0)
    values = {t: rng.normal(size=(6, 3, *s)).astype(np.float16) for t, s in shapes.items()}
    split.write_chunk(0, values, np.arange(6) % 4)
    return split, values


def test_rows_are_one_stored_view(cache):
    split, values = cache
    rows = CachedFeatures(split, ["b", "a"], seed=2)
    assert rows.dim == 6 and [x[0] for x in rows.layout] == ["b", "a"]
    chosen = {}
    for epoch in range(4):
        rows.set_epoch(epoch)
        for i in range(6):
            row, label, index = rows[i]
            v = rows.view_of(i)
            want = np.concatenate([values["b"][i, v].reshape(-1), values["a"][i, v].reshape(-1)]).astype(np.float32)
            np.testing.assert_array_equal(row.numpy(), want)
            assert (label, index) == (i % 4, i)
            chosen.setdefault(i, set()).add(v)
    assert any(len(v) > 1 for v in chosen.values())  # views change between passes
    rows.set_epoch(1)
    again = CachedFeatures(split, ["b", "a"], seed=2)
    again.set_epoch(1)
    assert [rows.view_of(i) for i in range(6)] == [again.view_of(i) for i in range(6)]


def test_workers_reopen_the_maps(cache):
    split, _ = cache
    rows = CachedFeatures(split, ["a", "b"], seed=0)
    direct = torch.stack([rows[i][0] for i in range(6)])
    loaded = torch.cat([x for x, _, _ in DataLoader(rows, batch_size=3, num_workers=1)])
    torch.testing.assert_close(loaded, direct)


def test_split_features_feeds_heads(cache):
    split, _ = cache
    rows = CachedFeatures(split, ["a", "b"], seed=0)
    heads = MultiHeadProbe(split.shapes, 4)
    batch = torch.stack([rows[i][0] for i in range(6)])
    logits = SplitFeatures(heads, rows.layout)(batch)
    assert set(logits) == {"a", "b"} and logits["b"].shape == (6, 4)
