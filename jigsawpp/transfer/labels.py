"""Stage 3: pseudo-labels, the nearest centroid of every image (paper Fig. 2c: "pseudo-labels are defined for each
image in the dataset by finding the closest cluster center"), for any feature folder (train, val, or another
dataset clustered with the same teacher, pooling and transform).

Written as the release zips hold them and as `jigsawpp convert` writes them (`jigsawpp.label_files`):

    LABELS/<split>.txt              lines `path label` (Caffe ImageData list: the label after the last space)
    LABELS/<split>.npz              arrays `names` (str, the image path as listed) and `labels` (int32 cluster id)
    LABELS/<split>_sizes.txt        lines `cluster count`, every cluster 0..k-1
    LABELS/<split>_montage.png      the images nearest the centroid, for a sample of clusters (one row each)
    LABELS/manifest.json            per split: features and centroids identity, counts, empty clusters, files

Distances are squared L2 after the centroids' row transform (none, l2 or pca; see `jigsawpp.transfer.kmeans`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jigsawpp.engine.stamp import identity_mismatch
from jigsawpp.label_files import PseudoLabels, save_pseudo_labels
from jigsawpp.transfer.kmeans import Centroids, faiss_index
from jigsawpp.transfer.store import FeatureStore, FeatureStoreError

FORMAT = "jigsawpp-pseudo-labels/1"
MONTAGE_CLUSTERS = 12   # clusters shown in the montage (drawn with a fixed seed among non-empty clusters)
MONTAGE_IMAGES = 8      # images per cluster: the nearest to the centroid
THUMB = 64              # thumbnail side in pixels


@dataclass(frozen=True)
class LabelResult:
    path: Path
    split: str
    skipped: bool
    labels: np.ndarray          # (N,) int32
    sizes: np.ndarray           # (k,) int64
    seconds: float

    @property
    def empty_clusters(self) -> int:
        return int((self.sizes == 0).sum())


def nearest_centroids(store: FeatureStore, centroids: Centroids, *, block_rows: int = 16384,
                      gpus: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N,) int32, squared distances (N,) float32): nearest centroid of every row, read block by block."""
    preprocess = centroids.preprocess
    dim = centroids.centroids.shape[1]
    if preprocess.kind != "pca" and store.shape[1] != dim:
        raise FeatureStoreError(f"{store.path} rows have {store.shape[1]} values but the centroids {dim}; they come "
                                "from different teachers or poolings.")
    index, _ = faiss_index(dim, gpus)
    index.add(np.ascontiguousarray(centroids.centroids, dtype=np.float32))
    labels = np.empty(store.shape[0], dtype=np.int32)
    distances = np.empty(store.shape[0], dtype=np.float32)
    for begin, block in store.chunks(block_rows):
        dist, idx = index.search(preprocess.apply(block), 1)
        labels[begin:begin + len(block)] = idx[:, 0]
        distances[begin:begin + len(block)] = dist[:, 0]
    return labels, distances


def label_features(store: FeatureStore, centroids: Centroids, out: str | os.PathLike[str], *, split: str = "train",
                   gpus: int = -1, montage: bool = True, overwrite: bool = False, seed: int = 0) -> LabelResult:
    """Label every row of `store` with its nearest centroid and write split `split` into the folder `out` (layout in
    the module docstring). Other splits already in `out` are kept; the same split is recomputed only if its inputs
    changed (and then only with `overwrite`)."""
    start = time.perf_counter()
    store.require_complete()
    if not split or any(c in split for c in "/\\ ") or split.startswith("."):
        raise ValueError(f"split name {split!r}: use a plain word such as train or val.")
    out = Path(out)
    identity = {"features": store.manifest["identity"], "centroids": centroids.manifest["identity"]}
    _check_same_features(store, centroids)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else \
        {"format": FORMAT, "k": centroids.k, "splits": {}}
    if out.exists() and not manifest_path.is_file() and any(out.iterdir()):
        raise FeatureStoreError(f"{out} exists and is not a pseudo-label folder; choose another --out.")
    if manifest.get("k") != centroids.k:
        raise FeatureStoreError(f"{out} holds labels for k = {manifest.get('k')}, these centroids have k = "
                                f"{centroids.k}; choose another --out.")
    previous = manifest["splits"].get(split)
    if previous is not None:
        diffs = identity_mismatch(previous["identity"], identity)
        if not diffs:
            with np.load(out / previous["files"]["npz"], allow_pickle=False) as npz:
                labels = npz["labels"]
            return LabelResult(out, split, True, labels, np.bincount(labels, minlength=centroids.k),
                               time.perf_counter() - start)
        if not overwrite:
            raise FeatureStoreError(f"{out} already has split {split!r} from other inputs ({'; '.join(diffs[:4])}); "
                                    "pass --overwrite to replace it or choose another --out / --split.")
    labels, distances = nearest_centroids(store, centroids, gpus=gpus)
    sizes = np.bincount(labels, minlength=centroids.k)
    out.mkdir(parents=True, exist_ok=True)
    from jigsawpp.io import write_json_atomic, write_text_atomic

    names = store.images.names
    write_text_atomic(out / f"{split}.txt", "".join(f"{n} {int(y)}\n" for n, y in zip(names, labels)))
    npz_tmp = out / f".{split}.npz.partial-{os.getpid()}"
    save_pseudo_labels(npz_tmp, PseudoLabels(np.asarray(names, dtype=str), labels, "nearest centroid", True))
    os.replace(npz_tmp, out / f"{split}.npz")
    write_text_atomic(out / f"{split}_sizes.txt", "".join(f"{c} {int(s)}\n" for c, s in enumerate(sizes)))
    files = {"list": f"{split}.txt", "npz": f"{split}.npz", "sizes": f"{split}_sizes.txt"}
    if montage:
        files["montage"] = f"{split}_montage.png"
        write_montage(store, labels, distances, out / files["montage"], seed=seed,
                      title=f"{split}: nearest images of {MONTAGE_CLUSTERS} clusters (k = {centroids.k})")
    manifest["splits"][split] = {
        "identity": identity, "count": int(labels.size), "files": files,
        "features": str(store.path), "centroids": str(centroids.path),
        "non_empty_clusters": int((sizes > 0).sum()), "empty_clusters": int((sizes == 0).sum()),
        "largest_cluster": int(sizes.max()), "smallest_non_empty_cluster": int(sizes[sizes > 0].min()),
        "mean_squared_distance": float(distances.astype(np.float64).mean()),
        "format": "text `path label` (Caffe ImageData) and npz names/labels, as `jigsawpp convert` writes them",
    }
    write_json_atomic(manifest_path, manifest)
    return LabelResult(out, split, False, labels, sizes, time.perf_counter() - start)


def _check_same_features(store: FeatureStore, centroids: Centroids) -> None:
    """Labels are only meaningful for rows made like the clustered ones (same teacher, pooling, transform, dtype)."""
    clustered = dict(centroids.manifest["identity"]["features"])
    here = dict(store.manifest["identity"])
    clustered.pop("images", None)
    here.pop("images", None)
    diffs = identity_mismatch(clustered, here)
    if diffs:
        raise FeatureStoreError(f"{store.path} was not made like the clustered features ({'; '.join(diffs[:4])}); "
                                "extract it with the same teacher, pooling and transform.")


def write_montage(store: FeatureStore, labels: np.ndarray, distances: np.ndarray, png: Path, *, seed: int,
                  title: str) -> Path:
    """A grid: one row per sampled non-empty cluster, its MONTAGE_IMAGES images nearest the centroid."""
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jigsawpp.data import read_image_bgr
    from jigsawpp.engine.plots import save_figure

    non_empty = np.flatnonzero(np.bincount(labels))
    rng = np.random.default_rng(seed)
    shown = np.sort(rng.choice(non_empty, size=min(MONTAGE_CLUSTERS, non_empty.size), replace=False))
    step = THUMB + 4  # white gaps between thumbnails
    grid = np.full((len(shown) * step, MONTAGE_IMAGES * step, 3), 255, dtype=np.uint8)
    for row, cluster_id in enumerate(shown):
        members = np.flatnonzero(labels == cluster_id)
        members = members[np.argsort(distances[members], kind="stable")][:MONTAGE_IMAGES]
        for col, i in enumerate(members):
            image = cv2.resize(read_image_bgr(store.images.root / store.images.names[i]), (THUMB, THUMB),
                               interpolation=cv2.INTER_AREA)
            grid[row * step:row * step + THUMB, col * step:col * step + THUMB] = image[:, :, ::-1]
    fig, ax = plt.subplots(figsize=(MONTAGE_IMAGES * 0.9 + 1, len(shown) * 0.9 + 0.6))
    ax.imshow(grid)
    ax.set_yticks([r * step + THUMB / 2 for r in range(len(shown))])
    ax.set_yticklabels([f"{c} ({int((labels == c).sum())})" for c in shown], fontsize=7)
    ax.set_xticks([])
    ax.set_ylabel("cluster (size)")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, png, dpi=100)
