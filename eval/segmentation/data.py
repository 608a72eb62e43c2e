"""FCN's segmentation data: the splits (SBD train, VOC train/val, seg11valid), image loading, the training sampler.

Reproduces shelhamer/fcn.berkeleyvision.org@1305c73 ``voc_layers.py``:

* ``VOCSegDataLayer``: ids from ``<VOC>/ImageSets/Segmentation/<split>.txt``, images ``JPEGImages/<id>.jpg``,
  labels ``SegmentationClass/<id>.png``;
* ``SBDDSegDataLayer``: ids from ``<SBD dataset>/<split>.txt``, images ``img/<id>.jpg``, labels ``cls/<id>.mat``;
* ``load_image``: the image at its own size (no resizing, cropping or mirroring), RGB -> BGR, minus the mean
  (104.00699, 116.66877, 122.67892) (``voc-fcn-alexnet/net.py``), CHW float32;
* training order: ``random.seed(seed)`` then ``idx = random.randint(0, N - 1)`` for every image, i.e. sampling
  with replacement from Python's Mersenne Twister seeded with 1337. `FCNTrainSource` uses the same generator, so
  it visits the same image sequence as FCN's data layer; evaluation visits the split in file order.

**seg11valid** (FCN, footnote 7 of Long et al. 2015): the 736 images of VOC2011 segmentation ``val`` that are not in
SBD ``train`` (SBD train and VOC2011 segval intersect). FCN ships the list as ``data/pascal/seg11valid.txt`` (sorted,
SHA-256 `SEG11VALID_SHA256`); we read ``ImageSets/Segmentation/seg11valid.txt`` if the user placed it there, as FCN's
val net expects, or compute it from VOC2011 ``val.txt`` and SBD ``train.txt``, and record whether the list is FCN's.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.segmentation.labels import read_label_png, read_sbd_cls_mat

__all__ = [
    "SEG11VALID_COUNT",
    "SEG11VALID_SHA256",
    "FCNTrainSource",
    "SegBatch",
    "SegSample",
    "SegSplit",
    "load_image_blob",
    "sbd_split",
    "seg11valid_split",
    "split_fingerprint",
    "voc_segmentation_split",
]

VOC_SEG_IMAGESETS = "ImageSets/Segmentation"
SEG11VALID_COUNT = 736  # Long et al. 2015, footnote 7; fcn.berkeleyvision.org data/pascal/seg11valid.txt
# sha256 of FCN's data/pascal/seg11valid.txt (sorted ids, one per line, trailing newline), commit 1305c73
SEG11VALID_SHA256 = "4ca991bd72c251fd2485eaa9e29536502ea3800d1b1c17c151fd6a04bcfbc2cc"


@dataclass(frozen=True)
class SegSample:
    """One image and its class map on disk."""

    image_id: str
    image_path: Path
    label_path: Path
    label_format: str  # "png" (VOC SegmentationClass) or "sbd_mat" (SBD cls/*.mat)

    def read_label(self) -> np.ndarray:
        """(H, W) uint8 class indices, 255 = void."""
        if self.label_format == "sbd_mat":
            return read_sbd_cls_mat(self.label_path)
        return read_label_png(self.label_path, what=f"ground truth of image {self.image_id}")


@dataclass(frozen=True)
class SegSplit:
    """An ordered list of samples and how it was obtained (for the provenance stamp)."""

    name: str
    samples: tuple[SegSample, ...]
    source: dict[str, Any]

    @property
    def image_ids(self) -> tuple[str, ...]:
        return tuple(s.image_id for s in self.samples)


def _id_digest(ids: list[str] | tuple[str, ...]) -> str:
    return hashlib.sha256(("\n".join(ids) + "\n").encode("utf-8")).hexdigest()


def split_fingerprint(split: SegSplit) -> str:
    """SHA-256 of the split's image ids in order (goes into checkpoints: resuming on other data is refused)."""
    return _id_digest(split.image_ids)


def _read_ids(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist.")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{what} {path} lists some image ids more than once.")
    if not ids:
        raise ValueError(f"{what} {path} lists no images.")
    return ids


def _check_files(samples: list[SegSample], where: str) -> None:
    missing = [s for s in samples if not s.image_path.is_file() or not s.label_path.is_file()]
    if missing:
        s = missing[0]
        gone = s.image_path if not s.image_path.is_file() else s.label_path
        raise FileNotFoundError(f"{where}: {len(missing)} of {len(samples)} images lack their image or label file, "
                                f"e.g. image {s.image_id}: {gone} does not exist.")


def voc_segmentation_split(voc_root: str | os.PathLike[str], split: str) -> SegSplit:
    """A VOC segmentation image set (``train``, ``val``, ``trainval``, or ``seg11valid`` if the file exists)."""
    root = Path(voc_root)
    list_path = root / VOC_SEG_IMAGESETS / f"{split}.txt"
    if not list_path.is_file():
        raise FileNotFoundError(f"VOC segmentation image set {list_path} does not exist; pass the VOCdevkit/VOC20XX "
                                f"folder that has ImageSets/Segmentation/{split}.txt.")
    ids = _read_ids(list_path, "VOC segmentation image set")
    samples = [SegSample(i, root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png", "png")
               for i in ids]
    _check_files(samples, str(list_path))
    return SegSplit(name=f"{root.name} {split}", samples=tuple(samples),
                    source={"dataset": root.name, "split": split, "list": str(list_path.relative_to(root)),
                            "count": len(ids), "ids_sha256": _id_digest(ids)})


def sbd_split(sbd_root: str | os.PathLike[str], split: str = "train") -> SegSplit:
    """An SBD split (``train``: 8,498 images; ``val``) from SBD's ``dataset`` folder."""
    root = Path(sbd_root)
    if not (root / "cls").is_dir() and (root / "dataset" / "cls").is_dir():
        root = root / "dataset"
    list_path = root / f"{split}.txt"
    if not list_path.is_file():
        raise FileNotFoundError(f"SBD split {list_path} does not exist; --sbd must be SBD's 'dataset' folder (with "
                                "img/, cls/, train.txt, val.txt).")
    ids = _read_ids(list_path, "SBD split")
    samples = [SegSample(i, root / "img" / f"{i}.jpg", root / "cls" / f"{i}.mat", "sbd_mat") for i in ids]
    _check_files(samples, str(list_path))
    return SegSplit(name=f"SBD {split}", samples=tuple(samples),
                    source={"dataset": "SBD", "split": split, "list": f"{split}.txt", "count": len(ids),
                            "ids_sha256": _id_digest(ids)})


def seg11valid_split(voc_root: str | os.PathLike[str], sbd_root: str | os.PathLike[str] | None) -> SegSplit:
    """FCN's seg11valid: ``ImageSets/Segmentation/seg11valid.txt`` if present, else VOC ``val`` minus SBD ``train``
    (``voc_root`` should then be VOC2011, whose segmentation val it is defined on).

    Raises:
        FileNotFoundError: neither the list nor `sbd_root`. ValueError: SBD train holds every val image (no test set).
    """
    root = Path(voc_root)
    listed = root / VOC_SEG_IMAGESETS / "seg11valid.txt"
    if listed.is_file():
        split = voc_segmentation_split(root, "seg11valid")
        how = f"read from {listed.relative_to(root)}"
    else:
        if sbd_root is None:
            raise FileNotFoundError(f"seg11valid needs either {listed} (FCN's data/pascal/seg11valid.txt) or --sbd "
                                    "(it is VOC2011 segmentation val minus SBD train).")
        val = voc_segmentation_split(root, "val")
        sbd_train = set(sbd_split(sbd_root, "train").image_ids)
        samples = tuple(s for s in val.samples if s.image_id not in sbd_train)
        if not samples:
            raise ValueError(f"seg11valid is empty: all {len(val.samples)} images of {root.name} "
                             "ImageSets/Segmentation/val.txt are in SBD train.txt; pass VOC2011 (whose val it is "
                             "defined on), or test on VOC val with --val-data voc_val.")
        split = SegSplit(name=f"{root.name} seg11valid", samples=samples, source=dict(val.source))
        how = f"{root.name} ImageSets/Segmentation/val.txt minus SBD train.txt"
    ids = list(split.image_ids)
    digest = _id_digest(sorted(ids))
    source = {**split.source, "split": "seg11valid", "count": len(ids), "ids_sha256": _id_digest(ids), "how": how,
              "is_fcn_seg11valid": digest == SEG11VALID_SHA256,
              "fcn_reference": f"{SEG11VALID_COUNT} images, sha256 {SEG11VALID_SHA256[:12]}..."}
    return SegSplit(name=split.name, samples=split.samples, source=source)


def load_image_blob(path: str | os.PathLike[str], mean_bgr: tuple[float, float, float]) -> torch.Tensor:
    """(1, 3, H, W) float32: the image at its own size, BGR, 0-255 minus ``mean_bgr`` (FCN's ``load_image``)."""
    from jigsawpp.images import read_bgr

    image = read_bgr(path).astype(np.float32) - np.asarray(mean_bgr, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]


@dataclass(frozen=True)
class SegBatch:
    """One training image: data (1, 3, H, W) float32, label (1, H, W) int64 (255 = ignore)."""

    data: torch.Tensor
    label: torch.Tensor
    image_id: str

    def to(self, device: torch.device | str) -> SegBatch:
        return SegBatch(self.data.to(device), self.label.to(device), self.image_id)


class FCNTrainSource:
    """FCN's training order: ``random.randint(0, N - 1)`` per image from ``random.Random(seed)`` (seed 1337).

    Under torchrun each rank draws from its own stream (seed + rank), so the ranks see different images; with one
    process the sequence is FCN's own. ``state_dict`` is the generator state before the next draw (JSON-able).
    """

    def __init__(self, split: SegSplit, *, mean_bgr: tuple[float, float, float], seed: int = 1337,
                 rank: int = 0) -> None:
        if not split.samples:
            raise ValueError(f"{split.name} has no images to train on.")
        self.split = split
        self.mean_bgr = tuple(float(m) for m in mean_bgr)
        self.seed = seed + rank
        self._random = random.Random(self.seed)

    def next_index(self) -> int:
        return self._random.randint(0, len(self.split.samples) - 1)

    def plan(self) -> int:
        """The next image's index (all the randomness; called in order)."""
        return self.next_index()

    def load(self, index: int) -> SegBatch:
        """Read the image and its label map (thread-safe: the engine's PrefetchSource runs several at once)."""
        sample = self.split.samples[index]
        data = load_image_blob(sample.image_path, self.mean_bgr)
        label = sample.read_label()
        if label.shape != tuple(data.shape[2:]):
            raise ValueError(f"image {sample.image_id}: the label map {sample.label_path} is {label.shape[1]}x"
                             f"{label.shape[0]} but the image is {data.shape[3]}x{data.shape[2]}.")
        return SegBatch(data, torch.from_numpy(label.astype(np.int64))[None], sample.image_id)

    def next_batch(self) -> SegBatch:
        return self.load(self.plan())

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self._random.getstate()
        return {"seed": self.seed, "random_state": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["random_state"]
        self._random.setstate((version, tuple(internal), gauss))
