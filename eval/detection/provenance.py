"""The provenance stamp carried by every detection result, so numbers from different protocols never mix silently.

Detection mAPs in the self-supervision literature differ by AP definition (VOC2007 11-point vs area), train and
test scales, proposals, iteration count and which layers were frozen (reference_protocols §2b, §4). The stamp names
all of them; `protocol_key` condenses the ones that change the number, and `comparable` says whether two stamps
describe the same protocol.
"""

from __future__ import annotations

from typing import Any

from eval.detection.config import FastRCNNConfig
from eval.detection.model import CONV_LAYERS, HEAD_LAYERS

__all__ = ["STAMP_VERSION", "comparable", "protocol_key", "provenance_stamp"]

STAMP_VERSION = 1


def _scales(scales: tuple[int, ...] | list[int], max_size: int) -> str:
    return f"{'+'.join(str(s) for s in scales)}/{max_size}"


def provenance_stamp(
    cfg: FastRCNNConfig,
    *,
    mode: str,
    proposals: dict[str, Any],
    iterations: int | None,
    init: dict[str, Any],
    device: str,
    world_size: int = 1,
    protocol_name: str | None = None,
) -> dict[str, Any]:
    """The stamp for one run.

    Args:
        mode: "train+test" (fine-tuned here) or "test-only" (a given Caffe detector).
        proposals: at least ``{"method": ...}``; for .mat files also ``"files"``, for OpenCV the cache folder.
        iterations: SGD steps actually run (None in test-only mode).
        init: what the weights came from, e.g. ``{"conv_from": path, "sha256": ...}``.
    """
    from jigsawpp import __version__

    trained = mode == "train+test"
    stamp = {
        "stamp_version": STAMP_VERSION,
        "tool": f"jigsawpp {__version__}",
        "protocol": "Fast R-CNN (rbgirshick/fast-rcnn@b612190), CaffeNet, PASCAL VOC",
        "protocol_name": protocol_name,
        "mode": mode,
        "ap_type": "VOC2007 11-point interpolated AP (VOCevaldet.m); VOC2010+ area AP reported beside it",
        "test_scales": _scales(cfg.test_scales, cfg.test_max_size),
        "test_pyramid": len(cfg.test_scales) > 1,
        "proposals": proposals,
        "test": {
            "nms": cfg.test_nms,
            "bbox_reg": cfg.test_bbox_reg,
            "max_per_image": cfg.max_per_image,
            "max_per_set": f"{cfg.max_per_set_factor} x images",
            "dedup_boxes": cfg.dedup_boxes,
        },
        "init": init,
        "device": device,
        "world_size": world_size,
        "amp": cfg.amp,
    }
    if trained:
        stamp.update({
            "train_scales": _scales(cfg.train_scales, cfg.train_max_size),
            "iterations": iterations,
            "lr_schedule": {"base_lr": cfg.base_lr, "gamma": cfg.lr_gamma, "stepsize": cfg.lr_stepsize,
                            "momentum": cfg.momentum, "weight_decay": cfg.weight_decay},
            "minibatch": {"images": cfg.ims_per_batch, "rois": cfg.rois_per_batch, "fg_fraction": cfg.fg_fraction},
            "transferred_layers": list(CONV_LAYERS),
            "fresh_layers": list(HEAD_LAYERS),
            "frozen_layers": list(cfg.frozen_layers),
            "rescaled": "Kraehenbuehl et al. 2016 between-layer" if cfg.rescale else None,
            "bbox_normalization": cfg.bbox_normalization,
            "flipped": cfg.use_flipped,
            "difficult_in_training": cfg.train_use_difficult,
        })
    stamp["config"] = cfg.to_dict()
    stamp["key"] = protocol_key(stamp)
    return stamp


def protocol_key(stamp: dict[str, Any]) -> str:
    """A one-line summary of what changes the number: AP, scales, proposals, iterations, frozen layers, rescaling."""
    parts = ["voc07-11pt", f"test {stamp['test_scales']}"]
    if stamp.get("mode") == "train+test":
        parts += [f"train {stamp['train_scales']}", f"{stamp['iterations']} it",
                  "frozen " + (",".join(stamp["frozen_layers"]) or "none")]
        if stamp.get("rescaled"):
            parts.append("rescaled")
    else:
        parts.append("given detector")
    parts.append(f"proposals {stamp['proposals'].get('method', '?')}")
    return " | ".join(parts)


def comparable(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """True when two stamps describe the same protocol (same `protocol_key`)."""
    return protocol_key(a) == protocol_key(b)
