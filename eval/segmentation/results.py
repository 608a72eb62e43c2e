"""Scoring a folder of predicted label PNGs, the ``scores.json`` summary, and the per-class IU plot.

Predictions are indexed PNGs named ``<image_id>.png`` holding class indices (what FCN's ``score.py`` saves with
``save_dir``, and what VOC's evaluation server takes), scored with `eval.segmentation.metric` against the split's
ground truth. `score_segmentation` is what ``jigsawpp eval score-segmentation`` runs.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from eval.constants import SCORES_FILENAME
from eval.segmentation.data import SegSplit
from eval.segmentation.labels import SEG_CLASSES, read_label_png
from eval.segmentation.metric import SegmentationMetric, SegmentationScores

__all__ = ["plot_iu", "prediction_path", "score_prediction_folder", "scores_summary", "write_segmentation_scores"]


def prediction_path(results_dir: str | os.PathLike[str], image_id: str) -> Path:
    return Path(results_dir) / f"{image_id}.png"


def score_prediction_folder(split: SegSplit, results_dir: str | os.PathLike[str], *,
                            num_classes: int = len(SEG_CLASSES), progress: bool = False) -> SegmentationScores:
    """Score ``<results_dir>/<image_id>.png`` for every image of ``split``.

    Raises:
        FileNotFoundError: predictions are missing (the count and the first image are named).
        ValueError: a prediction is not an indexed PNG, has another size than its image, or holds a label that is
            not a class (the image is named).
    """
    results = Path(results_dir)
    missing = [i for i in split.image_ids if not prediction_path(results, i).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(split.samples)} predictions of {split.name} are missing from "
                                f"{results}, e.g. image {missing[0]} ({prediction_path(results, missing[0]).name}); "
                                "write one indexed PNG of class indices per image.")
    metric = SegmentationMetric(num_classes)
    samples = split.samples
    if progress:
        from tqdm import tqdm

        samples = tqdm(samples, desc="scoring", unit="image")
    for sample in samples:
        pred = read_label_png(prediction_path(results, sample.image_id), what=f"prediction of image {sample.image_id}")
        gt = sample.read_label()
        if pred.shape != gt.shape:
            raise ValueError(f"prediction of image {sample.image_id} ({prediction_path(results, sample.image_id)}) is "
                             f"{pred.shape[1]}x{pred.shape[0]} pixels but the image is {gt.shape[1]}x{gt.shape[0]}; "
                             "predict at the image's own size.")
        metric.update(gt, pred, image_id=sample.image_id)
    return metric.compute()


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def scores_summary(scores: SegmentationScores, *, split: Mapping[str, object] | None,
                   stamp: Mapping[str, object] | None, class_names: tuple[str, ...] = SEG_CLASSES) -> dict:
    """JSON-ready: mean IU, pixel accuracy, mean accuracy, frequency-weighted IU, per-class IU/accuracy, counts."""
    pixels = scores.confusion.sum(1)
    return {
        "provenance": {
            "metric": "FCN score.py (shelhamer/fcn.berkeleyvision.org@1305c73): one confusion matrix over all "
                      "pixels with ground truth in [0, 21); IU = TP / (TP + FP + FN); means are nanmeans",
            "void": "label 255 ignored",
            "split": dict(split) if split is not None else None,
            "protocol": dict(stamp) if stamp is not None else {
                "key": "unknown protocol: predictions scored without a provenance.json beside them"},
        },
        "mean_iu": _number(scores.mean_iu),
        "pixel_accuracy": _number(scores.pixel_accuracy),
        "mean_accuracy": _number(scores.mean_accuracy),
        "frequency_weighted_iu": _number(scores.frequency_weighted_iu),
        "n_images": scores.n_images,
        "per_class": {c: {"iu": _number(float(scores.iu[k])), "accuracy": _number(float(scores.accuracy[k])),
                          "gt_pixels": int(pixels[k])} for k, c in enumerate(class_names)},
        "confusion": scores.confusion.tolist(),
    }


def write_segmentation_scores(scores: SegmentationScores, out_dir: str | os.PathLike[str], *,
                              split: Mapping[str, object] | None, stamp: Mapping[str, object] | None) -> Path:
    from jigsawpp.io import write_text_atomic

    text = json.dumps(scores_summary(scores, split=split, stamp=stamp), indent=2, allow_nan=False) + "\n"
    return write_text_atomic(Path(out_dir) / SCORES_FILENAME, text)


def plot_iu(scores: SegmentationScores, path: str | os.PathLike[str], *, title: str | None = None,
            class_names: tuple[str, ...] = SEG_CLASSES) -> Path:
    """Per-class IU as bars in VOC colours, the mean as a line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from eval.segmentation.labels import voc_palette
    from jigsawpp.engine.plots import save_figure

    path = Path(path)
    fig = Figure(figsize=(10, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    values = np.nan_to_num(scores.iu, nan=0.0)
    colours = voc_palette(len(class_names)).astype(float) / 255.0
    ax.bar(range(len(class_names)), values, color=colours, edgecolor="black", linewidth=0.5)
    if not math.isnan(scores.mean_iu):
        ax.axhline(scores.mean_iu, color="black", linestyle="--", linewidth=1, label=f"mean IU {scores.mean_iu:.3f}")
        ax.legend(loc="upper right")
    ax.set_xticks(range(len(class_names)))
    ax.set_xticklabels(class_names, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("IU")
    ax.set_title(title or f"segmentation: mean IU {scores.mean_iu:.3f}, pixel accuracy {scores.pixel_accuracy:.3f}",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
