"""The provenance stamp of every FCN segmentation result, and its row in ``jigsawpp verify``.

Segmentation mIUs in the self-supervision literature differ by training set (SBD vs VOC2012 train), validation set
(seg11valid vs VOC2012 val), iterations (100K for FCN, 150K for the colorization papers) and which layers were
transferred. The stamp names all of them; ``key`` condenses those that change the number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.segmentation.config import FCNConfig
from eval.segmentation.model import FRESH_FC_BIAS, FRESH_FC_STD
from jigsawpp.transfer_weights import TRANSFER_FC_LAYERS as FC_LAYERS
from jigsawpp.transfer_weights import TransferWeights

__all__ = ["PAPER_SEGMENTATION_PROTOCOL", "PROTOCOL_NAME", "caffe_test_stamp", "segmentation_stamp", "verify_row"]

PROTOCOL_NAME = "fcn_segmentation"
STAMP_VERSION = 1
# Table 3's segmentation column: FCN-AlexNet's recipe (its supervised row, 48.0, is FCN's own seg11valid number).
PAPER_SEGMENTATION_PROTOCOL = FCNConfig()


def _base(device: Any) -> dict[str, Any]:
    from jigsawpp import __version__
    from jigsawpp.engine.stamp import environment_stamp

    return {"stamp_version": STAMP_VERSION, "tool": f"jigsawpp {__version__}", "protocol": PROTOCOL_NAME,
            "reference": "FCN-AlexNet, shelhamer/fcn.berkeleyvision.org@1305c73 (voc-fcn-alexnet)",
            "metric": "score.py: mean IU over one confusion matrix, void 255 ignored",
            "environment": environment_stamp(device)}


def segmentation_stamp(cfg: FCNConfig, *, weights: TransferWeights, iterations: int | None, device: Any,
                       train: dict[str, Any], val: dict[str, Any],
                       rescaled: dict[str, float] | None = None) -> dict[str, Any]:
    """The stamp of a run fine-tuned here (``train``/``val``: the splits' sources)."""
    fresh = {n: f"gaussian std {FRESH_FC_STD}, bias {FRESH_FC_BIAS}" for n in FC_LAYERS if n not in weights.layers}
    fresh["score_fr"] = "zero (no filler in net.py)"
    stamp = {
        **_base(device),
        "mode": "train+test",
        "train_data": train,
        "val_data": val,
        "init": {**weights.record(), "fresh_layers": fresh, "upscore": "bilinear, frozen"},
        "rescaled": ({"method": "Kraehenbuehl et al. 2016 between-layer (magic_init -cs)", "scales": rescaled}
                     if cfg.rescale else None),
        "iterations": iterations,
        "solver": {"base_lr": cfg.base_lr, "lr_policy": "fixed", "momentum": cfg.momentum,
                   "weight_decay": cfg.weight_decay, "iter_size": cfg.iter_size, "images_per_pass": 1,
                   "multipliers": "lr 1 decay 1 (biases too), score_fr bias lr 2 decay 0, upscore lr 0"},
        "loss": "softmax, ignore 255, normalised by the valid pixels of each image",
        "images": "full size, BGR minus mean, no augmentation",
        "testing": "once, after the last iteration (FCN's solve.py scores every 4000)",
        "amp": cfg.amp,
        "config": cfg.to_dict(),
    }
    stamp["key"] = protocol_key(stamp)
    return stamp


def caffe_test_stamp(*, prototxt: str, caffemodel: str, sha256: str, device: Any, val: dict[str, Any],
                     mean_bgr: tuple[float, float, float], score_blob: str, amp: str) -> dict[str, Any]:
    """The stamp of a given Caffe FCN evaluated as it is (``--caffe-test``)."""
    stamp = {**_base(device), "mode": "test-only", "val_data": val,
             "init": {"prototxt": prototxt, "caffemodel": caffemodel, "sha256": sha256},
             "score_blob": score_blob, "mean_bgr": list(mean_bgr), "amp": amp}
    stamp["key"] = protocol_key(stamp)
    return stamp


def protocol_key(stamp: dict[str, Any]) -> str:
    """One line of what changes the number."""
    val = stamp.get("val_data") or {}
    parts = ["fcn-alexnet mean-IU", f"val {val.get('dataset', '?')} {val.get('split', '?')}"]
    if stamp.get("mode") == "train+test":
        train = stamp.get("train_data") or {}
        parts += [f"train {train.get('dataset', '?')} {train.get('split', '?')}", f"{stamp['iterations']} it",
                  f"transfer {stamp['config']['transfer']}"]
        if stamp.get("rescaled"):
            parts.append("rescaled")
    else:
        parts.append("given Caffe model")
    return " | ".join(parts)


def verify_row(scores_path: Path, data: dict, paper_row: dict | None):
    """The Table 3 segmentation row of a ``scores.json`` written by this protocol (None for other protocols)."""
    from eval.verify import VerifyRow

    stamp = (data.get("provenance") or {}).get("protocol") or {}
    if stamp.get("protocol") != PROTOCOL_NAME:
        return None
    deviations = []
    paper = PAPER_SEGMENTATION_PROTOCOL.to_dict()
    if stamp.get("mode") != "train+test":
        deviations.append("a given Caffe model, not fine-tuned here")
    else:
        cfg = stamp.get("config") or {}
        if stamp.get("iterations") != paper["max_iters"]:
            deviations.append(f"{stamp.get('iterations')} iterations (paper: FCN's {paper['max_iters']})")
        for key in ("transfer", "train_data", "val_data", "base_lr", "iter_size", "weight_decay", "momentum"):
            if cfg.get(key) != paper[key]:
                deviations.append(f"{key} {cfg.get(key)} (paper: {paper[key]})")
        if cfg.get("rescale"):
            deviations.append("Kraehenbuehl rescaling")
        if cfg.get("amp", "off") != "off":
            deviations.append(f"{cfg['amp']} autocast")
    from eval.segmentation.data import SEG11VALID_COUNT
    from eval.verify import NOT_COMPARABLE

    val = stamp.get("val_data") or {}
    # Table 3's number is on FCN's seg11valid (736 images, its list's sha256); any other test set is another measure.
    comparable = val.get("split") == "seg11valid" and val.get("is_fcn_seg11valid") is True
    if val.get("split") == "seg11valid" and val.get("is_fcn_seg11valid") is False:
        deviations.insert(0, f"seg11valid list differs from FCN's ({val.get('count')} images, FCN's "
                             f"{SEG11VALID_COUNT}): {NOT_COMPARABLE}")
    elif not comparable:
        deviations.insert(0, f"test set {val.get('dataset', '?')} {val.get('split', '?')} ({val.get('count', '?')} "
                             f"images), not FCN's seg11valid ({SEG11VALID_COUNT}): {NOT_COMPARABLE}")
    measured = data.get("mean_iu")
    return VerifyRow(table="table3", column="segmentation",
                     measured=None if measured is None else 100.0 * measured,
                     paper=None if paper_row is None else paper_row.get("segmentation"),
                     protocol=stamp.get("key", "unknown"), deviations=tuple(deviations), source=str(scores_path),
                     comparable=comparable)
