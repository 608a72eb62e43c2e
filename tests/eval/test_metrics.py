"""VOC detection AP (eval.metrics, eval.voc) against hand-computed cases and against mmeval's VOCMeanAP.

The hand cases follow VOCevaldet.m / VOCap.m line by line; the expected numbers are worked out in the comments.
mmeval 0.2.1 is an independent implementation (install: see ``_MMEVAL_HINT``); its known deviations from the devkit
are handled explicitly: numpy.arange recall thresholds, an unstable sort on score ties, and the order in which it
concatenates difficult ground truth.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import eval.metrics as metrics_module
from eval.constants import FAST_RCNN_BOX_DECIMALS, FAST_RCNN_SCORE_DECIMALS, VOC07_RECALL_THRESHOLDS, VOC_CLASSES
from eval.metrics import (
    ClassDetections,
    VOCDetectionMetric,
    match_detections,
    plot_pr_curves,
    read_voc_results,
    results_path,
    score_detections,
    voc_ap,
    write_scores,
    write_voc_results,
)
from eval.voc import VOCDataset, load_annotation

_MMEVAL_HINT = 'pip install --no-deps mmeval==0.2.1 "plum-dispatch<2" rich pyyaml'
TOL = 1e-6  # mmeval stores per-class AP as float32


def _single_class_ap(gt, dets, *, classes=("a",)):
    """gt: {image: [(box, difficult), ...]}; dets: [(image, score, box), ...] in file order, all of class 0."""
    metric = VOCDetectionMetric(classes)
    for image_id, objects in gt.items():
        metric.add_ground_truth(
            image_id,
            boxes=[b for b, _ in objects],
            labels=[0] * len(objects),
            difficult=[d for _, d in objects],
        )
    for image_id, score, box in dets:
        metric.add_detections(image_id, boxes=[box], scores=[score], labels=[0])
    return metric.compute()


# ---------------------------------------------------------------------------------------------------------------
# Hand-computed cases
# ---------------------------------------------------------------------------------------------------------------


def test_tp_duplicate_and_background_fp():
    gt = {"im": [((1, 1, 10, 10), False), ((21, 21, 30, 30), False)]}
    dets = [
        ("im", 0.9, (1, 1, 10, 10)),  # TP on box 1
        ("im", 0.8, (1, 1, 10, 10)),  # duplicate of box 1 -> FP
        ("im", 0.7, (50, 50, 60, 60)),  # no overlap -> FP
        ("im", 0.6, (21, 21, 30, 30)),  # TP on box 2
    ]
    ap = _single_class_ap(gt, dets)
    # rec = .5 .5 .5 1 ; prec = 1 .5 1/3 .5
    np.testing.assert_allclose(ap.recall["a"], [0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(ap.precision["a"], [1.0, 0.5, 1 / 3, 0.5])
    # 11-point: t = 0..0.5 reach precision 1 (6 thresholds), t = 0.6..1 only the last point, 0.5 (5 thresholds).
    assert ap.per_class["a"] == pytest.approx((6 * 1.0 + 5 * 0.5) / 11, abs=1e-15)
    # area: monotone precision [1, 1, .5, .5, .5]; recall steps 0->.5 at precision 1 and .5->1 at .5.
    assert ap.per_class_area["a"] == pytest.approx(0.5 * 1.0 + 0.5 * 0.5, abs=1e-15)
    assert ap.n_pos["a"] == 2 and ap.n_detections["a"] == 4
    assert ap.map_11point == ap.per_class["a"] and ap.map_area == ap.per_class_area["a"]


def test_detection_on_difficult_object_is_ignored():
    gt = {"im": [((1, 1, 10, 10), False), ((21, 21, 30, 30), True)]}
    dets = [
        ("im", 0.9, (21, 21, 30, 30)),  # matches the difficult box: neither TP nor FP
        ("im", 0.8, (1, 1, 10, 10)),  # TP
        ("im", 0.7, (100, 100, 110, 110)),  # FP
    ]
    ap = _single_class_ap(gt, dets)
    assert ap.n_pos["a"] == 1  # difficult objects are not positives
    # tp = 0 1 1, fp = 0 0 1 -> rec 0 1 1, prec NaN 1 .5 (0/0 first, skipped by MATLAB's max)
    np.testing.assert_allclose(ap.recall["a"], [0.0, 1.0, 1.0])
    assert math.isnan(ap.precision["a"][0])
    np.testing.assert_allclose(ap.precision["a"][1:], [1.0, 0.5])
    assert ap.per_class["a"] == pytest.approx(1.0, abs=1e-15)  # counted as an FP it would be 0.5
    assert ap.per_class_area["a"] == pytest.approx(1.0, abs=1e-15)


def test_match_flags_ignored_duplicate_and_order():
    dets = ClassDetections(
        image_ids=("im", "im", "im", "im"),
        scores=np.array([0.1, 0.9, 0.5, 0.7]),
        boxes=np.array([[1, 1, 10, 10], [21, 21, 30, 30], [1, 1, 10, 10], [1, 1, 10, 10]], dtype=float),
    )
    match = match_detections(
        dets,
        gt_boxes={"im": np.array([[1, 1, 10, 10], [21, 21, 30, 30]], dtype=float)},
        gt_difficult={"im": np.array([False, True])},
    )
    np.testing.assert_array_equal(match.order, [1, 3, 2, 0])  # descending score
    np.testing.assert_array_equal(match.tp, [0, 1, 0, 0])  # difficult ignored, then TP, then duplicates
    np.testing.assert_array_equal(match.fp, [0, 0, 1, 1])
    assert match.n_pos == 1


def test_overlap_exactly_half_is_a_match():
    # gt area 10*10 = 100; detection (1,1,10,5) has area 10*5 = 50 inside it: overlap 50/100 = 0.5 exactly.
    gt = {"im": [((1, 1, 10, 10), False)]}
    assert _single_class_ap(gt, [("im", 0.9, (1, 1, 10, 5))]).per_class["a"] == pytest.approx(1.0)
    # 40/100 = 0.4 is not.
    assert _single_class_ap(gt, [("im", 0.9, (1, 1, 10, 4))]).per_class["a"] == 0.0


def test_inclusive_pixel_convention():
    # (1,1,2,2) and (2,2,3,3) share exactly one pixel: iw = ih = 1, union 4 + 4 - 1 = 7 -> 1/7, not a match;
    # (1,1,1,1) vs itself is a 1-pixel box with overlap 1 (a +0 convention would give 0/0).
    gt = {"im": [((1, 1, 1, 1), False)]}
    assert _single_class_ap(gt, [("im", 1.0, (1, 1, 1, 1))]).per_class["a"] == pytest.approx(1.0)
    ov = metrics_module._overlaps(np.array([[1.0, 1, 2, 2]]), np.array([[2.0, 2, 3, 3], [3.0, 3, 4, 4]]))
    assert ov[0, 0] == pytest.approx(1 / 7)
    assert ov[0, 1] == -np.inf  # touching corners do not intersect: iw = 0


def test_first_box_of_maximal_overlap_wins_even_if_difficult():
    # Two gts overlap the detection by exactly 0.5; the devkit keeps the first (``ov > ovmax``), here difficult,
    # so the detection is ignored although an equally good non-difficult box exists.
    gt = {"im": [((1, 1, 10, 20), True), ((1, -9, 10, 10), False)]}
    ap = _single_class_ap(gt, [("im", 0.9, (1, 1, 10, 10))])
    assert ap.n_pos["a"] == 1
    assert ap.recall["a"].tolist() == [0.0] and math.isnan(ap.precision["a"][0])


def test_score_ties_keep_file_order():
    # One positive in image A; equal scores on a miss (image B) and a hit (image A).
    gt = {"A": [((1, 1, 10, 10), False)], "B": []}
    miss_first = _single_class_ap(gt, [("B", 0.5, (1, 1, 10, 10)), ("A", 0.5, (1, 1, 10, 10))])
    hit_first = _single_class_ap(gt, [("A", 0.5, (1, 1, 10, 10)), ("B", 0.5, (1, 1, 10, 10))])
    # miss first: rec 0 1, prec 0 .5 -> AP .5 (both metrics); hit first: rec 1 1, prec 1 .5 -> AP 1.
    assert miss_first.per_class["a"] == pytest.approx(0.5) and miss_first.per_class_area["a"] == pytest.approx(0.5)
    assert hit_first.per_class["a"] == pytest.approx(1.0) and hit_first.per_class_area["a"] == pytest.approx(1.0)


def test_eleven_point_thresholds_are_matlab_colon_values():
    # MATLAB's 0:0.1:1 fills the upper half from 1 downwards: 1 - 4*0.1 == 0.6 and 1 - 3*0.1 == 0.7 exactly.
    assert VOC07_RECALL_THRESHOLDS[6] == 0.6 and VOC07_RECALL_THRESHOLDS[7] == 0.7
    assert VOC07_RECALL_THRESHOLDS[3] == 0.30000000000000004
    assert np.arange(0, 1.1, 0.1)[6] > 0.6  # what numpy-based ports use instead


def test_recall_exactly_six_tenths_counts_at_t_point_six():
    # 5 positives (one per image); hits on images 0, 1, 2 with a miss in between, then two misses.
    gt = {f"im{k}": [((1, 1, 10, 10), False)] for k in range(5)}
    gt["bg"] = []
    hit, miss = (1, 1, 10, 10), (1, 1, 10, 10)
    dets = [
        ("im0", 0.9, hit),
        ("im1", 0.8, hit),
        ("bg", 0.7, miss),
        ("im2", 0.6, hit),
        ("bg", 0.5, miss),
        ("bg", 0.4, miss),
    ]
    ap = _single_class_ap(gt, dets)
    # rec .2 .4 .4 .6 .6 .6, prec 1 1 2/3 .75 .6 .5. t <= 0.4: 1 (5 thresholds); t = 0.5: .75; t = 0.6: recall
    # 3/5 == 0.6 >= 0.6 -> .75 in the devkit (numpy.arange's 0.6000000000000001 would give 0).
    assert ap.per_class["a"] == pytest.approx((5 * 1.0 + 0.75 + 0.75) / 11, abs=1e-15)


def test_voc_ap_functional_edge_cases():
    empty = np.zeros(0)
    assert voc_ap(empty, empty, metric="11point") == 0.0  # no detections: devkit AP 0
    assert voc_ap(empty, empty, metric="area") == 0.0
    # Every detection ignored (all on difficult objects): MATLAB max of all-NaN is NaN, so the devkit's 11-point AP
    # is NaN while its area AP is 0. We keep both, as documented in eval.metrics.
    rec, prec = np.zeros(2), np.full(2, np.nan)
    assert math.isnan(voc_ap(rec, prec, metric="11point"))
    assert voc_ap(rec, prec, metric="area") == 0.0
    with pytest.raises(ValueError, match="metric is 'auc'"):
        voc_ap(rec, prec, metric="auc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must match"):
        voc_ap(np.zeros(2), np.zeros(3), metric="area")


def test_class_without_positives_is_nan_and_left_out_of_the_mean():
    metric = VOCDetectionMetric(("a", "b"))
    metric.add_ground_truth("im", boxes=[(1, 1, 10, 10), (30, 30, 40, 40)], labels=["a", "b"], difficult=[0, 1])
    metric.add_detections("im", boxes=[(1, 1, 10, 10), (30, 30, 40, 40)], scores=[0.9, 0.8], labels=["a", "b"])
    ap = metric.compute()
    assert ap.n_pos == {"a": 1, "b": 0}
    assert math.isnan(ap.per_class["b"]) and math.isnan(ap.per_class_area["b"])
    assert ap.map_11point == pytest.approx(1.0) and ap.map_area == pytest.approx(1.0)


def test_detection_on_unknown_image_is_an_error():
    metric = VOCDetectionMetric(("a",))
    metric.add_ground_truth("im", boxes=np.zeros((0, 4)), labels=[])
    metric.add_detections("other", boxes=[(1, 1, 2, 2)], scores=[1.0], labels=[0])
    with pytest.raises(ValueError, match="unrecognized image 'other'"):
        metric.compute()
    with pytest.raises(ValueError, match="added twice"):
        metric.add_ground_truth("im", boxes=np.zeros((0, 4)), labels=[])
    with pytest.raises(ValueError, match="label 'dog' is not one of"):
        metric.add_detections("im", boxes=[(1, 1, 2, 2)], scores=[1.0], labels=["dog"])


# ---------------------------------------------------------------------------------------------------------------
# Cross-check against mmeval
# ---------------------------------------------------------------------------------------------------------------


def _random_problem(rng: np.random.Generator, *, n_images: int, n_classes: int, tie_decimals: int | None):
    """Random ground truth (with difficult objects) and jittered detections around it, plus background misses.

    Per image and class the non-difficult boxes come first, which is the order mmeval uses internally (it
    concatenates ignored boxes after the others), so equal-overlap ties pick the same box in both.
    """
    gts, dets = {}, {}
    for i in range(n_images):
        image_id = f"{i:06d}"
        m = int(rng.integers(0, 6))
        boxes, labels, diff = [], [], []
        for _ in range(m):
            x1, y1 = rng.integers(1, 150, size=2)
            w, h = rng.integers(1, 80, size=2)
            boxes.append((x1, y1, x1 + w - 1, y1 + h - 1))
            labels.append(int(rng.integers(0, n_classes)))
            diff.append(bool(rng.random() < 0.2))
        key = sorted(range(m), key=lambda k: (labels[k], diff[k]))
        gts[image_id] = (
            np.asarray([boxes[k] for k in key], dtype=float).reshape(-1, 4),
            np.asarray([labels[k] for k in key], dtype=int),
            np.asarray([diff[k] for k in key], dtype=bool),
        )
        d_boxes, d_labels = [], []
        for box, label in zip(gts[image_id][0], gts[image_id][1]):
            for _ in range(int(rng.integers(0, 3))):  # 0-2 detections per object, some duplicates
                jitter = rng.integers(-8, 9, size=4)
                b = box + jitter
                b[2], b[3] = max(b[2], b[0]), max(b[3], b[1])
                d_boxes.append(b)
                d_labels.append(label if rng.random() < 0.9 else int(rng.integers(0, n_classes)))
        for _ in range(int(rng.integers(0, 4))):  # background detections
            x1, y1 = rng.integers(1, 150, size=2)
            w, h = rng.integers(1, 80, size=2)
            d_boxes.append(np.array([x1, y1, x1 + w - 1, y1 + h - 1], dtype=float))
            d_labels.append(int(rng.integers(0, n_classes)))
        scores = rng.random(len(d_boxes))
        if tie_decimals is not None:
            scores = np.round(scores, tie_decimals)
        dets[image_id] = (
            np.asarray(d_boxes, dtype=float).reshape(-1, 4),
            scores,
            np.asarray(d_labels, dtype=int),
        )
    return gts, dets


def _ours(gts, dets, class_names):
    metric = VOCDetectionMetric(class_names)
    for image_id, (b, lab, d) in gts.items():
        metric.add_ground_truth(image_id, boxes=b, labels=lab, difficult=d)
    for image_id, (b, s, lab) in dets.items():
        metric.add_detections(image_id, boxes=b, scores=s, labels=lab)
    return metric.compute()


def _mmeval(gts, dets, n_classes, mode, *, scores_override=None):
    mmeval = pytest.importorskip("mmeval", reason=f"cross-check needs mmeval: {_MMEVAL_HINT}")
    preds, labels = [], []
    for image_id in gts:
        gb, gl, gd = gts[image_id]
        db, ds, dl = dets[image_id]
        if scores_override is not None:
            ds = scores_override[image_id]
        # mmeval's legacy boxes are 0-based with +1 widths; overlaps are shift-invariant, we convert anyway.
        preds.append({"bboxes": db - 1, "scores": ds, "labels": dl})
        labels.append(
            {
                "bboxes": (gb[~gd] - 1).reshape(-1, 4),
                "labels": gl[~gd],
                "bboxes_ignore": (gb[gd] - 1).reshape(-1, 4),
                "labels_ignore": gl[gd],
            }
        )
    metric = mmeval.VOCMeanAP(
        num_classes=n_classes,
        eval_mode=mode,
        iou_thrs=0.5,
        use_legacy_coordinate=True,
        nproc=1,
        classwise=True,
    )
    result = metric(predictions=preds, groundtruths=labels)
    per_class = [float(r["ap"][0, 0]) for r in result["classwise_result"]]
    return per_class, float(result["mAP"])


def _numpy_thresholds(monkeypatch):
    # mmeval (like py-faster-rcnn) uses numpy.arange(0, 1 + 1e-3, 0.1); see test_recall_exactly_six_tenths_....
    monkeypatch.setattr(metrics_module, "VOC07_RECALL_THRESHOLDS", tuple(np.arange(0, 1 + 1e-3, 0.1).tolist()))


def test_mmeval_thresholds_miss_recall_six_tenths():
    """Documents the one systematic difference: mmeval's t = 0.6000000000000001 skips a recall of exactly 3/5."""
    pytest.importorskip("mmeval", reason=f"cross-check needs mmeval: {_MMEVAL_HINT}")
    box = np.array([[1.0, 1, 10, 10]])
    gts = {f"im{k}": (box, np.array([0]), np.array([False])) for k in range(5)}
    gts["bg"] = (np.zeros((0, 4)), np.zeros(0, dtype=int), np.zeros(0, dtype=bool))
    none = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=int))
    dets = {f"im{k}": (box, np.array([s]), np.array([0])) for k, s in enumerate([0.9, 0.8, 0.6])}
    dets.update(im3=none, im4=none, bg=(np.repeat(box, 3, axis=0), np.array([0.7, 0.5, 0.4]), np.zeros(3, dtype=int)))
    ours = _ours(gts, dets, ("a",))
    theirs, _ = _mmeval(gts, dets, 1, "11points")
    assert ours.per_class["a"] == pytest.approx(6.5 / 11, abs=1e-15)  # devkit: t = 0.6 reached
    assert theirs[0] == pytest.approx(5.75 / 11, abs=TOL)  # mmeval: t = 0.6000000000000001 not reached


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_mmeval_on_random_detections(seed, monkeypatch):
    pytest.importorskip("mmeval", reason=f"cross-check needs mmeval: {_MMEVAL_HINT}")
    classes = VOC_CLASSES[:6]
    gts, dets = _random_problem(np.random.default_rng(seed), n_images=120, n_classes=len(classes), tie_decimals=None)
    devkit = _ours(gts, dets, classes)
    _numpy_thresholds(monkeypatch)
    ours = _ours(gts, dets, classes)
    for mode, ours_ap, ours_map in (
        ("11points", ours.per_class, ours.map_11point),
        ("area", ours.per_class_area, ours.map_area),
    ):
        theirs, theirs_map = _mmeval(gts, dets, len(classes), mode)
        for k, name in enumerate(classes):
            assert ours.n_pos[name] > 0
            assert ours_ap[name] == pytest.approx(theirs[k], abs=TOL), (mode, name)
        assert ours_map == pytest.approx(theirs_map, abs=TOL)
    # With the devkit's thresholds only classes whose recall hits 0.6 or 0.7 exactly may differ.
    for name in classes:
        if not np.any(np.isin(ours.recall[name], [0.6, 0.7])):
            assert devkit.per_class[name] == ours.per_class[name]
        assert devkit.per_class_area[name] == ours.per_class_area[name]


def test_matches_mmeval_with_score_ties_once_ties_follow_file_order(monkeypatch):
    """mmeval sorts with numpy's default (unstable) argsort, so its order among equal scores is arbitrary.

    We give mmeval scores that break every tie by our file order (the devkit's stable sort); then both agree.
    """
    pytest.importorskip("mmeval", reason=f"cross-check needs mmeval: {_MMEVAL_HINT}")
    _numpy_thresholds(monkeypatch)
    classes = VOC_CLASSES[:4]
    gts, dets = _random_problem(np.random.default_rng(7), n_images=150, n_classes=len(classes), tie_decimals=1)
    ours = _ours(gts, dets, classes)
    # File order of our detections: images in insertion order, detections in order within each image. A strictly
    # decreasing key over (score desc, file position asc) reproduces the stable sort.
    entries = [(s, pos) for pos, s in enumerate(np.concatenate([dets[i][1] for i in gts]).tolist())]
    rank = {pos: r for r, (_, pos) in enumerate(sorted(entries, key=lambda e: (-e[0], e[1])))}
    override, pos = {}, 0
    for image_id in gts:
        n = dets[image_id][1].size
        override[image_id] = np.array([1.0 - rank[pos + k] / len(entries) for k in range(n)])
        pos += n
    for mode, ours_ap in (("11points", ours.per_class), ("area", ours.per_class_area)):
        theirs, _ = _mmeval(gts, dets, len(classes), mode, scores_override=override)
        np.testing.assert_allclose([ours_ap[c] for c in classes], theirs, atol=TOL, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Results files
# ---------------------------------------------------------------------------------------------------------------


def _some_detections():
    return {
        "aeroplane": ClassDetections(
            image_ids=("000001", "000002", "000001"),
            scores=np.array([0.123456789012345, 1e-7, 0.5]),
            boxes=np.array([[1.5, 2.0, 30.25, 40.0], [3, 4, 5, 6], [10, 10, 20, 20]], dtype=float),
        ),
        "bicycle": ClassDetections(image_ids=(), scores=np.zeros(0), boxes=np.zeros((0, 4))),
    }


def test_results_files_round_trip(tmp_path):
    dets = _some_detections()
    paths = write_voc_results(tmp_path, "test", dets)
    assert [p.name for p in paths] == ["comp4_det_test_aeroplane.txt", "comp4_det_test_bicycle.txt"]
    back = read_voc_results(tmp_path, "test", ("aeroplane", "bicycle"))
    for name, original in dets.items():
        assert back[name].image_ids == original.image_ids
        np.testing.assert_array_equal(back[name].scores, original.scores)
        np.testing.assert_array_equal(back[name].boxes, original.boxes)
    assert not list(tmp_path.glob(".*.tmp"))  # temporary files were renamed away


def test_results_files_fast_rcnn_precision(tmp_path):
    write_voc_results(
        tmp_path,
        "test",
        _some_detections(),
        score_decimals=FAST_RCNN_SCORE_DECIMALS,
        box_decimals=FAST_RCNN_BOX_DECIMALS,
    )
    first = results_path(tmp_path, split="test", class_name="aeroplane").read_text().splitlines()[0]
    assert first == "000001 0.123 1.5 2.0 30.2 40.0"


def test_malformed_results_line_names_file_and_line(tmp_path):
    path = results_path(tmp_path, split="test", class_name="aeroplane")
    path.write_text("000001 0.9 1 1 10 10\n000002 0.8 1 1 10\n")
    with pytest.raises(ValueError, match=r"comp4_det_test_aeroplane\.txt, line 2: expected 6 fields"):
        read_voc_results(tmp_path, "test", ("aeroplane",))
    path.write_text("\n000001 high 1 1 10 10\n")
    with pytest.raises(ValueError, match=r"line 2: score and box must be numbers, got 'high 1 1 10 10'"):
        read_voc_results(tmp_path, "test", ("aeroplane",))
    with pytest.raises(FileNotFoundError, match="comp4_det_test_bicycle.txt does not exist"):
        read_voc_results(tmp_path, "test", ("bicycle",))


# ---------------------------------------------------------------------------------------------------------------
# Annotations, dataset, end to end
# ---------------------------------------------------------------------------------------------------------------

_XML = """<annotation>
  <folder>VOC2007</folder>
  <filename>{image_id}.jpg</filename>
  <size><width>353</width><height>500</height><depth>3</depth></size>
  <object>
    <name>dog</name><pose>Left</pose><truncated>1</truncated><difficult>0</difficult>
    <bndbox><xmin>48</xmin><ymin>240</ymin><xmax>195</xmax><ymax>371</ymax></bndbox>
  </object>
  <object>
    <name>person</name><truncated>0</truncated><difficult>1</difficult>
    <bndbox><xmin>8.5</xmin><ymin>12</ymin><xmax>352</xmax><ymax>498</ymax></bndbox>
  </object>
  <object>
    <name>dog</name>
    <bndbox><xmin>100</xmin><ymin>100</ymin><xmax>150</xmax><ymax>160</ymax></bndbox>
  </object>
</annotation>
"""


def test_load_annotation(tmp_path):
    path = tmp_path / "000001.xml"
    path.write_text(_XML.format(image_id="000001"))
    ann = load_annotation(path)
    assert (ann.image_id, ann.width, ann.height) == ("000001", 353, 500)
    assert [o.name for o in ann.objects] == ["dog", "person", "dog"]
    assert ann.objects[0].box == (48.0, 240.0, 195.0, 371.0) and ann.objects[0].truncated
    assert ann.objects[1].difficult and ann.objects[1].box[0] == 8.5
    assert not ann.objects[2].difficult and not ann.objects[2].truncated  # absent tags mean 0


def test_load_annotation_refuses_dtd_and_reports_bad_fields(tmp_path):
    bomb = tmp_path / "bomb.xml"
    bomb.write_text('<?xml version="1.0"?>\n<!DOCTYPE a [<!ENTITY x "xxxxxxxx">]>\n<annotation>&x;</annotation>\n')
    with pytest.raises(ValueError, match="refusing an XML document type declaration"):
        load_annotation(bomb)
    bad = tmp_path / "bad.xml"
    bad.write_text(_XML.format(image_id="bad").replace("<xmin>48</xmin>", "<xmin>4 8</xmin>"))
    with pytest.raises(ValueError, match=r"bad\.xml \(object 0\): <bndbox/xmin> is '4 8', not a number"):
        load_annotation(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_annotation(tmp_path / "missing.xml")


def _tiny_devkit(root):
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for image_id in ("000001", "000002"):
        (root / "Annotations" / f"{image_id}.xml").write_text(_XML.format(image_id=image_id))
    (root / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n")


def test_score_detections_end_to_end(tmp_path):
    root = tmp_path / "VOC2007"
    _tiny_devkit(root)
    dataset = VOCDataset(root, "test")
    assert dataset.image_ids == ("000001", "000002") and len(dataset) == 2
    assert dataset.image_path("000001").name == "000001.jpg"
    results = tmp_path / "results"
    dets = {c: ClassDetections(image_ids=(), scores=np.zeros(0), boxes=np.zeros((0, 4))) for c in VOC_CLASSES}
    dets["dog"] = ClassDetections(
        image_ids=("000001", "000002", "000001"),
        scores=np.array([0.9, 0.8, 0.7]),
        boxes=np.array([[48, 240, 195, 371], [100, 100, 150, 160], [48, 240, 195, 371]], dtype=float),
    )
    dets["person"] = ClassDetections(
        image_ids=("000002",), scores=np.array([0.5]), boxes=np.array([[8.5, 12, 352, 498]])
    )
    write_voc_results(results, "test", dets)
    ap = score_detections(root, "test", results)
    # dog: 4 positives; TP, TP, duplicate -> rec .25 .5 .5, prec 1 1 2/3 -> 11-point: t <= .5 at 1 (6 of 11)
    assert ap.n_pos["dog"] == 4
    assert ap.per_class["dog"] == pytest.approx(6 / 11)
    assert ap.per_class_area["dog"] == pytest.approx(0.5)
    assert ap.n_pos["person"] == 0 and math.isnan(ap.per_class["person"])  # only difficult persons
    assert ap.map_11point == pytest.approx(6 / 11)  # only dog has positives
    scores_file = write_scores(ap, results, split="test")
    import json

    summary = json.loads(scores_file.read_text())
    assert summary["provenance"]["overlap_threshold"] == 0.5 and summary["provenance"]["overlap_comparison"] == ">="
    assert summary["per_class"]["person"]["ap_11point"] is None
    assert summary["map_11point"] == pytest.approx(6 / 11)
    png = plot_pr_curves(ap, results / "pr.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dataset_errors_name_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        VOCDataset(tmp_path / "nope", "test")
    root = tmp_path / "VOC2007"
    _tiny_devkit(root)
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/val\.txt does not exist"):
        VOCDataset(root, "val")
    (root / "Annotations" / "000002.xml").unlink()
    with pytest.raises(FileNotFoundError, match=r"000002\.xml for image '000002' of split 'test' is missing"):
        list(VOCDataset(root, "test").annotations())
