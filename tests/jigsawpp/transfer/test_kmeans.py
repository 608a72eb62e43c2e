"""k-means of a feature folder against independent references: faiss called directly (same seed), a float64 numpy
Lloyd step over every point, and faiss's own PCAMatrix for the PCA-whitening option. Data: scikit-learn's real
handwritten digits (1,797 x 64 pixel values), stored as float16 feature rows."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
from sklearn.datasets import load_digits

from jigsawpp.transfer.kmeans import KMeansConfig, cluster, load_centroids
from jigsawpp.transfer.store import FeatureStoreError, ImageList, write_feature_array


def _store(tmp_path: Path, rows: np.ndarray, name: str = "feats"):
    images = ImageList(tmp_path, tuple(f"img{i:05d}.png" for i in range(len(rows))))
    return write_feature_array(tmp_path / name, rows, images, identity={"kind": "test", "what": "digit pixels"})


@pytest.fixture(scope="module")
def digit_rows() -> np.ndarray:
    return load_digits().data.astype(np.float32)  # (1797, 64), values 0..16


@pytest.mark.parametrize("in_memory", ["yes", "no"])
def test_equals_faiss_called_directly(tmp_path, digit_rows, in_memory):
    store = _store(tmp_path, digit_rows)
    result = cluster(store, tmp_path / "c", config=KMeansConfig(k=10, niter=8, seed=5, verbose=False,
                                                                in_memory=in_memory))
    ours = load_centroids(tmp_path / "c")
    data = np.asarray(store.array, dtype=np.float32)  # the float16 rows as faiss would get them in float32
    direct = faiss.Kmeans(data.shape[1], 10, niter=8, seed=5, max_points_per_centroid=len(data))
    direct.train(data)
    np.testing.assert_allclose(ours.centroids, direct.centroids, rtol=0, atol=1e-5)
    np.testing.assert_allclose(result.objective, direct.obj, rtol=1e-6)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["points_used"] == len(data) and manifest["every_point"] is True
    assert [it["iteration"] for it in manifest["iterations"]] == list(range(1, 9))
    assert manifest["identity"]["seed"] == 5 and "split_clusters" in manifest["empty_clusters"]
    assert (tmp_path / "c" / "objective.png").stat().st_size > 1000


def test_every_point_is_used_beyond_256_per_centroid(tmp_path, digit_rows):
    """k = 4 and N = 1,100 > 256 k: faiss's default would cluster a 1,024-point sample. One more iteration must be
    exactly one Lloyd step over all N points (float64 numpy), which a subsample cannot reproduce."""
    rows = digit_rows[:1100]
    store = _store(tmp_path, rows)
    config = dict(k=4, seed=3, verbose=False)
    cluster(store, tmp_path / "c3", config=KMeansConfig(niter=3, **config))
    cluster(store, tmp_path / "c4", config=KMeansConfig(niter=4, **config))
    before, after = load_centroids(tmp_path / "c3").centroids, load_centroids(tmp_path / "c4").centroids
    x = np.asarray(store.array, dtype=np.float64)
    d2 = ((x[:, None, :] - before[None].astype(np.float64)) ** 2).sum(-1)
    assign = d2.argmin(1)
    assert np.bincount(assign, minlength=4).min() > 0
    lloyd = np.stack([x[assign == c].mean(0) for c in range(4)])
    np.testing.assert_allclose(after, lloyd, rtol=0, atol=1e-4)
    assert json.loads((tmp_path / "c4" / "manifest.json").read_text())["points_used"] == 1100
    default = faiss.Kmeans(64, 4, niter=4, seed=3)  # max_points_per_centroid 256: a 1,024-point sample
    default.train(np.asarray(store.array, dtype=np.float32))
    assert np.abs(default.centroids - lloyd).max() > 1e-2  # the check above can tell the two apart


def test_user_cap_subsamples_and_is_recorded(tmp_path, digit_rows):
    store = _store(tmp_path, digit_rows[:600])
    result = cluster(store, tmp_path / "c", config=KMeansConfig(k=4, niter=2, max_points_per_centroid=100,
                                                                verbose=False))
    assert result.points_used == 400
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["every_point"] is False


@pytest.mark.parametrize("in_memory", ["yes", "no"])
def test_l2_option_equals_faiss_on_normalised_rows(tmp_path, digit_rows, in_memory):
    """In memory: float32 unit rows; streamed: unit rows stored as float16 (the manifest says which)."""
    store = _store(tmp_path, digit_rows)
    cluster(store, tmp_path / "c", config=KMeansConfig(k=6, niter=5, seed=2, normalize="l2", verbose=False,
                                                       in_memory=in_memory))
    x = np.asarray(store.array, dtype=np.float64)
    unit = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    if in_memory == "no":
        unit = unit.astype(np.float16).astype(np.float32)
    direct = faiss.Kmeans(64, 6, niter=5, seed=2, max_points_per_centroid=len(x))
    direct.train(unit)
    np.testing.assert_allclose(load_centroids(tmp_path / "c").centroids, direct.centroids, rtol=0, atol=1e-5)


def test_pca_whitening_matches_faiss_pcamatrix(tmp_path, digit_rows):
    store = _store(tmp_path, digit_rows)
    cluster(store, tmp_path / "c", config=KMeansConfig(k=5, niter=3, normalize="pca", pca_dim=12, verbose=False))
    ours = load_centroids(tmp_path / "c").preprocess.apply(np.asarray(store.array, dtype=np.float32))
    data = np.asarray(store.array, dtype=np.float32)
    pca = faiss.PCAMatrix(64, 12, -0.5)  # d_in, d_out, eigen_power (DeepCluster's whitening)
    pca.train(data)
    ref = pca.apply(data)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    signs = np.sign((ours * ref).sum(0))  # eigenvectors are defined up to sign
    assert np.all(signs != 0)
    np.testing.assert_allclose(ours, ref * signs, rtol=0, atol=2e-3)
    record = json.loads((tmp_path / "c" / "manifest.json").read_text())["normalization"]
    assert record["kind"] == "pca" and record["dim"] == 12 and record["fitted_on_rows"] == len(data)


def test_skip_refuse_and_overwrite(tmp_path, digit_rows):
    store = _store(tmp_path, digit_rows[:300])
    config = KMeansConfig(k=3, niter=2, verbose=False)
    assert not cluster(store, tmp_path / "c", config=config).skipped
    assert cluster(store, tmp_path / "c", config=KMeansConfig(k=3, niter=2, gpus=0, verbose=False)).skipped
    with pytest.raises(FeatureStoreError, match=r"k: 3 in the folder, 4 now"):
        cluster(store, tmp_path / "c", config=KMeansConfig(k=4, niter=2, verbose=False))
    redone = cluster(store, tmp_path / "c", config=KMeansConfig(k=4, niter=2, verbose=False), overwrite=True)
    assert not redone.skipped and load_centroids(tmp_path / "c").k == 4
    with pytest.raises(ValueError, match="unknown k-means option"):
        KMeansConfig.from_overrides({"kk": 3})
