"""Devkit classification results files, scoring a results folder, the ``scores.json`` summary and the PR plot.

Results files follow ``VOCinit.m``: ``clsrespath = [resdir 'Main/%s_cls_' testset '_%s.txt']``, filled with the
competition id and the class, one line ``image_id confidence`` per image. We write the id "comp1" (the
classification competition's first entry type); any id can be scored (``comp``). `score_classification` is what
``jigsawpp eval score-classification`` runs.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from eval.classification.labels import read_class_labels
from eval.classification.metric import ClassificationAP, VOCClassificationMetric
from eval.constants import SCORES_FILENAME, VOC_CLASSES

__all__ = [
    "CLS_COMPETITION_ID",
    "CLS_RESULTS_TEMPLATE",
    "cls_results_path",
    "plot_classification_curves",
    "read_cls_results",
    "score_classification",
    "scores_summary",
    "write_classification_scores",
    "write_cls_results",
]

CLS_COMPETITION_ID = "comp1"  # the id in the written file names (VOCinit.m fills clsrespath with it)
CLS_RESULTS_TEMPLATE = "{comp}_cls_{split}_{cls}.txt"  # VOCinit.m clsrespath


def cls_results_path(results_dir: str | os.PathLike[str], *, split: str, class_name: str,
                     comp: str = CLS_COMPETITION_ID) -> Path:
    return Path(results_dir) / CLS_RESULTS_TEMPLATE.format(comp=comp, split=split, cls=class_name)


def write_cls_results(results_dir: str | os.PathLike[str], split: str, image_ids: Sequence[str], scores: np.ndarray,
                      class_names: Sequence[str] = VOC_CLASSES, *, comp: str = CLS_COMPETITION_ID) -> list[Path]:
    """One file per class, lines ``image_id score`` at full precision (so reading back gives the same AP)."""
    from jigsawpp.io import write_text_atomic

    values = np.asarray(scores, dtype=np.float64)
    if values.shape != (len(image_ids), len(class_names)):
        raise ValueError(f"write_cls_results: scores have shape {values.shape}, expected ({len(image_ids)}, "
                         f"{len(class_names)}).")
    written = []
    for k, name in enumerate(class_names):
        lines = "".join(f"{i} {float(v)!r}\n" for i, v in zip(image_ids, values[:, k].tolist()))
        written.append(write_text_atomic(cls_results_path(results_dir, split=split, class_name=name, comp=comp),
                                         lines))
    return written


def read_cls_results(results_dir: str | os.PathLike[str], split: str, class_names: Sequence[str] = VOC_CLASSES, *,
                     comp: str = CLS_COMPETITION_ID) -> dict[str, list[tuple[str, float, int]]]:
    """{class: [(image_id, score, line number), ...]} in file order; every class file must exist."""
    out = {}
    for name in class_names:
        path = cls_results_path(results_dir, split=split, class_name=name, comp=comp)
        if not path.is_file():
            raise FileNotFoundError(f"VOC classification results file {path} does not exist; write one file per "
                                    f"class named like {path.name} (lines 'image_id score').")
        rows = []
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue  # textread skips blank lines
            if len(fields) != 2:
                raise ValueError(f"{path}, line {lineno}: expected 2 fields 'image_id score', found {len(fields)}: "
                                 f"{line.strip()!r}.")
            try:
                score = float(fields[1])
            except ValueError:
                raise ValueError(f"{path}, line {lineno}: the score {fields[1]!r} is not a number.") from None
            if not math.isfinite(score):
                raise ValueError(f"{path}, line {lineno}: the score {fields[1]!r} is not finite.")
            rows.append((fields[0], score, lineno))
        out[name] = rows
    return out


def score_classification(voc_root: str | os.PathLike[str], split: str, results_dir: str | os.PathLike[str], *,
                         class_names: Sequence[str] = VOC_CLASSES, comp: str = CLS_COMPETITION_ID) -> ClassificationAP:
    """Score ``comp1_cls_<split>_<class>.txt`` files against ``<voc_root>/ImageSets/Main/<class>_<split>.txt``.

    As the devkit: an image the split does not have is an error, an image without a line scores ``-inf``. Stricter
    than the devkit (which keeps the last): an image listed twice in one file is an error.
    """
    gt = read_class_labels(voc_root, split, tuple(class_names))
    metric = VOCClassificationMetric(gt.image_ids, gt.labels, gt.class_names)
    for name, rows in read_cls_results(results_dir, split, class_names, comp=comp).items():
        path = cls_results_path(results_dir, split=split, class_name=name, comp=comp)
        for image_id, score, lineno in rows:
            try:
                metric.add_class_score(name, image_id, score)
            except ValueError as exc:
                raise ValueError(f"{path}, line {lineno}: {exc}") from None
    return metric.compute()


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def scores_summary(ap: ClassificationAP, *, split: str | None, stamp: Mapping[str, object] | None) -> dict:
    """The JSON-ready summary: three labelled mAPs, per-class APs and counts, and the provenance stamp."""
    return {
        "provenance": {
            "metrics": {
                "sklearn": "Kraehenbuehl et al. (philkr/voc-classification@c209779): sklearn average_precision_score "
                           "over non-difficult images, scores - 1e-5 * label; the number the SSL papers report",
                "11point": "VOC2007 devkit VOCevalcls.m: 11-point interpolated AP",
                "area": "VOC2010+ devkit VOCap.m: area under the monotone PR curve",
            },
            "difficult": "ignored (neither positive nor negative)",
            "ties": "devkit: stable sort, image-set order; sklearn: tied scores form one threshold",
            "missing_images": "scored -inf, ranked last (devkit)",
            "classes_without_positives": "AP null, left out of the means",
            "split": split,
            "protocol": dict(stamp) if stamp is not None else {
                "key": "unknown protocol: results files scored without a provenance.json beside them"},
        },
        "map_sklearn": _number(ap.map_sklearn),
        "map_11point": _number(ap.map_11point),
        "map_area": _number(ap.map_area),
        "per_class": {
            c: {"ap_sklearn": _number(ap.ap_sklearn[c]), "ap_11point": _number(ap.ap_11point[c]),
                "ap_area": _number(ap.ap_area[c]), "n_pos": ap.n_pos[c], "n_neg": ap.n_neg[c],
                "n_difficult": ap.n_difficult[c], "n_missing": ap.n_missing[c]}
            for c in ap.class_names
        },
    }


def write_classification_scores(ap: ClassificationAP, out_dir: str | os.PathLike[str], *, split: str | None,
                                stamp: Mapping[str, object] | None) -> Path:
    """``<out_dir>/scores.json``, written atomically."""
    from jigsawpp.io import write_text_atomic

    text = json.dumps(scores_summary(ap, split=split, stamp=stamp), indent=2, allow_nan=False) + "\n"
    return write_text_atomic(Path(out_dir) / SCORES_FILENAME, text)


def plot_classification_curves(ap: ClassificationAP, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Every class's devkit precision/recall curve on one axes (`eval.metrics.pr_figure`); the legend gives the
    sklearn and 11-point APs."""
    from eval.metrics import pr_figure
    from jigsawpp.engine.plots import save_figure

    shown = [name for name in ap.class_names if ap.n_pos[name] > 0]
    fig = pr_figure(ap.class_names, {n: (ap.recall[n], ap.precision[n]) for n in shown},
                    {n: f"{ap.ap_sklearn[n]:.3f} / {ap.ap_11point[n]:.3f}" for n in shown},
                    title=title or f"VOC classification: mAP {ap.map_sklearn:.3f} (sklearn) / {ap.map_11point:.3f} "
                                   "(11-point)",
                    legend_title="class  AP sklearn / 11-pt")
    return save_figure(fig, Path(path), dpi=120)
