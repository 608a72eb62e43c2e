"""Plan the networks a release zip converts to: which deploy each variant uses, which view of the weights, and why.

Variants: "transfer_conv1s4" (conv1 stride 4: the network the paper transfers; for a 9-tower CFN its conv layers
only) and "pretext_conv1s2" (one tower at the pretext stride 2, 64-px tiles). The release page: the Jigsaw++
model without cluster classification "is trained using stride of 2 in conv1. However, only convolutional layers
with stride of 4 in conv1 are used for all the transfer learnings". A deploy comes from the zip when one fits,
else from the bundled `prototxt/alexnet/` files (patched to the caffemodel's fc shapes when needed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import prototxt as bundled
from caffe_import.proto import caffe_pb2
from jigsawpp import __version__
from jigsawpp.release_scan import CaffemodelInfo, PrototxtScore, ReleaseError

__all__ = ["PRETEXT", "TRANSFER", "VariantPlan", "plan_variants"]

PRETEXT, TRANSFER = "pretext_conv1s2", "transfer_conv1s4"


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


def plan_variants(model: CaffemodelInfo, scores: list[PrototxtScore],
                  override: PrototxtScore | None) -> list[VariantPlan]:
    from jigsawpp.models import alexnet_config_from_prototxt

    def usable(score: PrototxtScore) -> str | None:
        """None when `score` can be a CaffeAlexNet variant deploy, else why not."""
        if not score.fits:
            return "does not fit the caffemodel"
        try:
            alexnet_config_from_prototxt(score.net, source=score.member)
        except ValueError as exc:
            return str(exc)
        return None

    wanted: list[tuple[str, int]] = []
    if model.kind == "cfn":
        wanted = [(PRETEXT, 2), (TRANSFER, 4)]
    else:
        wanted = [(TRANSFER, 4)]
        has_fc = any(k in model.collapsed for k in ("fc6", "fc7", "fc8"))
        stride2 = [s for s in scores if s.conv1_stride == 2 and usable(s) is None]
        if not has_fc and stride2:
            wanted.insert(0, (PRETEXT, 2))
    plans = []
    for name, stride in wanted:
        role = "transfer" if stride == 4 else "pretext"
        chosen: PrototxtScore | None = None
        why = ""
        if override is not None and override.conv1_stride == stride:
            reason = usable(override)
            if reason:
                raise ReleaseError(f"--deploy {override.member}: {reason}")
            chosen, why = override, "chosen with --deploy"
        else:
            for s in scores:
                if s.conv1_stride == stride and usable(s) is None:
                    chosen, why = s, f"the best-matching stride-{stride} deploy in the zip ({s.why})"
                    break
        if chosen is not None:
            collapsed = chosen.mode == "towers collapsed"
            source = chosen.member if chosen.member.startswith("file:") else f"zip:{chosen.member}"
            plans.append(VariantPlan(name, role, stride, source, why, collapsed, (), chosen.text, chosen.net))
            continue
        plans.append(_bundled_plan(model, name, role, stride, scores))
    if override is not None and override.conv1_stride not in {p.conv1_stride for p in plans}:
        raise ReleaseError(f"--deploy {override.member} has conv1 stride {override.conv1_stride}, but this "
                           f"{model.kind} caffemodel has variants for stride {[p.conv1_stride for p in plans]} only.")
    return plans


def _bundled_plan(model: CaffemodelInfo, name: str, role: str, stride: int,
                  scores: list[PrototxtScore]) -> VariantPlan:
    from google.protobuf import text_format

    from jigsawpp.release_scan import score_prototxt as score

    collapsed = model.kind == "cfn"
    conv_only = collapsed or not any(k in model.collapsed for k in ("fc6", "fc7", "fc8"))
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
    result = score(f"bundled:{file}", text, model)
    if not result.fits:
        raise ReleaseError(f"no deploy fits the caffemodel for the stride-{stride} variant: the zip's prototxts do "
                           f"not ({_best_reason(scores, stride)}) and the bundled {file} does not either "
                           f"({result.why}). Pass --deploy.")
    kind = "tower of the 9-tower CFN" if collapsed else "AlexNet"
    why = (f"no usable stride-{stride} single-tower deploy in the zip ({_best_reason(scores, stride)}); the bundled "
           f"{file} fits the {kind} weights ({result.why})")
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
