"""The feature cache: written once, resumed after a crash at the first unwritten chunk, refused when stale."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from eval.probes.cache import StaleCacheError, open_cache_split
from eval.probes.extract import extract_to_cache
from eval.probes.taps import ProbeTaps
from jigsawpp.models import AlexNetConfig, CaffeAlexNet

SIZE = 67  # small inputs keep the trunk cheap; taps are resized to the protocol sizes anyway


class Noise(Dataset):
    """(views, label, index) with seeded random images; `fail_at` raises to simulate a killed run."""

    def __init__(self, n: int, views: int = 2, fail_at: int | None = None) -> None:
        self.n, self.views, self.fail_at = n, views, fail_at

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if self.fail_at is not None and i >= self.fail_at:
            raise RuntimeError("killed")
        g = torch.Generator().manual_seed(i)
        return torch.randn(self.views, 3, SIZE, SIZE, generator=g) * 50, i % 3, i


@pytest.fixture(scope="module")
def taps():
    torch.manual_seed(0)
    trunk = CaffeAlexNet(AlexNetConfig(fc6=None, fc7=None, num_classes=None)).eval()
    return ProbeTaps(trunk, taps=("conv1", "conv5"), input_size=SIZE)


def _open(path, taps, key=None, **kw):
    key = key or {"model_sha256": "abc", "transform": {"crop": SIZE}}
    return open_cache_split(path, "train", key=key, shapes=taps.shapes, count=10, views=2, chunk_size=4, **kw)


def test_extract_resume_and_reuse(tmp_path, taps):
    cache = _open(tmp_path / "c", taps)
    with pytest.raises(RuntimeError, match="killed"):
        extract_to_cache(taps, Noise(10, fail_at=5), cache, batch_size=3, progress=False)
    assert cache.missing_chunks() == [1, 2]  # chunk 0 (rows 0..3) was flushed and marked before the crash
    cache = _open(tmp_path / "c", taps)
    report = extract_to_cache(taps, Noise(10), cache, batch_size=3, progress=False)
    assert (report.images, report.chunks_written, report.reused) == (6, 2, False)
    cache.mark_complete()
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["splits"]["train"]["complete"]
    again = extract_to_cache(taps, Noise(10), _open(tmp_path / "c", taps), progress=False)
    assert (again.images, again.reused) == (0, True)
    # the resumed cache equals an extraction in one go, and the trunk's own output
    fresh = _open(tmp_path / "d", taps)
    extract_to_cache(taps, Noise(10), fresh, batch_size=10, progress=False)
    for tap in taps.shapes:
        np.testing.assert_array_equal(np.asarray(cache.features(tap)), np.asarray(fresh.features(tap)))
    x, _, _ = Noise(10)[7]
    direct = taps(x)["conv5"].numpy().astype(np.float16)
    np.testing.assert_array_equal(np.asarray(cache.features("conv5")[7]), direct)
    np.testing.assert_array_equal(np.asarray(cache.labels()), np.arange(10) % 3)


def test_stale_cache_is_refused(tmp_path, taps):
    _open(tmp_path / "c", taps)
    with pytest.raises(StaleCacheError, match=r"model_sha256: abc cached, xyz now"):
        _open(tmp_path / "c", taps, key={"model_sha256": "xyz", "transform": {"crop": SIZE}})
    with pytest.raises(StaleCacheError, match=r"transform.crop"):
        _open(tmp_path / "c", taps, key={"model_sha256": "abc", "transform": {"crop": 227}})
    with pytest.raises(StaleCacheError, match="count"):
        open_cache_split(tmp_path / "c", "train", key={"model_sha256": "abc", "transform": {"crop": SIZE}},
                         shapes=taps.shapes, count=11, views=2, chunk_size=4)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("not a cache")
    with pytest.raises(ValueError, match="not a feature cache"):
        _open(tmp_path / "other", taps)


def test_cache_files_are_plain_npy(tmp_path, taps):
    """Readable without this code and without pickle."""
    cache = _open(tmp_path / "c", taps)
    extract_to_cache(taps, Noise(10), cache, progress=False)
    array = np.load(tmp_path / "c" / "train" / "conv1.npy", allow_pickle=False)
    assert array.dtype == np.float16 and array.shape == (10, 2, 96, 10, 10)
