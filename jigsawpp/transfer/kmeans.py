"""Stage 2: k-means on a feature folder with faiss (`faiss.Clustering`), every point used, everything recorded.

Paper §4: k = 2000 ("k = 2K for k-means"); nothing else about the clustering is published. Our choices, each
recorded in CENTROIDS/manifest.json:
- every point is used. faiss silently subsamples to `max_points_per_centroid` x k points (256 x 2000 = 512K of
  ImageNet's 1.28M) unless told otherwise; we set the limit above N (a user may ask for a cap).
- 20 iterations and one run (DeepCluster `clustering.py@2d1927e`: `clus.niter = 20`); seed 1234 (faiss default).
- faiss's initialisation (k distinct random points) and empty-cluster handling (`split_clusters`: an empty cluster
  takes a copy of a non-empty centroid drawn with probability growing with its size, and the two copies are pushed
  apart by a relative 1/1024; the number of splits per iteration is recorded).
- no normalisation by default; `l2` (rows scaled to unit length) and `pca` (PCA to 256 dimensions, whitened, then
  L2-normalised rows, as DeepCluster's `preprocess_features`) are options. The PCA is fitted on every row (chunked
  float64 covariance), not a sample.

Memory: when the rows fit (float32 copy <= half the available memory; 1.28M x 9,600 is 49 GB) they are loaded once
as float32, block by block, and faiss runs on that array exactly as when called directly. Otherwise (or with
`in_memory="no"`) nothing is copied: faiss streams the float16 memmap through an fp16 scalar-quantizer codec
(`Clustering.train_encoded`, `decode_block_size` rows at a time; slower on a GPU, where decoding dominates). The path
taken is recorded. Where faiss sees GPUs the assignment runs on all of them (replicas).

Output layout of CENTROIDS: manifest.json, centroids.safetensors ("centroids" (k, d) float32, and "pca_mean" (D,),
"pca_projection" (D, d) for the pca option), objective.png.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from jigsawpp.config_fields import refuse_unknown
from jigsawpp.engine.stamp import identity_mismatch
from jigsawpp.transfer.store import FeatureStore, FeatureStoreError

FORMAT = "jigsawpp-centroids/1"
NORMALIZATIONS = ("none", "l2", "pca")
EMPTY_CLUSTER_POLICY = ("faiss split_clusters: an empty cluster copies a non-empty centroid drawn with probability "
                        "proportional to (size - 1), and both copies are scaled by 1 +/- 1/1024 on alternating "
                        "coordinates; 'nsplit' per iteration counts them")


@dataclass(frozen=True)
class KMeansConfig:
    """k-means options; identity keys first, run-time keys (`gpus`, `block_rows`, `verbose`) last."""

    k: int = 2000                               # paper §4: "k = 2K for k-means"
    niter: int = 20                             # not published; DeepCluster clustering.py@2d1927e uses 20
    seed: int = 1234                            # not published; faiss's default seed
    max_points_per_centroid: int | None = None  # None: every point (faiss's default 256 subsamples to 256 k)
    normalize: str = "none"                     # not published: none | l2 | pca (PCA-whitening + L2, DeepCluster)
    pca_dim: int = 256                          # pca only: DeepCluster preprocess_features(pca=256)
    gpus: int = -1                              # run-time: -1 every GPU faiss sees, 0 CPU only, n the first n
    in_memory: str = "auto"                     # run-time: float32 rows in memory (yes), streamed (no), or auto
    block_rows: int = 8192                      # run-time: rows read from the memmap at once
    verbose: bool = True                        # run-time: faiss prints each iteration (the progress display)

    RUNTIME = ("gpus", "in_memory", "block_rows", "verbose")

    def __post_init__(self) -> None:
        if self.k < 1 or self.niter < 1:
            raise ValueError(f"k ({self.k}) and niter ({self.niter}) must be >= 1.")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize {self.normalize!r}: expected one of {NORMALIZATIONS}.")
        if self.in_memory not in ("auto", "yes", "no"):
            raise ValueError(f"in_memory {self.in_memory!r}: expected auto, yes or no.")
        if self.max_points_per_centroid is not None and self.max_points_per_centroid < 1:
            raise ValueError("max_points_per_centroid must be >= 1 (or None for every point).")

    @classmethod
    def from_overrides(cls, overrides: dict[str, object]) -> KMeansConfig:
        refuse_unknown(cls, overrides, what="k-means option(s)")
        return cls(**overrides)  # type: ignore[arg-type]

    def identity(self) -> dict[str, object]:
        data = {k: v for k, v in asdict(self).items() if k not in self.RUNTIME}
        if self.normalize != "pca":
            data.pop("pca_dim")
        return data


@dataclass
class Preprocess:
    """Row transform applied before clustering and before labelling: x (n, D) float32 -> (n, d) float32."""

    kind: str
    mean: np.ndarray | None = None          # (D,) pca only
    projection: np.ndarray | None = None    # (D, d) pca only: eigenvectors / sqrt(eigenvalues), largest first

    def apply(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "pca":
            assert self.mean is not None and self.projection is not None
            x = (x - self.mean) @ self.projection
        if self.kind in ("l2", "pca"):
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            x = x / np.maximum(norms, np.finfo(np.float32).tiny)
        return np.ascontiguousarray(x, dtype=np.float32)

    def tensors(self) -> dict[str, np.ndarray]:
        if self.kind != "pca":
            return {}
        return {"pca_mean": self.mean.astype(np.float32), "pca_projection": self.projection.astype(np.float32)}


@dataclass(frozen=True)
class Centroids:
    """A CENTROIDS folder read back: centroids (k, d) float32, the row transform, and the manifest."""

    path: Path
    centroids: np.ndarray
    preprocess: Preprocess
    manifest: dict

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])


@dataclass(frozen=True)
class ClusterResult:
    path: Path
    skipped: bool
    points_used: int
    objective: list[float]
    seconds: float


def fit_pca(store: FeatureStore, dim: int, *, block_rows: int, device: str = "cpu") -> tuple[Preprocess, dict]:
    """PCA-whitening fitted on every row: mean and covariance (1/N) sum (x - m)(x - m)^T accumulated in float64 over
    row blocks (float32 products on `device`), eigenvectors of the `dim` largest eigenvalues scaled by
    eigenvalue^-0.5 (faiss PCAMatrix eigen_power = -0.5, as DeepCluster)."""
    import torch

    n, d = store.shape
    if not 1 <= dim <= d:
        raise ValueError(f"pca_dim {dim} must lie in [1, {d}] (the feature dimension).")
    total = torch.zeros(d, dtype=torch.float64)
    gram = torch.zeros(d, d, dtype=torch.float64)
    for _, block in store.chunks(block_rows):
        x = torch.from_numpy(block).to(device)
        total += x.sum(0, dtype=torch.float64).cpu()
        gram += (x.T @ x).double().cpu()
    mean = total / n
    cov = (gram / n - torch.outer(mean, mean)).numpy()
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:dim]
    values, vectors = values[order], vectors[:, order]
    if values[-1] <= 0:
        raise ValueError(f"the features span fewer than pca_dim = {dim} dimensions (eigenvalue {values[-1]:.3g}); "
                         "choose a smaller --pca-dim.")
    projection = vectors / np.sqrt(values)
    kept = float(values.sum() / max(np.trace(cov), np.finfo(float).tiny))
    return (Preprocess("pca", mean.numpy().astype(np.float32), projection.astype(np.float32)),
            {"fitted_on_rows": n, "variance_kept": kept, "eigenvalues": [float(v) for v in values[:10]]})


def cluster(store: FeatureStore, out: str | os.PathLike[str], *, config: KMeansConfig | None = None,
            overwrite: bool = False) -> ClusterResult:
    """k-means of every row of `store` into `out` (layout in the module docstring). A complete `out` with the same
    inputs and options is reused (skipped); one with others is refused unless `overwrite`."""
    import faiss

    config = config or KMeansConfig()
    store.require_complete()
    out = Path(out)
    identity = {"features": store.manifest["identity"], "features_shape": list(store.shape), **config.identity()}
    existing = _existing(out, identity, overwrite=overwrite)
    if existing is not None:
        return existing
    start = time.perf_counter()
    n, d = store.shape
    if n < config.k:
        raise ValueError(f"{store.path} has {n} rows, fewer than k = {config.k} clusters.")
    from jigsawpp.outputs import staged_output

    with staged_output(out, overwrite=True, what="centroids") as staging:  # a stale or refused `out` was handled above
        preprocess, pca_record = Preprocess(config.normalize), None
        if config.normalize == "pca":
            preprocess, pca_record = fit_pca(store, config.pca_dim, block_rows=config.block_rows)
        clus = faiss.Clustering(preprocess.projection.shape[1] if config.normalize == "pca" else d, config.k)
        clus.niter, clus.seed, clus.nredo, clus.verbose = config.niter, config.seed, 1, config.verbose
        clus.max_points_per_centroid = config.max_points_per_centroid or max(1, -(-n // config.k))
        points_used = min(n, config.k * clus.max_points_per_centroid)
        index, device = faiss_index(clus.d, config.gpus)
        data_path = _train(clus, index, store, preprocess, config, staging)
        centroids = faiss.vector_to_array(clus.centroids).reshape(config.k, clus.d)
        stats = clus.iteration_stats
        iterations = [{"iteration": i + 1, "objective": float(stats.at(i).obj), "seconds": float(stats.at(i).time),
                       "imbalance_factor": float(stats.at(i).imbalance_factor), "nsplit": int(stats.at(i).nsplit)}
                      for i in range(stats.size())]
        _save(staging, centroids, preprocess)
        manifest = {
            "format": FORMAT, "identity": identity,
            "features": {"path": str(store.path), "description": store.manifest.get("description")},
            "k": config.k, "dimension": int(clus.d), "points": n, "points_used": points_used,
            "every_point": points_used == n, "data_path": data_path, "device": device,
            "faiss_version": faiss.__version__, "init": "faiss RANDOM: k distinct rows drawn with the seed",
            "empty_clusters": EMPTY_CLUSTER_POLICY, "total_splits": sum(it["nsplit"] for it in iterations),
            "normalization": _describe(config, pca_record), "iterations": iterations,
            "final_objective": iterations[-1]["objective"] if iterations else None,
            "seconds": round(time.perf_counter() - start, 2),
        }
        from jigsawpp.io import write_json_atomic

        write_json_atomic(staging / "manifest.json", manifest)
        plot_objective(iterations, staging / "objective.png", title=f"k-means, k = {config.k}, N = {points_used}")
    return ClusterResult(out, False, points_used, [it["objective"] for it in iterations], manifest["seconds"])


def _train(clus, index, store: FeatureStore, preprocess: Preprocess, config: KMeansConfig, staging: Path) -> str:
    """Run faiss on the (transformed) rows, in memory when they fit (as fast as calling faiss on an array) or
    streamed from disk (memory stays small; faiss decodes float16 rows block by block); returns what was done."""
    import faiss

    n, d = store.shape
    nbytes = n * clus.d * 4
    in_memory = config.in_memory == "yes" or (config.in_memory == "auto" and nbytes <= 0.5 * _available_memory())
    what = {"none": "rows", "l2": "L2-normalised rows", "pca": "PCA-whitened, L2-normalised rows"}[config.normalize]
    if in_memory or config.normalize == "pca":
        rows = np.empty((n, clus.d), dtype=np.float32)
        for begin in range(0, n, config.block_rows):
            block = store.array[begin:begin + config.block_rows]
            rows[begin:begin + len(block)] = block if preprocess.kind == "none" else preprocess.apply(
                np.asarray(block, dtype=np.float32))
        clus.train(rows, index)
        return f"{what} as float32 in memory ({nbytes / 2**30:.2f} GiB)"
    if config.normalize == "none" and store.array.dtype == np.float32:
        clus.train(store.array, index)  # faiss reads the float32 memmap itself: no copy
        return f"{what} read by faiss from the float32 memmap"
    codec = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16)
    clus.decode_block_size = config.block_rows  # faiss's decode buffer: block_rows x d float32
    if config.normalize == "none":
        clus.train_encoded(store.array.view(np.uint8), codec, index)
        return f"{what} streamed from the float16 memmap, decoded by faiss {clus.decode_block_size} at a time"
    work = np.lib.format.open_memmap(staging / "rows.npy", mode="w+", dtype=np.float16, shape=(n, d))
    for begin, block in store.chunks(config.block_rows):
        work[begin:begin + len(block)] = preprocess.apply(block)
    work.flush()
    clus.train_encoded(work.view(np.uint8), codec, index)
    del work
    (staging / "rows.npy").unlink()
    return f"{what} stored as float16 in a temporary file, streamed and decoded by faiss"


def _available_memory() -> int:
    """Bytes of memory available to new allocations (Linux MemAvailable; else free physical pages)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _describe(config: KMeansConfig, pca_record: dict | None) -> dict[str, object]:
    if config.normalize == "none":
        return {"kind": "none", "why": "not published; the default clusters the pooled features as they are"}
    if config.normalize == "l2":
        return {"kind": "l2", "what": "each row scaled to unit L2 norm before clustering and labelling"}
    return {"kind": "pca", "dim": config.pca_dim, "what": "PCA fitted on every row, whitened (eigenvalue^-0.5), "
            "rows then scaled to unit L2 norm (DeepCluster preprocess_features)", **(pca_record or {})}


def faiss_index(d: int, gpus: int):
    import faiss

    index = faiss.IndexFlatL2(d)
    available = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    use = available if gpus < 0 else min(gpus, available)
    if use > 0:
        return faiss.index_cpu_to_all_gpus(index, ngpu=use), f"faiss GPU x {use}"
    return index, "faiss CPU"


def _existing(out: Path, identity: dict, *, overwrite: bool) -> ClusterResult | None:
    manifest_path = out / "manifest.json"
    if not out.exists() or overwrite:
        return None
    if not manifest_path.is_file():
        raise FeatureStoreError(f"{out} exists and is not a centroids folder; choose another --out or pass "
                                "--overwrite.")
    found = json.loads(manifest_path.read_text(encoding="utf-8"))
    diffs = identity_mismatch(found.get("identity", {}), identity)
    if diffs:
        raise FeatureStoreError(f"{out} holds other centroids ({'; '.join(diffs[:5])}); choose another --out or pass "
                                "--overwrite.")
    return ClusterResult(out, True, found["points_used"], [it["objective"] for it in found["iterations"]], 0.0)


def _save(folder: Path, centroids: np.ndarray, preprocess: Preprocess) -> None:
    import torch

    from jigsawpp.io import save_state_dict_file

    tensors = {"centroids": torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32))}
    tensors.update({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in preprocess.tensors().items()})
    save_state_dict_file(tensors, folder / "centroids.safetensors", metadata={"normalize": preprocess.kind})


def load_centroids(path: str | os.PathLike[str]) -> Centroids:
    """Read a CENTROIDS folder written by `cluster`."""
    from jigsawpp.io import load_state_dict_file

    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise FeatureStoreError(f"{path}: no manifest.json; is it the --out folder of `jigsawpp transfer cluster`?")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise FeatureStoreError(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}.")
    tensors = load_state_dict_file(path / "centroids.safetensors")
    kind = manifest["identity"]["normalize"]
    preprocess = Preprocess(kind)
    if kind == "pca":
        preprocess = Preprocess(kind, tensors["pca_mean"].numpy(), tensors["pca_projection"].numpy())
    return Centroids(path, tensors["centroids"].numpy(), preprocess, manifest)


def plot_objective(iterations: list[dict], png: Path, *, title: str) -> Path:
    """Objective (sum of squared distances to the nearest centroid) per iteration, splits marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jigsawpp.engine.plots import save_figure

    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = [it["iteration"] for it in iterations]
    ax.plot(xs, [it["objective"] for it in iterations], marker="o", ms=3)
    for it in iterations:
        if it["nsplit"]:
            ax.annotate(f"{it['nsplit']} split", (it["iteration"], it["objective"]), fontsize=7)
    ax.set_xlabel("iteration")
    ax.set_ylabel("objective (sum of squared L2 distances)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, png, dpi=100)
