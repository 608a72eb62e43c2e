"""The training and test "roidb": per image, its ground truth and proposals with overlaps and regression targets.

Reproduces rbgirshick/fast-rcnn@b612190:
* ``lib/datasets/pascal_voc.py`` ``_load_pascal_annotation``: ground-truth boxes become 0-based (``xmin - 1`` ...),
  every object is kept (difficult ones too; `FastRCNNConfig.train_use_difficult` can drop them);
* ``lib/datasets/imdb.py`` ``create_roidb_from_box_list`` / ``merge_roidbs``: ground-truth rows first, then the
  proposals, each proposal labelled with the class of the ground-truth box it overlaps most, with that overlap;
  ``append_flipped_images``: mirrored copies, widths read from the image file;
* ``lib/roi_data_layer/roidb.py``: ``prepare_roidb`` (max overlap / class) and ``add_bbox_regression_targets``
  (targets for ROIs with overlap >= BBOX_THRESH towards their best ground-truth box, then per-class normalisation).

Class indices here are positions in `DETECTION_CLASSES`: 0 is background, 1..20 the VOC classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eval.constants import VOC_CLASSES
from eval.detection.boxes import bbox_targets, box_overlaps, flip_boxes
from eval.detection.config import FastRCNNConfig
from eval.voc import VOCAnnotation, VOCDataset, normalise_class_name

__all__ = [
    "DETECTION_CLASSES",
    "BBoxStats",
    "RoidbEntry",
    "add_bbox_regression_targets",
    "build_entry",
    "flipped_entry",
    "ground_truth",
    "test_roidb",
    "training_roidb",
]

# fast-rcnn pascal_voc.py ``self._classes``: '__background__' always index 0, then the devkit's 20 classes.
DETECTION_CLASSES: tuple[str, ...] = ("__background__", *VOC_CLASSES)


@dataclass(frozen=True, eq=False)
class RoidbEntry:
    """One (possibly flipped) image of the roidb.

    Attributes:
        boxes: (R, 4) float64 (x1, y1, x2, y2) 0-based inclusive; ground-truth rows first.
        gt_classes: (R,) int64 class of each ground-truth row, 0 for proposals.
        max_overlaps: (R,) float64 largest IoU with any ground-truth box (1 for ground-truth rows).
        max_classes: (R,) int64 class of that box (0 where the overlap is 0).
        bbox_targets: (R, 5) float64 ``[class, dx, dy, dw, dh]``, zero rows where no target; filled by
            `add_bbox_regression_targets`.
    """

    image_id: str
    image_path: str
    width: int
    height: int
    flipped: bool
    boxes: np.ndarray
    gt_classes: np.ndarray
    max_overlaps: np.ndarray
    max_classes: np.ndarray
    bbox_targets: np.ndarray | None = None

    @property
    def num_gt(self) -> int:
        return int(np.count_nonzero(self.gt_classes))


@dataclass(frozen=True, eq=False)
class BBoxStats:
    """Per-class target means and stds, (K, 4) each (row 0: background), used to (un)normalise bbox_pred."""

    means: np.ndarray
    stds: np.ndarray


def ground_truth(ann: VOCAnnotation, *, use_difficult: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(M, 4) 0-based boxes and (M,) class indices (1..20) of an annotation, in XML order."""
    index = {name: k for k, name in enumerate(DETECTION_CLASSES)}
    boxes, classes = [], []
    for obj in ann.objects:
        if obj.difficult and not use_difficult:
            continue
        name = normalise_class_name(obj.name)  # eval.voc normalises at reading; idempotent for built objects
        if name not in index or name == DETECTION_CLASSES[0]:
            raise ValueError(f"annotation of image {ann.image_id!r}: object class {obj.name!r} is not a VOC class "
                             f"({', '.join(VOC_CLASSES)}).")
        boxes.append([c - 1 for c in obj.box])
        classes.append(index[name])
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(classes, dtype=np.int64)


def build_entry(
    *,
    image_id: str,
    image_path: str,
    width: int,
    height: int,
    gt_boxes: np.ndarray,
    gt_classes: np.ndarray,
    proposals: np.ndarray,
) -> RoidbEntry:
    """Ground truth followed by proposals, each proposal labelled by its best-overlapping ground-truth box."""
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    gt_classes = np.asarray(gt_classes, dtype=np.int64).reshape(-1)
    props = np.asarray(proposals, dtype=np.float64).reshape(-1, 4)
    n_gt, n_prop = gt_boxes.shape[0], props.shape[0]
    prop_overlaps = np.zeros(n_prop)
    prop_classes = np.zeros(n_prop, dtype=np.int64)
    if n_gt and n_prop:
        ov = box_overlaps(props, gt_boxes)
        best = ov.argmax(axis=1)
        prop_overlaps = ov[np.arange(n_prop), best]
        prop_classes = np.where(prop_overlaps > 0, gt_classes[best], 0)
    return RoidbEntry(
        image_id=image_id,
        image_path=image_path,
        width=int(width),
        height=int(height),
        flipped=False,
        boxes=np.concatenate([gt_boxes, props]),
        gt_classes=np.concatenate([gt_classes, np.zeros(n_prop, dtype=np.int64)]),
        max_overlaps=np.concatenate([np.ones(n_gt), prop_overlaps]),
        max_classes=np.concatenate([gt_classes, prop_classes]),
    )


def flipped_entry(entry: RoidbEntry) -> RoidbEntry:
    """The horizontally mirrored copy; overlaps and classes are unchanged by mirroring."""
    boxes = flip_boxes(entry.boxes, width=entry.width)
    if not np.all(boxes[:, 2] >= boxes[:, 0]):
        raise ValueError(f"image {entry.image_id!r}: a box extends past the image width {entry.width}; "
                         "it cannot be mirrored (fast-rcnn asserts the same).")
    return dataclasses.replace(entry, flipped=True, boxes=boxes, bbox_targets=None)


def _compute_targets(entry: RoidbEntry, cfg: FastRCNNConfig) -> np.ndarray:
    """``[class, dx, dy, dw, dh]`` per row: ROIs with overlap >= bbox_thresh towards their best ground-truth box."""
    targets = np.zeros((entry.boxes.shape[0], 5))
    gt_inds = np.flatnonzero(entry.max_overlaps == 1)  # as fast-rcnn: rows with overlap exactly 1 are "ground truth"
    ex_inds = np.flatnonzero(entry.max_overlaps >= cfg.bbox_thresh)
    if gt_inds.size == 0 or ex_inds.size == 0:
        return targets
    assignment = box_overlaps(entry.boxes[ex_inds], entry.boxes[gt_inds]).argmax(axis=1)
    targets[ex_inds, 0] = entry.max_classes[ex_inds]
    targets[ex_inds, 1:] = bbox_targets(entry.boxes[ex_inds], entry.boxes[gt_inds[assignment]], eps=cfg.box_eps)
    return targets


def add_bbox_regression_targets(
    entries: Sequence[RoidbEntry], cfg: FastRCNNConfig, *, num_classes: int = len(DETECTION_CLASSES)
) -> tuple[list[RoidbEntry], BBoxStats]:
    """Attach normalised regression targets to every entry; returns the new entries and the statistics used.

    "empirical" (fast-rcnn): per class c >= 1, mean and std of the raw targets over all training ROIs,
    ``var = E[x^2] - E[x]^2``, counts offset by EPS (1e-14); the background row stays 0 (see the guards below).
    "precomputed": the fixed `FastRCNNConfig.bbox_means` / ``bbox_stds`` for every class.
    """
    raw = [_compute_targets(e, cfg) for e in entries]
    if cfg.bbox_normalization == "precomputed":
        means = np.tile(np.asarray(cfg.bbox_means, dtype=np.float64), (num_classes, 1))
        stds = np.tile(np.asarray(cfg.bbox_stds, dtype=np.float64), (num_classes, 1))
    else:
        counts = np.zeros((num_classes, 1)) + 1e-14  # cfg.EPS in roidb.py
        sums = np.zeros((num_classes, 4))
        squares = np.zeros((num_classes, 4))
        for t in raw:
            for cls in range(1, num_classes):
                rows = t[t[:, 0] == cls, 1:]
                if rows.size:
                    counts[cls] += rows.shape[0]
                    sums[cls] += rows.sum(axis=0)
                    squares[cls] += (rows**2).sum(axis=0)
        means = sums / counts
        # Guards for tiny training sets (no effect on VOC): rounding can make the variance slightly negative, and a
        # class whose targets are all equal (e.g. one object, no proposal >= bbox_thresh) has std 0, which would
        # make its normalised targets NaN; its std becomes 1. Classes without samples keep fast-rcnn's 0, which
        # zeroes their deltas in the saved detector.
        stds = np.sqrt(np.maximum(squares / counts - means**2, 0.0))
        stds[(stds == 0) & (counts >= 1)] = 1.0
    out = []
    for entry, t in zip(entries, raw):
        t = t.copy()
        for cls in range(1, num_classes):
            rows = t[:, 0] == cls
            if rows.any():
                t[rows, 1:] = (t[rows, 1:] - means[cls]) / stds[cls]
        out.append(dataclasses.replace(entry, bbox_targets=t))
    return out, BBoxStats(means=means, stds=stds)


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, as ``append_flipped_images`` reads widths (PIL ``Image.size``)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def _has_samples(entry: RoidbEntry, cfg: FastRCNNConfig) -> bool:
    fg = entry.max_overlaps >= cfg.fg_thresh
    bg = (entry.max_overlaps < cfg.bg_thresh_hi) & (entry.max_overlaps >= cfg.bg_thresh_lo)
    return bool(fg.any() or bg.any())


def training_roidb(
    dataset: VOCDataset, proposals: Mapping[str, np.ndarray], cfg: FastRCNNConfig, *,
    sizes: Mapping[str, tuple[int, int]] | None = None,
) -> tuple[list[RoidbEntry], BBoxStats]:
    """The training roidb of a VOC split: ground truth + proposals, flipped copies appended, targets normalised.

    `sizes` (image id -> (width, height), e.g. from `eval.detection.validate.check_split`) saves reading the image
    headers. Images that would give no foreground and no background ROI (e.g. no objects left once difficult ones
    are dropped) are left out; fast-rcnn has no such images in VOC2007 trainval with its defaults.
    """
    entries = []
    for image_id in dataset.image_ids:
        if image_id not in proposals:
            raise KeyError(f"no proposals for training image {image_id!r}.")
        path = dataset.image_path(image_id)
        width, height = sizes[image_id] if sizes is not None else _image_size(path)
        gt_boxes, gt_classes = ground_truth(dataset.annotation(image_id), use_difficult=cfg.train_use_difficult)
        entry = build_entry(image_id=image_id, image_path=str(path), width=width, height=height,
                            gt_boxes=gt_boxes, gt_classes=gt_classes, proposals=proposals[image_id])
        if _has_samples(entry, cfg):
            entries.append(entry)
    if not entries:
        raise ValueError(f"the training split {dataset.split!r} of {dataset.root} yields no usable image.")
    if cfg.use_flipped:
        entries = entries + [flipped_entry(e) for e in entries]  # appended after all originals, as imdb.py
    return add_bbox_regression_targets(entries, cfg)


def test_roidb(dataset: VOCDataset, proposals: Mapping[str, np.ndarray], *,
               sizes: Mapping[str, tuple[int, int]] | None = None) -> list[RoidbEntry]:
    """Test images with their proposals only.

    fast-rcnn also merges the ground-truth boxes into the VOC2007 test roidb, skips them when collecting
    detections, but lets them take part in DEDUP_BOXES, where a proposal that rounds to the same feature-map ROI
    as a ground-truth box is decoded from the ground-truth box. We leave ground truth out of testing entirely.
    """
    entries = []
    for image_id in dataset.image_ids:
        if image_id not in proposals:
            raise KeyError(f"no proposals for test image {image_id!r}.")
        path = dataset.image_path(image_id)
        width, height = sizes[image_id] if sizes is not None else _image_size(path)
        entries.append(build_entry(image_id=image_id, image_path=str(path), width=width, height=height,
                                   gt_boxes=np.zeros((0, 4)), gt_classes=np.zeros(0, dtype=np.int64),
                                   proposals=proposals[image_id]))
    return entries
