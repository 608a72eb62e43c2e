"""PASCAL VOC detection average precision, computed as the official devkit computes it.

Reproduces ``VOCdevkit/VOCcode/VOCevaldet.m`` (VOC2007 kit; Fast R-CNN scores with it through
``lib/datasets/VOCdevkit-matlab-wrapper/voc_eval.m``) and ``VOCap.m`` (VOC2010+ kits; ``xVOCap.m`` in the wrapper).

Per class, detections are visited in order of decreasing score. MATLAB's ``sort(-confidence)`` is stable, so equal
scores keep the order in which they appear in the results file (here: the order they were added). Each detection
is compared with the ground-truth boxes of its class in the same image::

    iw = min(x2, gx2) - max(x1, gx1) + 1,   ih likewise          (inclusive pixels)
    ov = iw*ih / ((x2-x1+1)*(y2-y1+1) + (gx2-gx1+1)*(gy2-gy1+1) - iw*ih)   only if iw > 0 and ih > 0

and takes the first box of maximal overlap. With ``ovmax >= 0.5`` it is a true positive if that box is not
difficult and not yet detected, a false positive (duplicate) if already detected, and **ignored** (neither) if the
box is difficult; otherwise it is a false positive. ``npos`` counts the non-difficult boxes. Then
``recall = cumsum(tp) / npos`` and ``precision = cumsum(tp) / (cumsum(tp) + cumsum(fp))``.

Two AP definitions (`voc_ap`): VOC2007 ``11point`` (mean over t in 0:0.1:1 of the max precision at recall >= t,
0 where no recall reaches t) and VOC2010+ ``area`` (sentinels, precision made monotone from the right, sum of
recall steps times precision). MATLAB's ``max`` skips NaN, which matters when the first detections are ignored
(precision 0/0); we do the same. The 11 thresholds are the exact doubles of MATLAB's ``0:0.1:1``
(`eval.constants.VOC07_RECALL_THRESHOLDS`), which differ from ``numpy.arange`` at 0.6 and 0.7.

Classes without positives (``npos = 0``): the devkit's recall is 0/0 = NaN, which makes its 11-point AP 0 (no
recall >= t) and its area AP NaN; Fast R-CNN's wrapper then averages with ``mean``, so the 0 lowers the mean (and a
NaN would poison it). Neither is meaningful, so we report AP = NaN for such classes under both metrics and leave
them out of the mean (as mmeval's ``drop_class_ap``). Every VOC2007 test class has positives, so published numbers
are unaffected. Within the classes that have positives we keep the devkit's NaN behaviour unchanged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import numpy as np

from eval.constants import (
    METRIC_11POINT,
    METRIC_AREA,
    SCORES_FILENAME,
    VOC07_RECALL_THRESHOLDS,
    VOC_CLASSES,
    VOC_COMPETITION_ID,
    VOC_MIN_OVERLAP,
    VOC_RESULTS_TEMPLATE,
)

__all__ = [
    "ClassDetections",
    "ClassMatch",
    "DetectionAP",
    "VOCDetectionMetric",
    "match_detections",
    "plot_pr_curves",
    "read_voc_results",
    "results_path",
    "score_detections",
    "scores_summary",
    "voc_ap",
    "write_scores",
    "write_voc_results",
]

APMetric = Literal["11point", "area"]


# ----------------------------------------------------------------------------------------------------------------
# AP from a precision/recall curve
# ----------------------------------------------------------------------------------------------------------------


def _matlab_max(values: np.ndarray) -> float:
    """MATLAB ``max`` of a non-empty vector: NaNs are skipped, an all-NaN vector gives NaN."""
    finite = values[~np.isnan(values)]
    return float(finite.max()) if finite.size else math.nan


def voc_ap(recall: np.ndarray, precision: np.ndarray, *, metric: APMetric) -> float:
    """Average precision of one class from its cumulative recall/precision curve.

    Args:
        recall: (N,) recall after each detection, in score order (``VOCevaldet.m`` ``rec``).
        precision: (N,) precision after each detection (``prec``); NaN where nothing has been counted yet.
        metric: ``"11point"`` (VOC2007 ``VOCevaldet.m``) or ``"area"`` (VOC2010+ ``VOCap.m``).
    """
    rec = np.asarray(recall, dtype=np.float64).reshape(-1)
    prec = np.asarray(precision, dtype=np.float64).reshape(-1)
    if rec.shape != prec.shape:
        raise ValueError(f"voc_ap: recall has {rec.size} points but precision has {prec.size}; they must match.")
    if metric == METRIC_11POINT:
        ap = 0.0
        for t in VOC07_RECALL_THRESHOLDS:
            selected = prec[rec >= t]  # NaN recall compares false, as in MATLAB
            p = _matlab_max(selected) if selected.size else 0.0
            ap = ap + p / 11  # accumulated in the devkit's order
        return ap
    if metric == METRIC_AREA:
        mrec = np.concatenate(([0.0], rec, [1.0]))
        mpre = np.concatenate(([0.0], prec, [0.0]))
        # mpre(i) = max(mpre(i), mpre(i+1)) from the right; fmax skips NaN like MATLAB's max.
        mpre = np.fmax.accumulate(mpre[::-1])[::-1]
        steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
        return float(np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))
    raise ValueError(f"voc_ap: metric is {metric!r}; expected {METRIC_11POINT!r} or {METRIC_AREA!r}.")


# ----------------------------------------------------------------------------------------------------------------
# Detections and matching
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ClassDetections:
    """All detections of one class, in file order (the order that breaks score ties).

    Attributes:
        image_ids: (N,) image id of each detection.
        scores: (N,) float64 confidences.
        boxes: (N, 4) float64 (x1, y1, x2, y2), 1-based inclusive pixels as in the devkit results files.
    """

    image_ids: tuple[str, ...]
    scores: np.ndarray
    boxes: np.ndarray

    def __post_init__(self) -> None:
        scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        ids = tuple(str(i) for i in self.image_ids)
        if not (len(ids) == scores.size == boxes.shape[0]):
            raise ValueError(
                f"ClassDetections: {len(ids)} image ids, {scores.size} scores and {boxes.shape[0]} boxes; "
                "one of each per detection is needed."
            )
        if not np.all(np.isfinite(scores)) or not np.all(np.isfinite(boxes)):
            raise ValueError("ClassDetections: scores and boxes must be finite (found NaN or inf).")
        object.__setattr__(self, "image_ids", ids)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "boxes", boxes)

    def __len__(self) -> int:
        return len(self.image_ids)

    @classmethod
    def concatenate(cls, parts: Sequence[ClassDetections]) -> ClassDetections:
        if not parts:
            return cls(image_ids=(), scores=np.zeros(0), boxes=np.zeros((0, 4)))
        return cls(
            image_ids=tuple(i for p in parts for i in p.image_ids),
            scores=np.concatenate([p.scores for p in parts]),
            boxes=np.concatenate([p.boxes for p in parts]),
        )


def _overlaps(dets: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """(D, G) devkit overlaps, -inf where boxes do not intersect (iw <= 0 or ih <= 0)."""
    d = dets[:, None, :]
    g = gts[None, :, :]
    iw = np.minimum(d[..., 2], g[..., 2]) - np.maximum(d[..., 0], g[..., 0]) + 1
    ih = np.minimum(d[..., 3], g[..., 3]) - np.maximum(d[..., 1], g[..., 1]) + 1
    # Same operation order as VOCevaldet.m so the doubles agree bit for bit.
    ua = (
        (d[..., 2] - d[..., 0] + 1) * (d[..., 3] - d[..., 1] + 1)
        + (g[..., 2] - g[..., 0] + 1) * (g[..., 3] - g[..., 1] + 1)
        - iw * ih
    )
    valid = (iw > 0) & (ih > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ov = iw * ih / ua
    return np.where(valid, ov, -np.inf)


@dataclass(frozen=True, eq=False)
class ClassMatch:
    """Outcome of matching one class: flags in score order (stable), ``order`` maps them back to file order."""

    order: np.ndarray  # (N,) indices into the file-order detections
    tp: np.ndarray  # (N,) 1.0 for a true positive
    fp: np.ndarray  # (N,) 1.0 for a false positive; tp == fp == 0 means ignored (matched a difficult object)
    n_pos: int


def match_detections(
    detections: ClassDetections,
    *,
    gt_boxes: Mapping[str, np.ndarray],
    gt_difficult: Mapping[str, np.ndarray],
    min_overlap: float = VOC_MIN_OVERLAP,
) -> ClassMatch:
    """Assign one class's detections to its ground truth (``VOCevaldet.m`` main loop).

    Args:
        detections: the class's detections in file order.
        gt_boxes: image id -> (M, 4) boxes of this class (1-based inclusive), for **every** image of the test set.
        gt_difficult: image id -> (M,) bool difficult flags.
        min_overlap: match threshold, compared with ``>=``.
    """
    n_pos = int(sum(int(np.count_nonzero(~np.asarray(d, dtype=bool))) for d in gt_difficult.values()))
    n = len(detections)
    order = np.argsort(-detections.scores, kind="stable")  # MATLAB sort is stable: ties keep file order
    tp = np.zeros(n)
    fp = np.zeros(n)
    sorted_ids = [detections.image_ids[k] for k in order]
    by_image: dict[str, list[int]] = {}
    for rank, image_id in enumerate(sorted_ids):
        by_image.setdefault(image_id, []).append(rank)
    for image_id, ranks in by_image.items():
        if image_id not in gt_boxes:
            raise ValueError(
                f"Detection for unrecognized image {image_id!r}: it has no ground truth entry "
                "(the devkit stops with 'unrecognized image'); check the split and the image ids."
            )
        gts = np.asarray(gt_boxes[image_id], dtype=np.float64).reshape(-1, 4)
        difficult = np.asarray(gt_difficult[image_id], dtype=bool).reshape(-1)
        ranks_arr = np.asarray(ranks)
        if gts.shape[0] == 0:
            fp[ranks_arr] = 1.0
            continue
        ov = _overlaps(detections.boxes[order[ranks_arr]], gts)
        jmax = np.argmax(ov, axis=1)  # first maximum, as ``if ov > ovmax`` keeps the earliest box
        ovmax = ov[np.arange(len(ranks)), jmax]
        detected = np.zeros(gts.shape[0], dtype=bool)
        for rank, j, o in zip(ranks, jmax.tolist(), ovmax.tolist()):  # ranks ascend: score order within the image
            if o >= min_overlap:
                if not difficult[j]:
                    if not detected[j]:
                        tp[rank] = 1.0
                        detected[j] = True
                    else:
                        fp[rank] = 1.0  # duplicate detection
                # difficult: neither tp nor fp
            else:
                fp[rank] = 1.0
    return ClassMatch(order=order, tp=tp, fp=fp, n_pos=n_pos)


def _pr_curve(match: ClassMatch) -> tuple[np.ndarray, np.ndarray]:
    tp = np.cumsum(match.tp)
    fp = np.cumsum(match.fp)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp / match.n_pos if match.n_pos else np.full_like(tp, np.nan)
        precision = tp / (fp + tp)
    return recall, precision


# ----------------------------------------------------------------------------------------------------------------
# The metric
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DetectionAP:
    """VOC detection AP per class under both metrics, with the curves they come from.

    ``per_class`` is the VOC2007 11-point AP (the number Fast R-CNN and the paper report); ``per_class_area`` the
    VOC2010+ area AP. Classes with ``n_pos == 0`` have NaN AP and are left out of the means.
    """

    class_names: tuple[str, ...]
    per_class: dict[str, float]
    per_class_area: dict[str, float]
    map_11point: float
    map_area: float
    precision: dict[str, np.ndarray] = field(repr=False)
    recall: dict[str, np.ndarray] = field(repr=False)
    n_pos: dict[str, int]
    n_detections: dict[str, int]


def _mean_over_positive(values: Mapping[str, float], n_pos: Mapping[str, int]) -> float:
    kept = [values[c] for c in values if n_pos[c] > 0]
    return float(np.mean(kept)) if kept else math.nan


class VOCDetectionMetric:
    """Accumulates ground truth and detections image by image, then computes `DetectionAP`.

    Every test image must be registered with `add_ground_truth` (even one without objects), because a detection on
    an unknown image is an error in the devkit. Detections added for a class keep their order of addition, which is
    the tie-break between equal scores.
    """

    def __init__(self, class_names: Sequence[str] = VOC_CLASSES, *, min_overlap: float = VOC_MIN_OVERLAP) -> None:
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"VOCDetectionMetric: class_names has duplicates: {list(class_names)}.")
        self.class_names = tuple(class_names)
        self.min_overlap = float(min_overlap)
        self._index = {c: i for i, c in enumerate(self.class_names)}
        self.reset()

    def reset(self) -> None:
        self._gt: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._dets: dict[str, list[ClassDetections]] = {c: [] for c in self.class_names}

    def _labels(self, labels: Sequence[int | str] | np.ndarray, n: int, where: str) -> np.ndarray:
        values = list(np.asarray(labels).reshape(-1).tolist())
        if len(values) != n:
            raise ValueError(f"{where}: {n} boxes but {len(values)} labels.")
        out = np.empty(n, dtype=np.int64)
        for k, v in enumerate(values):
            if isinstance(v, str):
                if v not in self._index:
                    raise ValueError(f"{where}: label {v!r} is not one of the classes {list(self.class_names)}.")
                out[k] = self._index[v]
            else:
                if not (0 <= int(v) < len(self.class_names)):
                    raise ValueError(f"{where}: label {v} is outside 0..{len(self.class_names) - 1}.")
                out[k] = int(v)
        return out

    def add_ground_truth(
        self,
        image_id: str,
        *,
        boxes: np.ndarray | Sequence[Sequence[float]],
        labels: Sequence[int | str] | np.ndarray,
        difficult: Sequence[bool] | np.ndarray | None = None,
    ) -> None:
        """Register one image's objects: (M, 4) 1-based inclusive boxes, class indices or names, difficult flags."""
        where = f"ground truth of image {image_id!r}"
        if image_id in self._gt:
            raise ValueError(f"{where} was added twice (the devkit stops with 'multiple image').")
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        lab = self._labels(labels, b.shape[0], where)
        diff = np.zeros(b.shape[0], dtype=bool) if difficult is None else np.asarray(difficult, dtype=bool).reshape(-1)
        if diff.size != b.shape[0]:
            raise ValueError(f"{where}: {b.shape[0]} boxes but {diff.size} difficult flags.")
        self._gt[str(image_id)] = (b, lab, diff)

    def add_detections(
        self,
        image_id: str,
        *,
        boxes: np.ndarray | Sequence[Sequence[float]],
        scores: np.ndarray | Sequence[float],
        labels: Sequence[int | str] | np.ndarray,
    ) -> None:
        """Add one image's detections: (N, 4) 1-based inclusive boxes, (N,) scores, class indices or names."""
        where = f"detections of image {image_id!r}"
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        if s.size != b.shape[0]:
            raise ValueError(f"{where}: {b.shape[0]} boxes but {s.size} scores.")
        lab = self._labels(labels, b.shape[0], where)
        for ci in np.unique(lab).tolist():
            keep = lab == ci
            self._dets[self.class_names[ci]].append(
                ClassDetections(image_ids=(str(image_id),) * int(keep.sum()), scores=s[keep], boxes=b[keep])
            )

    def add_class_detections(self, class_name: str, detections: ClassDetections) -> None:
        """Add a block of one class's detections (e.g. a results file), keeping its order."""
        if class_name not in self._dets:
            raise ValueError(f"add_class_detections: {class_name!r} is not one of {list(self.class_names)}.")
        self._dets[class_name].append(detections)

    def compute(self) -> DetectionAP:
        per_class: dict[str, float] = {}
        per_class_area: dict[str, float] = {}
        precision: dict[str, np.ndarray] = {}
        recall: dict[str, np.ndarray] = {}
        n_pos: dict[str, int] = {}
        n_det: dict[str, int] = {}
        for ci, name in enumerate(self.class_names):
            gt_boxes = {i: b[lab == ci] for i, (b, lab, _) in self._gt.items()}
            gt_diff = {i: d[lab == ci] for i, (_, lab, d) in self._gt.items()}
            dets = ClassDetections.concatenate(self._dets[name])
            match = match_detections(dets, gt_boxes=gt_boxes, gt_difficult=gt_diff, min_overlap=self.min_overlap)
            rec, prec = _pr_curve(match)
            recall[name], precision[name] = rec, prec
            n_pos[name], n_det[name] = match.n_pos, len(dets)
            if match.n_pos == 0:
                per_class[name] = per_class_area[name] = math.nan
            else:
                per_class[name] = voc_ap(rec, prec, metric=METRIC_11POINT)
                per_class_area[name] = voc_ap(rec, prec, metric=METRIC_AREA)
        return DetectionAP(
            class_names=self.class_names,
            per_class=per_class,
            per_class_area=per_class_area,
            map_11point=_mean_over_positive(per_class, n_pos),
            map_area=_mean_over_positive(per_class_area, n_pos),
            precision=precision,
            recall=recall,
            n_pos=n_pos,
            n_detections=n_det,
        )


# ----------------------------------------------------------------------------------------------------------------
# Devkit results files
# ----------------------------------------------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through a temporary file in the same folder, then rename, so readers never see half a file."""
    from jigsawpp.io import write_atomic

    write_atomic(path, write)


def results_path(results_dir: str | Path, *, split: str, class_name: str, comp: str = VOC_COMPETITION_ID) -> Path:
    """``<results_dir>/comp4_det_<split>_<class>.txt`` (the devkit's ``detrespath``)."""
    return Path(results_dir) / VOC_RESULTS_TEMPLATE.format(comp=comp, split=split, cls=class_name)


def _format_number(value: float, decimals: int | None) -> str:
    return repr(float(value)) if decimals is None else f"{value:.{decimals}f}"


def write_voc_results(
    results_dir: str | Path,
    split: str,
    detections_by_class: Mapping[str, ClassDetections],
    *,
    comp: str = VOC_COMPETITION_ID,
    score_decimals: int | None = None,
    box_decimals: int | None = None,
) -> list[Path]:
    """Write one devkit results file per class: lines ``image_id score x1 y1 x2 y2`` (1-based pixels), in order.

    Numbers are written at full precision so that reading back gives the same AP; pass ``score_decimals=3,
    box_decimals=1`` (`eval.constants.FAST_RCNN_SCORE_DECIMALS`, ``FAST_RCNN_BOX_DECIMALS``) for Fast R-CNN's files.
    """
    written = []
    for class_name, dets in detections_by_class.items():
        lines = []
        for image_id, score, box in zip(dets.image_ids, dets.scores.tolist(), dets.boxes.tolist()):
            if not image_id or any(ch.isspace() for ch in image_id):
                raise ValueError(f"write_voc_results: image id {image_id!r} is empty or contains whitespace.")
            coords = " ".join(_format_number(v, box_decimals) for v in box)
            lines.append(f"{image_id} {_format_number(score, score_decimals)} {coords}\n")
        path = results_path(results_dir, split=split, class_name=class_name, comp=comp)
        payload = "".join(lines).encode("ascii")
        _atomic_write(path, lambda handle, payload=payload: handle.write(payload))
        written.append(path)
    return written


def _read_results_file(path: Path) -> ClassDetections:
    ids: list[str] = []
    values: list[list[float]] = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"VOC results file {path} does not exist; write one file per class named like {path.name}."
        ) from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue  # the devkit's textread skips blank lines
        if len(fields) != 6:
            raise ValueError(
                f"{path}, line {lineno}: expected 6 fields 'image_id score x1 y1 x2 y2', found {len(fields)}: "
                f"{line.strip()!r}."
            )
        try:
            numbers = [float(v) for v in fields[1:]]
        except ValueError:
            raise ValueError(
                f"{path}, line {lineno}: score and box must be numbers, got {' '.join(fields[1:])!r}."
            ) from None
        if not all(math.isfinite(v) for v in numbers):
            raise ValueError(f"{path}, line {lineno}: score and box must be finite, got {' '.join(fields[1:])!r}.")
        ids.append(fields[0])
        values.append(numbers)
    array = np.asarray(values, dtype=np.float64).reshape(-1, 5)
    return ClassDetections(image_ids=tuple(ids), scores=array[:, 0], boxes=array[:, 1:])


def read_voc_results(
    results_dir: str | Path,
    split: str,
    class_names: Sequence[str] = VOC_CLASSES,
    *,
    comp: str = VOC_COMPETITION_ID,
) -> dict[str, ClassDetections]:
    """Read the results files of ``class_names``; every file must exist (an empty file means no detections)."""
    return {c: _read_results_file(results_path(results_dir, split=split, class_name=c, comp=comp)) for c in class_names}


# ----------------------------------------------------------------------------------------------------------------
# Scoring a results folder, summaries, plots
# ----------------------------------------------------------------------------------------------------------------


def score_detections(
    voc_root: str | Path,
    split: str,
    results_dir: str | Path,
    *,
    class_names: Sequence[str] = VOC_CLASSES,
    comp: str = VOC_COMPETITION_ID,
) -> DetectionAP:
    """Score devkit results files against ``<voc_root>/Annotations`` for the images of ``split``.

    ``voc_root`` is the ``VOCdevkit/VOC2007`` folder. Objects of classes outside ``class_names`` are not looked at,
    as the devkit only reads the class it scores.
    """
    from eval.voc import VOCDataset

    dataset = VOCDataset(voc_root, split)
    metric = VOCDetectionMetric(class_names)
    wanted = set(class_names)
    for ann in dataset.annotations():
        objects = [o for o in ann.objects if o.name in wanted]
        metric.add_ground_truth(
            ann.image_id,
            boxes=np.asarray([o.box for o in objects], dtype=np.float64).reshape(-1, 4),
            labels=[o.name for o in objects],
            difficult=[o.difficult for o in objects],
        )
    for name, dets in read_voc_results(results_dir, split, class_names, comp=comp).items():
        metric.add_class_detections(name, dets)
    return metric.compute()


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def scores_summary(ap: DetectionAP, *, split: str | None = None) -> dict:
    """The JSON-ready summary `write_scores` saves; NaN (class without positives) becomes ``null``."""
    return {
        "provenance": {
            "protocol": "PASCAL VOC detection, devkit VOC2007 (VOCevaldet.m)",
            "metrics": {
                METRIC_11POINT: "VOC2007 11-point interpolated AP (VOCevaldet.m), the number Fast R-CNN reports",
                METRIC_AREA: "VOC2010+ area under the monotone PR curve (VOCap.m)",
            },
            "overlap_threshold": VOC_MIN_OVERLAP,
            "overlap_comparison": ">=",
            "box_convention": "1-based inclusive pixels, +1 on widths and heights",
            "difficult": "ignored (neither true nor false positive, not counted in npos)",
            "ties": "stable sort by descending score: equal scores keep results-file order",
            "classes_without_positives": "AP null, left out of the mean",
            "split": split,
        },
        "map_11point": _json_number(ap.map_11point),
        "map_area": _json_number(ap.map_area),
        "per_class": {
            c: {
                "ap_11point": _json_number(ap.per_class[c]),
                "ap_area": _json_number(ap.per_class_area[c]),
                "n_pos": ap.n_pos[c],
                "n_detections": ap.n_detections[c],
            }
            for c in ap.class_names
        },
    }


def write_scores(ap: DetectionAP, results_dir: str | Path, *, split: str | None = None) -> Path:
    """Write ``<results_dir>/scores.json`` (per-class AP and mAP under both metrics, with provenance)."""
    path = Path(results_dir) / SCORES_FILENAME
    payload = (json.dumps(scores_summary(ap, split=split), indent=2, allow_nan=False) + "\n").encode("utf-8")
    _atomic_write(path, lambda handle: handle.write(payload))
    return path


PLOT_TITLE_CHARS = 90  # characters per title line at the figure's width and font size


def pr_figure(class_names: Sequence[str], curves: Mapping[str, tuple[object, object]], labels: Mapping[str, str], *,
              title: str, legend_title: str):
    """A matplotlib Figure (Agg canvas) with the precision/recall curve ``curves[name] = (recall, precision)`` of
    each class in `curves` (in `class_names` order, colour by position) on one axes, labelled ``labels[name]``.
    Classes of `class_names` without a curve (no positives, AP undefined) get no legend entry; the legend title
    counts them. A long `title` is wrapped to fit the figure (its own line breaks are kept)."""
    import textwrap

    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 7))
    FigureCanvasAgg(fig)  # Agg, without touching pyplot's global backend
    ax = fig.add_subplot(1, 1, 1)
    cmap = colormaps["tab20"]
    for k, name in enumerate(class_names):
        if name in curves:
            recall, precision = curves[name]
            ax.plot(recall, precision, color=cmap(k % cmap.N), linewidth=1.2, label=f"{name}  {labels[name]}")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(True, alpha=0.3)
    wrapped = "\n".join(textwrap.fill(line, PLOT_TITLE_CHARS, break_on_hyphens=False) for line in title.splitlines())
    ax.set_title(wrapped, fontsize=9)
    hidden = len(class_names) - len(curves)
    legend = legend_title + (f"\n({hidden} classes without ground truth not shown)" if hidden else "")
    if curves:
        ax.legend(title=legend, fontsize=7, title_fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    return fig


def pr_curves_figure(ap: DetectionAP, *, title: str | None = None):
    """`pr_figure` of a detection result: the classes that have ground truth, the legend giving both APs per class.
    Classes without positives (AP undefined, shown as ``-`` by the CLI) get no curve; the legend title counts them.
    """
    shown = [name for name in ap.class_names if ap.n_pos.get(name, 0) > 0]
    return pr_figure(ap.class_names, {n: (ap.recall[n], ap.precision[n]) for n in shown},
                     {n: f"{ap.per_class[n]:.3f} / {ap.per_class_area[n]:.3f}" for n in shown},
                     title=title or f"VOC detection: mAP {ap.map_11point:.3f} (11-point) / {ap.map_area:.3f} (area)",
                     legend_title="class  AP 11-pt / area")


def plot_pr_curves(ap: DetectionAP, path: str | Path, *, title: str | None = None) -> Path:
    """Save `pr_curves_figure` to `path` (format from its suffix), written with the user's umask
    (`jigsawpp.io.atomic_path`) and renamed into place."""
    from jigsawpp.engine.plots import save_figure

    return save_figure(pr_curves_figure(ap, title=title), path, dpi=120)
