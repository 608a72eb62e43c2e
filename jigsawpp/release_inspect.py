"""Inspect a release zip: open it safely, find its parts by content, plan the variants, say what was found and why.

`inspect_release` makes one pass over the members (`jigsawpp.safezip`: nothing is extracted), classifies each
by content (`jigsawpp.release_scan`, `jigsawpp.label_files`), scores every prototxt against the caffemodel
(`jigsawpp.release_prototxt`), runs the consistency checks (`jigsawpp.release_checks`) and plans the variants
(`jigsawpp.release_variants`).
The result, a `ReleaseInfo`, is what `jigsawpp info` prints and what `convert_release` acts on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jigsawpp import paper
from jigsawpp.label_files import (
    LabelFileError,
    PseudoLabels,
    guess_split,
    looks_like_label_text,
    open_text_head,
    parse_label_file,
)
from jigsawpp.release_checks import Check, fc8_checks, tower_checks, tower_geometry_checks
from jigsawpp.release_prototxt import PrototxtScore, score_prototxt
from jigsawpp.release_scan import (
    PROTOTXT_HINT,
    SOLVER_HINT,
    CaffemodelInfo,
    Permutations,
    ReleaseError,
    describe_caffemodel,
    parse_caffemodel,
    read_permutations,
)
from jigsawpp.release_variants import VariantPlan, plan_variants
from jigsawpp.safezip import Member, SafeZip, ZipLimits

__all__ = ["LabelsFound", "MemberInfo", "ReleaseInfo", "inspect_release"]


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
    deploy_use: dict[str, str]                    # prototxt member -> "used for <variant>" / "not used: <why>"
    problems: tuple[str, ...]                     # what prevents a conversion (empty: convertible)
    notes: tuple[str, ...]

    @property
    def transfer_variant(self) -> str | None:
        return next((v.name for v in self.variants if v.for_transfer), None)


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
    deploy_use: dict[str, str] = {}
    if model is not None:
        checks += tower_checks(model, allow_tower_mismatch, problems)
        checks += fc8_checks(model, scan.permutations, scan.labels)
        if model.kind == "other":
            problems.append(f"{model.member}: {model.why}; convert it with `jigsawpp convert --prototxt P "
                            "--caffemodel W` instead")
        else:
            try:
                variants, deploy_use, planned_notes = plan_variants(model, scores, override)
                notes += planned_notes
            except ReleaseError as exc:
                problems.append(str(exc))
            checks += tower_geometry_checks(model, scores, variants)
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
        deploy_use=deploy_use, problems=tuple(problems), notes=tuple(notes),
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
        pending: list[tuple[Member, str, str, str | None]] = []  # (member, role, why, sha256)
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
        for m, role, why, known in pending:
            digest = known if known is not None else self.archive.sha256(m.name)
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

    def _classify_binary(self, m: Member, head: bytes) -> tuple[Member, str, str, str | None]:
        lower = m.basename.lower()
        if head.startswith(b"\x93NUMPY") or head.startswith(b"PK\x03\x04"):
            data = self.archive.read(m.name)
            perms = read_permutations(m.name, data) if head.startswith(b"\x93NUMPY") else None
            if perms is not None:
                return self._perms(m, perms, data)
            try:
                labels = parse_label_file(m.name, data)
            except (LabelFileError, ValueError) as exc:
                return m, "other", f"numpy data, not labels ({exc})", _sha256(data)
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

    def _perms(self, m: Member, perms: Permutations, data: bytes) -> tuple[Member, str, str, str]:
        if self.permutations is not None:
            self.notes.append(f"{m.name}: a second permutation file; using {self.permutations.member}")
        else:
            self.permutations = perms
        return m, "permutations", f"{perms.count} permutations of 9 tiles ({perms.format})", _sha256(data)

    def _labels(self, m: Member, data: bytes | None = None, parsed: PseudoLabels | None = None) -> str:
        """Parse a label file; returns its sha256."""
        data = data if data is not None else self.archive.read(m.name)
        try:
            parsed = parsed or parse_label_file(m.name, data)
        except LabelFileError as exc:
            self.notes.append(f"{m.name}: looked like a label list but: {exc}")
            return _sha256(data)
        split, why = guess_split(m.name, parsed)
        self.labels.append(LabelsFound(m.name, split, why, parsed))
        return _sha256(data)

    def _caffemodel(self, m: Member, why: str) -> tuple[Member, str, str, str]:
        data, digest = self._read_hashed(m)
        try:
            net, arrays = parse_caffemodel(m.name, data)
        except ReleaseError as exc:
            if m.basename.lower().endswith(".caffemodel"):
                self.bad_caffemodels.append(str(exc))
            return m, "other", str(exc), digest
        del data  # the arrays are copies; the member's bytes are not needed any more
        info = describe_caffemodel(m.name, net, arrays)
        self.caffemodel_candidates.append(m.name)
        if self.model is None or m.size > self.archive.member(self.model.member).size:
            self.model = info
        n = len(info.layers)
        return m, "caffemodel", f"{why}: NetParameter with {n} weight layers; {info.kind}: {info.why}", digest

    def _read_hashed(self, m: Member) -> tuple[bytearray, str]:
        """The member's bytes and their sha256 in one pass (`SafeZip.iter_bytes` checks sizes and the CRC)."""
        data = bytearray()
        digest = hashlib.sha256()
        for chunk in self.archive.iter_bytes(m.name):
            data += chunk
            digest.update(chunk)
        return data, digest.hexdigest()


def _sha256(data: bytes) -> str:
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
