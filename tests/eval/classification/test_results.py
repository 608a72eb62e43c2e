"""Devkit classification image sets and results files on the real sample photos: labels derived by the devkit's rule,
results written and scored back, and the errors a user sees."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eval.classification.labels import read_class_labels, training_targets
from eval.classification.results import (
    cls_results_path,
    score_classification,
    write_classification_scores,
    write_cls_results,
)
from eval.constants import VOC_CLASSES


def test_labels_follow_the_devkit_rule(cls_sample):
    from eval.voc import VOCDataset

    gt = read_class_labels(cls_sample.root, "test")
    assert gt.image_ids == cls_sample.image_ids and gt.labels.shape == (len(gt.image_ids), 20)
    dataset = VOCDataset(cls_sample.root, "test")
    for row, image_id in zip(gt.labels, gt.image_ids):
        names = {o.name for o in dataset.annotation(image_id).objects if not o.difficult}
        assert {VOC_CLASSES[k] for k in np.flatnonzero(row == 1)} == names
    assert training_targets(np.array([1, -1, 0])).tolist() == [1, 0, 255]


def test_results_round_trip_and_score(cls_sample, tmp_path):
    gt = read_class_labels(cls_sample.root, "test")
    rng = np.random.default_rng(0)
    perfect = gt.labels.astype(float) + rng.uniform(0, 0.1, size=gt.labels.shape)
    write_cls_results(tmp_path, "test", gt.image_ids, perfect)
    ap = score_classification(cls_sample.root, "test", tmp_path)
    assert ap.map_sklearn == 1.0 and ap.map_11point == pytest.approx(1.0) and ap.map_area == 1.0
    positives = [c for c in VOC_CLASSES if ap.n_pos[c]]
    assert len(positives) >= 3 and all(ap.ap_sklearn[c] != ap.ap_sklearn[c] for c in VOC_CLASSES
                                       if c not in positives)  # NaN without positives
    path = write_classification_scores(ap, tmp_path, split="test", stamp=None)
    summary = json.loads(path.read_text())
    assert summary["map_sklearn"] == 1.0 and summary["per_class"]["aeroplane"]["ap_sklearn"] is None
    inverted = -perfect
    write_cls_results(tmp_path / "bad", "test", gt.image_ids, inverted)
    assert score_classification(cls_sample.root, "test", tmp_path / "bad").map_sklearn < 0.8


def test_results_file_errors_name_file_and_line(cls_sample, tmp_path):
    gt = read_class_labels(cls_sample.root, "test")
    write_cls_results(tmp_path, "test", gt.image_ids, np.zeros(gt.labels.shape))
    path = cls_results_path(tmp_path, split="test", class_name="person")
    path.write_text(path.read_text() + "nosuchimage 0.5\n")
    with pytest.raises(ValueError, match=r"comp1_cls_test_person.txt, line 5: unrecognized image 'nosuchimage'"):
        score_classification(cls_sample.root, "test", tmp_path)
    path.write_text(f"{gt.image_ids[0]} 0.5\n{gt.image_ids[0]} 0.7\n")
    with pytest.raises(ValueError, match="line 2: image .* has two scores for class person"):
        score_classification(cls_sample.root, "test", tmp_path)
    path.write_text(f"{gt.image_ids[0]} high\n")
    with pytest.raises(ValueError, match="line 1: the score 'high' is not a number"):
        score_classification(cls_sample.root, "test", tmp_path)
    path.unlink()
    with pytest.raises(FileNotFoundError, match="comp1_cls_test_person.txt does not exist"):
        score_classification(cls_sample.root, "test", tmp_path)
    with pytest.raises(FileNotFoundError, match="aeroplane_val.txt does not exist"):
        read_class_labels(cls_sample.root, "val")
