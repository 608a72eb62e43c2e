"""Box arithmetic against plain-loop ports of fast-rcnn's Cython kernels (bbox.pyx, nms.pyx) and hand cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from eval.detection.boxes import apply_deltas, bbox_targets, box_overlaps, clip_boxes, flip_boxes, nms


def _random_boxes(rng: np.random.RandomState, n: int, size: float = 100.0, integer: bool = True) -> np.ndarray:
    xy = rng.uniform(0, size, size=(n, 2))
    wh = rng.uniform(1, size / 2, size=(n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    return np.round(boxes) if integer else boxes


def _overlaps_loop(boxes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """bbox.pyx ``bbox_overlaps``, loop for loop, float64."""
    out = np.zeros((boxes.shape[0], query.shape[0]))
    for k in range(query.shape[0]):
        box_area = (query[k, 2] - query[k, 0] + 1) * (query[k, 3] - query[k, 1] + 1)
        for n in range(boxes.shape[0]):
            iw = min(boxes[n, 2], query[k, 2]) - max(boxes[n, 0], query[k, 0]) + 1
            if iw > 0:
                ih = min(boxes[n, 3], query[k, 3]) - max(boxes[n, 1], query[k, 1]) + 1
                if ih > 0:
                    ua = (boxes[n, 2] - boxes[n, 0] + 1) * (boxes[n, 3] - boxes[n, 1] + 1) + box_area - iw * ih
                    out[n, k] = iw * ih / ua
    return out


def _nms_loop(dets: np.ndarray, thresh: float) -> list[int]:
    """nms.pyx in float32: visit by decreasing score, suppress later boxes with IoU >= thresh."""
    dets = dets.astype(np.float32)
    x1, y1, x2, y2, scores = (dets[:, k] for k in range(5))
    areas = (x2 - x1 + np.float32(1)) * (y2 - y1 + np.float32(1))
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(len(dets), dtype=bool)
    keep = []
    one, zero = np.float32(1), np.float32(0)
    for a in range(len(dets)):
        i = order[a]
        if suppressed[i]:
            continue
        keep.append(int(i))
        for b in range(a + 1, len(dets)):
            j = order[b]
            if suppressed[j]:
                continue
            w = max(zero, np.float32(min(x2[i], x2[j]) - max(x1[i], x1[j])) + one)
            h = max(zero, np.float32(min(y2[i], y2[j]) - max(y1[i], y1[j])) + one)
            inter = np.float32(w * h)
            ovr = np.float32(inter / np.float32(np.float32(areas[i] + areas[j]) - inter))
            if ovr >= np.float32(thresh):
                suppressed[j] = True
    return keep


@pytest.mark.parametrize("seed,integer", list(itertools.product(range(4), (True, False))))
def test_box_overlaps_matches_loop(seed, integer):
    rng = np.random.RandomState(seed)
    boxes, query = _random_boxes(rng, 30, integer=integer), _random_boxes(rng, 7, integer=integer)
    np.testing.assert_allclose(box_overlaps(boxes, query), _overlaps_loop(boxes, query), rtol=0, atol=1e-15)


def test_box_overlaps_inclusive_pixels():
    # two 10x10 boxes sharing one column: intersection 1x10 = 10, union 190 (no +1 would give 0)
    a = np.array([[0, 0, 9, 9]], float)
    b = np.array([[9, 0, 18, 9]], float)
    assert box_overlaps(a, b)[0, 0] == pytest.approx(10 / 190)
    assert box_overlaps(a, a)[0, 0] == 1.0
    assert box_overlaps(a, np.array([[10, 0, 20, 9]], float))[0, 0] == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_targets_round_trip(seed):
    rng = np.random.RandomState(seed)
    rois, gt = _random_boxes(rng, 50), _random_boxes(rng, 50)
    deltas = bbox_targets(rois, gt)
    decoded = apply_deltas(rois, np.tile(deltas, (1, 3)))  # three "classes" with the same deltas
    for k in range(3):
        np.testing.assert_allclose(decoded[:, 4 * k:4 * k + 4], gt, rtol=0, atol=1e-9)


def test_targets_formula():
    # pw = x2 - x1 + EPS (fast-rcnn, not + 1): roi 0..10 (width 10), gt 5..25 (width 20)
    deltas = bbox_targets(np.array([[0, 0, 10, 10.0]]), np.array([[5, 0, 25, 10.0]]))[0]
    np.testing.assert_allclose(deltas, [(15 - 5) / 10, 0, np.log(2.0), 0], atol=1e-12)
    assert np.all(bbox_targets(np.array([[3, 4, 30, 40.0]]), np.array([[3, 4, 30, 40.0]])) == 0)


def test_apply_deltas_shapes_and_errors():
    assert apply_deltas(np.zeros((0, 4)), np.zeros((0, 84))).shape == (0, 84)
    with pytest.raises(ValueError, match="4K"):
        apply_deltas(np.zeros((2, 4)), np.zeros((2, 6)))


def test_clip_and_flip():
    boxes = np.array([[-5, -3, 120, 90], [10, 20, 30, 40]], float)
    clipped = clip_boxes(np.tile(boxes, (1, 2)), height=50, width=100)
    np.testing.assert_array_equal(clipped[0], [0, 0, 99, 49, 0, 0, 99, 49])
    np.testing.assert_array_equal(clipped[1], [10, 20, 30, 40, 10, 20, 30, 40])
    flipped = flip_boxes(boxes[1:], width=100)
    np.testing.assert_array_equal(flipped, [[69, 20, 89, 40]])  # x1' = W - x2 - 1, x2' = W - x1 - 1
    np.testing.assert_array_equal(flip_boxes(flipped, width=100), boxes[1:])
    np.testing.assert_array_equal(flip_boxes(np.array([[0, 0, 99, 9.0]]), width=100), [[0, 0, 99, 9]])


@pytest.mark.parametrize("seed,thresh", list(itertools.product(range(6), (0.0, 0.3, 0.5, 0.7, 1.0))))
def test_nms_matches_loop(seed, thresh):
    rng = np.random.RandomState(seed)
    boxes = _random_boxes(rng, 60, size=60, integer=seed % 2 == 0)
    scores = rng.uniform(size=60)
    if seed % 3 == 0:
        scores = np.round(scores, 1)  # many ties: broken by the lower index
    keep = nms(torch.from_numpy(boxes).float(), torch.from_numpy(scores).float(), thresh)
    assert keep.tolist() == _nms_loop(np.hstack([boxes, scores[:, None]]), thresh)


def test_nms_suppresses_at_equality_and_counts_pixels():
    # IoU exactly 0.5: 10x10 boxes overlapping 10x(20/3)... use a constructed pair: [0,0,9,9] and [0,0,19,9]
    # give IoU 100/200 = 0.5, suppressed at threshold 0.5 (nms.pyx ">="), kept at 0.51
    boxes = torch.tensor([[0, 0, 9, 9], [0, 0, 19, 9]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, 0.5).tolist() == [0]
    assert nms(boxes, scores, 0.51).tolist() == [0, 1]
    # touching boxes overlap by one pixel column under the +1 convention
    touching = torch.tensor([[0, 0, 9, 9], [9, 0, 18, 9]], dtype=torch.float32)
    assert nms(touching, scores, 0.05).tolist() == [0]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.3).numel() == 0
    with pytest.raises(ValueError):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.3)
