"""Fast R-CNN testing: single-scale or pyramid inference, the per-set score thresholds, NMS, devkit results.

Reproduces rbgirshick/fast-rcnn@b612190 ``lib/fast_rcnn/test.py``:

* ``_get_image_blob``: one mean-subtracted copy of the image per test scale, stacked into one zero-padded blob;
* ``_project_im_rois``: with several scales, each ROI goes to the level where its scaled area
  ``(w * h) * scale^2`` (inclusive widths) is closest to 224^2;
* ``im_detect``: ROIs equal after ``round(roi * DEDUP_BOXES)`` (level included) are run once; softmax scores;
  deltas applied to the (first) unique ROI's box, clipped to the image;
* ``test_net``: per class and image the 100 best-scoring boxes, and per class a running threshold that keeps
  about ``40 * N_images`` detections over the whole set (a min-heap of the kept scores); then NMS 0.3 per class and
  image (``apply_nms``), then the results files (``pascal_voc.py`` ``_write_voc_results_file``: 1-based boxes,
  ``{:.3f}`` scores, ``{:.1f}`` coordinates).

The AP comes from `eval.metrics`, a port of the devkit's VOCevaldet.m (fast-rcnn shells out to MATLAB for it).
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from eval.constants import FAST_RCNN_BOX_DECIMALS, FAST_RCNN_SCORE_DECIMALS
from eval.detection.boxes import apply_deltas, clip_boxes, nms
from eval.detection.config import FastRCNNConfig
from eval.detection.model import FastRCNN
from eval.detection.roidb import DETECTION_CLASSES, RoidbEntry
from eval.detection.sampling import im_list_to_blob, prep_image, read_image

__all__ = [
    "ImageDetections",
    "class_detections",
    "detect_set",
    "draw_detections",
    "draw_results_with_ground_truth",
    "im_detect",
    "image_candidates",
    "image_pyramid",
    "project_rois",
    "write_results",
]

# fast-rcnn test.py ``_get_blobs`` / DEDUP_BOXES hash: coordinates are weighted by these powers of 1000.
_DEDUP_WEIGHTS = np.array([1, 1e3, 1e6, 1e9, 1e12])
VIS_THRESHOLD = 0.3  # vis_detections(..., thresh=0.3) in test.py
VIS_MAX_PER_CLASS = 10  # vis_detections draws at most 10 boxes per class


@dataclass(frozen=True, eq=False)
class ImageDetections:
    """Scores and class-specific boxes of every proposal of one image (``im_detect``'s return values).

    Attributes:
        scores: (R, K) float32 softmax probabilities, column 0 background.
        boxes: (R, 4K) float64 boxes in original image coordinates (0-based).
    """

    scores: np.ndarray
    boxes: np.ndarray


def image_pyramid(image_bgr: np.ndarray, cfg: FastRCNNConfig) -> tuple[torch.Tensor, np.ndarray]:
    """(L, 3, H, W) blob of the test scales and the (L,) scale factors."""
    images, scales = [], []
    for target in cfg.test_scales:
        im, scale = prep_image(image_bgr, target_size=target, max_size=cfg.test_max_size,
                               pixel_means=cfg.pixel_means_bgr)
        images.append(im)
        scales.append(scale)
    return im_list_to_blob(images), np.asarray(scales)


def project_rois(boxes: np.ndarray, scales: np.ndarray, *, target_area: float) -> np.ndarray:
    """(R, 5) float32 ``[level, x1, y1, x2, y2]``: each box scaled to its pyramid level (``_get_rois_blob``)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(scales) > 1:
        areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
        levels = np.abs(areas[:, None] * (scales[None, :] ** 2) - target_area).argmin(axis=1)[:, None]
    else:
        levels = np.zeros((boxes.shape[0], 1), dtype=np.int64)
    rois = boxes * scales[levels]
    return np.hstack([levels, rois]).astype(np.float32)


@torch.no_grad()
def im_detect(model: FastRCNN, image_bgr: np.ndarray, boxes: np.ndarray, cfg: FastRCNNConfig, *,
              device: str | torch.device = "cpu") -> ImageDetections:
    """Score every proposal of one image and regress its box for every class."""
    device = torch.device(device)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    blob, scales = image_pyramid(image_bgr, cfg)
    rois = project_rois(boxes, scales, target_area=cfg.pyramid_target_area)
    inverse = None
    if cfg.dedup_boxes > 0 and rois.shape[0]:
        hashes = np.round(rois * np.float32(cfg.dedup_boxes)).dot(_DEDUP_WEIGHTS)
        _, index, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        rois, boxes = rois[index], boxes[index]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")
    with autocast:
        out = model(blob.to(device), torch.from_numpy(rois).to(device))
    scores = torch.softmax(out.cls_score.float(), dim=1).cpu().numpy()
    deltas = out.bbox_pred.float().cpu().numpy()
    if cfg.test_bbox_reg:
        pred = clip_boxes(apply_deltas(boxes, deltas, eps=cfg.box_eps), height=image_bgr.shape[0],
                          width=image_bgr.shape[1])
    else:
        pred = np.tile(boxes, (1, scores.shape[1]))
    if inverse is not None:
        scores, pred = scores[inverse.ravel()], pred[inverse.ravel()]
    return ImageDetections(scores=scores, boxes=pred)


def image_candidates(model: FastRCNN, entry: RoidbEntry, cfg: FastRCNNConfig, *,
                     device: str | torch.device = "cpu") -> list[np.ndarray]:
    """Per class, the image's ``max_per_image`` best detections, (n, 5) float32 ``[x1, y1, x2, y2, score]``."""
    proposals = entry.boxes[entry.gt_classes == 0]
    det = im_detect(model, read_image(entry), proposals, cfg, device=device)
    out = [np.zeros((0, 5), np.float32)]
    for j in range(1, det.scores.shape[1]):
        top = np.argsort(-det.scores[:, j], kind="stable")[: cfg.max_per_image]
        out.append(np.hstack([det.boxes[top, j * 4:(j + 1) * 4], det.scores[top, j][:, None]]).astype(np.float32))
    return out


def _gather(local: dict[int, list[np.ndarray]]) -> dict[int, list[np.ndarray]]:
    """Merge every rank's per-image candidates (objects exchanged between our own processes)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return local
    parts: list[dict[int, list[np.ndarray]] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, local)
    merged: dict[int, list[np.ndarray]] = {}
    for part in parts:
        merged.update(part or {})
    return merged


def detect_set(model: FastRCNN, entries: Sequence[RoidbEntry], cfg: FastRCNNConfig, *,
               device: str | torch.device = "cpu", progress: bool = True) -> list[list[np.ndarray]]:
    """Detections of a whole test set after the per-set thresholds and NMS.

    fast-rcnn keeps, per image and class, the 100 best boxes *above the running threshold*; that equals the 100
    best boxes filtered by the threshold afterwards (the threshold only removes the lowest scores), so the images
    can be scored in any order, or sharded over processes, and the thresholds replayed in image order.

    Returns:
        ``all_boxes[class][image]``: (n, 5) float32 ``[x1, y1, x2, y2, score]`` (0-based), class 0 unused.
    """
    from tqdm import tqdm

    rank, world = ((torch.distributed.get_rank(), torch.distributed.get_world_size())
                   if torch.distributed.is_available() and torch.distributed.is_initialized() else (0, 1))
    model.eval().to(device)
    mine = range(rank, len(entries), world)
    local = {i: image_candidates(model, entries[i], cfg, device=device)
             for i in tqdm(mine, desc="Fast R-CNN testing", unit="img", disable=not progress or rank != 0)}
    candidates = _gather(local)
    num_images, num_classes = len(entries), model.num_classes
    max_per_set = cfg.max_per_set_factor * num_images
    thresh = np.full(num_classes, -np.inf)
    heaps: list[list[float]] = [[] for _ in range(num_classes)]
    all_boxes: list[list[np.ndarray]] = [[np.zeros((0, 5), np.float32)] * num_images for _ in range(num_classes)]
    for i in range(num_images):
        for j in range(1, num_classes):
            dets = candidates[i][j]
            dets = dets[dets[:, 4] > thresh[j]]
            for value in dets[:, 4].tolist():
                heapq.heappush(heaps[j], value)
            if len(heaps[j]) > max_per_set:
                while len(heaps[j]) > max_per_set:
                    heapq.heappop(heaps[j])
                thresh[j] = heaps[j][0]
            all_boxes[j][i] = dets
    for j in range(1, num_classes):
        for i in range(num_images):
            dets = all_boxes[j][i]
            dets = dets[dets[:, 4] > thresh[j]]
            if dets.shape[0]:
                t = torch.from_numpy(dets)
                dets = dets[nms(t[:, :4], t[:, 4], cfg.test_nms).numpy()]
            all_boxes[j][i] = dets
    return all_boxes


def class_detections(all_boxes: list[list[np.ndarray]], image_ids: Sequence[str],
                     class_names: Sequence[str] = DETECTION_CLASSES):
    """``all_boxes`` as `eval.metrics.ClassDetections` per VOC class, 1-based boxes, in image order."""
    from eval.metrics import ClassDetections

    out = {}
    for j, name in enumerate(class_names):
        if j == 0:
            continue
        parts = [ClassDetections(image_ids=(image_ids[i],) * d.shape[0], scores=d[:, 4], boxes=d[:, :4] + 1)
                 for i, d in enumerate(all_boxes[j])]
        out[name] = ClassDetections.concatenate(parts)
    return out


def write_results(all_boxes: list[list[np.ndarray]], image_ids: Sequence[str], results_dir: str | os.PathLike[str],
                  *, split: str) -> list[Path]:
    """Devkit results files in fast-rcnn's format (3-decimal scores, 1-decimal 1-based coordinates)."""
    from eval.metrics import write_voc_results

    return write_voc_results(results_dir, split, class_detections(all_boxes, image_ids),
                             score_decimals=FAST_RCNN_SCORE_DECIMALS, box_decimals=FAST_RCNN_BOX_DECIMALS)


def _palette_color(name: str) -> tuple[int, int, int]:
    """A fixed BGR colour per VOC class (the same in every picture and panel)."""
    k = DETECTION_CLASSES.index(name) if name in DETECTION_CLASSES else len(DETECTION_CLASSES)
    return (int(40 + 215 * ((k * 0.37) % 1)), int(40 + 215 * ((k * 0.61) % 1)), int(40 + 215 * ((k * 0.83) % 1)))


def _draw_boxes(canvas: np.ndarray, boxes: Sequence[tuple[str, Sequence[float], str]], thickness: int) -> None:
    """Draw (class name, (x1, y1, x2, y2) 0-based, label) boxes with a filled label tag on `canvas` in place."""
    import cv2

    for name, box, label in boxes:
        color = _palette_color(name)
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        top = max(y1 - th - base, 0)
        cv2.rectangle(canvas, (x1, top), (x1 + tw, top + th + base), color, -1)
        cv2.putText(canvas, label, (x1, top + th), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)


def _titled(panel: np.ndarray, title: str) -> np.ndarray:
    import cv2

    strip = np.full((24, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, title, (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([strip, panel])


def draw_detections(image_bgr: np.ndarray, dets_by_class: dict[str, np.ndarray], path: str | os.PathLike[str], *,
                    threshold: float = VIS_THRESHOLD,
                    ground_truth: Sequence[tuple[str, Sequence[float]]] | None = None) -> Path:
    """Save the image with each class's best boxes above `threshold` (at most 10 per class, as vis_detections).

    Args:
        image_bgr: (H, W, 3) uint8.
        dets_by_class: class name -> (n, 5) ``[x1, y1, x2, y2, score]``, 0-based pixels.
        ground_truth: (class name, (x1, y1, x2, y2) 0-based) objects; when given, the picture is two panels side by
            side, the ground truth on the left and the detections on the right, each with a title.
    Returns:
        `path` (the format follows its suffix); written with the user's umask and renamed into place.
    """
    import cv2

    from jigsawpp.io import write_bytes_atomic

    thickness = max(1, round(min(image_bgr.shape[:2]) / 250))
    detections = []
    for name, dets in dets_by_class.items():
        dets = dets[dets[:, 4] >= threshold]
        dets = dets[np.argsort(-dets[:, 4], kind="stable")][:VIS_MAX_PER_CLASS]
        detections += [(name, row[:4], f"{name} {row[4]:.2f}") for row in dets.tolist()]
    canvas = image_bgr.copy()
    _draw_boxes(canvas, detections, thickness)
    if ground_truth is not None:
        truth = image_bgr.copy()
        _draw_boxes(truth, [(name, box, name) for name, box in ground_truth], thickness)
        gap = np.full((image_bgr.shape[0] + 24, 8, 3), 255, np.uint8)
        canvas = np.hstack([_titled(truth, f"ground truth ({len(ground_truth)})"), gap,
                            _titled(canvas, f"detections, score >= {threshold:g} ({len(detections)})")])
    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix or ".jpg", canvas)
    if not ok:
        raise OSError(f"could not encode {path} (suffix {path.suffix!r} is not an image format OpenCV writes).")
    return write_bytes_atomic(path, encoded.tobytes())


def draw_results_with_ground_truth(voc_root: str | os.PathLike[str], split: str, results_dir: str | os.PathLike[str],
                                   out_dir: str | os.PathLike[str], *, image_ids: Sequence[str] | None = None,
                                   threshold: float = VIS_THRESHOLD) -> list[Path]:
    """One picture per image of `split` (or of `image_ids`): its ground truth beside the detections of the devkit
    results files in `results_dir` (fast-rcnn's ``comp4_det_<split>_<class>.txt``, 1-based boxes).

    Images are read with `jigsawpp.data.read_image_bgr` (a truncated or corrupt file is an error naming it).
    Returns the written ``<out_dir>/<image_id>.jpg`` paths in image order.
    """
    from eval.metrics import read_voc_results
    from eval.voc import VOCDataset
    from jigsawpp.data import read_image_bgr

    dataset = VOCDataset(voc_root, split)
    ids = list(dataset.image_ids if image_ids is None else image_ids)
    wanted = set(ids)
    per_image: dict[str, dict[str, list[np.ndarray]]] = {i: {} for i in ids}
    for name, dets in read_voc_results(results_dir, split, DETECTION_CLASSES[1:]).items():
        rows = np.hstack([dets.boxes - 1.0, dets.scores[:, None]])  # 1-based devkit boxes -> 0-based pixels
        for image_id, row in zip(dets.image_ids, rows):
            if image_id in wanted:
                per_image[image_id].setdefault(name, []).append(row)
    written = []
    for image_id in ids:
        truth = [(o.name, tuple(v - 1.0 for v in o.box)) for o in dataset.annotation(image_id).objects]
        dets = {name: np.asarray(rows, dtype=np.float64).reshape(-1, 5) for name, rows in per_image[image_id].items()}
        written.append(draw_detections(read_image_bgr(dataset.image_path(image_id)), dets,
                                       Path(out_dir) / f"{image_id}.jpg", threshold=threshold, ground_truth=truth))
    return written
