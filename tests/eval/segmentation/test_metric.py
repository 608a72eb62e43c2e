"""FCN's segmentation scores (eval.segmentation.metric) against mmeval's MeanIoU, an independent implementation, on
random label maps with void (255) pixels, and against hand-worked cases of score.py's formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval.segmentation.metric import SegmentationMetric, confusion_matrix, scores_from_confusion

mmeval = pytest.importorskip("mmeval", reason='pip install --no-deps mmeval==0.2.1 "plum-dispatch<2" rich pyyaml')


def _random_maps(rng, n_images, num_classes, *, absent=()):
    pairs = []
    for _ in range(n_images):
        h, w = rng.integers(5, 40, size=2)
        gt = rng.integers(0, num_classes, size=(h, w))
        pred = np.where(rng.random((h, w)) < 0.6, gt, rng.integers(0, num_classes, size=(h, w)))
        for c in absent:  # a class neither in the ground truth nor predicted: NaN IU, skipped by both means
            gt[gt == c] = 0
            pred[pred == c] = 0
        gt[rng.random((h, w)) < 0.15] = 255
        pairs.append((gt.astype(np.uint8), pred.astype(np.uint8)))
    return pairs


@pytest.mark.parametrize("seed", range(12))
def test_scores_equal_mmeval_mean_iou(seed):
    rng = np.random.default_rng(seed)
    num_classes = 21 if seed % 2 else 5
    pairs = _random_maps(rng, int(rng.integers(1, 6)), num_classes, absent=(3,) if seed % 3 == 0 else ())
    ours = SegmentationMetric(num_classes)
    for k, (gt, pred) in enumerate(pairs):
        ours.update(gt, pred, image_id=str(k))
    scores = ours.compute()
    oracle = mmeval.MeanIoU(num_classes=num_classes, ignore_index=255, classwise_results=True)
    with np.errstate(divide="ignore", invalid="ignore"):  # its precision/recall of absent classes
        ref = oracle([p.astype(np.int64) for _, p in pairs], [g.astype(np.int64) for g, _ in pairs])
    assert scores.mean_iu == pytest.approx(ref["mIoU"], abs=1e-12)
    assert scores.pixel_accuracy == pytest.approx(ref["aAcc"], abs=1e-12)
    assert scores.mean_accuracy == pytest.approx(ref["mAcc"], abs=1e-12)
    ref_iu = np.asarray(ref["classwise_results"]["IoU"], dtype=float)
    np.testing.assert_allclose(scores.iu, ref_iu, atol=1e-12, equal_nan=True)
    if seed % 3 == 0:
        assert math.isnan(scores.iu[3]) and math.isnan(scores.accuracy[3])


def test_hand_worked_confusion_and_frequency_weighted_iu():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 1]])
    hist = confusion_matrix(gt, pred, 3)
    assert hist.tolist() == [[1, 1, 0], [0, 3, 0], [1, 0, 1]]  # the void pixel predicted 2 is dropped
    s = scores_from_confusion(hist)
    iu = [1 / (2 + 2 - 1), 3 / (3 + 4 - 3), 1 / (2 + 1 - 1)]
    np.testing.assert_allclose(s.iu, iu)
    assert s.pixel_accuracy == pytest.approx(5 / 7)
    assert s.mean_accuracy == pytest.approx(np.mean([1 / 2, 3 / 3, 1 / 2]))
    assert s.frequency_weighted_iu == pytest.approx(2 / 7 * iu[0] + 3 / 7 * iu[1] + 2 / 7 * iu[2])


def test_bad_predictions_name_the_image():
    metric = SegmentationMetric(21)
    gt = np.zeros((4, 5), dtype=np.uint8)
    with pytest.raises(ValueError, match="image 2008_000001.*shape"):
        metric.update(gt, np.zeros((5, 4), dtype=np.uint8), image_id="2008_000001")
    with pytest.raises(ValueError, match=r"image x: predicted labels \[255\]"):
        metric.update(gt, np.full((4, 5), 255, dtype=np.uint8), image_id="x")
    assert metric.n_images == 0
