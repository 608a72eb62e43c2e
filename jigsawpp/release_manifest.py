"""What a release conversion records and prints: the manifest (`OUT/manifest.json`) and `jigsawpp info`'s report."""

from __future__ import annotations

import dataclasses

from jigsawpp import __version__, paper
from jigsawpp.release_inspect import ReleaseInfo

__all__ = ["format_release_info", "manifest"]


def manifest(info: ReleaseInfo, variants: dict, labels: dict, seconds: float) -> dict[str, object]:
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
        "deploy_candidates": [{"member": s.member, "fits": s.fits, "why": s.why, "use": info.deploy_use.get(s.member)}
                              for s in info.prototxts],
        "notes": list(info.notes),
        "seconds": round(seconds, 2),
    }


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
        if s.member in info.deploy_use:
            lines.append(f"     -> {info.deploy_use[s.member]}")
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
