"""PASCAL VOC multi-label classification AP, three ways, each labelled: the devkit's and Krähenbühl et al.'s.

Ground truth per class and image is the devkit's label (``ImageSets/Main/<class>_<split>.txt``): 1 present,
-1 absent, 0 "difficult" (only difficult objects of the class). Scores are one real number per image and class.

**Devkit** (``VOCdevkit/VOCcode/VOCevalcls.m``, VOC2007 kit)::

    out = -inf for every ground-truth image; out(j) = confidence of image j in the results file
    [~, si] = sort(-out)                      (MATLAB's sort is stable: ties keep the image-set file's order)
    tp = cumsum(gt(si) > 0);  fp = cumsum(gt(si) < 0)        (difficult images count as neither)
    rec = tp / sum(gt > 0);   prec = tp ./ (fp + tp)

then the VOC2007 11-point AP (``ap_11point``, mean over t in 0:0.1:1 of max(prec(rec >= t))) and the VOC2010+
area (``ap_area``, ``VOCap.m``), both from `eval.metrics.voc_ap`, which skips NaN precision as MATLAB's ``max`` does.
Images missing from a results file keep ``-inf`` and rank last, as in the devkit.

**Krähenbühl et al.** (philkr/voc-classification@c209779 ``src/train_cls.py``, what the SSL papers' Table 3 reports,
``ap_sklearn``)::

    keep = labels <= 1      (their labels: VOC -1 -> 0, 1 -> 1, difficult -> 255)
    ap = sklearn.metrics.average_precision_score(gt[keep], score[keep] - 1e-5 * gt[keep])

i.e. non-interpolated AP, sum_k (R_k - R_{k-1}) P_k over the distinct score thresholds in decreasing order, with
positives nudged below negatives of the same score. Computed here without scikit-learn (which the tests use as the
oracle), in float64; the reference ran the subtraction in float32, which can differ only for scores within 1e-5.

Classes without positives: every definition divides by zero (the devkit gives 11-point AP 0 and area AP NaN;
scikit-learn warns). We report NaN for all three and leave them out of the means (VOC2007 test has positives for
every class, so published numbers are unaffected).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from eval.constants import METRIC_11POINT, METRIC_AREA, VOC_CLASSES
from eval.metrics import voc_ap

__all__ = [
    "KRAEHENBUEHL_TIE_EPS",
    "ClassificationAP",
    "VOCClassificationMetric",
    "devkit_curve",
    "sklearn_style_ap",
]

# philkr/voc-classification src/train_cls.py: "Subtract eps from score to make AP work for tied scores".
KRAEHENBUEHL_TIE_EPS = 1e-5


def _check(scores: np.ndarray, labels: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"{where}: {s.size} scores but {y.size} labels; one of each per image is needed.")
    bad = set(np.unique(y).tolist()) - {-1, 0, 1}
    if bad:
        raise ValueError(f"{where}: labels must be the devkit's 1 / -1 / 0 (difficult), found {sorted(bad)}.")
    if np.isnan(s).any() or np.isposinf(s).any():
        raise ValueError(f"{where}: scores must be finite (-inf marks an image without a score), found NaN or +inf.")
    return s, y.astype(np.int64)


def devkit_curve(scores: np.ndarray, labels: np.ndarray, *, where: str = "VOCevalcls") -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) after each image in ``VOCevalcls.m``'s ranking.

    Args:
        scores: (N,) confidences in image-set order; ``-inf`` for images without a score.
        labels: (N,) devkit labels 1 / -1 / 0 (difficult) in the same order.
    """
    s, y = _check(scores, labels, where)
    order = np.argsort(-s, kind="stable")
    tp = np.cumsum(y[order] > 0).astype(np.float64)
    fp = np.cumsum(y[order] < 0).astype(np.float64)
    n_pos = int((y > 0).sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp / n_pos if n_pos else np.full_like(tp, np.nan)
        precision = tp / (fp + tp)
    return recall, precision


def sklearn_style_ap(scores: np.ndarray, labels: np.ndarray, *, tie_eps: float = KRAEHENBUEHL_TIE_EPS,
                     where: str = "AP") -> float:
    """Krähenbühl et al.'s AP: scikit-learn's ``average_precision_score`` over non-difficult images, scores nudged
    by ``-tie_eps * label``. ``labels`` are the devkit's 1 / -1 / 0 (0 = difficult, left out). NaN without positives.
    """
    s, y = _check(scores, labels, where)
    keep = y != 0
    target = (y[keep] > 0).astype(np.float64)
    if not target.any():
        return math.nan
    adjusted = s[keep] - tie_eps * target
    order = np.argsort(-adjusted, kind="stable")
    ranked, hits = adjusted[order], target[order]
    # one threshold per distinct score (ties move together), the last index of each run
    last = np.r_[np.flatnonzero(ranked[1:] != ranked[:-1]), ranked.size - 1]  # -inf == -inf, unlike diff
    tps = np.cumsum(hits)[last]
    fps = (last + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass(frozen=True, eq=False)
class ClassificationAP:
    """Per-class AP under the three definitions, the means over classes with positives, and the devkit curves."""

    class_names: tuple[str, ...]
    ap_sklearn: dict[str, float]
    ap_11point: dict[str, float]
    ap_area: dict[str, float]
    map_sklearn: float
    map_11point: float
    map_area: float
    n_pos: dict[str, int]
    n_neg: dict[str, int]
    n_difficult: dict[str, int]
    n_missing: dict[str, int]
    recall: dict[str, np.ndarray] = field(repr=False)
    precision: dict[str, np.ndarray] = field(repr=False)


def _mean(values: Mapping[str, float], n_pos: Mapping[str, int]) -> float:
    kept = [values[c] for c in values if n_pos[c] > 0]
    return float(np.mean(kept)) if kept else math.nan


class VOCClassificationMetric:
    """Ground truth of one image set and scores per class, then `ClassificationAP` (``compute``).

    Args:
        image_ids: the image set in file order (the tie-break of the devkit's stable sort).
        labels: (N, C) devkit labels 1 / -1 / 0 in the order of ``class_names``.
    """

    def __init__(self, image_ids: Sequence[str], labels: np.ndarray, class_names: Sequence[str] = VOC_CLASSES) -> None:
        self.image_ids = tuple(str(i) for i in image_ids)
        self.class_names = tuple(class_names)
        self.labels = np.asarray(labels)
        if self.labels.shape != (len(self.image_ids), len(self.class_names)):
            raise ValueError(f"VOCClassificationMetric: labels have shape {self.labels.shape}; expected "
                             f"({len(self.image_ids)} images, {len(self.class_names)} classes).")
        if len(set(self.image_ids)) != len(self.image_ids):
            raise ValueError("VOCClassificationMetric: the image set lists some image ids more than once.")
        self._index = {i: k for k, i in enumerate(self.image_ids)}
        self._scores = np.full(self.labels.shape, -np.inf)
        self._given = np.zeros(self.labels.shape, dtype=bool)

    def add_scores(self, image_id: str, scores: Sequence[float] | np.ndarray) -> None:
        """One image's (C,) scores, in ``class_names`` order."""
        values = np.asarray(scores, dtype=np.float64).reshape(-1)
        if values.size != len(self.class_names):
            raise ValueError(f"scores of image {image_id!r}: {values.size} values for {len(self.class_names)} classes.")
        for c, value in zip(self.class_names, values.tolist()):
            self.add_class_score(c, image_id, value)

    def add_class_score(self, class_name: str, image_id: str, score: float) -> None:
        """One (image, class) score, as one line of a devkit results file."""
        j = self._index.get(image_id)
        if j is None:
            raise ValueError(f"unrecognized image {image_id!r} for class {class_name} (not in the image set), as the "
                             "devkit's VOCevalcls reports it.")
        if class_name not in self.class_names:
            raise ValueError(f"{class_name!r} is not one of the classes {list(self.class_names)}.")
        k = self.class_names.index(class_name)
        if self._given[j, k]:
            raise ValueError(f"image {image_id!r} has two scores for class {class_name}; give one per image.")
        if not math.isfinite(score):
            raise ValueError(f"image {image_id!r}, class {class_name}: the score {score} is not finite.")
        self._scores[j, k] = score
        self._given[j, k] = True

    def compute(self) -> ClassificationAP:
        out: dict[str, dict[str, float]] = {"sklearn": {}, "11": {}, "area": {}}
        counts: dict[str, dict[str, int]] = {"pos": {}, "neg": {}, "diff": {}, "missing": {}}
        recall, precision = {}, {}
        for k, name in enumerate(self.class_names):
            s, y = self._scores[:, k], self.labels[:, k]
            where = f"class {name}"
            rec, prec = devkit_curve(s, y, where=where)
            recall[name], precision[name] = rec, prec
            n_pos = int((y > 0).sum())
            counts["pos"][name], counts["neg"][name] = n_pos, int((y < 0).sum())
            counts["diff"][name], counts["missing"][name] = int((y == 0).sum()), int((~self._given[:, k]).sum())
            if n_pos == 0:
                out["sklearn"][name] = out["11"][name] = out["area"][name] = math.nan
                continue
            out["sklearn"][name] = sklearn_style_ap(s, y, where=where)
            out["11"][name] = voc_ap(rec, prec, metric=METRIC_11POINT)
            out["area"][name] = voc_ap(rec, prec, metric=METRIC_AREA)
        n_pos = counts["pos"]
        return ClassificationAP(
            class_names=self.class_names, ap_sklearn=out["sklearn"], ap_11point=out["11"], ap_area=out["area"],
            map_sklearn=_mean(out["sklearn"], n_pos), map_11point=_mean(out["11"], n_pos),
            map_area=_mean(out["area"], n_pos), n_pos=n_pos, n_neg=counts["neg"], n_difficult=counts["diff"],
            n_missing=counts["missing"], recall=recall, precision=precision,
        )
