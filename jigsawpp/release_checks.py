"""Consistency checks of a release zip's parts: tower copies, fc8 against the permutations and pseudo-labels, and the
9-tower deploy's tower against the single-tower pretext deploy. Each check is informational (ok None), passed or
failed; a failure that makes a conversion meaningless is also returned as a problem."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from caffe_import.proto import caffe_pb2
from jigsawpp.release_prototxt import PrototxtScore
from jigsawpp.release_scan import CaffemodelInfo, Permutations

if TYPE_CHECKING:
    from jigsawpp.release_inspect import LabelsFound
    from jigsawpp.release_variants import VariantPlan

__all__ = ["Check", "fc8_checks", "tower_checks", "tower_geometry_checks"]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None     # None: informational
    message: str


def tower_checks(model: CaffemodelInfo, allow: bool, problems: list[str]) -> list[Check]:
    towers = model.towers
    if towers is None:
        return []
    worst = max(towers.max_abs_diff.values(), default=0.0)
    if towers.identical:
        return [Check("towers", True, f"{len(towers.towers)} tower copies of {', '.join(towers.bases)} are "
                                      "identical (max |diff| 0); collapsed into one AlexNet tower")]
    differing = {k: v for k, v in towers.max_abs_diff.items() if v > 0}
    message = (f"tower copies differ: max |diff| {worst:.3g} ("
               + ", ".join(f"{k} {v:.3g}" for k, v in differing.items())
               + (f"; missing {', '.join(towers.missing)}" if towers.missing else "")
               + f"); the first tower (_s{min(towers.towers)}) is used")
    if not allow:
        problems.append(message + ". The weights were meant to be shared; pass --allow-tower-mismatch to convert "
                                  "anyway")
    return [Check("towers", False, message)]


def fc8_checks(model: CaffemodelInfo, perms: Permutations | None,
               labels: list[LabelsFound]) -> list[Check]:
    checks = []
    fc8 = model.collapsed.get("fc8")
    rows = int(fc8[0][0]) if fc8 else None
    if model.kind == "cfn":
        if rows is None:
            checks.append(Check("fc8", None, "the CFN caffemodel has no fc8"))
        elif perms is None:
            checks.append(Check("fc8", None, f"fc8 has {rows} outputs; no permutation file in the zip to compare"))
        elif rows == perms.count:
            checks.append(Check("fc8", True, f"fc8 has {rows} outputs = {perms.count} permutations in "
                                             f"{perms.member}"))
        else:
            checks.append(Check("fc8", rows > perms.count, (
                f"fc8 has {rows} outputs but {perms.member} holds {perms.count} permutations; the caffemodel's fc8 "
                f"shape ({rows}) is authoritative: the network was built with {rows} outputs and "
                + (f"outputs {perms.count}..{rows - 1} were never a training target (the authors' "
                   "train_val_cfn_jps++.prototxt has fc8 1000 with permutations_701.bin)" if rows > perms.count else
                   "cannot score every permutation of the file"))))
        for found in labels:
            s = found.labels.summary()
            checks.append(Check(f"labels:{found.split}", None, (
                f"{found.member}: {s['count']} images in {s['distinct_labels']} clusters (k-means clusters of "
                "this model's features: targets of the CC step, not outputs of this network)")))
    elif rows is not None:
        for found in labels:
            s = found.labels.summary()
            top = s["max_label"]
            ok = top is not None and 0 <= int(s["min_label"]) and int(top) < rows
            checks.append(Check(f"labels:{found.split}", ok, (
                f"{found.member}: {s['count']} images, {s['distinct_labels']} distinct clusters in "
                f"[{s['min_label']}, {top}]; fc8 has {rows} outputs"
                + ("" if ok else " -- these labels cannot be this network's targets"))))
    return checks


_GEOMETRY = {"Convolution": ("convolution_param", ("num_output", "kernel_size", "stride", "pad", "group")),
             "Pooling": ("pooling_param", ("pool", "kernel_size", "stride", "pad", "round_mode")),
             "LRN": ("lrn_param", ("local_size", "alpha", "beta", "k", "norm_region"))}


def _geometry(lp: caffe_pb2.LayerParameter) -> tuple:
    kind, names = _GEOMETRY[lp.type]
    param = getattr(lp, kind)
    values = []
    for n in names:
        v = getattr(param, n)
        values.append(tuple(v) if hasattr(v, "__len__") and not isinstance(v, str) else v)
    return (lp.type, *values)


def tower_geometry_checks(model: CaffemodelInfo, scores: list[PrototxtScore],
                          variants: list[VariantPlan]) -> list[Check]:
    """The zip's 9-tower deploy (if any) must describe the same tower as the single-tower pretext deploy used."""
    if model.kind != "cfn" or model.towers is None:
        return []
    pretext = next((v for v in variants if v.role == "pretext"), None)
    cfn = next((s for s in scores if s.fits and s.mode == "raw" and s.net is not None), None)
    if pretext is None or cfn is None:
        return []
    suffix = f"_s{min(model.towers.towers)}"
    cfn_layers = {lp.name[: -len(suffix)]: lp for lp in cfn.net.layer
                  if lp.name.endswith(suffix) and lp.type in _GEOMETRY}
    single = {lp.name: lp for lp in pretext.deploy_net.layer if lp.type in _GEOMETRY}
    differ = [name for name, lp in single.items()
              if name not in cfn_layers or _geometry(cfn_layers[name]) != _geometry(lp)]
    extra = []
    types = {lp.type for lp in cfn.net.layer}
    if "MVN" in types and "Power" in types:
        scale = {lp.power_param.scale for lp in cfn.net.layer if lp.type == "Power"}
        extra.append(f"its towers normalise each tile with MVN then Power scale {sorted(scale)}")
    if differ:
        return [Check("tower_geometry", False, (
            f"tower {suffix} of {cfn.member} differs from {pretext.deploy_source} in {', '.join(differ)}; the "
            f"{pretext.name} variant may not reproduce the pretext network"))]
    return [Check("tower_geometry", True, (
        f"{cfn.member} is the 9-tower pretext network; its tower {suffix} (conv, pooling, LRN settings) equals "
        f"{pretext.deploy_source}, used for {pretext.name}" + (f"; {extra[0]}" if extra else "")))]
