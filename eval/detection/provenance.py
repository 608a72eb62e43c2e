"""The provenance stamp carried by every detection result, so numbers from different protocols never mix silently.

Detection mAPs in the self-supervision literature differ by AP definition (VOC2007 11-point vs area), train and
test scales, proposals, iteration count and which layers were frozen (reference_protocols §2b, §4). The stamp names
all of them, with the preset the run started from and every setting changed from it; `protocol_key` condenses the
ones that change the number, `comparable` says whether two stamps describe the same protocol, and `deviations`
lists how a result's protocol differs from its preset and from the paper's (what ``jigsawpp verify`` prints).
"""

from __future__ import annotations

from typing import Any

from eval.detection.config import PAPER_PROTOCOLS, PROTOCOL_ALIASES, FastRCNNConfig, preset_overrides, protocol
from eval.detection.model import CONV_LAYERS, HEAD_LAYERS

__all__ = ["PROTOCOL", "STAMP_VERSION", "comparable", "deviations", "protocol_key", "provenance_stamp"]

STAMP_VERSION = 2
PROTOCOL = "Fast R-CNN (rbgirshick/fast-rcnn@b612190), CaffeNet, PASCAL VOC"  # the stamp's "protocol": what ran
# settings that do not change the number (how often checkpoints are written)
_NEUTRAL_KEYS = frozenset({"snapshot_iters"})


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
    model: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The stamp for one run.

    Args:
        mode: "train+test" (fine-tuned here) or "test-only" (a given Caffe detector).
        proposals: at least ``{"method": ...}``; for .mat files also ``"files"``, for OpenCV the cache folder.
        iterations: SGD steps actually run (None in test-only mode).
        init: what the weights came from: `jigsawpp.transfer_weights.TransferWeights.record` (``transfer``,
            ``transferred_layers``, ``fc6_fc7``, ``from``, ``weights_sha256``) or the Caffe detector's files.
        protocol_name: the preset the config started from (`eval.detection.config.PROTOCOLS`); the stamp records it
            and every setting changed from it (``overrides``).
        model: ``{"folder": ..., "manifest_sha256": ...}`` of the converted model (``jigsawpp verify`` refuses a
            result whose manifest hash differs from the model it is compared with).
        data: what was trained and tested on, e.g. ``{"test": {"split", "images", "digest"}}``.
    """
    from jigsawpp import __version__

    trained = mode == "train+test"
    name = PROTOCOL_ALIASES.get(protocol_name, protocol_name) if protocol_name else None
    stamp = {
        "stamp_version": STAMP_VERSION,
        "tool": f"jigsawpp {__version__}",
        "protocol": PROTOCOL,
        "protocol_name": name,
        "overrides": preset_overrides(cfg, name) if name else None,
        "model": model,
        "data": data,
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
            "transferred_layers": list(init.get("transferred_layers", CONV_LAYERS)),
            "fresh_layers": [h for h in HEAD_LAYERS if h not in init.get("transferred_layers", CONV_LAYERS)],
            "fc6_fc7": ("from the model's caffemodel" if "fc6" in init.get("transferred_layers", ())
                        else "initialised fresh (fillers of models/CaffeNet/train.prototxt: gaussian std 0.005, "
                             "bias 1)"),
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
    """A one-line summary of what changes the number: AP, scales, proposals, iterations, frozen layers, rescaling,
    and where fc6/fc7 came from (``jigsawpp verify`` prints it beside every number)."""
    parts = ["voc07-11pt", f"test {stamp['test_scales']}"]
    if stamp.get("mode") == "train+test":
        parts += [f"train {stamp['train_scales']}", f"{stamp['iterations']} it",
                  "frozen " + (",".join(stamp["frozen_layers"]) or "none")]
        if stamp.get("rescaled"):
            parts.append("rescaled")
        parts.append("fc6/fc7 " + ("from the model" if "fc6" in stamp.get("transferred_layers", []) else "fresh"))
    else:
        parts.append("given detector")
    parts.append(f"proposals {stamp['proposals'].get('method', '?')}")
    return " | ".join(parts)


def comparable(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """True when two stamps describe the same protocol (same `protocol_key`)."""
    return protocol_key(a) == protocol_key(b)


def _paper_column(stamp: dict[str, Any]) -> str:
    return "detection_ms" if stamp.get("test_pyramid") else "detection_ss"


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "(" + ", ".join(str(v) for v in value) + ")"
    return str(value)


def deviations(stamp: dict[str, Any], preset: str | None = None) -> list[str]:
    """How a result's protocol differs from its preset and from the paper's, one sentence per difference.

    The preset is `preset`, else the stamp's ``protocol_name``; the paper's protocol is that of the Table 3 column
    the result belongs to (`eval.detection.config.PAPER_PROTOCOLS`: a test-time pyramid is the MS column), with the
    released selective-search proposals, 150K iterations and conv layers only. A setting that differs from both is
    one line naming both values.
    """
    if not stamp or "config" not in stamp:
        return ["no provenance stamp: protocol unknown"]
    cfg = stamp["config"]
    trained = stamp.get("mode") == "train+test"
    name = preset or stamp.get("protocol_name")
    name = PROTOCOL_ALIASES.get(name, name) if name else None
    paper_name, paper_overrides = PAPER_PROTOCOLS[_paper_column(stamp)]
    paper = protocol(paper_name, **paper_overrides).to_dict()
    reference = protocol(name).to_dict() if name else None
    test_keys = {"test_scales", "test_max_size", "pyramid_target_area", "pixel_means_bgr", "test_nms", "test_bbox_reg",
                 "max_per_image", "max_per_set_factor", "dedup_boxes", "proposals", "proposal_min_size", "box_eps",
                 "amp"}
    out = []
    if not trained:
        out.append("a given detector, not fine-tuned here (only the test settings are compared)")
    for key in sorted(cfg):
        if key in _NEUTRAL_KEYS or key == "proposals" or (not trained and key not in test_keys):
            continue
        value = cfg[key]
        parts = []
        if reference is not None and key in reference and reference[key] != value:
            parts.append(f"preset {name}: {_show(reference[key])}")
        if key in paper and paper[key] != value:
            parts.append(f"paper: {_show(paper[key])}")
        if parts:
            out.append(f"{key} {_show(value)} ({'; '.join(parts)})")
    if trained:
        iterations = stamp.get("iterations")
        if iterations != cfg.get("max_iters"):
            out.append(f"stopped after {iterations} of max_iters {cfg.get('max_iters')} iterations")
        if "fc6_fc7" not in stamp:
            out.append("origin of fc6/fc7 not recorded")
    method = cfg.get("proposals")
    if method != "selective_search_mat":
        differs = (f"; preset {name}: {reference['proposals']}" if reference is not None
                   and reference["proposals"] != method else "")
        out.append(f"proposals {method}: computed here, not the released selective-search boxes the paper used "
                   f"(--ss-mat){differs}")
    return out
