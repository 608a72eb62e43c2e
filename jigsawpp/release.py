"""The authors' released model zips: `inspect_release` says what a zip holds and why, `convert_release` converts it.

The project page (cvg.unibe.ch/media/project/noroozi/knowledge_transfer.htm) lists five zips, each with "the
pre-trained caffe model and deploy" and "the Imagenet pseudo labels of both train and validation sets"; the
Jigsaw++ model without cluster classification "is trained using stride of 2 in conv1. However, only convolutional
layers with stride of 4 in conv1 are used for all the transfer learnings". Nothing else about the zips is
documented, so every part is found by content (`jigsawpp.release_scan`, `jigsawpp.label_files`).

Output of `convert_release(zip, OUT)` (other tools rely on it):

    OUT/manifest.json                      inputs with sha256, release + paper numbers, variants, checks
    OUT/<variant>/model.safetensors        CaffeAlexNet state dict (keys = Caffe layer names)
    OUT/<variant>/model.onnx               the same net in ONNX, checked in onnxruntime
    OUT/<variant>/deploy.prototxt          the deploy the weights were loaded with
    OUT/pseudo_labels/{train,val}.npz      names (image path as listed), labels (int32 cluster id)

Variants: "transfer_conv1s4" (conv1 stride 4: the network the paper transfers; for a 9-tower CFN its conv layers
only) and, for the Jigsaw++ CFN, "pretext_conv1s2" (one tower at the pretext stride 2, 64-px tiles). The zip is
read in memory (`jigsawpp.safezip`); output goes to a hidden staging folder beside OUT that is renamed to OUT
at the end, so a failed conversion leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import prototxt as bundled
from caffe_import.proto import caffe_pb2
from jigsawpp import __version__, paper
from jigsawpp.constants import IMAGENET_MEAN_BGR
from jigsawpp.label_files import (
    LabelFileError,
    PseudoLabels,
    guess_split,
    looks_like_label_text,
    open_text_head,
    parse_label_file,
    save_pseudo_labels,
)
from jigsawpp.release_scan import (
    PROTOTXT_HINT,
    SOLVER_HINT,
    CaffemodelInfo,
    Permutations,
    PrototxtScore,
    ReleaseError,
    describe_caffemodel,
    parse_caffemodel,
    read_permutations,
    score_prototxt,
)
from jigsawpp.safezip import Member, SafeZip, ZipLimits

__all__ = ["ReleaseError", "ReleaseInfo", "VariantPlan", "convert_release", "format_release_info",
           "inspect_release"]

PRETEXT, TRANSFER = "pretext_conv1s2", "transfer_conv1s4"
PARITY_TOLERANCE = 1e-5   # CaffeAlexNet vs caffe_import on the same weights: same kernels, expect ~0


@dataclass(frozen=True)
class MemberInfo:
    """One file of the zip and what it was taken for."""

    name: str
    size: int
    role: str     # caffemodel | prototxt | solver | labels | permutations | ignored | other
    why: str
    sha256: str


@dataclass(frozen=True)
class LabelsFound:
    member: str
    split: str | None
    split_why: str
    labels: PseudoLabels = field(repr=False)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None     # None: informational
    message: str


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


@dataclass(frozen=True)
class ReleaseInfo:
    """Everything `inspect_release` found, with the reasons; `convert_release` acts on it."""

    zip_path: Path
    zip_sha256: str
    zip_size: int
    members: tuple[MemberInfo, ...]
    release: paper.ReleasedModel | None
    release_why: str
    caffemodel: CaffemodelInfo | None
    caffemodel_candidates: tuple[str, ...]
    prototxts: tuple[PrototxtScore, ...]          # best first
    labels: tuple[LabelsFound, ...]
    permutations: Permutations | None
    checks: tuple[Check, ...]
    variants: tuple[VariantPlan, ...]
    problems: tuple[str, ...]                     # what prevents a conversion (empty: convertible)
    notes: tuple[str, ...]

    @property
    def transfer_variant(self) -> str | None:
        return next((v.name for v in self.variants if v.for_transfer), None)


# -- inspection -----------------------------------------------------------------------------------------------------

def inspect_release(zip_path: str | os.PathLike[str], deploy: str | os.PathLike[str] | None = None, *,
                    limits: ZipLimits | None = None, allow_tower_mismatch: bool = False) -> ReleaseInfo:
    """Open a release zip safely and find its caffemodel, deploys, pseudo-labels and permutations by content.

    deploy: a member name (or unique base name) in the zip, or a prototxt file on disk, used instead of the best
        scoring deploy for the variant with its conv1 stride.
    """
    zip_path = Path(zip_path)
    with SafeZip(zip_path, limits) as archive:
        scan = _Scan(archive)
        scan.run()
        override = _resolve_override(archive, scan, deploy) if deploy is not None else None
    notes = list(scan.notes)
    problems: list[str] = []
    model = scan.model
    if model is None:
        problems.append("no caffemodel found" + (f" (unreadable: {'; '.join(scan.bad_caffemodels)})"
                                                  if scan.bad_caffemodels else ""))
    elif len(scan.caffemodel_candidates) > 1:
        problems.append(f"{len(scan.caffemodel_candidates)} caffemodels ({', '.join(scan.caffemodel_candidates)}); "
                        "a release zip holds one")
    scores = sorted(scan.scores, key=lambda s: s.rank, reverse=True)
    if override is not None:
        scores = [override] + [s for s in scores if s.member != override.member]
    checks: list[Check] = []
    variants: list[VariantPlan] = []
    if model is not None:
        checks += _tower_checks(model, allow_tower_mismatch, problems)
        checks += _fc8_checks(model, scan.permutations, scan.labels)
        if model.kind == "other":
            problems.append(f"{model.member}: {model.why}; convert it with `jigsawpp convert --prototxt P "
                            "--caffemodel W` instead")
        else:
            try:
                variants = _plan_variants(model, scores, override)
            except ReleaseError as exc:
                problems.append(str(exc))
            checks += _tower_geometry_checks(model, scores, variants)
    splits: dict[str, list[str]] = {}
    for found in scan.labels:
        if found.split is None:
            problems.append(f"{found.member}: pseudo-labels, but {found.split_why}; rename it to say train or val")
        else:
            splits.setdefault(found.split, []).append(found.member)
    for split, members in splits.items():
        if len(members) > 1:
            problems.append(f"several {split} pseudo-label files: {', '.join(members)}")
    if not scan.labels:
        notes.append("no pseudo-label files found (the page says each zip has train and val lists)")
    release, release_why = _identify(zip_path, scan, model)
    return ReleaseInfo(
        zip_path=zip_path, zip_sha256=scan.zip_sha256, zip_size=zip_path.stat().st_size,
        members=tuple(scan.members), release=release, release_why=release_why, caffemodel=model,
        caffemodel_candidates=tuple(scan.caffemodel_candidates), prototxts=tuple(scores),
        labels=tuple(scan.labels), permutations=scan.permutations, checks=tuple(checks), variants=tuple(variants),
        problems=tuple(problems), notes=tuple(notes),
    )


class _Scan:
    """One pass over the members: classify by content, parse what matters."""

    def __init__(self, archive: SafeZip) -> None:
        self.archive = archive
        self.members: list[MemberInfo] = []
        self.model: CaffemodelInfo | None = None
        self.caffemodel_candidates: list[str] = []
        self.bad_caffemodels: list[str] = []
        self.texts: dict[str, str] = {}
        self.scores: list[PrototxtScore] = []
        self.labels: list[LabelsFound] = []
        self.permutations: Permutations | None = None
        self.notes: list[str] = []
        self.zip_sha256 = ""

    def run(self) -> None:
        from jigsawpp.io import sha256_file

        self.zip_sha256 = sha256_file(self.archive.path)
        pending: list[tuple[Member, str, str, bytes | None]] = []
        prototxt_members: list[Member] = []
        for m in self.archive.members:
            if m.name.startswith("__MACOSX/") or m.basename.startswith("._") or m.basename in (".DS_Store",
                                                                                                "Thumbs.db"):
                pending.append((m, "ignored", "operating-system metadata", None))
                continue
            head = self.archive.head(m.name, 4096)
            text = open_text_head(head)
            if text is not None:
                role, why = self._classify_text(m, text)
                if role == "prototxt":
                    prototxt_members.append(m)
                    pending.append((m, role, why, None))
                    continue
                if role == "labels":
                    pending.append((m, role, why, self._labels(m)))
                    continue
                pending.append((m, role, why, None))
                continue
            pending.append(self._classify_binary(m, head))
        # the caffemodel is needed before prototxts can be scored
        for i, (m, role, why, _data) in enumerate(pending):
            if role == "caffemodel?":
                pending[i] = self._caffemodel(m, why)
        for m in prototxt_members:
            data = self.archive.read(m.name)
            self.texts[m.name] = data.decode("utf-8-sig", errors="replace")
            self.scores.append(score_prototxt(m.name, self.texts[m.name], self.model))
        for m, role, why, data in pending:
            digest = _sha256(data) if isinstance(data, bytes) else self.archive.sha256(m.name)
            if role == "labels":
                found = next((f for f in self.labels if f.member == m.name), None)
                if found is not None:
                    why = (f"{found.split or 'unknown split'} pseudo-labels, {found.labels.count} rows: "
                           f"{found.labels.format}")
            if role == "prototxt":
                score = next(s for s in self.scores if s.member == m.name)
                role, why = ("prototxt", score.why) if score.role in ("deploy", "train_val", "deploy?") else \
                    ("other", score.role)
            self.members.append(MemberInfo(m.name, m.size, role, why, digest))

    def _classify_text(self, m: Member, text: str) -> tuple[str, str]:
        if SOLVER_HINT.search(text) and not PROTOTXT_HINT.search(text):
            return "solver", "text with solver fields (base_lr, max_iter, ...): a Caffe solver, not a net"
        if PROTOTXT_HINT.search(text):
            return "prototxt", "text with layer/input definitions"
        if looks_like_label_text(text):
            return "labels", "text lines ending in an integer"
        return "other", "text that is neither a net definition nor a label list"

    def _classify_binary(self, m: Member, head: bytes) -> tuple[Member, str, str, bytes | None]:
        lower = m.basename.lower()
        if head.startswith(b"\x93NUMPY") or head.startswith(b"PK\x03\x04"):
            data = self.archive.read(m.name)
            perms = read_permutations(m.name, data) if head.startswith(b"\x93NUMPY") else None
            if perms is not None:
                return self._perms(m, perms, data)
            try:
                labels = parse_label_file(m.name, data)
            except (LabelFileError, ValueError) as exc:
                return m, "other", f"numpy data, not labels ({exc})", data
            return m, "labels", f"numpy {('npz' if head.startswith(b'PK') else 'npy')} with a label vector", \
                self._labels(m, data, labels)
        if head.startswith(b"\x89HDF"):
            return m, "other", "HDF5 file (a .caffemodel.h5?); only binary protobuf caffemodels are supported", None
        if len(head) >= 8 and m.size < (1 << 26):
            n, width = np.frombuffer(head[:8], "<i4")
            if width == 9 and m.size == 8 + 36 * int(n):
                data = self.archive.read(m.name)
                perms = read_permutations(m.name, data)
                if perms is not None:
                    return self._perms(m, perms, data)
        if lower.endswith(".caffemodel") or head[:1] in (b"\x0a", b"\x12") or head[:2] == b"\xa2\x06":
            return m, "caffemodel?", "binary protobuf" + (" (.caffemodel)" if lower.endswith(".caffemodel") else ""), \
                None
        return m, "other", "binary data of no known kind", None

    def _perms(self, m: Member, perms: Permutations, data: bytes) -> tuple[Member, str, str, bytes]:
        if self.permutations is not None:
            self.notes.append(f"{m.name}: a second permutation file; using {self.permutations.member}")
        else:
            self.permutations = perms
        return m, "permutations", f"{perms.count} permutations of 9 tiles ({perms.format})", data

    def _labels(self, m: Member, data: bytes | None = None, parsed: PseudoLabels | None = None) -> bytes | None:
        data = data if data is not None else self.archive.read(m.name)
        try:
            parsed = parsed or parse_label_file(m.name, data)
        except LabelFileError as exc:
            self.notes.append(f"{m.name}: looked like a label list but: {exc}")
            return data
        split, why = guess_split(m.name, parsed)
        self.labels.append(LabelsFound(m.name, split, why, parsed))
        return data

    def _caffemodel(self, m: Member, why: str) -> tuple[Member, str, str, bytes | None]:
        data = self.archive.read(m.name)
        try:
            net = parse_caffemodel(m.name, data)
        except ReleaseError as exc:
            if m.basename.lower().endswith(".caffemodel"):
                self.bad_caffemodels.append(str(exc))
            return m, "other", str(exc), data
        info = describe_caffemodel(m.name, net)
        self.caffemodel_candidates.append(m.name)
        if self.model is None or m.size > self.archive.member(self.model.member).size:
            self.model = info
        n = len(info.layers)
        return m, "caffemodel", f"{why}: NetParameter with {n} weight layers; {info.kind}: {info.why}", data


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _resolve_override(archive: SafeZip, scan: _Scan, deploy: str | os.PathLike[str]) -> PrototxtScore:
    key = str(deploy)
    names = [m.name for m in archive.members]
    hits = [n for n in names if n == key] or [n for n in names if n.endswith("/" + key.lstrip("/"))] or \
        [n for n in names if n.rsplit("/", 1)[-1] == key]
    if len(hits) == 1:
        name = hits[0]
        text = scan.texts.get(name) or archive.read(name).decode("utf-8-sig", errors="replace")
        scan.texts[name] = text
        source = name
    elif len(hits) > 1:
        raise ReleaseError(f"--deploy {key!r} matches several members: {', '.join(hits)}; give the full name.")
    elif Path(key).is_file():
        text = Path(key).read_text(encoding="utf-8", errors="replace")
        source = f"file:{Path(key).name}"
        scan.texts[source] = text
    else:
        listed = ", ".join(s.member for s in scan.scores) or "none"
        raise ReleaseError(f"--deploy {key!r} is neither a member of {archive.path.name} nor a file; prototxts in "
                           f"the zip: {listed}.")
    score = score_prototxt(source, text, scan.model)
    if not score.fits:
        raise ReleaseError(f"--deploy {key!r} does not fit the caffemodel: {score.why}.")
    return dataclasses.replace(score, notes=score.notes + ("chosen with --deploy",))


def _tower_checks(model: CaffemodelInfo, allow: bool, problems: list[str]) -> list[Check]:
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


def _fc8_checks(model: CaffemodelInfo, perms: Permutations | None,
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


def _tower_geometry_checks(model: CaffemodelInfo, scores: list[PrototxtScore],
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


# -- variants -------------------------------------------------------------------------------------------------------

def _plan_variants(model: CaffemodelInfo, scores: list[PrototxtScore],
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


def _identify(zip_path: Path, scan: _Scan, model: CaffemodelInfo | None) -> tuple[paper.ReleasedModel | None, str]:
    names = paper.RELEASES
    stem = zip_path.name.rsplit(".zip", 1)[0].lower().strip()
    if stem in names:
        found, why = names[stem], "the zip file name"
    else:
        tops = {m.name.split("/", 1)[0].lower() for m in scan.archive.members if "/" in m.name}
        tops.discard("__macosx")
        hits = [t for t in tops if t in names]
        if len(hits) == 1:
            found, why = names[hits[0]], f"the zip's top folder {hits[0]}/"
        elif model is not None and any(k in model.member.lower() for k in names):
            key = max((k for k in names if k in model.member.lower()), key=len)
            found, why = names[key], f"the caffemodel name {model.member}"
        elif model is not None and model.kind == "cfn":
            found, why = names["jigsawpp"], "content: only the jigsawpp release is a 9-tower CFN (no CC)"
        else:
            return None, ("unknown: neither the zip name, its top folder nor the caffemodel name is one of "
                          f"{sorted(names)}; rename the zip to attach the paper's numbers")
    if model is not None:
        cfn = model.kind == "cfn"
        if cfn and found.cluster_classification:
            why += " (but the caffemodel is a 9-tower CFN, which only the no-CC release jigsawpp is)"
        elif not cfn and not found.cluster_classification and model.kind == "alexnet":
            why += " (note: the caffemodel is a single AlexNet, while this release is expected to be a 9-tower CFN)"
    return found, why


# -- conversion ------------------------------------------------------------------------------------------------------

def _preprocessing(plan: VariantPlan, info: ReleaseInfo) -> dict[str, object]:
    mean = None
    source = ("assumed: the CaffeNet convention (BVLC models/bvlc_reference_caffenet), as the authors' transfer "
              "protocols use it; the release does not state it")
    for score in [s for s in info.prototxts if s.net is not None]:
        for lp in score.net.layer:
            if lp.HasField("transform_param") and len(lp.transform_param.mean_value):
                mean = [float(v) for v in lp.transform_param.mean_value]
                source = f"transform_param.mean_value of layer '{lp.name}' in {score.member}"
                break
        if mean:
            break
    if plan.role == "pretext":
        return {"channel_order": "BGR", "value_range": [0, 255], "mean_bgr": None, "input": "64x64 puzzle tile",
                "normalisation": "per tile: MVN across channels (zero mean, unit variance over C,H,W), then x50 "
                                 "(Power scale 50), as the CFN's mvn_i/scale_i layers do; not part of this deploy",
                "source": "MehdiNoroozi/JigsawPuzzleSolver train_val_cfn_jps++.prototxt (no mean_value)"}
    return {"channel_order": "BGR", "value_range": [0, 255], "mean_bgr": mean or list(IMAGENET_MEAN_BGR),
            "source": source}


def convert_release(zip_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                    deploy: str | os.PathLike[str] | None = None, overwrite: bool = False, onnx: bool = True,
                    opset: int | None = None, allow_tower_mismatch: bool = False, limits: ZipLimits | None = None,
                    progress: Callable[[str], None] | None = None) -> dict:
    """Convert a release zip into `out_dir` (layout in the module docstring); returns the manifest."""
    start = time.perf_counter()
    say = progress or (lambda _msg: None)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; choose another --out or pass --overwrite.")
    say("inspecting the zip")
    info = inspect_release(zip_path, deploy, limits=limits, allow_tower_mismatch=allow_tower_mismatch)
    if info.problems:
        raise ReleaseError(f"{Path(zip_path).name} cannot be converted: " + "; ".join(info.problems) + ". Run "
                           "`jigsawpp info` on it for what was found.")
    created = _missing_parents(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        variants = {}
        for plan in info.variants:
            say(f"variant {plan.name}")
            variants[plan.name] = _write_variant(plan, info, staging / plan.name, onnx=onnx, opset=opset)
        labels = {}
        for found in info.labels:
            assert found.split is not None
            path = save_pseudo_labels(staging / "pseudo_labels" / f"{found.split}.npz", found.labels)
            labels[found.split] = {"file": f"pseudo_labels/{path.name}", "member": found.member,
                                   "split_from": found.split_why, **found.labels.summary()}
        manifest = _manifest(info, variants, labels, time.perf_counter() - start)
        from jigsawpp.io import write_json_atomic

        write_json_atomic(staging / "manifest.json", manifest)
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for path in created:
            shutil.rmtree(path, ignore_errors=True)
        raise
    return manifest


def _missing_parents(path: Path) -> list[Path]:
    """The outermost parent folder of `path` that does not exist yet (removed again if the conversion fails)."""
    missing = []
    for parent in reversed(path.absolute().parents):
        if not parent.exists():
            missing.append(parent)
    return missing[:1]


def _move_into_place(staging: Path, out_dir: Path) -> None:
    if out_dir.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, trash / "old")
        os.replace(staging, out_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, out_dir)


def _write_variant(plan: VariantPlan, info: ReleaseInfo, folder: Path, *, onnx: bool,
                   opset: int | None) -> dict[str, object]:
    import warnings

    import torch

    import caffe_import
    from jigsawpp.io import save_state_dict_file, sha256_file
    from jigsawpp.models import CaffeAlexNet, alexnet_config_from_prototxt, config_dict

    model = info.caffemodel
    assert model is not None
    config = alexnet_config_from_prototxt(plan.deploy_net, source=plan.deploy_source)
    weight_layers = [name for name in _weight_layer_names(plan.deploy_net)]
    weights = model.weights_for(weight_layers, collapsed=plan.collapsed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = caffe_import.load(plan.deploy_net, weights, strict=True)
    alexnet = CaffeAlexNet.from_caffe_state(net.state_dict(), config).eval()
    side = config.input_size
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0)) * 255.0 - 128.0
    blobs = list(config.blob_names)
    with torch.inference_mode():
        ref = net(x, outputs=blobs)
        got = alexnet.blobs(x, blobs)
    err = max(float((got[b] - ref[b]).abs().max()) for b in blobs)
    scale = max(1.0, max(float(ref[b].abs().max()) for b in blobs))
    if err > PARITY_TOLERANCE * scale:
        raise ReleaseError(f"variant {plan.name}: CaffeAlexNet differs from caffe_import on {plan.deploy_source} by "
                           f"{err:.3g} (max |ref| {scale:.3g}); the deploy is not the AlexNet layout it appears to be.")
    folder.mkdir(parents=True)
    save_state_dict_file(alexnet.state_dict(), folder / "model.safetensors",
                         metadata={"format": "CaffeAlexNet state dict, keys = Caffe layer names",
                                   "variant": plan.name})
    (folder / "deploy.prototxt").write_text(plan.deploy_text, encoding="utf-8")
    files = {"weights": "model.safetensors", "prototxt": "deploy.prototxt"}
    onnx_record: dict[str, object] = {"skipped": "convert was run without ONNX export"}
    if onnx:
        onnx_record = _export_and_check(net, folder / "model.onnx", blobs[-1], config.fc6 is None, opset=opset,
                                        variant=plan.name)
        files["onnx"] = "model.onnx"
    used = set(weight_layers)
    view = model.collapsed if plan.collapsed else model.layers
    return {
        "role": plan.role,
        "for_transfer": plan.for_transfer,
        "conv1_stride": plan.conv1_stride,
        "deploy": {"source": plan.deploy_source, "why": plan.why, "patches": list(plan.patches),
                   "sha256": sha256_file(folder / "deploy.prototxt")},
        "weights_view": (f"tower _s{min(model.towers.towers)} of the CFN, renamed to conv1..conv5"
                         if plan.collapsed and model.towers else "layers as stored in the caffemodel"),
        "layers": weight_layers,
        "not_converted": [k for k in view if k not in used],
        "alexnet_config": config_dict(config),
        "input": {"data": [1, 3, side, side]},
        "outputs": {b: list(ref[b].shape) for b in blobs[-1:]},
        "files": files,
        "parity": {"caffe_alexnet_vs_caffe_import": {"max_abs_err": err, "max_abs_ref": scale, "blobs": blobs},
                   "onnx": onnx_record},
        "preprocessing": _preprocessing(plan, info),
        "load_notes": [str(w.message) for w in caught] + list(net.notes),
    }


def _export_and_check(net, path: Path, last_blob: str, any_size: bool, *, opset: int | None,
                      variant: str) -> dict[str, object]:
    """ONNX export, then onnxruntime vs PyTorch on the last AlexNet blob and the net outputs; conv-only nets (any
    input size) are also checked on a second, larger input."""
    import caffe_import

    caffe_import.export_onnx(net, path, opset=opset, dynamic=True)
    outputs = list(dict.fromkeys([last_blob, *net.output_names]))
    runs = {"export_size": caffe_import.check_onnx(net, path, outputs=outputs)}
    if any_size:
        (name, shape), = net.graph.input_shapes.items()
        bigger = (1, shape[1], shape[2] + 32, shape[3] + 32)
        feeds = {name: np.random.default_rng(1).normal(0.0, 50.0, bigger).astype(np.float32)}
        runs[f"second_size_{bigger[2]}"] = caffe_import.check_onnx(net, path, feeds, outputs=outputs)
    record: dict[str, object] = {"opset": opset or "default", "dynamic": True}
    for key, check in runs.items():
        if not check.passed():
            raise ReleaseError(f"variant {variant}: onnxruntime differs from PyTorch on the {key} input (max rel. "
                               f"error {check.worst_rel_err:.3g} > 1e-4).")
        record[key] = {"max_abs_err": check.max_abs_err, "max_rel_err": check.max_rel_err,
                       "shapes": {k: list(v) for k, v in check.shapes.items()}}
    first = runs["export_size"]
    record.update(provider=first.provider, notice=first.notice)
    return record


def _weight_layer_names(net: caffe_pb2.NetParameter) -> list[str]:
    from jigsawpp.release_scan import WEIGHT_TYPES

    return [lp.name for lp in net.layer if lp.type in WEIGHT_TYPES]


def _manifest(info: ReleaseInfo, variants: dict, labels: dict, seconds: float) -> dict[str, object]:
    release = info.release
    model = info.caffemodel
    assert model is not None
    transfer = info.transfer_variant
    return {
        "format": "jigsawpp-release/1",
        "tool": f"jigsawpp {__version__}",
        "source": {"zip": info.zip_path.name, "sha256": info.zip_sha256, "size": info.zip_size},
        "inputs": [{"member": m.name, "size": m.size, "role": m.role, "why": m.why, "sha256": m.sha256}
                   for m in info.members],
        "release": ({"name": release.file, "identified_by": info.release_why, "method": release.method,
                     "pretext_architecture": release.pretext_architecture,
                     "cluster_classification": release.cluster_classification,
                     "paper_method": release.paper_method, "paper_row_match": release.why}
                    if release else {"name": None, "identified_by": info.release_why}),
        "paper": ({"method": release.paper_method, "release_page_detection_map": release.detection_map,
                   "tables": paper.paper_numbers(release.paper_method)} if release else None),
        "caffemodel": {"member": model.member, "kind": model.kind, "why": model.why,
                       "layers": {k: [list(s) for s in v] for k, v in model.layers.items()},
                       "towers": ({"indices": list(model.towers.towers), "bases": list(model.towers.bases),
                                   "max_abs_diff": model.towers.max_abs_diff, "missing": list(model.towers.missing)}
                                  if model.towers else None)},
        "permutations": info.permutations.summary() if info.permutations else None,
        "checks": [dataclasses.asdict(c) for c in info.checks],
        "transfer_variant": transfer,
        "variants": variants,
        "preprocessing": variants[transfer]["preprocessing"] if transfer in variants else None,
        "pseudo_labels": labels,
        "deploy_candidates": [{"member": s.member, "fits": s.fits, "why": s.why} for s in info.prototxts],
        "notes": list(info.notes),
        "seconds": round(seconds, 2),
    }


# -- text report ----------------------------------------------------------------------------------------------------

def format_release_info(info: ReleaseInfo) -> str:
    """What `jigsawpp info` prints: what was found in the zip and why."""
    lines = [f"{info.zip_path.name}: {len(info.members)} files, {info.zip_size / 1e6:.1f} MB, "
             f"sha256 {info.zip_sha256[:16]}..."]
    r = info.release
    if r is not None:
        row = paper.TABLE3.row(r.paper_method) or {}
        lines.append(f"release: {r.file} = {r.paper_method} ({r.method}, pretext {r.pretext_architecture or 'none'}, "
                     f"{'with' if r.cluster_classification else 'without'} cluster classification); identified by "
                     f"{info.release_why}")
        lines.append(f"  paper Table 3: classification {row.get('classification')}, detection SS "
                     f"{row.get('detection_ss')} / MS {row.get('detection_ms')}, segmentation "
                     f"{row.get('segmentation')}; release page detection {r.detection_map}")
    else:
        lines.append(f"release: {info.release_why}")
    lines.append("files:")
    width = max((len(m.name) for m in info.members), default=10)
    for m in info.members:
        lines.append(f"  {m.name:<{width}}  {_size(m.size):>9}  {m.role:<12} {m.why}")
    model = info.caffemodel
    if model is not None:
        lines.append(f"caffemodel: {model.member} -- {model.kind}: {model.why}")
    lines.append("deploy candidates (best first):")
    for i, s in enumerate(info.prototxts, 1):
        verdict = "fits" if s.fits else "no"
        lines.append(f"  {i}. {s.member} [{verdict}] {s.why}")
    if not info.prototxts:
        lines.append("  (none in the zip)")
    if info.permutations is not None:
        p = info.permutations
        lines.append(f"permutations: {p.member}: {p.count} permutations, {'1' if p.one_based else '0'}-based, "
                     f"min Hamming distance {p.min_hamming} ({p.format})")
    lines.append("pseudo-labels:")
    for found in info.labels:
        s = found.labels.summary()
        lines.append(f"  {found.split or '?'}: {found.member} -- {s['format']}; {s['count']} rows, "
                     f"{s['distinct_labels']} clusters in [{s['min_label']}, {s['max_label']}]; split from "
                     f"{found.split_why}")
    if not info.labels:
        lines.append("  (none found)")
    if info.checks:
        lines.append("checks:")
        for c in info.checks:
            mark = {True: "ok", False: "!!", None: "--"}[c.ok]
            lines.append(f"  [{mark}] {c.name}: {c.message}")
    lines.append("variants:")
    for v in info.variants:
        tag = "FOR TRANSFER" if v.for_transfer else "pretext"
        lines.append(f"  {v.name} ({tag}, conv1 stride {v.conv1_stride}): deploy {v.deploy_source}; {v.why}"
                     + (f"; patched: {'; '.join(v.patches)}" if v.patches else ""))
    if not info.variants:
        lines.append("  (none)")
    for note in info.notes:
        lines.append(f"note: {note}")
    if info.problems:
        lines.append("cannot convert: " + "; ".join(info.problems))
    else:
        lines.append(f"convertible: `jigsawpp convert {info.zip_path.name} --out DIR` writes "
                     f"{', '.join(v.name for v in info.variants)} and pseudo_labels/")
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
