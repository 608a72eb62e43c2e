"""Semantic segmentation scores as FCN computes them (shelhamer/fcn.berkeleyvision.org@1305c73 ``score.py``).

A confusion matrix over all pixels of all images, rows = ground truth, columns = prediction (``fast_hist``)::

    k = (gt >= 0) & (gt < n)              (VOC's void label 255 drops out here)
    hist += bincount(n * gt[k] + pred[k], minlength=n^2).reshape(n, n)

then (``do_seg_tests``)::

    overall accuracy   = sum(diag) / sum(hist)
    mean accuracy      = nanmean(diag / rowsum)
    IU_c               = diag / (rowsum + colsum - diag)          (NaN for a class in neither gt nor prediction)
    mean IU            = nanmean(IU)
    frequency-weighted = sum over rowsum > 0 of (rowsum / total) * IU

Predictions must be class indices in [0, n): FCN's argmax always is; an index outside would land in the wrong cell
of ``bincount``, so it is refused here, naming the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["SegmentationScores", "SegmentationMetric", "confusion_matrix", "scores_from_confusion"]


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int, *, where: str = "image") -> np.ndarray:
    """(n, n) int64 counts ``hist[gt, pred]`` over pixels with ``0 <= gt < n`` (``score.py`` ``fast_hist``).

    Args:
        gt: (H, W) integer labels; values outside [0, n) (VOC: 255 = void) are ignored.
        pred: (H, W) predicted class indices in [0, n).
    """
    a = np.asarray(gt)
    b = np.asarray(pred)
    if a.shape != b.shape:
        raise ValueError(f"{where}: the prediction has shape {b.shape} (H, W) but the ground truth {a.shape}; predict "
                         "at the image's own size.")
    a = a.astype(np.int64).reshape(-1)
    b = b.astype(np.int64).reshape(-1)
    keep = (a >= 0) & (a < num_classes)
    if b.size and (b.min() < 0 or b.max() >= num_classes):
        bad = sorted(set(np.unique(b[(b < 0) | (b >= num_classes)]).tolist()))[:5]
        raise ValueError(f"{where}: predicted labels {bad} are not classes 0..{num_classes - 1}; a prediction "
                         "assigns every pixel a class (void 255 exists only in the ground truth).")
    return np.bincount(num_classes * a[keep] + b[keep], minlength=num_classes ** 2).reshape(num_classes, num_classes)


@dataclass(frozen=True, eq=False)
class SegmentationScores:
    """FCN's four numbers, per-class IU and accuracy (NaN where undefined), and the confusion matrix they come from."""

    mean_iu: float
    pixel_accuracy: float
    mean_accuracy: float
    frequency_weighted_iu: float
    iu: np.ndarray  # (n,)
    accuracy: np.ndarray  # (n,) per-class recall
    confusion: np.ndarray  # (n, n) int64, rows gt, columns prediction
    n_images: int


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def scores_from_confusion(hist: np.ndarray, *, n_images: int = 0) -> SegmentationScores:
    """``do_seg_tests``'s numbers from a confusion matrix (computed in float64 as ``score.py`` accumulates it)."""
    h = np.asarray(hist, dtype=np.float64)
    diag, rows, cols = np.diag(h), h.sum(1), h.sum(0)
    total = h.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        accuracy = diag / rows
        iu = diag / (rows + cols - diag)
        freq = rows / total
    fw = float((freq[freq > 0] * iu[freq > 0]).sum()) if total else math.nan
    return SegmentationScores(
        mean_iu=_nanmean(iu), pixel_accuracy=float(diag.sum() / total) if total else math.nan,
        mean_accuracy=_nanmean(accuracy), frequency_weighted_iu=fw, iu=iu, accuracy=accuracy,
        confusion=np.asarray(hist, dtype=np.int64), n_images=n_images)


class SegmentationMetric:
    """Accumulates ``confusion_matrix`` image by image; ``compute`` gives `SegmentationScores`."""

    def __init__(self, num_classes: int = 21) -> None:
        self.num_classes = int(num_classes)
        self.reset()

    def reset(self) -> None:
        self.hist = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.n_images = 0

    def update(self, gt: np.ndarray, pred: np.ndarray, *, image_id: str = "image") -> np.ndarray:
        """Add one image; returns its own confusion matrix."""
        hist = confusion_matrix(gt, pred, self.num_classes, where=f"image {image_id}")
        self.hist += hist
        self.n_images += 1
        return hist

    def merge(self, hist: np.ndarray, n_images: int) -> None:
        """Add a confusion matrix computed elsewhere (another rank)."""
        self.hist += np.asarray(hist, dtype=np.int64).reshape(self.num_classes, self.num_classes)
        self.n_images += int(n_images)

    def compute(self) -> SegmentationScores:
        return scores_from_confusion(self.hist, n_images=self.n_images)
