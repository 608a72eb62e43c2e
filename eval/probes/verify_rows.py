"""`jigsawpp verify` rows for probe results: each measured top-1 beside Table 4 (ImageNet linear), Table 5 (Places205
linear) or Table 6 (ImageNet nonlinear), with every way the run's protocol differs from the paper's.

Some protocol parts are not known from any reference and are always listed, even for a default run: the linear
solver schedule (never published), the sampling grid of the Resize layer (its Caffe source was not found), and the
whole nonlinear classifier (no reference code; implemented from the paper's text and the 2016 CFN solver).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["PROBE_KINDS", "probe_rows"]

PROBE_KINDS = ("linear_probe", "nonlinear_classifier")

# Protocol-defining keys compared with the defaults (run-only keys such as snapshot_iters are not).
_LINEAR_KEYS = ("resize", "image_size", "crop_size", "mirror", "test_crops", "bn_moving_average_fraction", "bn_eps",
                "batch_size", "max_iter", "base_lr", "lr_policy", "stepvalues", "stepsize", "gamma", "momentum",
                "weight_decay")
_NONLINEAR_KEYS = ("image_size", "crop_size", "mirror", "test_crops", "conv_std", "fc_std", "fc8_std", "fc_units",
                   "dropout",
                   "batch_size", "base_lr", "lr_policy", "stepsize", "stepvalues", "gamma", "max_iter", "momentum",
                   "weight_decay")


def _config_deviations(config: dict[str, Any], defaults: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    out = []
    for key in keys:
        got, want = config.get(key), defaults[key]
        if isinstance(want, tuple):
            got = tuple(got) if isinstance(got, list) else got
        if got != want:
            out.append(f"{key} {got} (protocol default: {want})")
    return out


def _linear_deviations(stamp: dict[str, Any]) -> list[str]:
    from eval.probes.config import LinearProbeConfig

    config = stamp.get("config") or {}
    defaults = LinearProbeConfig().to_dict()
    out = ["solver schedule chosen, not from the reference (Zhang et al. never published linear/solver.prototxt): "
           f"lr {config.get('base_lr')} {config.get('lr_policy')} x{config.get('gamma')} at "
           f"{config.get('stepvalues')}, {config.get('max_iter')} iterations, momentum {config.get('momentum')}, "
           f"weight decay {config.get('weight_decay')}"]
    if config.get("resize") == "bilinear":
        out.append(f"Resize sampling grid unverified (align_corners={config.get('align_corners')}; the Caffe fork's "
                   "Resize source was not found)")
    else:
        out.append("average pooling (VISSL's variant), not the bilinear Resize of the paper's protocol")
    dev = [d for d in _config_deviations(config, defaults, _LINEAR_KEYS) if not d.startswith("resize ")]
    out += dev
    cache = stamp.get("cache")
    if cache and cache.get("train_views") is not None:
        out.append(f"trained on cached features: augmentation limited to {cache['train_views']} fixed random "
                   "crop+mirror view(s) per training image")
    if config.get("amp", "off") != "off":
        out.append(f"{config['amp']} autocast")
    return out


def _nonlinear_deviations(stamp: dict[str, Any]) -> list[str]:
    from eval.probes.config import NonlinearConfig

    config = stamp.get("config") or {}
    defaults = NonlinearConfig().to_dict()
    out = ["unverified protocol: no reference code for the AlexNet nonlinear classifier; implemented from the paper's "
           "text and the 2016 CFN recognition solver (lr 0.01, /10 every 100K, 350K iterations, batch 256)",
           "choices: CaffeNet fillers for the fresh layers, mirror augmentation, softmax averaged over 10 crops"]
    out += _config_deviations(config, defaults, _NONLINEAR_KEYS)
    if config.get("amp", "off") != "off":
        out.append(f"{config['amp']} autocast")
    return out


def probe_rows(scores_path: Path, data: dict[str, Any], method: str | None) -> list:
    """One `eval.verify.VerifyRow` per measured layer of a probe result (`data` is its scores.json)."""
    from eval.verify import VerifyRow
    from jigsawpp.paper import paper_numbers

    kind = data.get("kind")
    stamp = data.get("provenance") or {}
    dataset = data.get("dataset")
    if kind == "linear_probe":
        table = {"imagenet": "table4", "places205": "table5"}.get(dataset)
        deviations = _linear_deviations(stamp)
    elif kind == "nonlinear_classifier":
        table = "table6" if dataset == "imagenet" else None
        deviations = _nonlinear_deviations(stamp)
    else:
        raise ValueError(f"{scores_path}: kind {kind!r} is not a probe result ({', '.join(PROBE_KINDS)}).")
    if table is None:
        deviations.insert(0, f"dataset {dataset!r}: the paper reports this protocol on "
                             f"{'ImageNet and Places205' if kind == 'linear_probe' else 'ImageNet'} only")
    paper = (paper_numbers(method).get(table) if (method and table) else None) or {}
    rows = []
    for layer, value in (data.get("top1") or {}).items():
        rows.append(VerifyRow(table=table or "-", column=layer, measured=value, paper=paper.get(layer),
                              protocol=stamp.get("key", "unknown"), deviations=tuple(deviations),
                              source=str(scores_path)))
    return rows


def is_probe_result(path: Path) -> bool:
    """True when `path` (a scores.json) is a probe result."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("kind") in PROBE_KINDS
    except (OSError, json.JSONDecodeError, AttributeError):
        return False
