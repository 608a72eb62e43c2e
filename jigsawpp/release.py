"""The authors' released model zips: `inspect_release` says what a zip holds and why, `convert_release` converts it.

The project page (cvg.unibe.ch/media/project/noroozi/knowledge_transfer.htm) lists five zips, each with "the
pre-trained caffe model and deploy" and "the Imagenet pseudo labels of both train and validation sets"; the
Jigsaw++ model without cluster classification "is trained using stride of 2 in conv1. However, only convolutional
layers with stride of 4 in conv1 are used for all the transfer learnings". Nothing else about the zips is
documented, so every part is found by content (`jigsawpp.release_scan`, `jigsawpp.label_files`).

The work is split by stage: `release_inspect` (one safe pass over the zip, what each member is and why),
`release_scan` (caffemodel and permutation readers), `release_prototxt` (deploy scoring), `release_checks` (checks),
`release_variants` (which deploy each variant uses), `release_write` (one variant folder and its parity checks)
and `release_manifest` (manifest.json and `jigsawpp info`'s report); this module converts.

Output of `convert_release(zip, OUT)` (other tools rely on it):

    OUT/manifest.json                      inputs with sha256, release + paper numbers, variants, checks
    OUT/<variant>/model.safetensors        CaffeAlexNet state dict (keys = Caffe layer names)
    OUT/<variant>/model.onnx               the same net in ONNX, checked in onnxruntime
    OUT/<variant>/deploy.prototxt          the deploy the weights were loaded with
    OUT/pseudo_labels/{train,val}.npz      names (image path as listed), labels (int32 cluster id)

Variants: "transfer_conv1s4" (conv1 stride 4: the network the paper transfers; for a 9-tower CFN its conv layers
only) and, for the Jigsaw++ CFN or an AlexNet trained at conv1 stride 2, "pretext_conv1s2" (one tower at the
pretext stride 2, 64-px tiles; rules in `jigsawpp.release_variants`). The zip is
read in memory (`jigsawpp.safezip`); output goes to a hidden staging folder beside OUT that is renamed to OUT
at the end, so a failed conversion leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from jigsawpp.label_files import save_pseudo_labels
from jigsawpp.release_inspect import ReleaseInfo, inspect_release
from jigsawpp.release_manifest import format_release_info, manifest
from jigsawpp.release_scan import ReleaseError
from jigsawpp.release_variants import VariantPlan
from jigsawpp.release_write import write_variant
from jigsawpp.safezip import ZipLimits

__all__ = ["ReleaseError", "ReleaseInfo", "VariantPlan", "convert_release", "format_release_info",
           "inspect_release"]


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
            variants[plan.name] = write_variant(plan, info, staging / plan.name, onnx=onnx, opset=opset)
        labels = {}
        for found in info.labels:
            assert found.split is not None
            path = save_pseudo_labels(staging / "pseudo_labels" / f"{found.split}.npz", found.labels)
            labels[found.split] = {"file": f"pseudo_labels/{path.name}", "member": found.member,
                                   "split_from": found.split_why, **found.labels.summary()}
        record = manifest(info, variants, labels, time.perf_counter() - start)
        from jigsawpp.io import write_json_atomic

        write_json_atomic(staging / "manifest.json", record)
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for path in created:
            shutil.rmtree(path, ignore_errors=True)
        raise
    return record


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
