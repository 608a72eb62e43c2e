"""VOC classification ground truth, read from the devkit's per-class image sets.

``VOCdevkit/VOC2007/ImageSets/Main/<class>_<split>.txt`` lists every image of ``<split>`` with a label (VOC devkit
documentation, "Classification/Detection Image Sets"): ``1`` the image contains the class, ``-1`` it does not, ``0``
it contains only "difficult" objects of the class. The devkit's ``VOCevalcls.m`` reads one such file per class;
philkr/voc-classification@c209779 ``src/data.py`` reads all of them, in sorted file-name order (which is the
devkit's alphabetical class order), and maps the labels to training targets ``-1 -> 0``, ``1 -> 1``,
``0 -> 255`` (ignored by the loss).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eval.constants import VOC_CLASSES, VOC_IMAGESETS_DIR

__all__ = ["IGNORE_LABEL", "VOCClassLabels", "class_image_set_path", "read_class_labels", "training_targets"]

# philkr/voc-classification src/data.py and src/train_cls.py: ``ignore_label=255`` of the sigmoid cross-entropy.
IGNORE_LABEL = 255


@dataclass(frozen=True, eq=False)
class VOCClassLabels:
    """An image set with its (N, C) devkit labels (int8: 1 / -1 / 0) in ``class_names`` order."""

    image_ids: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    split: str


def class_image_set_path(voc_root: str | os.PathLike[str], class_name: str, split: str) -> Path:
    """``<voc_root>/ImageSets/Main/<class>_<split>.txt`` (VOCinit.m ``clsimgsetpath``)."""
    return Path(voc_root) / VOC_IMAGESETS_DIR / f"{class_name}_{split}.txt"


def _read_one(path: Path) -> tuple[list[str], list[int]]:
    if not path.is_file():
        raise FileNotFoundError(f"VOC class image set {path} does not exist; is its folder a VOCdevkit/VOC20XX folder "
                                "with ImageSets/Main/<class>_<split>.txt files, and is the split right?")
    ids, labels = [], []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("1", "-1", "0"):
            raise ValueError(f"{path}, line {lineno}: expected 'image_id label' with label 1, -1 or 0, got "
                             f"{line.strip()!r}.")
        ids.append(fields[0])
        labels.append(int(fields[1]))
    return ids, labels


def read_class_labels(voc_root: str | os.PathLike[str], split: str,
                      class_names: tuple[str, ...] = VOC_CLASSES) -> VOCClassLabels:
    """Read every class's image set of ``split``; they must list the same images in the same order (as the devkit's
    files do), which is the order the devkit breaks score ties in.

    Raises:
        FileNotFoundError: a class file is missing (the message names it).
        ValueError: a malformed line, a repeated image, or files that disagree on the images (named).
    """
    columns = []
    reference: list[str] | None = None
    first = None
    for name in class_names:
        path = class_image_set_path(voc_root, name, split)
        ids, labels = _read_one(path)
        if len(set(ids)) != len(ids):
            raise ValueError(f"{path} lists some image ids more than once.")
        if reference is None:
            reference, first = ids, path
        elif ids != reference:
            extra = sorted(set(ids) - set(reference))[:3]
            lacking = sorted(set(reference) - set(ids))[:3]
            detail = (f"it has {extra} that {first.name} lacks and lacks {lacking}" if extra or lacking
                      else "the same images in another order")
            raise ValueError(f"{path} does not list the images of {first}: {detail}; every <class>_{split}.txt of "
                             "a VOC folder lists the whole split in one order.")
        columns.append(labels)
    assert reference is not None
    labels = np.asarray(columns, dtype=np.int8).T.reshape(len(reference), len(class_names))
    return VOCClassLabels(image_ids=tuple(reference), labels=labels, class_names=tuple(class_names), split=split)


def training_targets(labels: np.ndarray) -> np.ndarray:
    """Devkit labels -> the loss's targets (uint8): -1 -> 0, 1 -> 1, 0 (difficult) -> 255 (ignored)."""
    y = np.asarray(labels)
    out = np.where(y > 0, 1, 0).astype(np.uint8)
    out[y == 0] = IGNORE_LABEL
    return out
