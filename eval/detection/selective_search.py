"""Selective search as R-CNN computed the proposals Fast R-CNN trains and tests on, built from OpenCV's pieces.

R-CNN (rbgirshick/rcnn@0262362 ``selective_search/selective_search_boxes.m``, called by
``op_selective_search_boxes.m`` with ``fast_mode = true`` on the full-resolution image) runs Uijlings et al.'s
IJCV 2013 code (``SelectiveSearchCodeIJCV``) in its "fast" mode:

* colour spaces HSV and Lab (``Image2ColourSpace``: ``im2uint8(rgb2hsv(im))`` and ``applycform(im,
  makecform('srgb2lab'))``, both 8-bit);
* for k in (50, 100), then for each colour space, one Felzenszwalb-Huttenlocher segmentation with sigma 0.8 and
  min size = k (``mexFelzenSegmentIndex`` on the 8-bit colour image);
* on each segmentation, one greedy hierarchical grouping per similarity, ``SSSimColourTextureSizeFillOrig`` and
  ``SSSimTextureSizeFill`` (``Image2HierarchicalGrouping``): repeatedly merge the most similar pair of adjacent
  regions; the boxes of the merged regions get priority ``n_merges .. 1`` in merge order (the last merge, the whole
  image, 1), the initial regions, once per segmentation, priority ``n_merges + 1``;
* priority times ``rand`` (uniform on [0, 1)), sorted ascending (the "pseudo-random ordering" of the paper),
  then boxes narrower or shorter than 20 pixels removed (``FilterBoxesWidth``) and exact duplicates removed keeping
  the first (``BoxRemoveDuplicates``).

Here the segmentation is ``cv2.ximgproc.segmentation.createGraphSegmentation(sigma, k, min_size)`` and the
similarities are ``createSelectiveSearchSegmentationStrategyMultiple`` of the Color, Texture, Size and Fill
strategies; the grouping loop, the region adjacency, the priorities and the ordering are R-CNN's and written here,
because ``SelectiveSearchSegmentation.process`` ranks boxes its own way (``level * rand()`` from C's unseeded
``rand``, initial regions repeated per strategy). OpenCV's ``switchToSelectiveSearchFast`` is a different setting
(k = 150, 300, 450 with OpenCV's default min size 100, OpenCV's HSV with hue in 0..179); it stays available as the
``opencv_fast`` proposal method.

Differences that remain from R-CNN's MATLAB proposals (they change which boxes come out, not the procedure):

1. Segmentation graph: OpenCV connects each pixel to its 4 neighbours; Felzenszwalb's code (as vendored in
   ``mexFelzenSegmentIndex``) to 8 (right, down, down-right, up-right).
2. Smoothing: OpenCV's ``GaussianBlur`` (7-tap kernel for sigma 0.8, reflect-101 border); Felzenszwalb's
   ``smooth`` (9-tap kernel, ``ceil(4 sigma) + 1`` per side, replicated border).
3. Lab: OpenCV converts with a D65 white point; MATLAB's ``makecform('srgb2lab')`` adapts to its default white
   point (documented as D50). Both store L * 255 / 100 and a + 128, b + 128 in 8 bits. HSV agrees (OpenCV's
   ``COLOR_BGR2HSV_FULL`` scales hue to 0..255 as ``im2uint8`` does), up to rounding.
4. Texture histograms: OpenCV takes Scharr derivatives along x, y and the two diagonals (positive and negative
   parts, each min-max scaled to 0..255, 10 bins); the IJCV code uses Gaussian derivatives (sigma 1) in 8
   orientations (``anigauss``), 10 bins. Colour histograms: 25 bins per channel in both, over 0..255 here and over
   the double image in [0, 1] there (bin edges differ by less than one grey level).
5. Similarity weights and normalisation: the IJCV similarity functions ship as MATLAB p-code; we follow the paper
   (sum of the terms; OpenCV's Multiple averages them, which orders merges identically) and OpenCV's histogram
   normalisation (over the concatenated histogram).
6. Ties: equal similarities are merged in heap order (lowest region index first); MATLAB's order is unknown.
   Region indices differ too (OpenCV labels row by row, Felzenszwalb's wrapper column by column).
7. The random priorities come from ``numpy.random.RandomState(seed)`` (MATLAB's ``rand``, unseeded in R-CNN, gave
   an order nobody can reproduce either); the order only decides which of the same boxes come first.

Region adjacency is the IJCV wrapper's: regions touching horizontally or vertically (4-connected).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

__all__ = ["RCNN_FAST", "SelectiveSearchSetting", "region_adjacency", "region_boxes", "selective_search_rcnn"]


@dataclass(frozen=True)
class SelectiveSearchSetting:
    """One selective-search mode: its segmentations, colour spaces and similarity strategies."""

    ks: tuple[int, ...]  # Felzenszwalb k; min size = k
    sigma: float
    colour_spaces: tuple[str, ...]  # "hsv" (OpenCV HSV_FULL) and/or "lab"
    strategies: tuple[tuple[str, ...], ...]  # similarity terms of each grouping
    min_box_size: int  # FilterBoxesWidth
    seed: int  # of the pseudo-random ordering


# selective_search_boxes.m, fast_mode: ks(1:2), colorTypes(1:2), simFunctionHandles(1:2), sigma 0.8, minBoxWidth 20
RCNN_FAST = SelectiveSearchSetting(ks=(50, 100), sigma=0.8, colour_spaces=("hsv", "lab"),
                                   strategies=(("colour", "texture", "size", "fill"), ("texture", "size", "fill")),
                                   min_box_size=20, seed=0)


def _colour_image(image_bgr: np.ndarray, space: str) -> np.ndarray:
    import cv2

    codes = {"hsv": cv2.COLOR_BGR2HSV_FULL, "lab": cv2.COLOR_BGR2Lab}
    if space not in codes:
        raise ValueError(f"selective search: unknown colour space {space!r}; choose from {sorted(codes)}.")
    return cv2.cvtColor(image_bgr, codes[space])


def _strategy(terms: tuple[str, ...]):
    import cv2

    seg = cv2.ximgproc.segmentation
    makers = {"colour": seg.createSelectiveSearchSegmentationStrategyColor,
              "texture": seg.createSelectiveSearchSegmentationStrategyTexture,
              "size": seg.createSelectiveSearchSegmentationStrategySize,
              "fill": seg.createSelectiveSearchSegmentationStrategyFill}
    unknown = [t for t in terms if t not in makers]
    if unknown or not 1 <= len(terms) <= 4:
        raise ValueError(f"selective search: a strategy combines 1 to 4 of {sorted(makers)}, got {terms}.")
    return seg.createSelectiveSearchSegmentationStrategyMultiple(*(makers[t]() for t in terms))


def region_boxes(labels: np.ndarray, count: int) -> np.ndarray:
    """(count, 4) int64 (x1, y1, x2, y2) inclusive bounding box of each label of an (H, W) label image."""
    h, w = labels.shape
    flat = labels.ravel()
    xs = np.tile(np.arange(w), h)
    ys = np.repeat(np.arange(h), w)
    x1 = np.full(count, w, dtype=np.int64)
    y1 = np.full(count, h, dtype=np.int64)
    x2 = np.full(count, -1, dtype=np.int64)
    y2 = np.full(count, -1, dtype=np.int64)
    np.minimum.at(x1, flat, xs)
    np.minimum.at(y1, flat, ys)
    np.maximum.at(x2, flat, xs)
    np.maximum.at(y2, flat, ys)
    return np.stack([x1, y1, x2, y2], axis=1)


def region_adjacency(labels: np.ndarray) -> np.ndarray:
    """(E, 2) int64 pairs ``a < b`` of labels that touch horizontally or vertically, sorted."""
    a = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()]).astype(np.int64)
    b = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()]).astype(np.int64)
    differ = a != b
    lo, hi = np.minimum(a[differ], b[differ]), np.maximum(a[differ], b[differ])
    keys = np.unique(lo * (1 << 32) + hi)
    return np.stack([keys >> 32, keys & 0xFFFFFFFF], axis=1)


def _group(image: np.ndarray, labels: np.ndarray, boxes: np.ndarray, pairs: np.ndarray, terms: tuple[str, ...]
           ) -> np.ndarray:
    """Greedy hierarchical grouping; returns the (n - 1, 4) boxes of the merged regions in merge order.

    The strategy keeps per-region state (histograms, sizes, boxes) indexed by initial label; a merged region is
    represented by the smaller of its two labels, as OpenCV's own grouping does, and `sizes` is shared with it
    (``setImage`` keeps a view of the array).
    """
    count = boxes.shape[0]
    strategy = _strategy(terms)
    sizes = np.bincount(labels.ravel(), minlength=count).astype(np.int32).reshape(count, 1)
    strategy.setImage(image, labels, sizes, -1)
    similarity = strategy.get
    label = list(range(count))  # strategy label of each region (initial 0..n-1, merged n..)
    alive = [True] * count
    neighbours: list[set[int]] = [set() for _ in range(count)]
    heap = []
    for a, b in pairs.tolist():
        neighbours[a].add(b)
        neighbours[b].add(a)
        heap.append((-similarity(a, b), a, b))
    heapq.heapify(heap)
    merged = [tuple(row) for row in boxes.tolist()]
    while heap:
        _, a, b = heapq.heappop(heap)
        if not (alive[a] and alive[b]):
            continue  # a stale pair: one side was merged since it was pushed
        la, lb = label[a], label[b]
        strategy.merge(la, lb)  # histograms weighted by the sizes before the merge
        sizes[la, 0] = sizes[lb, 0] = sizes[la, 0] + sizes[lb, 0]
        new = len(merged)
        ba, bb = merged[a], merged[b]
        merged.append((min(ba[0], bb[0]), min(ba[1], bb[1]), max(ba[2], bb[2]), max(ba[3], bb[3])))
        label.append(min(la, lb))
        alive[a] = alive[b] = False
        alive.append(True)
        around = (neighbours[a] | neighbours[b]) - {a, b}
        neighbours.append(around)
        for c in around:
            neighbours[c].discard(a)
            neighbours[c].discard(b)
            neighbours[c].add(new)
            heapq.heappush(heap, (-similarity(label[new], label[c]), new, c))
    return np.asarray(merged[count:], dtype=np.int64).reshape(-1, 4)


def _hierarchies(colour: np.ndarray, k: int, setting: SelectiveSearchSetting) -> tuple[np.ndarray, np.ndarray]:
    """``Image2HierarchicalGrouping``: boxes and priorities of one segmentation, sorted by priority."""
    import cv2

    segmenter = cv2.ximgproc.segmentation.createGraphSegmentation(setting.sigma, float(k), int(k))
    labels = segmenter.processImage(colour)
    count = int(labels.max()) + 1
    initial = region_boxes(labels, count)
    if count == 1:  # "Oversegmentation results in a single region only": its box, priority 1
        return initial, np.ones(1)
    pairs = region_adjacency(labels)
    boxes, priorities = [], []
    for terms in setting.strategies:
        merged = _group(colour, labels, initial, pairs, terms)
        boxes.append(merged)
        priorities.append(np.arange(merged.shape[0], 0, -1, dtype=np.float64))
    boxes.append(initial)
    priorities.append(np.full(count, boxes[0].shape[0] + 1, dtype=np.float64))
    boxes_, priorities_ = np.concatenate(boxes), np.concatenate(priorities)
    order = np.argsort(priorities_, kind="stable")  # MATLAB's sort is stable
    return boxes_[order], priorities_[order]


def selective_search_rcnn(image_bgr: np.ndarray, setting: SelectiveSearchSetting = RCNN_FAST) -> np.ndarray:
    """R-CNN's selective-search boxes of one image (see the module docstring).

    Args:
        image_bgr: (H, W, 3) uint8 BGR image at full resolution.
        setting: `RCNN_FAST` (R-CNN's) or another `SelectiveSearchSetting`.
    Returns:
        (R, 4) int32 (x1, y1, x2, y2) 0-based inclusive boxes in R-CNN's pseudo-random priority order, each at least
        ``min_box_size`` pixels wide and high, no duplicates.
    """
    from eval.detection.proposals import filter_proposals, require_ximgproc

    require_ximgproc()
    image = np.ascontiguousarray(image_bgr)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"selective search needs an (H, W, 3) uint8 BGR image, got {image.dtype} {image.shape}.")
    colours = {space: _colour_image(image, space) for space in setting.colour_spaces}
    boxes, priorities = [], []
    for k in setting.ks:  # selective_search_boxes.m: k outer, colour type inner
        for space in setting.colour_spaces:
            b, p = _hierarchies(colours[space], k, setting)
            boxes.append(b)
            priorities.append(p)
    all_boxes, all_priorities = np.concatenate(boxes), np.concatenate(priorities)
    ranked = all_priorities * np.random.RandomState(setting.seed).random_sample(all_priorities.shape)
    ordered = all_boxes[np.argsort(ranked, kind="stable")]
    return filter_proposals(ordered, min_size=setting.min_box_size).astype(np.int32)
