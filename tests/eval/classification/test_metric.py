"""VOC classification AP against independent references: scikit-learn (Krähenbühl et al.'s AP) and a plain-loop
float64 port of the devkit's VOCevalcls.m written here from the MATLAB source, on random scores with ties, difficult
labels and images without a score."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval.classification.metric import VOCClassificationMetric, devkit_curve, sklearn_style_ap
from eval.constants import METRIC_11POINT, METRIC_AREA
from eval.metrics import voc_ap

sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the oracle of these tests")

# MATLAB's 0:0.1:1 fills the range from both ends (k*0.1 for the first half, 1 - k*0.1 for the second).
MATLAB_THRESHOLDS = [k * 0.1 for k in range(6)] + [1.0 - k * 0.1 for k in (4, 3, 2, 1, 0)]


def _matlab_max(values):
    finite = [v for v in values if not math.isnan(v)]
    return max(finite) if finite else math.nan


def vocevalcls_port(gt_ids, gt, lines):
    """VOCevalcls.m (VOC2007 kit) line by line: returns (11-point AP, VOCap area AP)."""
    out = [-math.inf] * len(gt)
    for image_id, confidence in lines:
        out[gt_ids.index(image_id)] = confidence
    si = sorted(range(len(gt)), key=lambda i: -out[i])  # [so,si]=sort(-out): stable
    npos = sum(1 for g in gt if g > 0)
    tp = fp = 0
    rec, prec = [], []
    for i in si:
        tp += gt[i] > 0
        fp += gt[i] < 0
        rec.append(tp / npos)
        prec.append(tp / (fp + tp) if fp + tp else math.nan)
    ap11 = 0.0
    for t in MATLAB_THRESHOLDS:
        selected = [p for r, p in zip(rec, prec) if r >= t]
        ap11 = ap11 + (_matlab_max(selected) if selected else 0.0) / 11
    mrec, mpre = [0.0] + rec + [1.0], [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = _matlab_max([mpre[i], mpre[i + 1]])
    area = sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])
    return ap11, area


def _random_case(rng, n):
    gt = rng.choice([1, -1, 0], size=n, p=[0.3, 0.6, 0.1])
    if not (gt > 0).any():
        gt[0] = 1
    scores = np.round(rng.normal(size=n) + 0.8 * (gt > 0), 1)  # one decimal: many ties
    return gt, scores


@pytest.mark.parametrize("seed", range(40))
def test_sklearn_style_ap_equals_scikit_learn_with_ties_and_difficult(seed):
    rng = np.random.default_rng(seed)
    gt, scores = _random_case(rng, int(rng.integers(5, 80)))
    keep = gt != 0
    y = (gt[keep] > 0).astype(float)
    expected = sklearn_metrics.average_precision_score(y, scores[keep] - 1e-5 * y)
    assert sklearn_style_ap(scores, gt) == pytest.approx(expected, abs=1e-12)


def test_tie_breaking_of_each_definition():
    # two images share a score; the negative comes first in the image set
    gt, scores = np.array([-1, 1, -1]), np.array([0.5, 0.5, 0.1])
    rec, prec = devkit_curve(scores, gt)
    assert prec.tolist() == [0.0, 0.5, 1 / 3]  # stable: the negative is ranked first
    rec, prec = devkit_curve(scores[[1, 0, 2]], gt[[1, 0, 2]])
    assert prec.tolist() == [1.0, 0.5, 1 / 3]  # image-set order decides
    # Kraehenbuehl: the positive is nudged below the tied negative, whatever the order
    assert sklearn_style_ap(scores, gt) == pytest.approx(0.5)
    assert sklearn_style_ap(scores[[1, 0, 2]], gt[[1, 0, 2]]) == pytest.approx(0.5)
    assert sklearn_style_ap(scores, gt, tie_eps=0.0) == pytest.approx(0.5)  # one threshold for the tie
    # difficult images are invisible to both
    gt_d, scores_d = np.array([0, -1, 1]), np.array([0.9, 0.5, 0.4])
    assert sklearn_style_ap(scores_d, gt_d) == pytest.approx(0.5)
    rec, prec = devkit_curve(scores_d, gt_d)
    assert math.isnan(prec[0]) and prec[1:].tolist() == [0.0, 0.5]
    assert voc_ap(rec, prec, metric=METRIC_11POINT) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(40))
def test_metric_equals_a_port_of_vocevalcls(seed):
    rng = np.random.default_rng(100 + seed)
    n, n_classes = int(rng.integers(20, 60)), 3
    ids = [f"{i:06d}" for i in rng.permutation(10**5)[:n]]
    classes = ("a", "b", "c")
    labels = np.stack([_random_case(rng, n)[0] for _ in classes], axis=1)
    metric = VOCClassificationMetric(ids, labels, classes)
    lines = {c: [] for c in classes}
    scores = np.round(rng.normal(size=(n, n_classes)), 1)
    for j in rng.permutation(n):
        if rng.random() < 0.1:
            continue  # no score: -inf in the devkit
        for k, c in enumerate(classes):
            metric.add_class_score(c, ids[j], float(scores[j, k]))
            lines[c].append((ids[j], float(scores[j, k])))
    ap = metric.compute()
    for k, c in enumerate(classes):
        ap11, area = vocevalcls_port(ids, labels[:, k].tolist(), lines[c])
        assert ap.ap_11point[c] == pytest.approx(ap11, abs=1e-12), c
        assert ap.ap_area[c] == pytest.approx(area, abs=1e-12), c
        given = {i for i, _ in lines[c]}
        full = np.array([dict(lines[c]).get(i, -math.inf) for i in ids])
        keep = (labels[:, k] != 0)
        y = (labels[keep, k] > 0).astype(float)
        # sklearn needs finite scores: images without one tie below everything, un-nudged (-inf - eps = -inf)
        adjusted = np.where(np.isinf(full[keep]), np.nanmin(np.where(np.isinf(full), np.nan, full)) - 10.0,
                            full[keep] - 1e-5 * y)
        expected = sklearn_metrics.average_precision_score(y, adjusted)
        assert ap.ap_sklearn[c] == pytest.approx(expected, abs=1e-12), c
        assert ap.n_missing[c] == n - len(given)
    assert ap.map_sklearn == pytest.approx(np.mean(list(ap.ap_sklearn.values())))


def test_classes_without_positives_are_left_out_of_the_means():
    labels = np.array([[1, -1], [-1, -1], [0, -1]])
    metric = VOCClassificationMetric(["x", "y", "z"], labels, ("a", "b"))
    for i, s in zip("xyz", ([2.0, 1.0], [1.0, 0.0], [3.0, 2.0])):
        metric.add_scores(i, s)
    ap = metric.compute()
    assert ap.ap_sklearn["a"] == 1.0 and math.isnan(ap.ap_sklearn["b"]) and math.isnan(ap.ap_11point["b"])
    assert ap.map_sklearn == 1.0 and ap.map_11point == pytest.approx(1.0) and ap.map_area == 1.0  # 11 x 1/11
    assert ap.n_difficult == {"a": 1, "b": 0} and ap.n_neg == {"a": 1, "b": 3}


def test_bad_input_is_named():
    metric = VOCClassificationMetric(["x"], np.array([[1]]), ("a",))
    with pytest.raises(ValueError, match="unrecognized image 'q'"):
        metric.add_class_score("a", "q", 1.0)
    metric.add_class_score("a", "x", 1.0)
    with pytest.raises(ValueError, match="two scores"):
        metric.add_class_score("a", "x", 2.0)
    with pytest.raises(ValueError, match="1 / -1 / 0"):
        VOCClassificationMetric(["x"], np.array([[2]]), ("a",)).compute()
    assert voc_ap(np.array([1.0]), np.array([1.0]), metric=METRIC_AREA) == 1.0
