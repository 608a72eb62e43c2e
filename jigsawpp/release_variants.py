"""Plan the networks a release zip converts to: which deploy each variant uses, which view of the weights, and why.

Variants: "transfer_conv1s4" (conv1 stride 4: the network the paper transfers; conv layers only when the
caffemodel's fc layers were trained at another geometry, e.g. a 9-tower CFN) and "pretext_conv1s2" (one tower
at the pretext stride 2, 64-px tiles, as trained: a CFN's tower, or a single AlexNet trained at stride 2). The
release page: the Jigsaw++ model without cluster classification "is trained using stride of 2 in conv1.
However, only convolutional layers with stride of 4 in conv1 are used for all the transfer learnings". Every
variant with a fitting deploy is written; a deploy comes from the zip when one fits, else from the bundled
`prototxt/alexnet/` files (patched to the caffemodel's fc shapes when needed), and every candidate deploy gets
a sentence saying which variant uses it, or why none does (`Planned.deploy_use`, shown by `jigsawpp info`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

import prototxt as bundled
from caffe_import.proto import caffe_pb2
from jigsawpp import __version__
from jigsawpp.release_prototxt import PrototxtScore, score_prototxt
from jigsawpp.release_scan import CaffemodelInfo, ReleaseError, fc6_inputs

__all__ = ["PRETEXT", "TRANSFER", "Planned", "VariantPlan", "plan_variants"]

PRETEXT, TRANSFER = "pretext_conv1s2", "transfer_conv1s4"
STRIDES = {2: (PRETEXT, "pretext"), 4: (TRANSFER, "transfer")}   # conv1 stride -> (variant, role)
TILE_POOL5 = 256 * 3 * 3   # pool5 of the bundled alexnet/deploy_conv1s2.prototxt: 64-px tile, conv1 stride 2
STRIDE4_POOL5 = 256 * 6 * 6   # pool5 of the bundled alexnet/deploy_conv1s4.prototxt: 227 px, conv1 stride 4


@dataclass(frozen=True)
class VariantPlan:
    """One network to write: which deploy, which view of the weights, and why."""

    name: str
    role: str                # "pretext" | "transfer"
    conv1_stride: int
    deploy_source: str       # "zip:<member>", "file:<name>" (--deploy from disk) or "bundled:<prototxt name>"
    why: str
    collapsed: bool          # weights read from the tower-collapsed caffemodel (CFN)
    patches: tuple[str, ...]
    deploy_text: str = field(repr=False)
    deploy_net: caffe_pb2.NetParameter = field(repr=False)

    @property
    def for_transfer(self) -> bool:
        return self.role == "transfer"


class Planned(NamedTuple):
    variants: list[VariantPlan]
    deploy_use: dict[str, str]     # candidate prototxt member -> "used for <variant>" or "not used: <why>"
    notes: list[str]               # a variant not written, and why


def plan_variants(model: CaffemodelInfo, scores: list[PrototxtScore],
                  override: PrototxtScore | None) -> Planned:
    """Every variant that a deploy fitting the caffemodel allows, and for each candidate deploy why it is used or not.

    transfer (conv1 stride 4) is always planned: the network the paper transfers, conv layers at stride 4 whatever
    stride the caffemodel was trained at; the best usable stride-4 deploy of the zip, else a bundled one.
    pretext (conv1 stride 2) is the network as trained, so its geometry must be the caffemodel's: a stride-2 deploy
    is used when it fits and either the caffemodel has no fc6 or fc6 takes as many inputs as the deploy's pool5
    gives (a deploy with fc6 that fits does so by construction). Without such a deploy in the zip, the bundled 64-px
    tile deploy is used for a CFN, or for an AlexNet whose fc6 takes 256x3x3 inputs (that tile's pool5).
    scores: the candidate deploys, best first (`--deploy` first when given).
    """
    fc6_in = fc6_inputs(model)
    use: dict[str, str] = {}
    if override is not None:
        reason = _unusable(override, model, fc6_in)
        if reason:
            raise ReleaseError(f"--deploy {override.member}: {reason}")
    plans: list[VariantPlan] = []
    notes: list[str] = []
    for stride, (name, role) in STRIDES.items():
        fitting = [s for s in scores if s.conv1_stride == stride and _unusable(s, model, fc6_in) is None]
        if fitting:
            chosen = fitting[0]
            why = ("chosen with --deploy" if chosen is override else
                   f"the best-matching stride-{stride} deploy in the zip ({chosen.why})")
            collapsed = chosen.mode == "towers collapsed"
            source = chosen.member if chosen.member.startswith("file:") else f"zip:{chosen.member}"
            plans.append(VariantPlan(name, role, stride, source, why, collapsed, (), chosen.text, chosen.net))
            use[chosen.member] = f"used for {name}"
            for other in fitting[1:]:
                use[other.member] = f"not used: fits, but {name} uses {chosen.member} ({_preferred(chosen, other)})"
        elif stride == 4 or model.kind == "cfn" or fc6_in == TILE_POOL5:
            plans.append(_bundled_plan(model, name, role, stride, scores))
        else:
            notes.append(f"no {name} variant: no stride-2 deploy in the zip fits the caffemodel as trained, and "
                         + ("without fc6 the caffemodel does not show the input geometry it was trained at"
                            if fc6_in is None else
                            f"its fc6 takes {fc6_in} inputs, not the {TILE_POOL5} (256x3x3) of a 64-px stride-2 tile")
                         + "; pass --deploy with a stride-2 deploy to add it")
    for s in scores:
        use.setdefault(s.member, f"not used: {_unusable(s, model, fc6_in)}")
    return Planned(plans, use, notes)


def _unusable(score: PrototxtScore, model: CaffemodelInfo, fc6_in: int | None) -> str | None:
    """None when `score` can be a variant's deploy, else why not (one clause)."""
    from jigsawpp.models import alexnet_config_from_prototxt

    if score.role == "train_val":
        return "a train/val net (no Input layer), not a deploy"
    if score.role == "deploy?":
        return "the net cannot be built (see its notes)"
    if score.role != "deploy":
        return score.role
    if not score.fits:
        parts = []
        if score.mismatched:
            parts.append(f"{_names([m.split(':', 1)[0] for m in score.mismatched])} have other shapes")
        if score.missing:
            parts.append(f"{_names(list(score.missing))} are not in the caffemodel")
        return "it does not fit the caffemodel: " + "; ".join(parts)
    if score.conv1_stride not in STRIDES:
        return f"conv1 stride {score.conv1_stride}; the variants have stride 2 (pretext) or 4 (transfer)"
    try:
        alexnet_config_from_prototxt(score.net, source=score.member)
    except ValueError as exc:
        if model.kind == "cfn" and score.mode == "raw":
            return ("the 9-tower pretext network itself, not a Caffe AlexNet tower, while a variant is one tower "
                    "(this net's tower is compared with the pretext variant's deploy in the tower_geometry check)")
        return str(exc)
    if score.conv1_stride == 2 and fc6_in is not None and "fc6" not in score.matched:
        count = int(np.prod(score.pool5[1:])) if score.pool5 else None
        if count != fc6_in:
            got = f"{count} ({'x'.join(map(str, score.pool5[1:]))})" if score.pool5 else "an unknown number of"
            return (f"its conv layers fit, but its pool5 gives {got} values while the caffemodel's fc6 takes "
                    f"{fc6_in}: the weights were not trained in this stride-2 network")
    return None


def _names(names: list[str], most: int = 4) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _preferred(chosen: PrototxtScore, other: PrototxtScore) -> str:
    """Why `chosen` ranks before `other` (both fit, same stride)."""
    if chosen.notes and "chosen with --deploy" in chosen.notes:
        return "chosen with --deploy"
    a, b = chosen.rank, other.rank
    if a[2] != b[2]:
        return (f"it uses more of the caffemodel's weight layers: {len(chosen.matched)} of "
                f"{len(chosen.matched) + len(chosen.unused)} against {len(other.matched)} of "
                f"{len(other.matched) + len(other.unused)}")
    return "both use the same layers; the first found is taken"


def _bundled_plan(model: CaffemodelInfo, name: str, role: str, stride: int,
                  scores: list[PrototxtScore]) -> VariantPlan:
    from google.protobuf import text_format

    collapsed = model.kind == "cfn"
    has_fc = any(k in model.collapsed for k in ("fc6", "fc7", "fc8"))
    fc6_in = fc6_inputs(model)
    # The bundled fc layers read a 227-px stride-4 pool5 (256x6x6); other fc weights stay out (transfer uses conv).
    conv_only = collapsed or not has_fc or stride == 2 or fc6_in != STRIDE4_POOL5
    if stride == 2:
        file = "alexnet/deploy_conv1s2.prototxt"
    elif conv_only:
        file = "alexnet/conv_conv1s4.prototxt"
    else:
        file = "alexnet/deploy_conv1s4.prototxt"
    text = bundled.path(file).read_text(encoding="utf-8")
    patches: list[str] = []
    if not conv_only:
        net = caffe_pb2.NetParameter()
        text_format.Parse(text, net)
        present = [k for k in ("fc6", "fc7", "fc8") if k in model.collapsed]
        if present not in (["fc6", "fc7"], ["fc6", "fc7", "fc8"]):
            raise ReleaseError(f"{model.member}: fc layers {present}; the bundled AlexNet deploy needs fc6+fc7"
                               "[+fc8]. Pass --deploy with the right prototxt.")
        for lp in list(net.layer):
            if lp.type == "InnerProduct":
                if lp.name not in model.collapsed:
                    patches.append(f"dropped {lp.name} (not in the caffemodel)")
                    _drop_from(net, lp.name)
                    break
                rows = int(model.collapsed[lp.name][0][0])
                if rows != lp.inner_product_param.num_output:
                    patches.append(f"{lp.name} num_output {lp.inner_product_param.num_output} -> {rows} "
                                   "(the caffemodel's shape is authoritative)")
                    lp.inner_product_param.num_output = rows
        if patches:
            text = (f"# Generated by jigsawpp {__version__} from the bundled {file}: " + "; ".join(patches) + ".\n"
                    + text_format.MessageToString(net))
    result = score_prototxt(f"bundled:{file}", text, model)
    if not result.fits:
        raise ReleaseError(f"no deploy fits the caffemodel for the stride-{stride} variant: the zip's prototxts do "
                           f"not ({_best_reason(scores, stride)}) and the bundled {file} does not either "
                           f"({result.why}). Pass --deploy.")
    kind = "tower of the 9-tower CFN" if collapsed else "AlexNet"
    why = (f"no usable stride-{stride} single-tower deploy in the zip ({_best_reason(scores, stride)}); the bundled "
           f"{file} fits the {kind} weights ({result.why})")
    if has_fc and conv_only and not collapsed:
        why += ("; conv layers only: the bundled tile deploy has no fc layers" if stride == 2 else
                f"; conv layers only: the caffemodel's fc6 takes {fc6_in} inputs, not the {STRIDE4_POOL5} (256x6x6) "
                "of this deploy's pool5")
    return VariantPlan(name, role, stride, f"bundled:{file}", why, collapsed and result.mode == "towers collapsed",
                       tuple(patches), text, result.net)


def _best_reason(scores: list[PrototxtScore], stride: int) -> str:
    same = [s for s in scores if s.conv1_stride == stride]
    if not scores:
        return "there are none"
    if not same:
        return f"none has conv1 stride {stride}"
    s = same[0]
    if s.fits:
        return f"{s.member} fits but is not a single AlexNet tower"
    return f"best: {s.member}: {s.why}"


def _drop_from(net: caffe_pb2.NetParameter, first: str) -> None:
    """Remove layer `first` and every later layer depending on it (fc8 -> prob)."""
    dead: set[str] = set()
    keep = []
    for lp in net.layer:
        if lp.name == first or any(b in dead for b in lp.bottom):
            dead.update(lp.top)
            continue
        keep.append(lp)
    del net.layer[:]
    net.layer.extend(keep)
