"""The provenance stamp of every VOC07 classification result, and its row in ``jigsawpp verify``.

Classification mAPs in the self-supervision literature differ by AP definition (Krähenbühl's scikit-learn AP vs the
devkit's 11-point), test crops, which layers were fine-tuned and how long (reference_protocols §2a, §4). The stamp
names all of them; ``key`` condenses those that change the number.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eval.classification.config import VOCClassificationConfig
from eval.classification.model import RANDOM_BIAS, RANDOM_STD, VARIANTS
from jigsawpp.transfer_weights import TRANSFER_CONV_LAYERS as CONV_LAYERS
from jigsawpp.transfer_weights import TRANSFER_FC_LAYERS as FC_LAYERS
from jigsawpp.transfer_weights import TransferWeights

__all__ = ["PAPER_CLASSIFICATION_PROTOCOL", "PROTOCOL_NAME", "cls_seg_verify_row", "classification_stamp",
           "verify_row"]

PROTOCOL_NAME = "voc07_classification"
STAMP_VERSION = 1
# What Table 3's classification column was produced with: philkr's defaults and the "all" variant (paper, §5).
PAPER_CLASSIFICATION_PROTOCOL = VOCClassificationConfig()


def classification_stamp(cfg: VOCClassificationConfig, *, weights: TransferWeights, iterations: int | None,
                         device: Any, dataset: str, rescaled: dict[str, float] | None = None) -> dict[str, Any]:
    """The stamp for one run (``iterations``: SGD steps actually run)."""
    from jigsawpp import __version__
    from jigsawpp.engine.stamp import environment_stamp

    variant = VARIANTS[cfg.variant]
    layers = CONV_LAYERS + (FC_LAYERS if variant.clip == "drop7" else ()) + ("fc8_cls",)
    fresh = [n for n in layers if n not in weights.layers]
    fresh_rule = {n: (f"N(0, {RANDOM_STD}), bias {RANDOM_BIAS}" if not (n == "fc8_cls" and variant.clip == "pool5")
                      else "zero (Caffe's default filler; the reference re-initialises nothing when clipped at pool5)")
                  for n in fresh}
    stamp: dict[str, Any] = {
        "stamp_version": STAMP_VERSION,
        "tool": f"jigsawpp {__version__}",
        "protocol": PROTOCOL_NAME,
        "reference": "Kraehenbuehl et al. 2016, philkr/voc-classification@c209779 (train_cls.py)",
        "dataset": dataset,
        "splits": {"train": cfg.train_split, "test": cfg.test_split},
        "variant": cfg.variant,
        "trained_layers": list(variant.trained),
        "frozen_layers": [n for n in layers if n not in variant.trained],
        "init": {**weights.record(), "fresh_layers": fresh_rule},
        "rescaled": ({"method": "Kraehenbuehl et al. 2016 between-layer (magic_init -cs)", "scales": rescaled}
                     if cfg.rescale else None),
        "iterations": iterations,
        "solver": {"base_lr": cfg.base_lr, "lr_policy": f"step, gamma {cfg.lr_gamma}, stepsize {cfg.lr_stepsize}",
                   "momentum": cfg.momentum, "weight_decay": cfg.weight_decay, "clip_gradients": cfg.clip_gradients,
                   "batch_size": cfg.batch_size, "multipliers": "trained: weights lr 1 decay 1, biases lr 2 decay 1"},
        "augmentation": {"crop": cfg.crop, "scale": [cfg.min_scale, cfg.max_scale], "mirror": cfg.mirror,
                         "mean_bgr": list(cfg.mean_bgr)},
        "test": {"crops": cfg.test_crops, "how": "the training transform's random draws, scores summed"},
        "ap_types": "sklearn (Kraehenbuehl; reported in Table 3), VOC2007 11-point and VOC2010+ area (devkit)",
        "amp": cfg.amp,
        "environment": environment_stamp(device),
        "config": cfg.to_dict(),
    }
    stamp["key"] = protocol_key(stamp)
    return stamp


def protocol_key(stamp: dict[str, Any]) -> str:
    """One line of what changes the number: AP type, variant, layers transferred, iterations, crops, rescaling."""
    cfg = stamp["config"]
    parts = ["voc07-cls sklearn-AP", f"variant {stamp['variant']}", f"transfer {cfg['transfer']}",
             f"{stamp['iterations']} it", f"{cfg['test_crops']} test crops"]
    if stamp.get("rescaled"):
        parts.append("rescaled")
    return " | ".join(parts)


def verify_row(scores_path: Path, data: dict, paper_row: dict | None):
    """The Table 3 classification row of a ``scores.json`` written by this protocol (None for other protocols)."""
    from eval.verify import VerifyRow

    stamp = (data.get("provenance") or {}).get("protocol") or {}
    if stamp.get("protocol") != PROTOCOL_NAME:
        return None
    cfg = stamp.get("config") or {}
    paper = PAPER_CLASSIFICATION_PROTOCOL.to_dict()
    deviations = []
    if stamp.get("iterations") != paper["max_iters"]:
        deviations.append(f"{stamp.get('iterations')} iterations (paper: {paper['max_iters']})")
    for key in ("variant", "transfer", "test_crops", "batch_size", "base_lr", "lr_stepsize", "lr_gamma", "crop",
                "min_scale", "max_scale", "train_split", "test_split"):
        if cfg.get(key) != paper[key]:
            deviations.append(f"{key} {cfg.get(key)} (paper: {paper[key]})")
    if list(cfg.get("mean_bgr", [])) != list(paper["mean_bgr"]):
        deviations.append(f"mean {cfg.get('mean_bgr')} (paper: {list(paper['mean_bgr'])})")
    if cfg.get("rescale"):
        deviations.append("Kraehenbuehl rescaling")
    if cfg.get("amp", "off") != "off":
        deviations.append(f"{cfg['amp']} autocast")
    if stamp.get("dataset") not in (None, "VOC2007"):
        deviations.append(f"dataset {stamp['dataset']} (paper: VOC2007)")
    test_set = _voc2007_test_check(data)
    if test_set is not None:
        deviations.insert(0, test_set)
    measured = data.get("map_sklearn")
    return VerifyRow(table="table3", column="classification",
                     measured=None if measured is None else 100.0 * measured,
                     paper=None if paper_row is None else paper_row.get("classification"),
                     protocol=stamp.get("key", "unknown"), deviations=tuple(deviations), source=str(scores_path),
                     comparable=test_set is None)


def _voc2007_test_check(data: dict) -> str | None:
    """None when the scores are on the full VOC2007 test set, else the sentence saying they are not comparable.
    Every image of the test set is, for each class, a positive, a negative or a difficult one, so any class's three
    counts (``per_class.<class>.n_pos + n_neg + n_difficult``) add up to the number of test images."""
    from eval.verify import NOT_COMPARABLE, VOC2007_TEST_IMAGES

    counts = {sum(int(entry.get(k) or 0) for k in ("n_pos", "n_neg", "n_difficult"))
              for entry in (data.get("per_class") or {}).values() if isinstance(entry, dict)}
    if len(counts) != 1:
        return f"the scores do not say which test set they are on (no per-class image counts): {NOT_COMPARABLE}"
    (n_images,) = counts
    if n_images != VOC2007_TEST_IMAGES:
        return f"test set of {n_images:,} images, not the full VOC2007 test ({VOC2007_TEST_IMAGES:,}): {NOT_COMPARABLE}"
    return None


def cls_seg_verify_row(scores_path: Path, paper_row: dict | None):
    """`eval.verify`'s hook: the classification or segmentation row of ``scores_path``, None for other protocols."""
    from eval.segmentation.provenance import verify_row as segmentation_row

    data = json.loads(Path(scores_path).read_text(encoding="utf-8"))
    row = verify_row(Path(scores_path), data, paper_row)
    return row if row is not None else segmentation_row(Path(scores_path), data, paper_row)
