"""The CC+HOG baseline's features: bag-of-words histograms of dense HOG descriptors, one row per image.

Paper, Table 3 caption: "In CC+HOG, we cluster bag of words of HOG and predict them with AlexNet" (HOG: Dalal and
Triggs, CVPR 2005, the paper's [6]). Nothing else is published; our choices (recorded in the feature manifest):
- the image is read as Caffe read it (`jigsawpp.data.read_image_bgr`) and warped to 256 x 256 like the CNN
  features; HOG is OpenCV's `HOGDescriptor` over the whole image with Dalal-Triggs' geometry: 8 x 8-pixel cells,
  blocks of 2 x 2 cells, block stride 8 (dense, overlapping), 9 unsigned orientation bins, L2-Hys block
  normalisation (clip 0.2), Gaussian block window sigma 4, colour gradients (largest channel). Each block's 36
  values are one local descriptor: 31 x 31 = 961 per image;
- vocabulary: `words` = 1000 visual words by faiss k-means (20 iterations, every sampled descriptor) on
  `vocab_per_image` = 100 descriptors from each of `vocab_images` = 10,000 images drawn with the seed;
- histogram: each descriptor votes for its nearest word (squared L2); counts divided by the number of descriptors
  (L1 = 1). These rows then go through the same k-means (k = 2000) and labelling as the CNN features.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from jigsawpp.config_fields import refuse_unknown
from jigsawpp.data import ImageDataset
from jigsawpp.transfer.store import ImageList


@dataclass(frozen=True)
class HogConfig:
    """Dense HOG + bag-of-words options (all chosen by us; the paper gives none)."""

    resize: int = 256              # image warped to resize x resize (as the CNN features)
    cell: int = 8                  # Dalal & Triggs: 8 x 8-pixel cells
    block: int = 2                 # Dalal & Triggs: 2 x 2 cells per block
    stride: int = 8                # block stride in pixels: one cell, dense overlapping blocks
    bins: int = 9                  # Dalal & Triggs: 9 unsigned orientation bins over 0-180 degrees
    words: int = 1000              # vocabulary size
    vocab_images: int = 10000      # images sampled for the vocabulary
    vocab_per_image: int = 100     # descriptors sampled from each of them
    vocab_niter: int = 20          # k-means iterations of the vocabulary (as the clustering stage)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resize < self.cell * self.block or (self.resize - self.cell * self.block) % self.stride:
            raise ValueError(f"resize {self.resize} must be block size {self.cell * self.block} plus a multiple of "
                             f"the stride {self.stride}.")
        if min(self.words, self.vocab_images, self.vocab_per_image, self.vocab_niter, self.bins) < 1:
            raise ValueError("words, vocab_images, vocab_per_image, vocab_niter and bins must be >= 1.")

    @classmethod
    def from_overrides(cls, overrides: dict[str, object]) -> HogConfig:
        refuse_unknown(cls, overrides, what="HOG option(s)")
        return cls(**overrides)  # type: ignore[arg-type]

    @property
    def descriptor_size(self) -> int:
        return self.block * self.block * self.bins


@dataclass(frozen=True)
class DenseHog:
    """8-bit BGR image -> (n_blocks, block * block * bins) float32 HOG block descriptors (picklable for workers)."""

    config: HogConfig

    def _descriptor(self):
        import cv2

        c = self.config
        side = c.cell * c.block
        return cv2.HOGDescriptor((c.resize, c.resize), (side, side), (c.stride, c.stride), (c.cell, c.cell), c.bins)

    def __call__(self, image_bgr: np.ndarray) -> np.ndarray:
        import cv2

        side = self.config.resize
        image = cv2.resize(image_bgr, (side, side), interpolation=cv2.INTER_LINEAR)
        return self._descriptor().compute(image).reshape(-1, self.config.descriptor_size)

    def record(self) -> dict[str, object]:
        hog = self._descriptor()
        c = self.config
        return {"implementation": "cv2.HOGDescriptor", "window": [c.resize, c.resize], "cell": c.cell,
                "block_cells": c.block, "block_stride": c.stride, "bins": c.bins, "signed_gradient": hog.signedGradient,
                "l2hys_threshold": hog.L2HysThreshold, "gamma_correction": hog.gammaCorrection,
                "block_window_sigma": hog.getWinSigma(), "descriptor_size": c.descriptor_size,
                "descriptors_per_image": hog.getDescriptorSize() // c.descriptor_size}


@dataclass(frozen=True)
class _SampledHog:
    dense: DenseHog
    per_image: int

    def __call__(self, image_bgr: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        descriptors = self.dense(image_bgr)
        pick = rng.choice(len(descriptors), size=min(self.per_image, len(descriptors)), replace=False)
        return torch.from_numpy(descriptors[np.sort(pick)])


def build_vocabulary(images: ImageList, config: HogConfig, *, workers: int = 4,
                     progress: bool = True) -> tuple[np.ndarray, dict]:
    """(words (V, descriptor_size) float32, record): faiss k-means on descriptors sampled from sampled images."""
    import faiss
    from tqdm import tqdm

    start = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    chosen = np.sort(rng.choice(len(images), size=min(config.vocab_images, len(images)), replace=False))
    samples = images.samples()
    dataset = ImageDataset([samples[i] for i in chosen], _SampledHog(DenseHog(config), config.vocab_per_image),
                           seed=config.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers)
    drawn = [t.numpy() for t, _, _ in tqdm(loader, total=len(chosen), desc="HOG vocabulary", unit="img",
                                           disable=not progress, leave=False)]
    data = np.ascontiguousarray(np.concatenate(drawn), dtype=np.float32)
    if len(data) < config.words:
        raise ValueError(f"{len(data)} sampled HOG descriptors for {config.words} words; lower --words or sample "
                         "more images.")
    kmeans = faiss.Kmeans(data.shape[1], config.words, niter=config.vocab_niter, seed=config.seed,
                          max_points_per_centroid=-(-len(data) // config.words), verbose=False)
    kmeans.train(data)
    words = np.ascontiguousarray(kmeans.centroids, dtype=np.float32)
    record = {"images": int(len(chosen)), "descriptors": int(len(data)), "words": config.words,
              "niter": config.vocab_niter, "seed": config.seed, "objective": float(kmeans.obj[-1]),
              "sha256": hashlib.sha256(words.tobytes()).hexdigest(), "seconds": round(time.perf_counter() - start, 2)}
    return words, record


def bow_histogram(descriptors: np.ndarray, words: np.ndarray) -> np.ndarray:
    """(V,) float32: the fraction of `descriptors` (n, s) whose nearest word (squared L2, first on ties) is each
    row of `words` (V, s)."""
    d2 = (descriptors ** 2).sum(1, keepdims=True) - 2.0 * descriptors @ words.T + (words ** 2).sum(1)[None]
    counts = np.bincount(d2.argmin(1), minlength=len(words)).astype(np.float32)
    return counts / max(len(descriptors), 1)


@dataclass(frozen=True)
class _BowTransform:
    dense: DenseHog
    words: np.ndarray

    def __call__(self, image_bgr: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        return torch.from_numpy(bow_histogram(self.dense(image_bgr), self.words))


class HogBowFeatures:
    """Feature extractor (see `jigsawpp.transfer.features.Extractor`): the BoW histogram of an image's dense HOG."""

    def __init__(self, words: np.ndarray, vocabulary: dict, config: HogConfig) -> None:
        dense = DenseHog(config)
        self.transform = _BowTransform(dense, np.ascontiguousarray(words, dtype=np.float32))
        self.dim = int(words.shape[0])
        self.words = words
        self.description = f"bag of {self.dim} words of dense HOG ({dense.record()['descriptors_per_image']} " \
                           "blocks per image)"
        self.identity = {"kind": "hog_bow", "hog": dense.record(), "vocabulary": vocabulary,
                         "histogram": "nearest word per descriptor (squared L2), counts / descriptors (L1 = 1)",
                         "config": asdict(config)}

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def to(self, device: torch.device) -> None:
        return None


def save_vocabulary(folder: Path, words: np.ndarray) -> Path:
    path = folder / "vocabulary.npy"
    np.save(path, np.ascontiguousarray(words, dtype=np.float32), allow_pickle=False)
    return path


def load_vocabulary(folder: Path) -> tuple[np.ndarray, dict, HogConfig]:
    """The words, vocabulary record and HOG config of an existing HOG feature folder (to label val with train's
    vocabulary)."""
    import json

    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    identity = manifest.get("identity", {})
    if identity.get("kind") != "hog_bow":
        raise ValueError(f"{folder} is not a HOG bag-of-words feature folder (kind {identity.get('kind')!r}).")
    words = np.load(folder / "vocabulary.npy", allow_pickle=False)
    if hashlib.sha256(np.ascontiguousarray(words, dtype=np.float32).tobytes()).hexdigest() != \
            identity["vocabulary"]["sha256"]:
        raise ValueError(f"{folder / 'vocabulary.npy'} does not match its manifest; re-run `jigsawpp transfer hog`.")
    return words, identity["vocabulary"], HogConfig(**identity["config"])


def hog_features(images: ImageList, out: str | Path, *, config: HogConfig | None = None,
                 feature_config=None, vocabulary_from: str | Path | None = None, overwrite: bool = False,
                 progress: bool = True):
    """Write the HOG bag-of-words row of every image to the feature folder `out` (the layout of
    `jigsawpp.transfer.store`, plus `vocabulary.npy`). The vocabulary is built from `images` unless
    `vocabulary_from` names an existing HOG feature folder (e.g. train's, to describe val with the same words); an
    interrupted run resumes with the vocabulary it saved. Returns the `FeatureResult`. Single process: the HOG work
    runs in `feature_config.workers` data-loading processes."""
    import json

    from jigsawpp.transfer.features import FeatureConfig, extract_features

    feature_config = feature_config or FeatureConfig()
    out = Path(out)
    if not overwrite:  # a folder of other files is refused before the vocabulary is built, not after
        from jigsawpp.outputs import prepare_output_dir
        from jigsawpp.transfer.store import MANIFEST

        prepare_output_dir(out, overwrite=False, what="feature folder", resume=True,
                           markers=(MANIFEST, "progress", "features.npy", "vocabulary.npy"))
    if vocabulary_from is not None:
        words, record, saved = load_vocabulary(Path(vocabulary_from))
        if config is not None and config != saved:
            raise ValueError(f"the HOG settings given ({json.dumps(asdict(config))}) differ from those of the "
                             f"vocabulary in {vocabulary_from} ({json.dumps(asdict(saved))}); its words are used with "
                             "its own settings: drop the settings, or build a new vocabulary without --vocabulary.")
        config = saved
    elif not overwrite and (out / "vocabulary.npy").is_file() and (out / "manifest.json").is_file():
        words, record, saved = load_vocabulary(out)
        config = config or saved
        if saved != config:
            found = json.dumps(asdict(saved))
            raise ValueError(f"{out} holds HOG features made with {found}; choose another --out or pass --overwrite.")
    else:
        config = config or HogConfig()
        words, record = build_vocabulary(images, config, workers=feature_config.workers, progress=progress)
    extractor = HogBowFeatures(words, record, config)
    return extract_features(extractor, images, out, config=feature_config, overwrite=overwrite, progress=progress,
                            on_create=lambda folder: save_vocabulary(folder, words))
