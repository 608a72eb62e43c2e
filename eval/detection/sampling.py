"""Mini-batches for Fast R-CNN training: image order, scale choice, foreground/background ROI sampling, image blobs.

Reproduces rbgirshick/fast-rcnn@b612190 ``lib/roi_data_layer/layer.py`` (``RoIDataLayer``: a random permutation of
the roidb, consumed ``IMS_PER_BATCH`` at a time, reshuffled when fewer than that *plus one* entries remain),
``lib/roi_data_layer/minibatch.py`` (``get_minibatch`` / ``_sample_rois``) and ``lib/utils/blob.py``
(``prep_im_for_blob``, ``im_list_to_blob``).

The random draws are made by a ``numpy.random.RandomState`` in the original's order (permutation; per batch
``randint`` for the scales, then per image ``choice`` of foreground and of background ROIs), seeded with RNG_SEED
= 3, so the sequence of mini-batches is the original's for the same roidb. Its state is plain data
(`RoiSampler.state_dict`), which is what makes resuming exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from eval.detection.config import FastRCNNConfig
from eval.detection.roidb import DETECTION_CLASSES, RoidbEntry

__all__ = [
    "ImageSample",
    "Minibatch",
    "MinibatchPlan",
    "RoiSampler",
    "im_list_to_blob",
    "load_minibatch",
    "prep_image",
    "sample_rois",
]


@dataclass(frozen=True, eq=False)
class ImageSample:
    """The ROIs drawn from one image: foreground first, then background.

    Attributes:
        rois: (n, 4) float64 boxes in original image coordinates.
        labels: (n,) int64 classes, 0 for the background ROIs.
        bbox_targets: (n, 4K) float32, the 4 normalised targets of the ROI's class, zeros elsewhere.
        bbox_weights: (n, 4K) float32, 1 at those 4 positions (the "inside weights").
        overlaps: (n,) float64 max overlaps, for inspection.
    """

    rois: np.ndarray
    labels: np.ndarray
    bbox_targets: np.ndarray
    bbox_weights: np.ndarray
    overlaps: np.ndarray


def _expand_targets(targets: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Compact ``[class, dx, dy, dw, dh]`` rows -> (n, 4K) targets and weights (``_get_bbox_regression_labels``)."""
    n = targets.shape[0]
    out = np.zeros((n, 4 * num_classes), dtype=np.float32)
    weights = np.zeros_like(out)
    classes = targets[:, 0].astype(np.int64)
    for row in np.flatnonzero(classes > 0):
        start = 4 * classes[row]
        out[row, start:start + 4] = targets[row, 1:]
        weights[row, start:start + 4] = 1.0
    return out, weights


def sample_rois(
    entry: RoidbEntry,
    *,
    cfg: FastRCNNConfig,
    rng: np.random.RandomState,
    num_classes: int = len(DETECTION_CLASSES),
) -> ImageSample:
    """Draw ``fg_rois_per_image`` foreground ROIs (overlap >= fg_thresh) and fill up to ``rois_per_image`` with
    background ROIs (overlap in [bg_thresh_lo, bg_thresh_hi)), both without replacement (``_sample_rois``)."""
    if entry.bbox_targets is None:
        raise ValueError(f"roidb entry {entry.image_id!r} has no regression targets; run "
                         "add_bbox_regression_targets first.")
    overlaps = entry.max_overlaps
    fg_inds = np.flatnonzero(overlaps >= cfg.fg_thresh)
    fg_count = min(cfg.fg_rois_per_image, fg_inds.size)
    if fg_inds.size > 0:
        fg_inds = rng.choice(fg_inds, size=fg_count, replace=False)
    bg_inds = np.flatnonzero((overlaps < cfg.bg_thresh_hi) & (overlaps >= cfg.bg_thresh_lo))
    bg_count = min(cfg.rois_per_image - fg_count, bg_inds.size)
    if bg_inds.size > 0:
        bg_inds = rng.choice(bg_inds, size=bg_count, replace=False)
    keep = np.concatenate([fg_inds, bg_inds]).astype(np.int64)
    labels = entry.max_classes[keep].copy()
    labels[fg_count:] = 0
    targets, weights = _expand_targets(entry.bbox_targets[keep], num_classes)
    return ImageSample(rois=entry.boxes[keep], labels=labels, bbox_targets=targets, bbox_weights=weights,
                       overlaps=overlaps[keep])


@dataclass(frozen=True, eq=False)
class MinibatchPlan:
    """Everything random about one SGD step: which images, at which scale, which ROIs."""

    indices: tuple[int, ...]
    scales: tuple[int, ...]
    samples: tuple[ImageSample, ...]


class RoiSampler:
    """The data layer's randomness: image order (``RoIDataLayer``) and ROI sampling (``get_minibatch``)."""

    def __init__(self, entries: Sequence[RoidbEntry], cfg: FastRCNNConfig, *, seed: int | None = None) -> None:
        self.entries = entries
        self.cfg = cfg
        self.rng = np.random.RandomState(cfg.rng_seed if seed is None else seed)
        self._shuffle()

    def _shuffle(self) -> None:
        self.perm = self.rng.permutation(np.arange(len(self.entries)))
        self.cur = 0

    def next_plan(self) -> MinibatchPlan:
        n = self.cfg.ims_per_batch
        if self.cur + n >= len(self.entries):  # ">=" as the original: the last n entries wait for the next epoch
            self._shuffle()
        indices = self.perm[self.cur:self.cur + n]
        self.cur += n
        scale_inds = self.rng.randint(0, high=len(self.cfg.train_scales), size=len(indices))
        samples = tuple(sample_rois(self.entries[i], cfg=self.cfg, rng=self.rng) for i in indices)
        return MinibatchPlan(indices=tuple(int(i) for i in indices),
                             scales=tuple(self.cfg.train_scales[s] for s in scale_inds), samples=samples)

    def state_dict(self) -> dict:
        """JSON-ready state: the Mersenne-Twister state, the permutation and the cursor."""
        name, keys, pos, has_gauss, cached = self.rng.get_state()
        return {"rng": {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                        "cached_gaussian": float(cached)},
                "perm": self.perm.tolist(), "cur": int(self.cur)}

    def load_state_dict(self, state: dict) -> None:
        rng = state["rng"]
        if len(state["perm"]) != len(self.entries):
            raise ValueError(f"sampler state is for a roidb of {len(state['perm'])} entries, this one has "
                             f"{len(self.entries)}; the data or the config changed since the checkpoint.")
        self.rng.set_state((rng["name"], np.asarray(rng["keys"], dtype=np.uint32), rng["pos"], rng["has_gauss"],
                            rng["cached_gaussian"]))
        self.perm = np.asarray(state["perm"], dtype=np.int64)
        self.cur = int(state["cur"])


def prep_image(image_bgr: np.ndarray, *, target_size: int, max_size: int,
               pixel_means: Sequence[float]) -> tuple[np.ndarray, float]:
    """Mean-subtract, then scale so the shorter side is `target_size` unless the longer side would exceed
    `max_size` (``prep_im_for_blob``). Returns the float32 HxWx3 image and its scale factor.

    The mean is subtracted before resizing, in float64 and stored as float32 (numpy's in-place ``-=`` of a
    float64 mean), and the cap tests ``round(scale * long side) > max_size`` as the original does.
    """
    import cv2

    im = (image_bgr.astype(np.float64) - np.asarray(pixel_means, dtype=np.float64)).astype(np.float32)
    short, long = min(im.shape[:2]), max(im.shape[:2])
    scale = float(target_size) / float(short)
    if np.round(scale * long) > max_size:
        scale = float(max_size) / float(long)
    return cv2.resize(im, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR), scale


def im_list_to_blob(images: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack HxWx3 images into one (N, 3, H_max, W_max) float32 blob, zero-padded at the bottom and right."""
    h = max(im.shape[0] for im in images)
    w = max(im.shape[1] for im in images)
    blob = np.zeros((len(images), h, w, 3), dtype=np.float32)
    for i, im in enumerate(images):
        blob[i, : im.shape[0], : im.shape[1]] = im
    return torch.from_numpy(np.ascontiguousarray(blob.transpose(0, 3, 1, 2)))


def read_image(entry: RoidbEntry) -> np.ndarray:
    """The entry's BGR uint8 image (`jigsawpp.data.read_image_bgr`: as fast-rcnn's ``cv2.imread``, but truncated
    files are refused), mirrored if the entry is flipped.

    Raises:
        jigsawpp.data.ImageReadError: unreadable, corrupt or truncated file; ValueError: its size differs from the
            annotation's.
    """
    from jigsawpp.data import read_image_bgr

    image = read_image_bgr(entry.image_path)
    if image.shape[1] != entry.width or image.shape[0] != entry.height:
        raise ValueError(f"{entry.image_path}: decoded size {image.shape[1]}x{image.shape[0]} differs from the "
                         f"header size {entry.width}x{entry.height}.")
    return np.ascontiguousarray(image[:, ::-1]) if entry.flipped else image


@dataclass(frozen=True, eq=False)
class Minibatch:
    """Network inputs and targets for the images of one plan (or one rank's share of it).

    Attributes:
        data: (N, 3, H, W) float32 image blob.
        rois: (R, 5) float32 ``[batch index, x1, y1, x2, y2]`` in blob coordinates.
        labels: (R,) int64.
        bbox_targets, bbox_weights: (R, 4K) float32.
    """

    data: torch.Tensor
    rois: torch.Tensor
    labels: torch.Tensor
    bbox_targets: torch.Tensor
    bbox_weights: torch.Tensor

    def to(self, device: torch.device | str) -> Minibatch:
        return Minibatch(*(t.to(device, non_blocking=True) for t in
                           (self.data, self.rois, self.labels, self.bbox_targets, self.bbox_weights)))


def load_minibatch(plan: MinibatchPlan, entries: Sequence[RoidbEntry], cfg: FastRCNNConfig,
                   *, images: Sequence[int] | None = None) -> Minibatch:
    """Read, scale and stack the images of `plan` (all, or the positions in `images`) with their ROIs."""
    positions = list(range(len(plan.indices))) if images is None else list(images)
    ims, rois, labels, targets, weights = [], [], [], [], []
    for batch_index, pos in enumerate(positions):
        entry = entries[plan.indices[pos]]
        im, scale = prep_image(read_image(entry), target_size=plan.scales[pos], max_size=cfg.train_max_size,
                               pixel_means=cfg.pixel_means_bgr)
        ims.append(im)
        sample = plan.samples[pos]
        projected = sample.rois * scale  # _project_im_rois
        rois.append(np.hstack([np.full((projected.shape[0], 1), batch_index, dtype=np.float64), projected]))
        labels.append(sample.labels)
        targets.append(sample.bbox_targets)
        weights.append(sample.bbox_weights)
    return Minibatch(
        data=im_list_to_blob(ims),
        rois=torch.from_numpy(np.concatenate(rois).astype(np.float32)),
        labels=torch.from_numpy(np.concatenate(labels).astype(np.int64)),
        bbox_targets=torch.from_numpy(np.concatenate(targets)),
        bbox_weights=torch.from_numpy(np.concatenate(weights)),
    )
