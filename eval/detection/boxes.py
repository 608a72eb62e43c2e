"""Box arithmetic of Fast R-CNN: overlaps, regression targets and their inverse, clipping, flipping, NMS.

Boxes are (x1, y1, x2, y2) in 0-based *inclusive* pixel coordinates, so a box is ``x2 - x1 + 1`` pixels wide. The
conventions are rbgirshick/fast-rcnn@b612190's, and they are not all the same:

* overlaps and NMS count inclusive pixels, ``+ 1`` (``lib/utils/bbox.pyx``, ``lib/utils/nms.pyx``);
* regression targets and their decoding use ``x2 - x1 + EPS`` with EPS = 1e-14 (``lib/roi_data_layer/roidb.py``
  ``_compute_targets``, ``lib/fast_rcnn/test.py`` ``_bbox_pred``). py-faster-rcnn later switched to ``+ 1`` there;
  models trained by either decode within a fraction of a pixel of each other, but we reproduce fast-rcnn's.

`torchvision.ops.nms` and ``box_iou`` use continuous coordinates (no ``+ 1``), which is why NMS is written here.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["apply_deltas", "bbox_targets", "box_overlaps", "clip_boxes", "flip_boxes", "nms"]


def box_overlaps(boxes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """IoU of every box with every query box, inclusive pixels (``bbox_overlaps`` of ``bbox.pyx``).

    Args:
        boxes: (N, 4) float boxes.
        query: (K, 4) float boxes.
    Returns:
        (N, K) float64 overlaps; 0 where the boxes do not intersect.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[:, None, :]
    q = np.asarray(query, dtype=np.float64).reshape(-1, 4)[None, :, :]
    iw = np.minimum(b[..., 2], q[..., 2]) - np.maximum(b[..., 0], q[..., 0]) + 1
    ih = np.minimum(b[..., 3], q[..., 3]) - np.maximum(b[..., 1], q[..., 1]) + 1
    # operand order of bbox.pyx: box area + query area - intersection
    ua = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1) + (q[..., 2] - q[..., 0] + 1) * (
        q[..., 3] - q[..., 1] + 1
    ) - iw * ih
    valid = (iw > 0) & (ih > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(valid, iw * ih / np.where(valid, ua, 1.0), 0.0)


def _centres(boxes: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    w = boxes[:, 2] - boxes[:, 0] + eps
    h = boxes[:, 3] - boxes[:, 1] + eps
    return w, h, boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h


def bbox_targets(ex_rois: np.ndarray, gt_rois: np.ndarray, *, eps: float = 1e-14) -> np.ndarray:
    """Regression targets taking each ROI to its ground-truth box (R-CNN parametrisation)::

        dx = (gx - px) / pw,  dy = (gy - py) / ph,  dw = log(gw / pw),  dh = log(gh / ph)

    with ``pw = x2 - x1 + eps`` and the centre ``px = x1 + 0.5 * pw`` (fast-rcnn ``_compute_targets``).

    Args:
        ex_rois, gt_rois: (N, 4) boxes, row i of one matched with row i of the other.
    Returns:
        (N, 4) float64 (dx, dy, dw, dh).
    """
    ex = np.asarray(ex_rois, dtype=np.float64).reshape(-1, 4)
    gt = np.asarray(gt_rois, dtype=np.float64).reshape(-1, 4)
    ew, eh, ex_x, ex_y = _centres(ex, eps)
    gw, gh, gt_x, gt_y = _centres(gt, eps)
    return np.stack([(gt_x - ex_x) / ew, (gt_y - ex_y) / eh, np.log(gw / ew), np.log(gh / eh)], axis=1)


def apply_deltas(boxes: np.ndarray, deltas: np.ndarray, *, eps: float = 1e-14) -> np.ndarray:
    """Inverse of `bbox_targets` for K classes at once (fast-rcnn ``_bbox_pred``).

    Args:
        boxes: (N, 4) proposal boxes.
        deltas: (N, 4K) (dx, dy, dw, dh) per class.
    Returns:
        (N, 4K) float64 boxes, ``x1 = cx - 0.5 w`` and ``x2 = cx + 0.5 w`` (no ``- 1``, as in the original).
    """
    deltas = np.asarray(deltas, dtype=np.float64)
    if deltas.ndim != 2 or deltas.shape[1] % 4:
        raise ValueError(f"apply_deltas: deltas must be (N, 4K), got shape {deltas.shape}.")
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if b.shape[0] == 0:
        return np.zeros((0, deltas.shape[1]))
    w, h, cx, cy = (v[:, None] for v in _centres(b, eps))
    pcx = deltas[:, 0::4] * w + cx
    pcy = deltas[:, 1::4] * h + cy
    pw = np.exp(deltas[:, 2::4]) * w
    ph = np.exp(deltas[:, 3::4]) * h
    out = np.empty_like(deltas)
    out[:, 0::4] = pcx - 0.5 * pw
    out[:, 1::4] = pcy - 0.5 * ph
    out[:, 2::4] = pcx + 0.5 * pw
    out[:, 3::4] = pcy + 0.5 * ph
    return out


def clip_boxes(boxes: np.ndarray, *, height: int, width: int) -> np.ndarray:
    """Clip (N, 4K) boxes to [0, width - 1] x [0, height - 1] (fast-rcnn ``_clip_boxes``); returns a new array."""
    out = np.array(boxes, dtype=np.float64, copy=True)
    out[:, 0::4] = np.maximum(out[:, 0::4], 0)
    out[:, 1::4] = np.maximum(out[:, 1::4], 0)
    out[:, 2::4] = np.minimum(out[:, 2::4], width - 1)
    out[:, 3::4] = np.minimum(out[:, 3::4], height - 1)
    return out


def flip_boxes(boxes: np.ndarray, *, width: int) -> np.ndarray:
    """Mirror boxes in an image `width` pixels wide: ``x1' = W - x2 - 1``, ``x2' = W - x1 - 1`` (``imdb.py``)."""
    b = np.array(boxes, copy=True)
    x1 = b[:, 0].copy()
    b[:, 0] = width - b[:, 2] - 1
    b[:, 2] = width - x1 - 1
    return b


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression with inclusive-pixel IoU, as fast-rcnn's ``nms.pyx``.

    Boxes are visited by decreasing score; a box is kept unless an already kept box overlaps it with
    ``IoU >= threshold`` (``nms.pyx`` suppresses at ``>=``; the pure-Python ``nms.py`` keeps ``<=``, they differ only
    at equality). Arithmetic is float32, as in ``nms.pyx``. Score ties are broken by the lower index first (numpy's
    ``argsort()[::-1]`` in the original leaves them to the sort algorithm).

    Args:
        boxes: (N, 4) boxes.
        scores: (N,) scores.
        threshold: IoU at which a lower-scoring box is suppressed.
    Returns:
        (K,) int64 indices of the kept boxes, by decreasing score.
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"nms: boxes must be (N, 4) and scores (N,), got {tuple(boxes.shape)} and "
                         f"{tuple(scores.shape)}.")
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores.float(), descending=True, stable=True).indices
    b = boxes.float()[order]
    x1, y1, x2, y2 = b.unbind(1)
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    w = (torch.minimum(x2[:, None], x2[None, :]) - torch.maximum(x1[:, None], x1[None, :]) + 1).clamp(min=0)
    h = (torch.minimum(y2[:, None], y2[None, :]) - torch.maximum(y1[:, None], y1[None, :]) + 1).clamp(min=0)
    inter = w * h
    iou = inter / (areas[:, None] + areas[None, :] - inter)  # row i: the kept box, as ``iarea + areas[j]``
    # Only later boxes can be suppressed by box i; the greedy pass itself is sequential, over a host copy.
    overlapping = torch.triu(iou >= threshold, diagonal=1).cpu().numpy()
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlapping[i]
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]
