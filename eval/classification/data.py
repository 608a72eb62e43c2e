"""Krähenbühl et al.'s VOC07 input pipeline: random scale, crop and mirror as one affine warp, and the image order.

philkr/voc-classification@c209779 feeds images through the ``TransformingFastHDF5Input`` layer of philkr's Caffe
"future" branch (``src/caffe/layers/transformation_layer.cpp``, ``TransformationLayer::generate`` / ``Forward_cpu``,
read for this port), with ``crop_size`` = the deploy input (227), ``min_scale`` 0.5, ``max_scale`` 2.0,
``mirror`` true, ``mean_value`` 104 / 117 / 123, ``scale`` 1, no rotation. For an image of W x H and a crop of
Wo x Ho, every crop draws::

    max_s = min(max_scale, H / Ho, W / Wo);  min_s = min(min_scale, max_s);  s ~ U[min_s, max_s)
    sx ~ U(-(W - min(Wo s, W)) / 2, +...);   sy likewise;   mirror with probability 1/2 (a = -s, else a = s)

and the output pixel (x, y) (0-based) samples the image at::

    xx = a (x - Wo / 2) + W / 2 + sx,    yy = s (y - Ho / 2) + H / 2 + sy

(translations rounded when all matrix entries are integers), bilinearly from pixels x0 = int(xx), x1 = min(x0 + 1,
W - 1) with weight x1 - xx on x0 (likewise in y); then ``value - mean``. Samples outside [0, W) x [0, H) give 0.
``s`` is source pixels per output pixel: s = 2 shows twice the 227-pixel field (zoomed out). The coordinates are
computed in float32 as Caffe's ``Dtype`` does. The test-time transform is the same random one (10 draws per image,
scores summed).

Order: the reference writes the image set in one random order to HDF5 once, and ``FastHDF5Input`` reads it
sequentially, cycling; `ClassificationSource` draws that permutation from its seed and cycles it the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "AffineDraw",
    "ClassificationBatch",
    "ClassificationSource",
    "draw_affine",
    "warp_crop",
]


@dataclass(frozen=True)
class AffineDraw:
    """One random draw of the transform: scale (source pixels per output pixel), shift, mirror."""

    scale: float
    shift_x: float
    shift_y: float
    mirror: bool


def draw_affine(rng: np.random.Generator, *, width: int, height: int, crop: int, min_scale: float,
                max_scale: float, mirror: bool) -> AffineDraw:
    """``TransformationLayer::generate`` for one image of ``width`` x ``height`` (no rotation)."""
    hi = min(max_scale, height / crop, width / crop)
    lo = min(min_scale, hi)
    scale = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
    span_x = (width - min(crop * scale, width)) / 2
    span_y = (height - min(crop * scale, height)) / 2
    shift_x = float(rng.uniform(-span_x, span_x)) if span_x > 0 else 0.0
    shift_y = float(rng.uniform(-span_y, span_y)) if span_y > 0 else 0.0
    flip = bool(mirror and rng.integers(0, 2))
    return AffineDraw(scale, shift_x, shift_y, flip)


def _axis(out: int, size: int, a: float, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: x0, x1, weight of x0 (float32), inside-the-image mask."""
    coord = np.float32(a) * np.arange(out, dtype=np.float32) + np.float32(t)
    inside = (coord >= 0) & (coord < size)
    x0 = np.clip(coord, 0, size - 1).astype(np.int64)  # int() truncation; coord >= 0 where it matters
    x1 = np.minimum(x0 + 1, size - 1)
    weight = (x1.astype(np.float32) - coord).astype(np.float32)
    return x0, x1, weight, inside


def _isint(v: np.float32) -> bool:
    """transformation_layer.cpp ``isint``: |v - (int)(v + 0.5)| < 1e-3, with C's truncation toward zero."""
    return abs(float(v) - int(float(v) + 0.5)) < 1e-3


def warp_crop(image_bgr: np.ndarray, draw: AffineDraw, *, crop: int,
              mean_bgr: Sequence[float]) -> np.ndarray:
    """(3, crop, crop) float32: the crop of ``draw`` from an (H, W, 3) uint8 BGR image, minus ``mean_bgr``."""
    h, w = image_bgr.shape[:2]
    s = np.float32(draw.scale)
    a = -s if draw.mirror else s
    # R = T1 * RS * T0: translation of the output centre to 0, scale (and flip), then to the image centre + shift
    tx = np.float32(-0.5 * crop) * a + np.float32(0.5 * w + draw.shift_x)
    ty = np.float32(-0.5 * crop) * s + np.float32(0.5 * h + draw.shift_y)
    if _isint(a) and _isint(s):  # integer matrix: whole-pixel translations (a mirrored -1 fails the C++ test)
        tx, ty = np.float32(int(tx + np.float32(0.5))), np.float32(int(ty + np.float32(0.5)))
    x0, x1, wx, in_x = _axis(crop, w, float(a), float(tx))
    y0, y1, wy, in_y = _axis(crop, h, float(s), float(ty))
    img = image_bgr.astype(np.float32)
    wx_, wy_ = wx[None, :, None], wy[:, None, None]
    value = (wx_ * wy_ * img[y0][:, x0] + (1 - wx_) * wy_ * img[y0][:, x1]
             + wx_ * (1 - wy_) * img[y1][:, x0] + (1 - wx_) * (1 - wy_) * img[y1][:, x1])
    out = value - np.asarray(mean_bgr, dtype=np.float32)
    out[~(in_y[:, None] & in_x[None, :])] = 0.0
    return np.ascontiguousarray(out.transpose(2, 0, 1))


@dataclass(frozen=True)
class ClassificationBatch:
    """data (N, 3, crop, crop) float32; targets (N, 20) float32 in {0, 1, 255 = ignore}; image indices."""

    data: torch.Tensor
    targets: torch.Tensor
    indices: tuple[int, ...]

    def to(self, device: torch.device | str) -> ClassificationBatch:
        return ClassificationBatch(self.data.to(device), self.targets.to(device), self.indices)


class ClassificationSource:
    """Batches of randomly warped crops in the reference's order: one seeded permutation of the images, read
    sequentially and cycled. Each image's transform is drawn from ``np.random.default_rng((seed, rank, draw))``,
    so a resumed run draws the same crops. Under torchrun, rank r takes every world-th image of the order.
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]], targets: np.ndarray, *, batch_size: int,
                 crop: int, min_scale: float, max_scale: float, mirror: bool, mean_bgr: Sequence[float],
                 seed: int, rank: int = 0, world_size: int = 1) -> None:
        if len(paths) == 0:
            raise ValueError("no training images.")
        self.paths = [Path(p) for p in paths]
        self.targets = np.asarray(targets, dtype=np.float32)
        self.batch_size, self.crop = batch_size, crop
        self.min_scale, self.max_scale, self.mirror = min_scale, max_scale, mirror
        self.mean_bgr = tuple(float(m) for m in mean_bgr)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.order = np.random.default_rng(seed).permutation(len(self.paths))
        self.position = rank  # index into the cycled order
        self.draws = 0

    def _load(self, index: int, draw_id: int) -> np.ndarray:
        from jigsawpp.data import read_image_bgr

        image = read_image_bgr(self.paths[index])
        rng = np.random.default_rng((self.seed, self.rank, draw_id))
        draw = draw_affine(rng, width=image.shape[1], height=image.shape[0], crop=self.crop,
                           min_scale=self.min_scale, max_scale=self.max_scale, mirror=self.mirror)
        return warp_crop(image, draw, crop=self.crop, mean_bgr=self.mean_bgr)

    def plan(self) -> tuple[tuple[int, ...], int]:
        """The next batch's image indices and its first draw id (all the randomness; cheap, called in order)."""
        picks = []
        for _ in range(self.batch_size):
            picks.append(int(self.order[self.position % len(self.order)]))
            self.position += self.world_size
        first = self.draws
        self.draws += len(picks)
        return tuple(picks), first

    def load(self, plan: tuple[tuple[int, ...], int]) -> ClassificationBatch:
        """Decode and warp the planned images (thread-safe: the engine's PrefetchSource runs several at once)."""
        picks, first = plan
        crops = [self._load(i, first + k) for k, i in enumerate(picks)]
        return ClassificationBatch(torch.from_numpy(np.stack(crops)), torch.from_numpy(self.targets[list(picks)]),
                                   picks)

    def next_batch(self) -> ClassificationBatch:
        return self.load(self.plan())

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "draws": self.draws, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seed") != self.seed:
            raise ValueError(f"the checkpoint's data order was drawn with seed {state.get('seed')}, this run uses "
                             f"{self.seed}; resume with the same configuration.")
        self.position, self.draws = int(state["position"]), int(state["draws"])
