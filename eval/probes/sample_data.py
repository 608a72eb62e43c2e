"""A small labelled image set in ImageNet's ImageFolder layout, built from real photos that packages ship, for the
probes' CPU runs, tests and benchmarks.

Sources (research/environment.md, Task B):
* Debian ``dataset-fashion-mnist`` (Expat; ``apt-get install -y dataset-fashion-mnist``): 70,000 real 28x28
  grayscale product photos in 10 classes, IDX files under ``/usr/share/datasets/fashion-mnist`` (override with the
  environment variable ``JIGSAWPP_FASHION_MNIST``). Class names: zalandoresearch/fashion-mnist ``README.md``.
  Training images come from ``train-*``, validation images from ``t10k-*``, so the two splits share no image.
* Fallback: scikit-learn's ``load_digits()``, 1,797 real 8x8 handwritten digits in 10 classes (split at random).

Each image is upscaled (bilinear) to `size` x `size` and written as an RGB PNG (gray replicated):
``root/train/<class>/<n>.png`` and ``root/val/<class>/<n>.png``.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "SampleFolder", "fashion_mnist_dir", "make_sample_folder",
           "read_idx"]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# Label order of zalandoresearch/fashion-mnist README.md ("Labels" table), as folder-safe names.
FASHION_MNIST_CLASSES = ("t_shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                         "ankle_boot")


@dataclass(frozen=True)
class SampleFolder:
    root: Path                   # holds train/ and val/
    classes: tuple[str, ...]
    train_count: int
    val_count: int
    source: str                  # "fashion-mnist" or "sklearn-digits"


def fashion_mnist_dir() -> Path | None:
    """The Fashion-MNIST IDX folder if the Debian package (or the override) is present."""
    path = Path(os.environ.get("JIGSAWPP_FASHION_MNIST", FASHION_MNIST_DIR))
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")
    return path if all((path / n).is_file() for n in names) else None


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """An IDX file (optionally gzipped) as a uint8 array: magic 0x00000801 labels (N,), 0x00000803 images (N, H, W),
    big-endian int32 sizes (LeCun's MNIST format). Raises ValueError for anything else."""
    path = Path(path)
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 8 or raw[:2] != b"\x00\x00" or raw[2] != 0x08 or raw[3] not in (1, 3):
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic {raw[:4].hex()}).")
    ndim = raw[3]
    dims = tuple(int(v) for v in np.frombuffer(raw[4:4 + 4 * ndim], ">i4"))
    data = np.frombuffer(raw[4 + 4 * ndim:], np.uint8)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} ({int(np.prod(dims))} bytes), the file holds {data.size}.")
    return data.reshape(dims)


def _pick(labels: np.ndarray, per_class: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    out = []
    for c in range(classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            raise ValueError(f"class {c} has {len(idx)} images, {per_class} requested.")
        out.append(np.sort(rng.choice(idx, per_class, replace=False)))
    return np.concatenate(out)


def _write(root: Path, split: str, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...],
           size: int) -> int:
    import cv2

    for n, (image, label) in enumerate(zip(images, labels)):
        folder = root / split / classes[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        big = cv2.resize(image.astype(np.uint8), (size, size), interpolation=cv2.INTER_LINEAR)
        if not cv2.imwrite(str(folder / f"{n:05d}.png"), cv2.merge([big, big, big])):
            raise OSError(f"could not write {folder / f'{n:05d}.png'}")
    return len(images)


def make_sample_folder(root: str | os.PathLike[str], *, train_per_class: int = 20, val_per_class: int = 10,
                       size: int = 227, source: Literal["auto", "fashion-mnist", "digits"] = "auto",
                       seed: int = 0) -> SampleFolder:
    """Write the folder (see the module docstring) and describe it. `source="auto"` takes Fashion-MNIST when the
    Debian package is installed, scikit-learn's digits otherwise."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    fm = fashion_mnist_dir()
    if source == "fashion-mnist" and fm is None:
        raise FileNotFoundError("Fashion-MNIST not found: apt-get install -y dataset-fashion-mnist, or set "
                                "JIGSAWPP_FASHION_MNIST to its folder.")
    if source in ("auto", "fashion-mnist") and fm is not None:
        classes = FASHION_MNIST_CLASSES
        train_x, train_y = read_idx(fm / "train-images-idx3-ubyte.gz"), read_idx(fm / "train-labels-idx1-ubyte.gz")
        val_x, val_y = read_idx(fm / "t10k-images-idx3-ubyte.gz"), read_idx(fm / "t10k-labels-idx1-ubyte.gz")
        tr, va = _pick(train_y, train_per_class, 10, rng), _pick(val_y, val_per_class, 10, rng)
        n_train = _write(root, "train", train_x[tr], train_y[tr], classes, size)
        n_val = _write(root, "val", val_x[va], val_y[va], classes, size)
        return SampleFolder(root, classes, n_train, n_val, "fashion-mnist")
    if source not in ("auto", "digits"):
        raise ValueError(f"source {source!r} is not 'auto', 'fashion-mnist' or 'digits'.")
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)  # values 0..16 in the data set
    labels = digits.target
    chosen = _pick(labels, train_per_class + val_per_class, 10, rng).reshape(10, -1)
    tr, va = chosen[:, :train_per_class].ravel(), chosen[:, train_per_class:].ravel()
    classes = tuple(f"digit_{d}" for d in range(10))
    n_train = _write(root, "train", images[tr], labels[tr], classes, size)
    n_val = _write(root, "val", images[va], labels[va], classes, size)
    return SampleFolder(root, classes, n_train, n_val, "sklearn-digits")
