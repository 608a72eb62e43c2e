"""The probes' data: dataset splits by name, the protocol's transforms, and fingerprints for caches and resumes.

Images go through Caffe's transform (`jigsawpp.data.caffe_transform`): warped to `image_size` x `image_size` (the
256x256 LMDBs of the Caffe protocols), then a `crop_size` crop, random with mirroring for training, central for
testing, or pycaffe's 10 crops (`jigsawpp.data.ten_crops`: 4 corners and the centre, and their mirrors).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from jigsawpp.data import ImageDataset, LabeledImage, Samples, caffe_transform, ten_crops

__all__ = ["DATASETS", "TestViews", "TrainViews", "dataset_splits", "per_process_batch", "samples_fingerprint",
           "test_dataset", "train_dataset"]

DatasetName = Literal["imagenet", "places205", "folder"]
DATASETS = ("imagenet", "places205", "folder")


def dataset_splits(root: str | os.PathLike[str], dataset: DatasetName) -> tuple[Samples, Samples]:
    """(train, val) listings. "imagenet": `jigsawpp.data.imagenet_split`; "places205": the official split lists
    (`places205_split`); "folder": ImageFolder layouts ``root/train/<class>/`` and ``root/val/<class>/`` with the
    training folder's classes. Raises `jigsawpp.data.DatasetLayoutError` naming what was expected."""
    from jigsawpp.data import DatasetLayoutError, image_folder, imagenet_split, places205_split

    if dataset == "imagenet":
        train, val = imagenet_split(root, "train"), imagenet_split(root, "val")
    elif dataset == "places205":
        train, val = places205_split(root, "train"), places205_split(root, "val")
    elif dataset == "folder":
        train = image_folder(Path(root) / "train")
        val = image_folder(Path(root) / "val", classes=train.classes)
    else:
        raise ValueError(f"dataset {dataset!r} is not one of {', '.join(DATASETS)}.")
    bad = sorted({s.label for s in val.samples if s.label >= len(train.classes)})
    if bad:
        raise DatasetLayoutError(f"{root}: validation labels {bad[:5]} have no training class ({len(train.classes)} "
                                 "classes in train).")
    return train, val


def per_process_batch(batch_size: int, world_size: int) -> int:
    """Each process's share of the protocol's batch (the effective batch stays `batch_size` at any world size)."""
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {world_size} processes; choose a multiple "
                         "of the number of GPUs (--set batch_size=...).")
    return batch_size // world_size


def samples_fingerprint(samples: list[LabeledImage], root: str | os.PathLike[str]) -> str:
    """sha256 of the (path relative to `root`, label) list: the same images in the same order, wherever the data
    folder is mounted."""
    digest = hashlib.sha256()
    base = os.path.abspath(root)
    for path, label in samples:
        rel = os.path.relpath(os.path.abspath(path), base)
        digest.update(f"{rel}\t{label}\n".encode())
    return digest.hexdigest()


class TrainViews:
    """`views` independent random crop+mirror draws of one image, stacked (V, 3, crop, crop); V = 1 gives (3, ...)."""

    def __init__(self, *, mean_bgr, image_size: int, crop_size: int, mirror: bool, views: int = 1) -> None:
        self.base = caffe_transform(mean_bgr=mean_bgr, resize=(image_size, image_size), crop=crop_size, train=True,
                                    mirror=mirror)
        self.views = views

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        if self.views == 1:
            return self.base(image, rng)
        resized = self.base.resized(image)
        return torch.stack([self.base(resized, rng) for _ in range(self.views)])


class TestViews:
    """The centre crop (3, crop, crop), or the 10 crops (10, 3, crop, crop)."""

    def __init__(self, *, mean_bgr, image_size: int, crop_size: int, crops: Literal["center", "ten"]) -> None:
        self.crops, self.crop_size = crops, crop_size
        self.center = caffe_transform(mean_bgr=mean_bgr, resize=(image_size, image_size), crop=crop_size)
        self.full = caffe_transform(mean_bgr=mean_bgr, resize=(image_size, image_size))

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        if self.crops == "center":
            return self.center(image)
        return ten_crops(self.full(image), self.crop_size)


def train_dataset(samples: Samples, *, mean_bgr, image_size: int, crop_size: int, mirror: bool, seed: int,
                  views: int = 1) -> ImageDataset:
    """``dataset[i] -> (image or views, label, i)`` with the training augmentation seeded by (seed, epoch, i)."""
    return ImageDataset(samples.samples, TrainViews(mean_bgr=mean_bgr, image_size=image_size, crop_size=crop_size,
                                                     mirror=mirror, views=views), seed=seed)


def test_dataset(samples: Samples, *, mean_bgr, image_size: int, crop_size: int,
                 crops: Literal["center", "ten"]) -> ImageDataset:
    return ImageDataset(samples.samples, TestViews(mean_bgr=mean_bgr, image_size=image_size, crop_size=crop_size,
                                                    crops=crops))
