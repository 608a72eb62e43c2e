"""Pseudo-labels (nearest centroid, checked against scikit-learn in float64; files readable as the release zips'
label lists) and the HOG bag-of-words features of the CC+HOG baseline (histograms checked against scikit-learn's
nearest-neighbour search). Images: the digits ImageFolder of conftest.py."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from sklearn.metrics import pairwise_distances_argmin

from jigsawpp.label_files import load_pseudo_labels, parse_label_file
from jigsawpp.transfer.features import FeatureConfig
from jigsawpp.transfer.hog import DenseHog, HogConfig, bow_histogram, hog_features
from jigsawpp.transfer.kmeans import KMeansConfig, cluster, load_centroids
from jigsawpp.transfer.labels import label_features
from jigsawpp.transfer.store import FeatureStoreError, ImageList, images_from_data, open_features, write_feature_array


def _pixel_rows(images: ImageList) -> np.ndarray:
    """8 x 8 grey thumbnails of the images (a real, cheap feature)."""
    return np.stack([cv2.resize(cv2.imread(str(images.root / n), cv2.IMREAD_GRAYSCALE), (8, 8),
                                interpolation=cv2.INTER_AREA).reshape(-1) for n in images.names]).astype(np.float32)


@pytest.mark.parametrize("normalize", ["none", "pca"])
def test_labels_are_nearest_centroids_in_release_format(tmp_path, digits_folder, normalize):
    images = images_from_data(digits_folder)
    identity = {"kind": "test", "what": "8x8 thumbnails"}
    store = write_feature_array(tmp_path / "train", _pixel_rows(images), images, identity=identity)
    cluster(store, tmp_path / "c", config=KMeansConfig(k=10, niter=10, normalize=normalize, pca_dim=16,
                                                       verbose=False))
    centroids = load_centroids(tmp_path / "c")
    result = label_features(store, centroids, tmp_path / "labels", split="train")
    rows = centroids.preprocess.apply(np.asarray(store.array, dtype=np.float32)).astype(np.float64)
    expected = pairwise_distances_argmin(rows, centroids.centroids.astype(np.float64))
    assert (result.labels == expected).mean() >= 0.995  # float32 search vs float64: near-ties may flip
    listed = parse_label_file("train.txt", (tmp_path / "labels" / "train.txt").read_bytes())
    saved = load_pseudo_labels(tmp_path / "labels" / "train.npz")
    assert listed.names_from_file and list(listed.names) == list(images.names) == list(saved.names)
    np.testing.assert_array_equal(listed.labels, result.labels)
    np.testing.assert_array_equal(saved.labels, result.labels)
    sizes = np.loadtxt(tmp_path / "labels" / "train_sizes.txt", dtype=np.int64)
    np.testing.assert_array_equal(sizes[:, 1], np.bincount(result.labels, minlength=10))
    assert (tmp_path / "labels" / "train_montage.png").stat().st_size > 5000
    # a second split (any list of images made the same way) joins the folder; the same split again is skipped
    val = ImageList(images.root, images.names[::7], images.labels[::7])
    val_store = write_feature_array(tmp_path / "val", _pixel_rows(val), val, identity=identity)
    val_result = label_features(val_store, centroids, tmp_path / "labels", split="val", montage=False)
    np.testing.assert_array_equal(val_result.labels, result.labels[::7])
    manifest = json.loads((tmp_path / "labels" / "manifest.json").read_text())
    assert sorted(manifest["splits"]) == ["train", "val"] and manifest["k"] == 10
    assert label_features(store, centroids, tmp_path / "labels", split="train").skipped
    other = write_feature_array(tmp_path / "other", _pixel_rows(val) * 2, val, identity={"kind": "other"})
    with pytest.raises(FeatureStoreError, match="not made like the clustered features"):
        label_features(other, centroids, tmp_path / "labels", split="val2")


def test_bow_histogram_matches_sklearn_nearest_words():
    rng = np.random.default_rng(0)
    descriptors = rng.random((961, 36), dtype=np.float32)
    words = rng.random((50, 36), dtype=np.float32)
    nearest = pairwise_distances_argmin(descriptors.astype(np.float64), words.astype(np.float64))
    np.testing.assert_allclose(bow_histogram(descriptors, words), np.bincount(nearest, minlength=50) / 961,
                               rtol=0, atol=1e-7)


def test_hog_bag_of_words_features(tmp_path, digits_folder):
    images = images_from_data(digits_folder)
    train = ImageList(images.root, images.names[::3], images.labels[::3])
    config = HogConfig(words=40, vocab_images=30, vocab_per_image=40)
    features = FeatureConfig(workers=0, batch_size=25)
    result = hog_features(train, tmp_path / "hog", config=config, feature_config=features, progress=False)
    store = open_features(result.path)
    assert store.shape == (100, 40) and store.manifest["identity"]["hog"]["descriptors_per_image"] == 961
    image = cv2.imread(str(train.root / train.names[5]))
    words = np.load(tmp_path / "hog" / "vocabulary.npy")
    np.testing.assert_allclose(np.asarray(store.array[5], np.float32),
                               bow_histogram(DenseHog(config)(image), words), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(np.asarray(store.array, np.float32).sum(1), 1.0, atol=2e-3)
    assert hog_features(train, tmp_path / "hog", config=config, feature_config=features, progress=False).skipped
    with pytest.raises(ValueError, match="HOG features made with"):
        hog_features(train, tmp_path / "hog", config=HogConfig(words=41, vocab_images=30, vocab_per_image=40),
                     feature_config=features, progress=False)
    val = ImageList(images.root, images.names[1::9], images.labels[1::9])
    described = hog_features(val, tmp_path / "hog_val", vocabulary_from=tmp_path / "hog", feature_config=features,
                             progress=False)
    assert open_features(described.path).manifest["identity"]["vocabulary"] == store.manifest["identity"]["vocabulary"]
    with pytest.raises(ValueError, match="differ from those of the vocabulary"):  # settings it would not use
        hog_features(val, tmp_path / "hog_val2", vocabulary_from=tmp_path / "hog", config=HogConfig(words=10),
                     feature_config=features, progress=False)
